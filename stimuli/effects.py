"""DSP effects that turn plain eSpeak NG speech into the styles of the seed set (numpy/scipy only).

Each function takes and returns float32 samples in [-1, 1] at `sr` Hz.
"""
from __future__ import annotations

import numpy as np
from scipy import signal


def normalize_peak(x: np.ndarray, peak: float = 0.9) -> np.ndarray:
    top = float(np.max(np.abs(x))) if x.size else 0.0
    return x if top == 0.0 else x * (peak / top)


def vibrato(x: np.ndarray, sr: int, cents: float, rng: np.random.Generator) -> np.ndarray:
    """F0 jitter: a smooth random time warp whose instantaneous pitch deviation peaks near `cents`."""
    if cents <= 0 or x.size < 2:
        return x
    noise = rng.standard_normal(x.size // 200 + 2)  # control points every 200 samples
    b, a = signal.butter(2, 0.08)  # smooth to a few Hz
    smooth = signal.filtfilt(b, a, noise) if noise.size > 9 else noise
    smooth = smooth / (np.max(np.abs(smooth)) + 1e-9)
    deviation = np.interp(np.arange(x.size), np.linspace(0, x.size - 1, smooth.size), smooth)
    ratio = 2.0 ** (cents * deviation / 1200.0)  # instantaneous playback rate
    positions = np.cumsum(ratio) - ratio[0]
    positions *= (x.size - 1) / positions[-1]  # keep the duration
    return np.interp(positions, np.arange(x.size), x).astype(np.float32)


def tremolo(x: np.ndarray, sr: int, rate_hz: float, depth: float) -> np.ndarray:
    """Amplitude modulation at `rate_hz` with modulation depth in [0, 1] (trembling voice)."""
    if rate_hz <= 0 or depth <= 0:
        return x
    t = np.arange(x.size) / sr
    return (x * (1.0 - depth * 0.5 * (1.0 - np.cos(2 * np.pi * rate_hz * t)))).astype(np.float32)


def breathiness(x: np.ndarray, sr: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Add high-passed noise following the speech envelope, `level` times the speech RMS."""
    if level <= 0 or x.size == 0:
        return x
    b, a = signal.butter(2, 1500 / (sr / 2), btype="high")
    noise = signal.lfilter(b, a, rng.standard_normal(x.size))
    eb, ea = signal.butter(1, 30 / (sr / 2))
    envelope = signal.lfilter(eb, ea, np.abs(x))
    envelope /= np.max(envelope) + 1e-9
    noise *= envelope
    speech_rms = np.sqrt(np.mean(x**2)) + 1e-9
    noise *= level * speech_rms / (np.sqrt(np.mean(noise**2)) + 1e-9)
    return (x + noise).astype(np.float32)


def soft_clip(x: np.ndarray, drive: float) -> np.ndarray:
    """tanh saturation (shouting); `drive` 1 leaves the signal as it is."""
    if drive <= 1.0:
        return x
    return (np.tanh(drive * x) / np.tanh(drive)).astype(np.float32)


def gain(x: np.ndarray, db: float) -> np.ndarray:
    return (x * 10.0 ** (db / 20.0)).astype(np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (22050 -> 16000 is the ratio 320/441)."""
    if sr_in == sr_out:
        return x.astype(np.float32)
    g = np.gcd(sr_in, sr_out)
    return signal.resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)
