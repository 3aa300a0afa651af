"""The one hook helper: record the residual stream, stop early, and resume a forward from any layer.

HF's forward owns the layer loop, so modalflip records what it passes to each decoder layer (causal mask, rotary
position embeddings, position ids) during a traced run, and replays layers `start..stop-1` on any hidden state
with those same arguments. Patching at layer l = replace `resid[l]` and resume from l, without recomputing
layers 0..l-1.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from models.adapter import Batch, ModelAdapter


@dataclass
class Trace:
    """A traced forward. `resid[l][batch, pos, d_model]` for l = 0..n_layers (0 = embeddings, l = output of
    decoder layer l-1, un-normed); `layer_kwargs[i]` is what decoder layer i was called with."""

    resid: list[torch.Tensor]
    layer_kwargs: list[dict]
    logits: torch.Tensor | None  # (batch, pos, vocab) from the model, or None after an early stop


class _Stop(Exception):
    pass


def _hidden(output):
    """Decoder layers return a tensor or a tuple whose first element is the hidden state, by version."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def recording(adapter: ModelAdapter, stop_after: int | None = None):
    """Hooks that fill `resid` and `layer_kwargs` during a forward; with `stop_after = l` the forward is cut
    right after `resid[l]` is recorded (early exit)."""
    layers = adapter.decoder_layers
    resid: list[torch.Tensor | None] = [None] * (len(layers) + 1)
    layer_kwargs: list[dict | None] = [None] * len(layers)
    handles = []

    def pre_hook(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                resid[0] = hidden
            layer_kwargs[index] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if stop_after is not None and index >= stop_after:
                raise _Stop
        return hook

    def post_hook(index):
        def hook(module, args, kwargs, output):
            resid[index + 1] = _hidden(output)
            if stop_after is not None and index + 1 >= stop_after:
                raise _Stop
        return hook

    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre_hook(index), with_kwargs=True))
        handles.append(layer.register_forward_hook(post_hook(index), with_kwargs=True))
    try:
        yield resid, layer_kwargs
    finally:
        for handle in handles:
            handle.remove()


def run_traced(adapter: ModelAdapter, batch: Batch, stop_after: int | None = None,
               inputs_embeds: torch.Tensor | None = None) -> Trace:
    """One forward with every residual recorded. `stop_after = l` stops after `resid[l]` (no logits then).
    `inputs_embeds` (audio already merged) replaces the token ids and features when given."""
    inputs = dict(batch.inputs)
    if inputs_embeds is not None:
        kept = ("attention_mask", "position_ids")  # explicit rope positions (mrope families) stay with the embeds
        inputs = {"inputs_embeds": inputs_embeds, **{k: v for k, v in inputs.items() if k in kept}}
    with recording(adapter, stop_after) as (resid, layer_kwargs):
        try:
            out = adapter.model(**inputs, use_cache=False)
            logits = out.logits
        except _Stop:
            logits = None
    last = stop_after if stop_after is not None else adapter.n_layers
    return Trace(resid=list(resid[: last + 1]), layer_kwargs=_fill_unreached(adapter, layer_kwargs), logits=logits)


def _fill_unreached(adapter: ModelAdapter, layer_kwargs: list[dict | None]) -> list[dict]:
    """After an early stop, layers never called take the arguments of the last called layer of the same attention
    type (full or sliding window): masks and rotary tables depend on the type, not on the layer."""
    layers = adapter.decoder_layers
    filled = list(layer_kwargs)
    for index, kwargs in enumerate(filled):
        if kwargs is None:
            kind = getattr(layers[index], "attention_type", None)
            donors = [j for j in range(index) if filled[j] is not None
                      and getattr(layers[j], "attention_type", None) == kind]
            filled[index] = filled[donors[-1]] if donors else None
    return filled


def select_rows(kwargs: dict, rows: torch.Tensor) -> dict:
    """Index the batch dimension of recorded layer arguments (masks, rotary tables) by `rows`."""
    def pick(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] > 1:
            return value[rows]
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 1:
            return value.expand(len(rows), *value.shape[1:])
        if isinstance(value, tuple):
            return tuple(pick(v) for v in value)
        return value
    return {k: pick(v) for k, v in kwargs.items()}


def resume(adapter: ModelAdapter, trace: Trace, start: int, hidden: torch.Tensor, stop: int | None = None,
           rows: torch.Tensor | None = None) -> torch.Tensor:
    """Run decoder layers `start..stop-1` on `hidden` (= a replacement for `resid[start]`) with the traced
    arguments; returns the residual at `stop` (default: the last layer, un-normed). `rows` maps each row of
    `hidden` to a row of the traced batch (several patched copies of one item can share it)."""
    stop = adapter.n_layers if stop is None else stop
    for index in range(start, stop):
        kwargs = trace.layer_kwargs[index]
        if rows is not None:
            kwargs = select_rows(kwargs, rows)
        hidden = _hidden(adapter.decoder_layers[index](hidden, **kwargs))
    return hidden


def lens(adapter: ModelAdapter, resid: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logit lens: the final norm applied to this residual itself, then the LM head, restricted to `token_ids`
    (rows of the head only, never the whole vocabulary). resid (..., d_model) -> logits (..., n_tokens)."""
    normed = adapter.final_norm(resid)
    head = adapter.lm_head
    if token_ids is None:
        return head(normed)
    weight = head.weight[token_ids]
    bias = head.bias[token_ids] if getattr(head, "bias", None) is not None else None
    out = normed.to(weight.dtype) @ weight.T
    return out + bias if bias is not None else out
