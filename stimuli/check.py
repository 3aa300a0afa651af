"""Does each clip sound the way its label says? Acoustic measures per clip and the orderings the styles imply.

Per clip: F0 mean (Hz) and spread (standard deviation in semitones) over voiced frames, from a YIN pitch tracker
limited to 60-600 Hz; RMS level in dBFS (20*log10 of the RMS over the whole clip, full scale = 1.0); duration in
seconds. A manifest of more than `CLIP_TABLE_MAX` clips is shown as group means instead of one row per clip.
Per language, each ordering in `ORDERINGS` compares the mean of a measure over the clips of two (emotion,
intensity) groups (clips without voiced frames left out of F0 means): PASS, FAIL, or SKIP when a group has no
clips. A FAIL is a finding about the stimuli, not a usage error: `python -m stimuli check` exits with status 1.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stimuli.audio_io import SAMPLE_RATE, load_audio
from stimuli.manifest import read_manifest
from stimuli.spec import LANGS, emotions

F0_MIN_HZ, F0_MAX_HZ = 60.0, 600.0
FRAME_S, HOP_S = 0.025, 0.010  # YIN integration window and hop
YIN_THRESHOLD = 0.15  # cumulative mean normalised difference below which a frame counts as voiced
SILENCE_DB = -40.0  # frames this far below the loudest frame are never voiced
FLOOR_DBFS = -80.0  # nor are frames quieter than this
FRAMES_PER_BLOCK = 1000
CLIP_TABLE_MAX = 60  # above this many clips the table shows group means instead of one row per clip

Key = tuple[str, str, str]  # (lang, emotion, intensity)


@dataclass(frozen=True)
class Measures:
    """Acoustic summary of one clip; F0 values are NaN when no frame is voiced."""

    f0_mean_hz: float
    f0_spread_st: float  # standard deviation of 12*log2(F0) over voiced frames
    voiced_fraction: float  # voiced frames / all frames
    rms_dbfs: float
    duration_s: float


@dataclass(frozen=True)
class Ordering:
    """`measure` of the `higher` (emotion, intensity) group should exceed that of the `lower` group."""

    measure: str  # a field of Measures
    higher: tuple[str, str]
    lower: tuple[str, str]

    def describe(self) -> str:
        name = {"f0_mean_hz": "F0", "rms_dbfs": "RMS", "duration_s": "duration"}[self.measure]
        return f"{name}: {_group_name(self.higher)} > {_group_name(self.lower)}"


@dataclass(frozen=True)
class OrderingResult:
    lang: str
    ordering: Ordering
    higher_value: float  # group mean in the measure's unit (Hz, dBFS, s); NaN when the group is empty
    lower_value: float
    status: str  # "PASS" | "FAIL" | "SKIP"


NEUTRAL = ("neutral", "normal")
ORDERINGS = (
    Ordering("f0_mean_hz", ("happy", "strong"), NEUTRAL),
    Ordering("f0_mean_hz", NEUTRAL, ("sad", "normal")),
    Ordering("f0_mean_hz", NEUTRAL, ("sad", "strong")),
    Ordering("f0_mean_hz", ("fearful", "strong"), NEUTRAL),
    Ordering("rms_dbfs", ("angry", "strong"), NEUTRAL),
    Ordering("duration_s", ("sad", "normal"), NEUTRAL),
    Ordering("duration_s", ("sad", "strong"), NEUTRAL),
)
_UNITS = {"f0_mean_hz": "Hz", "rms_dbfs": "dBFS", "duration_s": "s"}


def pitch_track(samples: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """YIN F0 estimate per hop (10 ms) in Hz, NaN for unvoiced or silent frames; shape (n_frames,)."""
    x = np.asarray(samples, dtype=np.float64)
    window = int(round(FRAME_S * sr))
    hop = int(round(HOP_S * sr))
    min_lag, max_lag = int(sr / F0_MAX_HZ), int(math.ceil(sr / F0_MIN_HZ))
    span = window + max_lag
    if x.size < span:
        return np.full(0, np.nan)
    starts = np.arange(0, x.size - span + 1, hop)
    cmnd = np.empty((starts.size, max_lag + 1))  # cumulative mean normalised difference d'(tau) per frame
    frame_db = np.empty(starts.size)  # level of the integration window, dBFS
    for block in range(0, starts.size, FRAMES_PER_BLOCK):  # bounded memory for long files
        frames = x[starts[block:block + FRAMES_PER_BLOCK, None] + np.arange(span)]  # (n, span)
        cmnd[block:block + len(frames)], frame_db[block:block + len(frames)] = _yin_cmnd(frames, window, max_lag)
    loud = frame_db > max(frame_db.max() + SILENCE_DB, FLOOR_DBFS)
    f0 = np.full(starts.size, np.nan)
    for i in np.flatnonzero(loud):
        below = np.flatnonzero(cmnd[i, min_lag:max_lag] < YIN_THRESHOLD)
        if below.size == 0:
            continue
        tau = min_lag + below[0]
        while tau + 1 < max_lag and cmnd[i, tau + 1] < cmnd[i, tau]:
            tau += 1
        a, b, c = cmnd[i, tau - 1], cmnd[i, tau], cmnd[i, tau + 1]
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom > 0 else 0.0
        f0[i] = sr / (tau + shift)
    f0[(f0 < F0_MIN_HZ) | (f0 > F0_MAX_HZ)] = np.nan
    return f0


def _yin_cmnd(frames: np.ndarray, window: int, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """YIN's d'(tau) for tau = 0..max_lag, shape (n_frames, max_lag+1), and each window's level in dBFS."""
    nfft = 1 << int(math.ceil(math.log2(frames.shape[1] + window)))
    head = np.fft.rfft(frames[:, :window], nfft)
    cross = np.fft.irfft(np.conj(head) * np.fft.rfft(frames, nfft), nfft)[:, :max_lag + 1]  # sum x[j] x[j+tau]
    power = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
    lags = np.arange(max_lag + 1)
    energy_shifted = power[:, lags + window] - power[:, lags]  # sum of x[j+tau]^2 over the window
    diff = np.maximum(power[:, [window]] + energy_shifted - 2 * cross, 0.0)  # d(tau)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * lags[1:] / np.maximum(np.cumsum(diff[:, 1:], axis=1), 1e-12)
    return cmnd, 10 * np.log10(power[:, window] / window + 1e-20)


