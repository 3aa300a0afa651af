"""Reading and writing clips: the one set of rules for what audio modalflip accepts.

`load_audio` refuses, with a `ModalflipError` naming the file, audio that cannot be read, is empty, is silent
(peak below `SILENCE_PEAK`) or holds no signal (more than half its samples at the peak level: a constant or a
square wave, e.g. a file clipped to nothing). It repairs what can be repaired without guessing: several channels
are averaged to mono and a wrong sample rate is resampled, each with one notice line on stderr.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from common.atomic import atomic_write_with
from common.errors import ModalflipError

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4  # full scale is 1.0
CLIPPED_FRACTION = 0.5  # share of samples within 1% of the peak above which a file carries no signal


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """The file's samples as mono float32 in [-1, 1] at `target_sr` Hz, shape (n_samples,)."""
    path = Path(path)
    if not path.is_file():
        raise ModalflipError(f"audio file {path} does not exist; check the path (manifest paths are relative "
                             "to the manifest's folder)")
    if path.stat().st_size == 0:
        raise ModalflipError(f"audio file {path} is empty (0 bytes); re-export or remove it")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (n_samples, n_channels)
    except sf.LibsndfileError as err:
        raise ModalflipError(f"cannot read audio file {path}: {err.error_string.rstrip('.')}; "
                             "give a WAV, FLAC or OGG file") from None
    if data.shape[0] == 0:
        raise ModalflipError(f"audio file {path} is empty (no samples); re-export or remove it")
    if not np.all(np.isfinite(data)):
        raise ModalflipError(f"audio file {path} contains NaN or infinite samples; re-export it")
    repairs = []
    if data.shape[1] > 1:
        repairs.append(f"downmixed {data.shape[1]} channels to mono")
    samples = data.mean(axis=1)
    if sr != target_sr:
        repairs.append(f"resampled {sr} Hz to {target_sr} Hz")
        g = np.gcd(int(sr), int(target_sr))
        samples = signal.resample_poly(samples, target_sr // g, sr // g)
    peak = float(np.max(np.abs(samples)))
    if peak < SILENCE_PEAK:
        raise ModalflipError(f"audio file {path} is silent (peak {peak:.1e} < {SILENCE_PEAK:.0e} of full scale); "
                             "check the recording or remove it")
    if np.mean(np.abs(samples) >= 0.99 * peak) > CLIPPED_FRACTION:
        raise ModalflipError(f"audio file {path} holds no signal (most samples sit at the peak level: "
                             "constant or clipped to nothing); re-export it without clipping")
    if repairs:
        print(f"notice: {path}: {', '.join(repairs)}", file=sys.stderr)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write mono samples in [-1, 1] as a 16-bit PCM WAV, atomically; returns the path."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"write_wav takes mono samples of shape (n,), got {samples.shape}")
    return atomic_write_with(path, lambda buffer: sf.write(buffer, np.clip(samples, -1.0, 1.0), sr,
                                                           format="WAV", subtype="PCM_16"))

