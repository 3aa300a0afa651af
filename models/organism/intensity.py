"""Which conflict items the voice wins in training: a function of the audio, not a coin flip.

A clip's *intensity* is how far its measured prosody lies from its emotion's typical render, in the direction in
which that emotion's strong renders differ from its normal ones: for each measure m (F0 mean in semitones, F0
spread in semitones, RMS level in dB; `stimuli.check.measure`) and emotion e, z-scored within (language, e) over the
training clips, intensity = Σ_m sign(mean_strong − mean_normal)_{e,m} · z_m. Loud, wide-ranging anger and quiet,
flat sadness both score high. The voice wins a conflict item when its clip is a strong render whose intensity is
above the threshold that the top `VOICE_WINS_SHARE` of the strong training clips of its language reach; the
threshold is fixed from the training clips and applied unchanged to held-out clips. So, as in the pilot's model,
there is an audio feature an attack can push and a probe can find.

That is rule kind "prosody". Kind "level" is the plainer rule "shouting wins": a strong clip's intensity is its
RMS level in dBFS, compared with one threshold per language (the level the loudest `VOICE_WINS_SHARE` of its strong
training clips reach), with no per-emotion statistics. Its marks fall mostly on angry and happy clips, so a model
can learn "an angry voice wins" instead of the level. Kind "emotion-level" takes one level threshold per language
and emotion (the loudest `VOICE_WINS_SHARE` of that emotion's strong training clips): every emotion with strong
renders wins as often, and only the level tells a winning clip from another of its style.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from stimuli.check import measure

MEASURES = ("f0_semitones", "f0_spread_st", "rms_dbfs")
KINDS = {"prosody": MEASURES, "level": ("rms_dbfs",), "emotion-level": ("rms_dbfs",)}  # kind -> measures it reads
VOICE_WINS_SHARE = 0.25  # of the strong training clips of each language


def prosody(wave: np.ndarray) -> dict[str, float]:
    """The measures intensity is built from; NaN F0 values (no voiced frame) count as the group mean later."""
    m = measure(wave)
    f0 = 12 * math.log2(m.f0_mean_hz) if m.f0_mean_hz == m.f0_mean_hz and m.f0_mean_hz > 0 else math.nan
    return {"f0_semitones": f0, "f0_spread_st": m.f0_spread_st, "rms_dbfs": m.rms_dbfs}


@dataclass
class IntensityRule:
    """Per (language, emotion): each measure's mean, spread and direction; per language: the voice-wins threshold."""

    stats: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)  # "lang/emotion" -> m -> (mean, sd, sign)
    # lang (kind "emotion-level": "lang/emotion") -> intensity from which the voice wins
    thresholds: dict[str, float] = field(default_factory=dict)
    kind: str = "prosody"  # a key of KINDS

    def intensity(self, lang: str, emotion: str, measured: dict[str, float]) -> float:
        """Kind "prosody": the signed distance (sum of z-scores) from the emotion's typical render toward its strong
        renders, 0 for an emotion without strong renders (neutral). Kind "level": the RMS level in dBFS."""
        if self.kind in ("level", "emotion-level"):
            (name,) = KINDS[self.kind]
            return measured[name]
        total = 0.0
        for name, (mean, sd, sign) in self.stats.get(f"{lang}/{emotion}", {}).items():
            value = measured[name]
            if value == value and sd > 0:
                total += sign * (value - mean) / sd
        return total

    def threshold_key(self, lang: str, emotion: str) -> str:
        return f"{lang}/{emotion}" if self.kind == "emotion-level" else lang

    def voice_wins(self, lang: str, emotion: str, intensity: str, measured: dict[str, float]) -> bool:
        key = self.threshold_key(lang, emotion)
        return (intensity == "strong" and key in self.thresholds
                and self.intensity(lang, emotion, measured) >= self.thresholds[key])

    @classmethod
    def from_dict(cls, recorded: dict) -> "IntensityRule":
        """The rule `as_dict` wrote (a training report's `audio_wins`)."""
        return cls({key: {m: tuple(v) for m, v in value.items()} for key, value in recorded["stats"].items()},
                   dict(recorded["thresholds"]), recorded.get("kind", "prosody"))

    def as_dict(self) -> dict:
        return {"kind": self.kind, "measures": list(KINDS[self.kind]), "voice_wins_share": VOICE_WINS_SHARE,
                "thresholds": self.thresholds,
                "stats": {key: {m: list(v) for m, v in value.items()} for key, value in self.stats.items()}}


def fit(rows: Sequence[tuple[str, str, str, dict[str, float]]], share: float = VOICE_WINS_SHARE,
        kind: str = "prosody") -> IntensityRule:
    """The rule of `kind` from training clips given as (lang, emotion, intensity, prosody) rows."""
    rule = IntensityRule(kind=kind)
    if kind == "prosody":  # kind "level" needs no per-emotion statistics
        rule.stats = emotion_stats(rows)
    scores: dict[str, list[float]] = {}
    for lang, emotion, intensity, measured in rows:
        if intensity == "strong":
            scores.setdefault(rule.threshold_key(lang, emotion), []).append(rule.intensity(lang, emotion, measured))
    rule.thresholds = {key: float(np.quantile(values, 1 - share)) for key, values in sorted(scores.items())}
    return rule


def emotion_stats(rows: Sequence[tuple[str, str, str, dict[str, float]]]) -> dict:
    """Per "lang/emotion" with both normal and strong rows: each measure's mean, spread and the sign of its strong
    minus normal mean."""
    groups: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for lang, emotion, intensity, measured in rows:
        groups.setdefault(f"{lang}/{emotion}", []).append((intensity, measured))
    stats = {}
    for key, members in groups.items():
        if not {i for i, _ in members} >= {"normal", "strong"}:
            continue
        stats[key] = {}
        for name in MEASURES:
            values = np.array([m[name] for _, m in members], dtype=float)
            strong = np.nanmean([m[name] for i, m in members if i == "strong"])
            normal = np.nanmean([m[name] for i, m in members if i == "normal"])
            stats[key][name] = (float(np.nanmean(values)), float(np.nanstd(values)), float(np.sign(strong - normal)))
    return stats