def measure(samples: np.ndarray, sr: int = SAMPLE_RATE) -> Measures:
    """F0 mean (Hz) and spread (semitones), voiced fraction, RMS (dBFS) and duration (s) of mono samples."""
    f0 = pitch_track(samples, sr)
    voiced = f0[np.isfinite(f0)]
    semitones = 12 * np.log2(voiced) if voiced.size else voiced
    rms = float(np.sqrt(np.mean(np.asarray(samples, dtype=np.float64) ** 2)))
    return Measures(
        f0_mean_hz=float(voiced.mean()) if voiced.size else math.nan,
        f0_spread_st=float(semitones.std()) if voiced.size else math.nan,
        voiced_fraction=voiced.size / f0.size if f0.size else 0.0,
        rms_dbfs=20 * math.log10(max(rms, 1e-10)),
        duration_s=len(samples) / sr,
    )


def check_orderings(measured: Iterable[tuple[Key, Measures]]) -> list[OrderingResult]:
    """Every ordering of `ORDERINGS` in every language that has clips, on group means."""
    groups: dict[Key, list[Measures]] = defaultdict(list)
    for key, measures in measured:
        groups[key].append(measures)
    results = []
    for lang in [lang for lang in LANGS if any(key[0] == lang for key in groups)]:
        for ordering in ORDERINGS:
            high = _group_mean(groups.get((lang, *ordering.higher), []), ordering.measure)
            low = _group_mean(groups.get((lang, *ordering.lower), []), ordering.measure)
            if (lang, *ordering.higher) not in groups or (lang, *ordering.lower) not in groups:
                status = "SKIP"
            else:
                status = "PASS" if high > low else "FAIL"  # NaN (nothing voiced) compares False: FAIL
            results.append(OrderingResult(lang, ordering, high, low, status))
    return results


