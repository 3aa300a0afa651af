"""The offline TTS backend: eSpeak NG prosody plus DSP effects, driven by `spec/prosody.json`.

`render(sentence, lang, emotion, intensity, voice=None, jitter_seed=None)` returns 16 kHz mono float32 samples.
Without a jitter seed every prosody value is the midpoint of its range (the seed set); with one, each value is
drawn uniformly from its range and the voice may be any variant (training data for the organism). `shift` makes a
new speaker out of a voice variant (a base-pitch offset, a speed factor that scales pitch and formants together,
as in speed-perturbation augmentation for speech recognition, and extra breathiness); the organism's training
clips draw one per clip.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from common.errors import ModalflipError
from stimuli import effects, espeak
from stimuli.spec import SPEC_DIR, check_emotion, check_lang

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Prosody:
    """One draw of every prosody and effect parameter (units as in `spec/prosody.json`)."""

    pitch: float
    range: float
    rate: float
    gain_db: float
    pauses: float
    pause_ms: float
    tremolo_hz: float
    tremolo_depth: float
    vibrato_cents: float
    breath: float
    drive: float


@dataclass(frozen=True)
class VoiceShift:
    """A speaker change on top of a voice variant: `pitch_offset` in eSpeak pitch units (0-100 scale, added to the
    style's pitch and clipped to 0-99), `speed`, the factor by which the rendered clip is played faster (tempo,
    pitch and formants scaled together; 1.0 leaves it as it is), and `breath`, breathiness noise added to the style's
    own level (times the speech RMS, as `breath` in prosody.json): a breathy speaker, whatever the emotion.
    `plain` renders with eSpeak NG's pitch, range and rate and the style's volume only, without its pauses,
    tremolo, vibrato, breathiness and drive: the plainer renderer a new user builds from eSpeak's own knobs.
    `expressiveness` scales how far the style's pitch, range, rate and volume lie from the average style's (see
    `express`): below 1 a speaker who shows the emotion less, above 1 one who shows it more; 1 leaves them."""

    pitch_offset: float = 0.0
    speed: float = 1.0
    breath: float = 0.0
    plain: bool = False
    expressiveness: float = 1.0


@lru_cache(maxsize=None)
def prosody_spec() -> dict:
    return json.loads((SPEC_DIR / "prosody.json").read_text(encoding="utf-8"))


def style_key(emotion: str, intensity: str) -> str:
    emotion = check_emotion(emotion)
    return f"{emotion}/normal" if emotion == "neutral" else f"{emotion}/{intensity}"


def voices(lang: str) -> list[str]:
    return list(prosody_spec()["voices"][check_lang(lang)]["variants"])


def variant_voice(lang: str, variant: str) -> str:
    """The language's seed voice spoken with one of eSpeak NG's voice variants (`espeak.variants()`), e.g.
    `cmn+Alicia`: a speaker beyond the ones `voices` lists."""
    shipped = espeak.variants()
    if variant not in shipped:
        raise ModalflipError(f"eSpeak NG has no voice variant {variant!r}; it has {', '.join(shipped)}")
    return f"{prosody_spec()['voices'][check_lang(lang)]['seed']}+{variant}"


# the values eSpeak NG and the effects accept; a widened range is clipped to them
_BOUNDS = {"pitch": (0, 99), "range": (0, 99), "rate": (80, 450), "pauses": (0, None), "pause_ms": (0, None),
           "tremolo_hz": (0, None), "tremolo_depth": (0, 1), "vibrato_cents": (0, None), "breath": (0, None),
           "drive": (1, None)}


def bounded(name: str, value: float) -> float:
    """`value` of the prosody parameter `name` clipped to what eSpeak NG and the effects accept (`_BOUNDS`)."""
    low, high = _BOUNDS.get(name, (None, None))
    value = value if low is None else max(value, low)
    return value if high is None else min(value, high)


def draw_prosody(emotion: str, intensity: str, rng: np.random.Generator | None, widen: float = 0.0,
                 styles: dict | None = None) -> Prosody:
    """Midpoints of the style's ranges when `rng` is None, else a uniform draw inside them, each range first
    widened by `widen` times its width on either side (clipped to what eSpeak NG and the effects accept).
    `styles` replaces the `styles` table of `spec/prosody.json` (another renderer's mapping)."""
    ranges = (styles or prosody_spec()["styles"])[style_key(emotion, intensity)]
    values = {}
    for name, (lo, hi) in ranges.items():
        lo, hi = bounded(name, lo - widen * (hi - lo)), bounded(name, hi + widen * (hi - lo))
        values[name] = (lo + hi) / 2 if rng is None else float(rng.uniform(lo, hi))
    return Prosody(**values)


def plain(prosody: Prosody) -> Prosody:
    """`prosody` with eSpeak NG's pitch, range and rate and its volume only: no pauses, tremolo, vibrato,
    breathiness or drive (see `VoiceShift.plain`)."""
    return replace(prosody, pauses=0.0, pause_ms=0.0, tremolo_hz=0.0, tremolo_depth=0.0, vibrato_cents=0.0,
                   breath=0.0, drive=1.0)


# the knobs a speaker's expressiveness scales: eSpeak NG's pitch, range and rate, and the volume
EXPRESSIVE_KNOBS = ("pitch", "range", "rate", "gain_db")


def express(prosody: Prosody, factor: float, styles: dict | None = None) -> Prosody:
    """`prosody` with each of `EXPRESSIVE_KNOBS` moved to centre + `factor` x (value - centre), where the centre is
    the mean over the styles of `styles` (default: `spec/prosody.json`) of that knob's midpoint, clipped to what
    eSpeak NG accepts: 0.6 brings every style 40 % closer to the average style."""
    table = (styles or prosody_spec()["styles"]).values()
    moved = {}
    for name in EXPRESSIVE_KNOBS:
        centre = float(np.mean([sum(ranges[name]) / 2 for ranges in table]))
        moved[name] = bounded(name, centre + factor * (getattr(prosody, name) - centre))
    return replace(prosody, **moved)


def render(sentence: str, lang: str, emotion: str, intensity: str, voice: str | None = None,
           jitter_seed: int | None = None, shift: VoiceShift = VoiceShift(), widen: float = 0.0,
           styles: dict | None = None) -> np.ndarray:
    """Speak `sentence` in the style of (emotion, intensity), by `voice` changed by `shift`; 16 kHz mono float32
    in [-1, 1]. `widen` and `styles` as in `draw_prosody`."""
    rng = None if jitter_seed is None else np.random.default_rng(jitter_seed)
    prosody = draw_prosody(emotion, intensity, rng, widen, styles)
    if shift.expressiveness != 1.0:
        prosody = express(prosody, shift.expressiveness, styles)
    if shift.plain:
        prosody = plain(prosody)
    voice = voice or prosody_spec()["voices"][check_lang(lang)]["seed"]
    effect_rng = rng if rng is not None else np.random.default_rng(0)
    n_words = max(1, len(sentence.split(" ")) if " " in sentence.strip() else len(sentence))
    n_pauses = int(round(prosody.pauses))
    pause_after = sorted(effect_rng.choice(max(1, n_words - 1), size=min(n_pauses, max(1, n_words - 1)),
                                           replace=False).tolist()) if n_pauses else []
    pitch = float(np.clip(prosody.pitch + shift.pitch_offset, 0, 99))
    raw = espeak.synthesize(sentence, voice, pitch, prosody.range, prosody.rate, pause_after,
                            int(prosody.pause_ms))
    sr = espeak.sample_rate()
    x = effects.normalize_peak(raw)
    x = effects.vibrato(x, sr, prosody.vibrato_cents, effect_rng)
    x = effects.tremolo(x, sr, prosody.tremolo_hz, prosody.tremolo_depth)
    x = effects.soft_clip(x, prosody.drive)
    x = effects.normalize_peak(x)
    x = effects.breathiness(x, sr, prosody.breath + shift.breath, effect_rng)
    x = effects.gain(x, prosody.gain_db)
    x = effects.resample(x, played_rate(sr, shift.speed), SAMPLE_RATE)
    return np.clip(x, -0.99, 0.99).astype(np.float32)


def played_rate(sr: int, speed: float) -> int:
    """The rate, in Hz, at which samples made at `sr` are read to play them `speed` times faster, rounded to 100 Hz
    (so the polyphase resampler's up/down factors stay small; the speed is off by at most 0.25 %)."""
    return sr if speed == 1.0 else int(round(sr * speed / 100)) * 100
