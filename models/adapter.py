"""The one interface every probe and attack uses to talk to an audio-language model.

A `ModelAdapter` wraps a loaded HF model and its processor. It knows, from its family's data (`models/families/`),
where the decoder layers, final norm and LM head live, and it builds batches exactly as the model's own processor
and chat template do, recording for every item the token positions of the audio span, the instruction span, the
asserted emotion word (the claim) and the answer position.

Conventions (TransformerLens-style):
- `resid[l][batch, pos, d_model]`: l = 0 is the embeddings (the input of decoder layer 0), l = i the output of
  decoder layer i - 1, l = n_layers the output of the last layer before the final norm.
- Spans are Python `slice`s over token positions of one item; the answer position is the last prompt token, whose
  logits predict the first answer token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from common.errors import ModalflipError
from models.families.base import FamilySpec, resolve
from models.frontend import log_mel, window_counts


@dataclass(frozen=True)
class Prompt:
    """What the model is asked: chat messages (audio parts as `{"type": "audio"}`), the instruction text whose
    tokens form the instruction span, and the asserted emotion word inside it (its first occurrence is the claim)."""

    messages: list[dict]
    instruction: str
    claim: str | None = None


@dataclass(frozen=True)
class Spans:
    """Token positions of one item (slices are half-open, over the item's own row)."""

    audio: slice
    instruction: slice
    claim: slice | None
    answer: int
    length: int  # number of real (non-padding) tokens


@dataclass
class Batch:
    """Model inputs (kwargs for `model(**inputs)`) and the spans of each row."""

    inputs: dict[str, torch.Tensor]
    spans: list[Spans]
    prompts: list[Prompt] = field(default_factory=list)

    def answer_positions(self) -> torch.Tensor:
        return torch.tensor([s.answer for s in self.spans], device=self.inputs["input_ids"].device)

    def __len__(self) -> int:
        return len(self.spans)


class ModelAdapter:
    """One loaded model of a supported family; see the module docstring for conventions."""

    def __init__(self, model: nn.Module, processor, family: FamilySpec, model_id: str):
        self.model = model
        self.processor = processor
        self.family = family
        self.model_id = model_id
        self.tokenizer = processor.tokenizer
        self.extractor = processor.feature_extractor
        self.extractor.dither = 0.0

    # -- module access -------------------------------------------------------------------------------------------
    @property
    def decoder_layers(self) -> nn.ModuleList:
        return resolve(self.model, self.family.paths["layers"])

    @property
    def final_norm(self) -> nn.Module:
        return resolve(self.model, self.family.paths["norm"])

    @property
    def lm_head(self) -> nn.Module:
        return resolve(self.model, self.family.paths["lm_head"])

    @property
    def embed_tokens(self) -> nn.Module:
        return resolve(self.model, self.family.paths["embed"])

    @property
    def n_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def sampling_rate(self) -> int:
        return int(self.extractor.sampling_rate)

    @property
    def window_seconds(self) -> float:
        """Seconds of audio in one feature window (the extractor's `chunk_length`, or the family's own window)."""
        return self.family.window_samples(self.processor) / self.sampling_rate

    @property
    def max_windows(self) -> int:
        """Windows one clip may span (1 for most families; Audio Flamingo 3: 20)."""
        return int(self.family.max_windows(self.processor))

    @property
    def max_audio_seconds(self) -> float:
        """The longest clip `build_batch` accepts, in seconds."""
        return self.window_seconds * self.max_windows

    @property
    def audio_token_id(self) -> int:
        return int(resolve(self.model.config, self.family.audio_token_attr))

    def check_layer(self, layer: int, what: str = "layer") -> int:
        """`layer` as a residual index 0..n_layers, or a `ModalflipError` that names the valid range."""
        if not 0 <= int(layer) <= self.n_layers:
            raise ModalflipError(f"{what} {layer} is outside this model: it has residual layers 0..{self.n_layers} "
                                 f"(0 = embeddings, {self.n_layers} = last decoder layer)")
        return int(layer)

    # -- batches --------------------------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        """The chat template's text for one prompt, ending with the generation prompt."""
        return self.processor.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)

    def build_batch(self, waveforms: Sequence[torch.Tensor | np.ndarray], prompts: Sequence[Prompt]) -> Batch:
        """Token ids and attention mask from the model's own processor; features from the differentiable front end
        (identical to the processor's within 1e-4, and gradients reach `waveforms` when they require them)."""
        if len(waveforms) != len(prompts):
            raise ModalflipError(f"{len(waveforms)} clips for {len(prompts)} prompts")
        waves = [w if isinstance(w, torch.Tensor) else torch.as_tensor(np.asarray(w), dtype=torch.float32)
                 for w in waveforms]
        window = self.family.window_samples(self.processor)
        if self.family.features is not None:
            features, feature_mask = self.family.features(waves, self.extractor, self.device, window)
        else:
            features, feature_mask = log_mel(waves, self.extractor, device=self.device, max_windows=self.max_windows,
                                             pad_to_longest=self.family.feature_padding == "longest")
        texts = [self.render(p) for p in prompts]
        per_window = self.family.audio_token_count(feature_mask)  # (rows,): a clip's tokens sum over its windows
        windows = window_counts([w.shape[-1] for w in waves], window)
        n_audio = [int(part.sum()) for part in per_window.split(windows)]
        expanded = [self.family.expand_audio(text, n, self.processor) for text, n in zip(texts, n_audio)]
        self.tokenizer.padding_side = "right"
        encoded = self.tokenizer(expanded, return_tensors="pt", padding=True, return_offsets_mapping=True,
                                 add_special_tokens=False)
        spans = [self._spans(expanded[i], encoded, i, prompts[i]) for i in range(len(prompts))]
        inputs = {
            "input_ids": encoded["input_ids"].to(self.device),
            "attention_mask": encoded["attention_mask"].to(self.device),
            self.family.features_key: features.to(self.dtype),
        }
        if self.family.feature_mask_key is not None:  # Voxtral's encoder takes no feature mask
            inputs[self.family.feature_mask_key] = feature_mask
        if self.family.audio_sizes_key is not None:  # Phi-4 takes each clip's audio token count as an input
            inputs[self.family.audio_sizes_key] = per_window
        if self.family.position_ids is not None:
            inputs["position_ids"] = self.family.position_ids(self.model, inputs)
        return Batch(inputs=inputs, spans=spans, prompts=list(prompts))

    def _spans(self, text: str, encoded, row: int, prompt: Prompt) -> Spans:
        ids = encoded["input_ids"][row]
        length = int(encoded["attention_mask"][row].sum())
        offsets = encoded["offset_mapping"][row][:length].tolist()
        audio_positions = (ids[:length] == self.audio_token_id).nonzero().flatten().tolist()
        if not audio_positions:
            raise ModalflipError("the prompt has no audio part; add {'type': 'audio'} to a user message")
        audio = slice(audio_positions[0], audio_positions[-1] + 1)
        start = text.rfind(prompt.instruction)
        if start < 0:
            raise ModalflipError(f"instruction {prompt.instruction!r} does not occur in the rendered chat")
        instruction = _token_slice(offsets, start, start + len(prompt.instruction))
        claim = None
        if prompt.claim:
            at = text.find(prompt.claim, start, start + len(prompt.instruction))
            if at < 0:
                raise ModalflipError(f"claim word {prompt.claim!r} does not occur in the instruction")
            claim = _token_slice(offsets, at, at + len(prompt.claim))
        return Spans(audio=audio, instruction=instruction, claim=claim, answer=length - 1, length=length)

    # -- labels ---------------------------------------------------------------------------------------------------
    def label_token_ids(self, words: dict[str, str], single: bool = True) -> dict[str, int]:
        """emotion -> id of the first token the model would emit for its label word.

        Raises a `ModalflipError` naming the words when a label is not a single token (and `single`), or when two
        labels share a first token.
        """
        ids: dict[str, int] = {}
        for emotion, word in words.items():
            pieces = self.tokenizer.encode(word, add_special_tokens=False)
            if not pieces or pieces == [self.tokenizer.unk_token_id]:
                raise ModalflipError(f"label word {word!r} ({emotion}) is unknown to this model's tokenizer")
            if single and len(pieces) != 1:
                shown = self.tokenizer.convert_ids_to_tokens(pieces)
                raise ModalflipError(
                    f"label word {word!r} ({emotion}) is {len(pieces)} tokens {shown}, not one; choose a word that is "
                    "a single token (try a leading space or a synonym) in stimuli/spec/labels.json")
            ids[emotion] = pieces[0]
        seen: dict[int, str] = {}
        for emotion, token in ids.items():
            if token in seen:
                shown = self.tokenizer.convert_ids_to_tokens([token])[0]
                raise ModalflipError(f"label words {words[seen[token]]!r} and {words[emotion]!r} share their first "
                                     f"token {shown!r}; the answer position cannot tell them apart: choose other "
                                     "words (or forms with a leading space) in stimuli/spec/labels.json")
            seen[token] = emotion
        return ids


def check_aligned(a: Spans, b: Spans, what: str = "donor and receiver") -> None:
    """Raise a `ModalflipError` saying which span differs when two items do not share one token layout."""
    for name in ("audio", "instruction", "claim", "answer", "length"):  # the first cause, not its consequences
        if getattr(a, name) != getattr(b, name):
            raise ModalflipError(
                f"{what} are not aligned: their {name} spans differ ({getattr(a, name)} vs {getattr(b, name)}); "
                + ("pad clips to one duration (the default --pad-to) so audio spans match" if name in ("audio", "length")
                   else "use label words of equal token length so instruction spans match"))


def _token_slice(offsets: list[list[int]], start: int, end: int) -> slice:
    """Tokens whose character offsets overlap [start, end)."""
    inside = [i for i, (s, e) in enumerate(offsets) if e > start and s < end and e > s]
    if not inside:
        raise ModalflipError(f"no token covers characters {start}..{end} of the prompt")
    return slice(inside[0], inside[-1] + 1)
