"""Phi-4-multimodal (Phi4MultimodalForCausalLM): a conformer speech encoder (time reduction 8) over 80 log-mel
bins, and a Phi-4-mini LM whose decoder sits directly at `model.layers` (no `language_model` level).

- Features are not Whisper's: frames of 400 samples every 160 (no centering), pre-emphasis 0.97 inside each frame,
  a Hamming window, a 512-point FFT, Kaldi-style mel filters up to 7690 Hz and a natural log floored at 0, shaped
  (batch, frames, 80). `log_mel` below is that computation in torch, with gradients; the batch is padded to its
  longest clip, as the extractor does, including its zeroing of the frames that straddle a shorter clip's end.
- Audio tokens: one per 8 frames, rounded up (`audio_tokens`), 12.5 per second; the model also takes the count
  per clip as `audio_embed_sizes`.
- No chat template for audio ships with the checkpoint: prompts follow the model card,
  `<|system|>...<|end|><|user|><|audio_1|>...<|end|><|assistant|>`, with the audio placeholder (the token of
  `audio_config.audio_token_id`) where the audio part is (`CHAT_TEMPLATE`).
- The HF processor also wants an image processor (torchvision), so `load_model` uses the stand-in
  (`Phi4AudioProcessor`): tokenizer, feature extractor and the template above.
- The extractor takes audio of any length; modalflip takes clips up to `WINDOW_SECONDS` like the other families.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from common.errors import ModalflipError
from models.families.base import FamilySpec, repeat_placeholder
from models.families.processor_shim import AudioChatProcessor

WINDOW_SECONDS = 30
COMPRESSION = 8  # mel frames per audio token (the encoder's time reduction; the extractor's audio_compression_rate)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'audio' %}"
    "{{ audio_token }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def window(processor) -> int:
    """The longest clip modalflip gives Phi-4, in samples (`WINDOW_SECONDS`)."""
    return WINDOW_SECONDS * int(processor.feature_extractor.sampling_rate)


def audio_tokens(feature_mask: torch.Tensor) -> torch.Tensor:
    """Audio tokens per clip: its mel frames over 8, rounded up (the extractor's `audio_embed_sizes`)."""
    frames = feature_mask.sum(-1)
    return torch.div(frames, COMPRESSION, rounding_mode="floor") + (frames % COMPRESSION > 0)


def log_mel(clips: Sequence[torch.Tensor], extractor, device: torch.device, max_samples: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Phi-4's log-mel features of 16 kHz mono clips in [-1, 1], padded to the longest clip.

    Returns `(audio_input_features, audio_attention_mask)`: features (clips, frames, 80) in float32, natural-log
    mel power (floored at 0), and the mask (clips, frames) as bool, frames = (samples - 400) // 160 + 1 of the
    longest clip. Gradients flow to the clips.
    """
    win, hop, n_fft = int(extractor.win_length), int(extractor.hop_length), int(extractor.n_fft)
    rate = int(extractor.sampling_rate)
    lengths = [int(c.shape[-1]) for c in clips]
    for index, (clip, length) in enumerate(zip(clips, lengths)):
        if clip.dim() != 1:
            raise ModalflipError(f"clip {index} is not mono 1-D audio (shape {tuple(clip.shape)})")
        if length > max_samples:
            raise ModalflipError(f"clip {index} lasts {length / rate:.2f} s, longer than the model's "
                                 f"{max_samples / rate:.0f} s audio window; trim it first")
        if length < win:
            raise ModalflipError(f"clip {index} lasts {length / rate * 1000:.0f} ms, shorter than one "
                                 f"{win / rate * 1000:.0f} ms feature frame")
    width = max(lengths)
    batch = torch.stack([torch.nn.functional.pad(c.to(device, torch.float32), (0, width - n))
                         for c, n in zip(clips, lengths)])
    frames = batch.unfold(-1, win, hop)  # (clips, frames, win)
    index = torch.arange(frames.shape[1], device=device)
    ends = torch.tensor(lengths, device=device)
    if len(clips) > 1:  # the extractor zeroes, in shorter clips, the frames from the first that straddles the end
        first, last = (ends - win) // hop + 1, ends // hop - 1
        straddle = (index >= first[:, None]) & (index < last[:, None]) & (ends != width)[:, None]
        frames = frames.masked_fill(straddle[..., None], 0.0)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - float(extractor.preemphasis) * previous) * 32768
    hamming = torch.hamming_window(win, periodic=False, device=device, dtype=torch.float64)
    spectrum = torch.fft.rfft(hamming * frames.double(), n=n_fft, dim=-1).to(torch.complex64)
    power = spectrum.abs() ** 2
    filters = torch.as_tensor(np.asarray(extractor.mel_filters), dtype=torch.float32, device=device)
    features = torch.clamp(power @ filters, min=1.0).log()
    mask = index[None, :] < ((ends - win) // hop + 1)[:, None]
    return features, mask


class Phi4AudioProcessor(AudioChatProcessor):
    """The stand-in with Phi-4's own input path: its feature extractor (padding to the longest clip) and the audio
    placeholder repeated `audio_embed_sizes` times, as `Phi4MultimodalProcessor` does."""

    def __call__(self, text: Sequence[str], audio: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        if len(text) != len(audio):
            raise ModalflipError(f"{len(text)} texts for {len(audio)} clips")
        features = self.feature_extractor([np.asarray(a, dtype=np.float32) for a in audio],
                                          sampling_rate=self.feature_extractor.sampling_rate, return_tensors="pt")
        sizes = features["audio_embed_sizes"]
        expanded = [t.replace(self.audio_token, self.audio_token * int(n)) for t, n in zip(text, sizes)]
        encoded = self.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt",
                                 add_special_tokens=False)
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                  "audio_input_features": features["audio_input_features"], "audio_embed_sizes": sizes}
        if "audio_attention_mask" in features:  # the extractor gives a mask for two clips or more
            inputs["audio_attention_mask"] = features["audio_attention_mask"]
        return inputs


FAMILY = FamilySpec(
    name="Phi-4-multimodal",
    model_types=("phi4_multimodal",),
    model_class="Phi4MultimodalForCausalLM",
    paths={
        "layers": "model.layers",
        "norm": "model.norm",
        "lm_head": "lm_head",
        "embed": "model.embed_tokens",
    },
    audio_token_attr="audio_config.audio_token_id",
    features_key="audio_input_features",
    feature_mask_key="audio_attention_mask",
    audio_token_count=audio_tokens,
    expand_audio=repeat_placeholder,
    processor_shim=True,
    always_shim=True,
    feature_padding="longest",
    window_samples=window,
    features=log_mel,
    audio_sizes_key="audio_embed_sizes",
    chat_template=CHAT_TEMPLATE,
    processor_class=Phi4AudioProcessor,
    notes="Own 80-bin log-mel (n_fft 512), 12.5 audio tokens per second, prompts as on the model card.",
)