def run_check(path: str | os.PathLike, console: Console | None = None) -> int:
    """Measure every clip of a manifest (or of DIR/manifest.jsonl), print both tables; 1 if an ordering fails."""
    path = Path(path)
    clips = read_manifest(path / "manifest.jsonl" if path.is_dir() else path)
    status = Console(stderr=True)
    measured = []  # every file is read before anything is printed
    with Progress(console=status, transient=True, disable=not status.is_terminal) as progress:
        for clip in progress.track(clips, description="measuring clips"):
            measured.append((clip, measure(load_audio(clip.audio_path))))
    results = check_orderings(((clip.lang, clip.emotion, clip.intensity), m) for clip, m in measured)
    console = console or Console()
    console.print(_clip_table(measured) if len(measured) <= CLIP_TABLE_MAX else _group_table(measured))
    console.print(_ordering_table(results))
    return 1 if any(result.status == "FAIL" for result in results) else 0


def _group_mean(measures: list[Measures], field: str) -> float:
    values = [getattr(m, field) for m in measures if not math.isnan(getattr(m, field))]
    return float(np.mean(values)) if values else math.nan


def _clip_table(measured) -> Table:
    table = Table(title="clips")
    for name in ("id", "lang", "emotion", "intensity", "F0 Hz", "F0 sd st", "voiced", "RMS dBFS", "dur s"):
        table.add_column(name, justify="left" if name in ("id", "lang", "emotion", "intensity") else "right")
    for clip, m in measured:
        table.add_row(clip.id, clip.lang, clip.emotion, clip.intensity, _num(m.f0_mean_hz, 1),
                      _num(m.f0_spread_st, 2), f"{m.voiced_fraction:.0%}", _num(m.rms_dbfs, 1),
                      _num(m.duration_s, 2))
    return table


def _group_table(measured) -> Table:
    groups: dict[Key, list[Measures]] = defaultdict(list)
    for clip, m in measured:
        groups[clip.lang, clip.emotion, clip.intensity].append(m)
    table = Table(title=f"means over {len(measured)} clips per language, emotion and intensity")
    for name in ("lang", "emotion", "intensity", "clips", "F0 Hz", "F0 sd st", "voiced", "RMS dBFS", "dur s"):
        table.add_column(name, justify="left" if name in ("lang", "emotion", "intensity") else "right")
    order = {emotion: i for i, emotion in enumerate(emotions())}
    for (lang, emotion, intensity), ms in sorted(groups.items(), key=lambda kv: (kv[0][0], order[kv[0][1]], kv[0][2])):
        table.add_row(lang, emotion, intensity, str(len(ms)), _num(_group_mean(ms, "f0_mean_hz"), 1),
                      _num(_group_mean(ms, "f0_spread_st"), 2), f"{_group_mean(ms, 'voiced_fraction'):.0%}",
                      _num(_group_mean(ms, "rms_dbfs"), 1), _num(_group_mean(ms, "duration_s"), 2))
    return table


def _ordering_table(results: list[OrderingResult]) -> Table:
    table = Table(title="orderings the styles imply")
    for name in ("lang", "ordering", "higher", "lower", "result"):
        table.add_column(name, justify="right" if name in ("higher", "lower") else "left")
    colour = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}
    for r in results:
        unit = _UNITS[r.ordering.measure]
        table.add_row(r.lang, r.ordering.describe(), f"{_num(r.higher_value, 2)} {unit}",
                      f"{_num(r.lower_value, 2)} {unit}", f"[{colour[r.status]}]{r.status}[/]")
    return table


def _group_name(group: tuple[str, str]) -> str:
    return group[0] if group[0] == "neutral" else "/".join(group)


def _num(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"
