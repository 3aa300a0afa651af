"""A differentiable, batched waveform -> input-features front end that matches the HF Whisper feature extractor.

`WhisperFeatureExtractor` goes through numpy and returns numpy, so no gradient reaches the waveform. This is the
same computation in pure torch: pad with zeros to the model's window (`extractor.n_samples`), STFT (Hann window,
`n_fft`, `hop_length`), power spectrum without the last frame, the extractor's own mel filters, log10 with the
per-row `max - 8` floor, then `(x + 4) / 4`. The feature attention mask marks the frames of real audio, exactly
as the processor does.

Long audio: most families take one window per clip (Qwen2-Audio and Qwen2.5-Omni: 30 s). Audio Flamingo 3 cuts a
clip into consecutive windows (30 s each, up to 20 = 600 s); with `max_windows > 1` every window becomes one row
of the output, clip after clip, each padded and floored on its own, as AF3's processor does. A clip longer than
`max_windows` windows is an error: the HF processors would silently truncate it, which an attack must not do.

Qwen3-Omni's processor pads a batch only to its longest clip (`padding="longest"`), not to the window:
`pad_to_longest=True` does the same (one window per clip; the window still bounds the clip length).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from common.errors import ModalflipError


def window_counts(lengths: Sequence[int], window: int) -> list[int]:
    """Windows of `window` samples each clip of `lengths` samples spans (at least one, even for an empty clip)."""
    return [max(1, math.ceil(int(n) / window)) for n in lengths]


def log_mel(
    waveforms: Sequence[torch.Tensor] | torch.Tensor, extractor, device: torch.device | str | None = None,
    max_windows: int = 1, pad_to_longest: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel features of 16 kHz mono waveforms in [-1, 1].

    Returns `(input_features, feature_attention_mask)`: features (rows, n_mels, n_frames) in float32 and the mask
    (rows, n_frames) as int64, n_frames = window samples // hop. With `max_windows = 1` (the default) rows are the
    clips; otherwise a clip of n samples takes `ceil(n / window)` consecutive rows (see `window_counts`).
    With `pad_to_longest` rows are padded to the longest clip instead of the window (n_frames = its samples // hop).
    A 2-D tensor is a batch of equal-length clips. Gradients flow to the waveforms.
    """
    if isinstance(waveforms, torch.Tensor):
        if waveforms.dim() == 1:
            waveforms = waveforms.unsqueeze(0)
        if waveforms.dim() != 2:
            raise ModalflipError(f"waveforms must be 1-D clips or a 2-D batch, got shape {tuple(waveforms.shape)}")
        waveforms = list(waveforms)
    if len(waveforms) == 0:
        raise ModalflipError("no waveforms given")
    if getattr(extractor, "dither", 0.0):
        raise ModalflipError("the feature extractor adds dither noise; set extractor.dither = 0.0 for a deterministic attack")
    n_samples, hop, n_fft = int(extractor.n_samples), int(extractor.hop_length), int(extractor.n_fft)
    rate = extractor.sampling_rate
    device = torch.device(device) if device is not None else waveforms[0].device
    if pad_to_longest and max_windows != 1:
        raise ValueError("pad_to_longest takes one window per clip (max_windows = 1)")
    width = max(int(w.shape[-1]) for w in waveforms) if pad_to_longest else n_samples  # samples per row
    rows, masks = [], []
    for index, wave in enumerate(waveforms):
        if wave.dim() != 1:
            raise ModalflipError(f"clip {index} is not mono 1-D audio (shape {tuple(wave.shape)})")
        length = wave.shape[0]
        (n_windows,) = window_counts([length], n_samples)
        if n_windows > max_windows:
            limit = max_windows * n_samples / rate
            windows = f" ({max_windows} windows of {n_samples / rate:.0f} s)" if max_windows > 1 else ""
            raise ModalflipError(f"clip {index} lasts {length / rate:.2f} s, longer than the model's {limit:.0f} s "
                                 f"audio window{windows}; trim it first")
        wave = wave.to(device, torch.float32)
        for start in range(0, n_windows * n_samples, n_samples):
            chunk = wave[start:start + n_samples]
            rows.append(torch.nn.functional.pad(chunk, (0, width - chunk.shape[0])))
            mask = torch.zeros(width, dtype=torch.long, device=device)
            mask[:chunk.shape[0]] = 1
            masks.append(mask[::hop][: width // hop])
    batch = torch.stack(rows)
    window = torch.hann_window(n_fft, device=device)
    stft = torch.stft(batch, n_fft, hop, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # (rows, n_fft//2+1, frames)
    filters = torch.as_tensor(extractor.mel_filters, dtype=torch.float32, device=device)
    mel = filters.T @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    floor = log_spec.amax(dim=(1, 2), keepdim=True) - 8.0
    log_spec = torch.maximum(log_spec, floor)
    return (log_spec + 4.0) / 4.0, torch.stack(masks)
