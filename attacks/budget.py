"""The threat model's budget and the perceptual size of a perturbation.

An attack adds δ to a clip's 16 kHz waveform x (full scale ±1). The budget bounds ‖δ‖∞ by ε and, optionally, the
signal-to-noise ratio SNR = 10·log10(‖x‖² / ‖δ‖²) from below; the adversarial clip x + δ must stay in [−1, 1].
`project` enforces all three; `to_pcm16` rounds δ toward zero onto the 16-bit grid of the WAV it is written to, so
the written file is inside the budget too. `perceptual` measures what a listener-facing report needs: SNR (dB),
L∞ and L2 (full scale 1), STOI (0..1) and wideband PESQ (MOS-LQO, 1..4.64) of the adversarial clip against the
clean one.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import ModalflipError

PCM16_SCALE = 32768  # a 16-bit WAV holds multiples of 1 / 32768
SNR_SAFETY = 1e-6  # shrink the SNR bound by this fraction so float rounding never crosses it


@dataclass(frozen=True)
class Budget:
    """linf: the L∞ bound ε on δ (full scale 1.0); snr_db: the minimum SNR of x + δ against x in dB, or None."""

    linf: float = 0.002
    snr_db: float | None = None

    def __post_init__(self):
        if not (math.isfinite(self.linf) and self.linf > 0):
            raise ModalflipError(f"epsilon (the L∞ budget) must be a positive number, got {self.linf}; "
                                 "e.g. --epsilon 0.002 (about -54 dB of full scale)")
        if self.linf >= 1:
            raise ModalflipError(f"epsilon {self.linf} covers the whole [-1, 1] range; a budget is below 1, "
                                 "e.g. --epsilon 0.002")
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise ModalflipError(f"--snr-db must be a finite number of dB, got {self.snr_db}")

    def as_record(self) -> dict[str, float]:
        """The leaderboard's budget dict: {"linf": ε} plus {"snr_db": ...} when an SNR floor is set."""
        budget = {"linf": float(self.linf)}
        if self.snr_db is not None:
            budget["snr_db"] = float(self.snr_db)
        return budget


def project(delta: torch.Tensor, clean: torch.Tensor, budget: Budget) -> torch.Tensor:
    """δ moved into the budget for the clip `clean` (both 1-D, same length): clipped to [−ε, ε] and so that
    clean + δ stays in [−1, 1], then scaled down (never up) until the SNR is at least `budget.snr_db`.

    Scaling keeps both box constraints, since clean and clean + δ are in the box and the box is convex.
    Differentiable almost everywhere, so it can sit inside the attack's forward pass.
    """
    low = torch.clamp(-1.0 - clean, min=-budget.linf)
    high = torch.clamp(1.0 - clean, max=budget.linf)
    delta = torch.minimum(torch.maximum(delta, low), high)
    if budget.snr_db is not None:
        limit = clean.norm() * 10 ** (-budget.snr_db / 20) * (1 - SNR_SAFETY)
        delta = delta * torch.clamp(limit / delta.norm().clamp_min(1e-20), max=1.0)
    return delta


def to_pcm16(delta: torch.Tensor) -> torch.Tensor:
    """δ rounded toward zero to multiples of 1/32768: added to a clean clip that is itself 16-bit audio (every WAV
    modalflip ships or writes), the adversarial clip is exactly what the written 16-bit WAV holds, and ‖δ‖∞ and
    the SNR only get better."""
    return torch.trunc(delta * PCM16_SCALE) / PCM16_SCALE


@dataclass
class Perceptual:
    """The size of one perturbation. snr_db: dB (None when δ is zero); linf, l2: full scale 1; stoi: 0..1;
    pesq_wb: MOS-LQO 1..4.64; either is None when it cannot be computed, with the reason in `note`."""

    snr_db: float | None
    linf: float
    l2: float
    stoi: float | None
    pesq_wb: float | None
    note: str | None = None


def snr_db(clean: np.ndarray, delta: np.ndarray) -> float | None:
    """10·log10(‖clean‖² / ‖δ‖²) in dB; None when δ is zero."""
    noise = float(np.sum(np.square(delta, dtype=np.float64)))
    if noise == 0:
        return None
    return 10 * math.log10(float(np.sum(np.square(clean, dtype=np.float64))) / noise)


def wideband_pesq(clean: np.ndarray, adversarial: np.ndarray, sr: int) -> tuple[float | None, str | None]:
    """(score, None), or (None, why not): PESQ refuses short or speechless clips, and the pesq package ships no
    wheels, so where it could not be built the other measures still stand."""
    try:
        from pesq import PesqError, pesq
    except ImportError:
        return None, "PESQ: the pesq package is not installed (it builds from source: pip install pesq)"
    try:
        return float(pesq(sr, clean, adversarial, "wb")), None
    except PesqError as err:
        message = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        return None, f"PESQ: {message}"


def perceptual(clean: np.ndarray, adversarial: np.ndarray, sr: int = 16000) -> Perceptual:
    """SNR, L∞, L2, STOI and wideband PESQ of `adversarial` against `clean` (same length, mono, `sr` Hz).

    PESQ refuses clips shorter than 0.25 s or without speech, and STOI needs a few hundred ms of non-silent frames;
    then the score is None and `note` says why.
    """
    from pystoi import stoi

    clean = np.asarray(clean, dtype=np.float64)
    adversarial = np.asarray(adversarial, dtype=np.float64)
    delta = adversarial - clean
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stoi_score: float | None = float(stoi(clean, adversarial, sr, extended=False))
    if any("STFT frames" in str(w.message) for w in caught):
        stoi_score = None
        notes.append("STOI: clip too short or silent for its analysis frames")
    pesq_score, pesq_note = wideband_pesq(clean, adversarial, sr)
    if pesq_note:
        notes.append(pesq_note)
    return Perceptual(snr_db=snr_db(clean, delta), linf=float(np.max(np.abs(delta))),
                      l2=float(np.linalg.norm(delta)), stoi=stoi_score, pesq_wb=pesq_score,
                      note="; ".join(notes) or None)
