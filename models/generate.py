"""Greedy decoding: the text a model actually says after a prompt, for readouts beyond the label logits."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from models.adapter import ModelAdapter, Prompt

DEFAULT_NEW_TOKENS = 4  # enough for a label word and what follows it ("Angry.", "生气。")


@torch.no_grad()
def greedy_texts(adapter: ModelAdapter, waveforms: Sequence[torch.Tensor | np.ndarray], prompts: Sequence[Prompt],
                 max_new_tokens: int = DEFAULT_NEW_TOKENS, batch_size: int = 16,
                 tick: Callable[[int], None] | None = None) -> list[str]:
    """The greedy continuation of each prompt (at most `max_new_tokens` tokens, special tokens dropped), in order.

    Batches are built by the adapter, which pads on the right; a padded row cannot be continued, so rows are grouped
    by prompt length and each group is decoded in batches of up to `batch_size` rows without padding. The model's own
    `generate` does the decoding (with its cache and, for multimodal-rope families, its own position ids; the
    adapter's traced `position_ids` are left out)."""
    lengths: list[int] = []
    for start in range(0, len(prompts), batch_size):
        batch = adapter.build_batch(waveforms[start:start + batch_size], prompts[start:start + batch_size])
        lengths += [s.length for s in batch.spans]
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        groups.setdefault(length, []).append(index)
    texts: list[str] = [""] * len(prompts)
    pad_id = adapter.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = adapter.tokenizer.eos_token_id
    for length, indices in groups.items():
        for start in range(0, len(indices), batch_size):
            rows = indices[start:start + batch_size]
            batch = adapter.build_batch([waveforms[i] for i in rows], [prompts[i] for i in rows])
            inputs = {k: v for k, v in batch.inputs.items() if k != "position_ids"}
            out = adapter.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                         pad_token_id=pad_id)
            for row, tokens in zip(rows, out[:, length:]):
                texts[row] = adapter.tokenizer.decode(tokens, skip_special_tokens=True)
            if tick:
                tick(len(rows))
    return texts
