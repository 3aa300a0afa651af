"""The eSpeak NG backend: a clip is a function of its arguments alone, and a voice shift moves pitch and speed
and adds breathiness."""
from __future__ import annotations

import numpy as np
import pytest
from rich.progress import Progress

from common.errors import ModalflipError
from models.organism import train
from stimuli import espeak, tts

SENTENCE = "The lamp needs a new bulb."


def median_f0(x: np.ndarray, sr: int = tts.SAMPLE_RATE) -> float:
    """Median autocorrelation pitch (Hz) over the loud 40 ms frames."""
    frame, lags = int(0.04 * sr), np.arange(sr // 400, sr // 60)
    frames = [x[i:i + frame] - x[i:i + frame].mean() for i in range(0, len(x) - frame, frame // 2)]
    level = max(np.sqrt(np.mean(f ** 2)) for f in frames)
    estimates = [sr / lags[int(np.argmax([np.dot(f[:-lag], f[lag:]) for lag in lags]))]
                 for f in frames if np.sqrt(np.mean(f ** 2)) > 0.5 * level]
    return float(np.median(estimates))


def high_band_share(x: np.ndarray, above_hz: float = 4000, sr: int = tts.SAMPLE_RATE) -> float:
    """The share of the clip's energy above `above_hz`."""
    power, freqs = np.abs(np.fft.rfft(x)) ** 2, np.fft.rfftfreq(len(x), 1 / sr)
    return float(power[freqs > above_hz].sum() / power.sum())


def test_a_clip_depends_on_its_arguments_alone():
    # in one process libespeak-ng carries its pitch-flutter phase from one utterance to the next
    first = tts.render(SENTENCE, "en", "sad", "normal", voice="en+m3", jitter_seed=3)
    tts.render("我们明天早上见。", "zh", "angry", "strong")
    tts.render(SENTENCE, "en", "happy", "strong", voice="en-us+f2")
    again = tts.render(SENTENCE, "en", "sad", "normal", voice="en+m3", jitter_seed=3)
    assert np.array_equal(first, again)


def test_a_breathy_voice_speaks_the_same_in_every_process():
    import hashlib
    import subprocess
    import sys

    code = ("import hashlib; from stimuli import tts; "
            f"clip = tts.render({SENTENCE!r}, 'en', 'sad', 'normal', voice='en+f3'); "
            "print(hashlib.sha1(clip.tobytes()).hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}
    here = hashlib.sha1(tts.render(SENTENCE, "en", "sad", "normal", voice="en+f3").tobytes()).hexdigest()
    assert runs == {here}


def test_an_unknown_voice_is_one_error():
    with pytest.raises(ModalflipError, match="no voice 'xx-nobody'"):
        espeak.synthesize(SENTENCE, "xx-nobody", 50, 20, 160)
    assert len(espeak.synthesize(SENTENCE, "en-us", 50, 20, 160)) > 0  # the worker survives it


def test_a_voice_variant_is_checked_because_espeak_ignores_an_unknown_one():
    seed_voice = tts.render(SENTENCE, "en", "neutral", "normal")
    assert np.array_equal(tts.render(SENTENCE, "en", "neutral", "normal", voice="en-us+nobody"), seed_voice)
    with pytest.raises(ModalflipError, match="no voice variant 'nobody'"):
        tts.variant_voice("en", "nobody")
    assert tts.variant_voice("zh", "victor") == "cmn+victor"
    victor = tts.render(SENTENCE, "en", "neutral", "normal", voice=tts.variant_voice("en", "victor"))
    assert not np.array_equal(victor, seed_voice)


def test_no_shift_is_the_voice_itself():
    plain = tts.render(SENTENCE, "en", "neutral", "normal")
    assert np.array_equal(tts.render(SENTENCE, "en", "neutral", "normal", shift=tts.VoiceShift(0.0, 1.0)), plain)


def test_pitch_offset_raises_the_pitch_and_stops_at_the_scale_top():
    low, mid, high = (median_f0(tts.render(SENTENCE, "en", "neutral", "normal", shift=tts.VoiceShift(offset)))
                      for offset in (-20, 0, 20))
    assert low < 0.9 * mid and high > 1.1 * mid
    # fearful/strong sits at 88-99 on eSpeak's scale: +10 and +20 both end at 99
    assert np.array_equal(tts.render(SENTENCE, "en", "fearful", "strong", shift=tts.VoiceShift(10)),
                          tts.render(SENTENCE, "en", "fearful", "strong", shift=tts.VoiceShift(20)))


def test_speed_shortens_the_clip_and_raises_the_pitch():
    plain = tts.render(SENTENCE, "en", "neutral", "normal")
    fast = tts.render(SENTENCE, "en", "neutral", "normal", shift=tts.VoiceShift(speed=1.1))
    assert len(fast) == pytest.approx(len(plain) / 1.1, rel=0.005)
    assert median_f0(fast) > 1.05 * median_f0(plain)


def test_breath_shift_adds_noise_above_the_voice_and_keeps_the_timing():
    plain = tts.render(SENTENCE, "en", "neutral", "normal")
    breathy = tts.render(SENTENCE, "en", "neutral", "normal", shift=tts.VoiceShift(breath=0.2))
    assert len(breathy) == len(plain)
    assert high_band_share(breathy) > 2 * high_band_share(plain)


def test_breath_jitter_is_drawn_only_when_asked_for():
    without = [train.VoiceJitter(6, 0.06).draw(np.random.default_rng(3)) for _ in range(2)]
    assert without[0] == without[1] and without[0].breath == 0.0
    rng = np.random.default_rng(3)
    breathy = [train.VoiceJitter(6, 0.06, 0.1).draw(rng) for _ in range(5)]
    assert (breathy[0].pitch_offset, breathy[0].speed) == (without[0].pitch_offset, without[0].speed)
    assert all(0 <= shift.breath <= 0.1 for shift in breathy) and len({shift.breath for shift in breathy}) == 5


def test_voice_jitter_moves_the_speakers_and_nothing_else():
    with Progress(disable=True) as progress:
        plain = train.synthesize("heldout", 1, seed=1, progress=progress)
        moved = train.synthesize("heldout", 1, seed=1, progress=progress, jitter=train.VoiceJitter(6, 0.06))
    key = lambda c: (c.lang, c.emotion, c.intensity, c.sentence, c.voice)  # noqa: E731
    assert [key(c) for c in plain] == [key(c) for c in moved]
    ratios = np.array([len(a.wave) / len(b.wave) for a, b in zip(plain, moved)])
    assert np.all((ratios > 0.93) & (ratios < 1.07)) and np.std(ratios) > 0.01


def test_forked_processes_speak_through_their_own_workers():
    import multiprocessing

    jobs = [(SENTENCE, "en", emotion, "strong") for emotion in ("happy", "sad", "angry", "fearful")] * 3
    expected = {job: tts.render(*job) for job in jobs}  # the parent's worker is running now
    with multiprocessing.get_context("fork").Pool(3) as pool:
        clips = pool.starmap(tts.render, jobs)
    assert all(np.array_equal(clip, expected[job]) for clip, job in zip(clips, jobs))
    assert np.array_equal(tts.render(*jobs[0]), expected[jobs[0]])


def test_widened_ranges_reach_beyond_the_style_and_stay_within_espeak_bounds():
    rng = np.random.default_rng(0)
    draws = [tts.draw_prosody("sad", "strong", rng, widen=1.0) for _ in range(400)]
    pitches, depths = np.array([d.pitch for d in draws]), np.array([d.tremolo_depth for d in draws])
    # sad/strong pitch is [5, 18]: widened by its width on either side it reaches [-8, 31], clipped at 0
    assert pitches.max() > 18 + 5 and pitches.min() >= 0 and (pitches < 1).any()
    assert depths.min() >= 0 and depths.max() <= 1
    narrow = np.array([tts.draw_prosody("sad", "strong", np.random.default_rng(i)).pitch for i in range(50)])
    assert narrow.min() >= 5 and narrow.max() <= 18


def test_a_plain_render_keeps_the_espeak_prosody_and_drops_the_effects():
    rich = tts.draw_prosody("fearful", "strong", np.random.default_rng(4))
    bare = tts.plain(rich)
    assert (bare.pitch, bare.range, bare.rate, bare.gain_db) == (rich.pitch, rich.range, rich.rate, rich.gain_db)
    assert (bare.pauses, bare.tremolo_depth, bare.vibrato_cents, bare.breath, bare.drive) == (0, 0, 0, 0, 1)
    shouted = tts.render(SENTENCE, "en", "angry", "strong", jitter_seed=5)
    spoken = tts.render(SENTENCE, "en", "angry", "strong", jitter_seed=5, shift=tts.VoiceShift(plain=True))
    # drive 4-7 saturates the shout: its peak-to-RMS ratio is far lower than the plain render's
    crest = lambda x: np.abs(x).max() / np.sqrt(np.mean(x ** 2))  # noqa: E731
    assert crest(shouted) < 0.8 * crest(spoken)


def test_plain_share_is_drawn_after_the_other_shifts():
    rng = np.random.default_rng(3)
    base = [train.VoiceJitter(6, 0.06).draw(rng) for _ in range(1)][0]
    rng = np.random.default_rng(3)
    shifts = [train.VoiceJitter(6, 0.06, plain=0.5).draw(rng) for _ in range(200)]
    assert (shifts[0].pitch_offset, shifts[0].speed) == (base.pitch_offset, base.speed)
    assert 0.35 < np.mean([s.plain for s in shifts]) < 0.65


def test_expressiveness_scales_each_style_about_the_average_style():
    table = tts.prosody_spec()["styles"]
    centre = {knob: np.mean([sum(r[knob]) / 2 for r in table.values()]) for knob in tts.EXPRESSIVE_KNOBS}
    sad = tts.draw_prosody("sad", "normal", None)
    assert tts.express(sad, 1.0) == sad
    flat = [tts.express(tts.draw_prosody(e, i, None), 0.0) for e, i in train.styles()]
    assert all(np.isclose(getattr(p, knob), centre[knob]) for p in flat for knob in tts.EXPRESSIVE_KNOBS)
    muted = tts.express(sad, 0.6)
    for knob in tts.EXPRESSIVE_KNOBS:
        assert np.isclose(getattr(muted, knob) - centre[knob], 0.6 * (getattr(sad, knob) - centre[knob]))
    assert (muted.breath, muted.tremolo_depth, muted.drive) == (sad.breath, sad.tremolo_depth, sad.drive)
    # sad/strong sits near the pitch floor: a louder show of it stops at eSpeak's bounds
    loud = tts.express(tts.draw_prosody("sad", "strong", None), 1.9)
    assert loud.pitch == 0 and loud.range == 0


def test_a_less_expressive_speaker_is_drawn_only_when_asked_for_and_renders_closer_to_the_average():
    rng = np.random.default_rng(3)
    base = train.VoiceJitter(6, 0.06, plain=0.5).draw(rng)
    assert base.expressiveness == 1.0
    rng = np.random.default_rng(3)
    shifts = [train.VoiceJitter(6, 0.06, plain=0.5, expressive=0.4).draw(rng) for _ in range(200)]
    assert (shifts[0].pitch_offset, shifts[0].speed, shifts[0].plain) == (base.pitch_offset, base.speed, base.plain)
    factors = np.array([s.expressiveness for s in shifts])
    assert factors.min() >= 0.6 and factors.max() <= 1.4 and factors.std() > 0.15
    # sad/strong is slow: a speaker who shows it less speaks it faster (closer to the average rate)
    slow = tts.render(SENTENCE, "en", "sad", "strong", shift=tts.VoiceShift(plain=True))
    muted = tts.render(SENTENCE, "en", "sad", "strong", shift=tts.VoiceShift(plain=True, expressiveness=0.3))
    assert len(muted) < 0.9 * len(slow)
