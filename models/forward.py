"""The one hook helper: record the residual stream, stop early, and resume a forward from any layer.

HF's forward owns the layer loop, so modalflip records what it passes to each decoder layer (causal mask, rotary
position embeddings, position ids) during a traced run, and replays layers `start..stop-1` on any hidden state
with those same arguments. Patching at layer l = replace `resid[l]` and resume from l, without recomputing
layers 0..l-1.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from models.adapter import Batch, ModelAdapter


@dataclass
class Trace:
    """A traced forward. `resid[l][batch, pos, d_model]` for l = 0..n_layers (0 = embeddings, l = output of
    decoder layer l-1, un-normed); `layer_kwargs[i]` is what decoder layer i was called with."""

    resid: list[torch.Tensor]
    layer_kwargs: list[dict]
    logits: torch.Tensor | None  # (batch, vocab) at the asked positions (`run_traced(logits_at=...)`), else None
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, keys/values of positions < prefix
    prefix: int = 0


CACHE_ARGS = ("cache", "past_key_values")  # the decoder layers' cache argument, by transformers version


class _CaptureKV:
    """Stands in for HF's cache in a traced run: keeps each layer's keys and values of the first `prefix`
    positions (after the rotary embedding) and hands the states back unchanged."""

    def __init__(self, store: dict, layer: int, prefix: int):
        self.store, self.layer, self.prefix = store, layer, prefix

    def update(self, key_states, value_states, *args, **kwargs):
        self.store[self.layer] = (key_states[..., : self.prefix, :], value_states[..., : self.prefix, :])
        return key_states, value_states


class _PrefixKV:
    """Stands in for HF's cache in a resumed suffix: prepends the clean run's prefix keys and values."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class _Stop(Exception):
    pass


def _hidden(output):
    """Decoder layers return a tensor or a tuple whose first element is the hidden state, by version."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def recording(adapter: ModelAdapter, stop_after: int | None = None, kv_prefix: int = 0):
    """Hooks that fill `resid` and `layer_kwargs` during a forward; with `stop_after = l` the forward is cut
    right after `resid[l]` is recorded (early exit: the with block ends there, no exception escapes it; with
    `stop_after = n_layers` the final norm and LM head do not run). With `kv_prefix = p` each layer's keys and
    values of the first p positions are kept too (yielded third, by layer index), for `resume_suffix`."""
    layers = adapter.decoder_layers
    resid: list[torch.Tensor | None] = [None] * (len(layers) + 1)
    layer_kwargs: list[dict | None] = [None] * len(layers)
    prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []

    def pre_hook(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                resid[0] = hidden
            layer_kwargs[index] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if stop_after is not None and index >= stop_after:
                raise _Stop
            cache_arg = next((name for name in CACHE_ARGS if name in kwargs), None)
            if kv_prefix and cache_arg and kwargs[cache_arg] is None:
                return args, {**kwargs, cache_arg: _CaptureKV(prefix_kv, index, kv_prefix)}
            return None
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
        yield resid, layer_kwargs, prefix_kv
    except _Stop:
        pass  # the early exit asked for
    finally:
        for handle in handles:
            handle.remove()


def run_traced(adapter: ModelAdapter, batch: Batch, stop_after: int | None = None,
               inputs_embeds: torch.Tensor | None = None, kv_prefix: int = 0,
               logits_at: torch.Tensor | None = None) -> Trace:
    """One forward with every residual recorded. The forward always stops after the last decoder layer it needs
    (`stop_after = l`: after `resid[l]`; default: after the last layer), so the model's final norm and LM head never
    run on every position. `logits_at[row]` (a position per row) asks for the logits there: `Trace.logits[row,
    vocab]`, the final norm and head applied to those rows of `resid[-1]` only (what the model's own head gives
    there; the load-time self-check holds every family to it); without it `Trace.logits` is None.
    `inputs_embeds` (audio already merged) replaces the token ids and features when given. `kv_prefix = p` also
    keeps every layer's keys and values of positions < p, so that `resume_suffix` can recompute only positions
    >= p (where the model's layers take no cache argument, nothing is kept and `Trace.prefix` stays 0)."""
    last = stop_after if stop_after is not None else adapter.n_layers
    if logits_at is not None and last != adapter.n_layers:
        raise ValueError(f"logits_at needs the whole forward; stop_after={stop_after} stops before the last layer")
    inputs = dict(batch.inputs)
    if inputs_embeds is not None:
        kept = ("attention_mask", "position_ids")  # explicit rope positions (mrope families) stay with the embeds
        inputs = {"inputs_embeds": inputs_embeds, **{k: v for k, v in inputs.items() if k in kept}}
    kv_prefix = kv_prefix if kv_prefix and suffix_supported(adapter) else 0
    with recording(adapter, last, kv_prefix) as (resid, layer_kwargs, kv):
        adapter.model(**inputs, use_cache=False)
    logits = None
    if logits_at is not None:
        rows = torch.arange(len(logits_at), device=resid[last].device)
        logits = lens(adapter, resid[last][rows, logits_at.to(rows.device)])  # (batch, vocab)
    complete = len(kv) == last and kv_prefix > 0
    return Trace(resid=list(resid[: last + 1]), layer_kwargs=_fill_unreached(adapter, layer_kwargs), logits=logits,
                 prefix_kv=[kv[i] for i in range(last)] if complete else None, prefix=kv_prefix if complete else 0)


def _attention_config(adapter: ModelAdapter):
    """The config the decoder layers' attention reads (its `_attn_implementation`), or None."""
    return getattr(getattr(adapter.decoder_layers[0], "self_attn", None), "config", None)


def suffix_supported(adapter: ModelAdapter) -> bool:
    """Suffix resumes need an attention mask they can cut or build: eager or SDPA attention. A sliding-window layer's
    traced mask is a tensor whenever the window cuts anything, and cut rows of it stay exact; where the run passed
    none, the window covered every position and the causal mask built in its place is the same."""
    config = _attention_config(adapter)
    return config is not None and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")


def _fill_unreached(adapter: ModelAdapter, layer_kwargs: list[dict | None]) -> list[dict | None]:
    """After an early stop, layers never called take the arguments of the last called layer of the same attention
    type (full or sliding window): masks and rotary tables depend on the type, not on the layer. A layer whose type
    no called layer has keeps None (`resume` refuses it)."""
    kinds = [attention_kind(layer) for layer in adapter.decoder_layers]
    filled = list(layer_kwargs)
    for index, kwargs in enumerate(filled):
        if kwargs is None:
            donors = [j for j in range(index) if filled[j] is not None and kinds[j] == kinds[index]]
            filled[index] = filled[donors[-1]] if donors else None
    return filled


def attention_kind(layer: torch.nn.Module) -> str | None:
    """A decoder layer's attention type ("full_attention", "sliding_attention", ...): the layer's `attention_type`
    or its attention module's `layer_type`, by family; None where the family has one kind only."""
    for owner, name in ((layer, "attention_type"), (layer, "layer_type"),
                        (getattr(layer, "self_attn", None), "layer_type")):
        kind = getattr(owner, name, None)
        if kind is not None:
            return kind
    return None


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
        kwargs = _traced_kwargs(adapter, trace, index)
        if rows is not None:
            kwargs = select_rows(kwargs, rows)
        hidden = _hidden(adapter.decoder_layers[index](hidden, **kwargs))
    return hidden


def _traced_kwargs(adapter: ModelAdapter, trace: Trace, index: int) -> dict:
    kwargs = trace.layer_kwargs[index]
    if kwargs is None:
        raise ValueError(f"decoder layer {index} ({attention_kind(adapter.decoder_layers[index])}) was not reached "
                         "by this early-stopped trace and no reached layer has its attention type; trace further")
    return kwargs


def resume_suffix(adapter: ModelAdapter, trace: Trace, start: int, hidden: torch.Tensor, stop: int | None = None,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """`resume` for positions >= `trace.prefix` only: `hidden` is (rows, seq - prefix, d_model), and the keys and
    values of the unchanged prefix come from the traced run. Exact when nothing before `trace.prefix` differs from
    the traced run (a patch that starts there); returns the suffix's residual at `stop`. A trace without a prefix
    (`trace.prefix == 0`) makes this the plain `resume`."""
    if not trace.prefix:
        return resume(adapter, trace, start, hidden, stop, rows)
    stop = adapter.n_layers if stop is None else stop
    for index in range(start, stop):
        kwargs = _traced_kwargs(adapter, trace, index)
        keys, values = trace.prefix_kv[index]
        if rows is not None:
            kwargs = select_rows(kwargs, rows)
            keys, values = keys[rows], values[rows]
        kwargs = _suffix_kwargs(kwargs, trace.prefix, hidden, _PrefixKV(keys, values), _eager(adapter))
        hidden = _hidden(adapter.decoder_layers[index](hidden, **kwargs))
    return hidden


def _eager(adapter: ModelAdapter) -> bool:
    return _attention_config(adapter)._attn_implementation == "eager"


def _suffix_kwargs(kwargs: dict, prefix: int, hidden: torch.Tensor, cache: _PrefixKV, eager: bool) -> dict:
    """Layer arguments for the positions >= prefix: rotary tables, position ids and mask rows cut to the suffix; a
    causal mask built (in the layer's own format) where the traced run passed none."""
    out = dict(kwargs)
    if out.get("position_embeddings") is not None:
        out["position_embeddings"] = tuple(t[..., prefix:, :] for t in out["position_embeddings"])
    for name in ("position_ids", "cache_position"):
        if isinstance(out.get(name), torch.Tensor):
            out[name] = out[name][..., prefix:]
    mask = out.get("attention_mask")
    length = prefix + hidden.shape[1]
    if isinstance(mask, torch.Tensor):
        out["attention_mask"] = mask[..., prefix:, :]
    else:
        queries = torch.arange(prefix, length, device=hidden.device)[:, None]
        allowed = torch.arange(length, device=hidden.device)[None, None, None, :] <= queries
        blocked = torch.tensor(torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        out["attention_mask"] = torch.where(allowed, torch.zeros_like(blocked), blocked) if eager else allowed
    cache_arg = next((name for name in CACHE_ARGS if name in out), CACHE_ARGS[0])
    out[cache_arg] = cache
    return out


def lens(adapter: ModelAdapter, resid: torch.Tensor, token_ids: torch.Tensor | Sequence[int] | None = None
         ) -> torch.Tensor:
    """Logit lens: the final norm applied to this residual itself, then the LM head, restricted to `token_ids`
    (rows of the head only, never the whole vocabulary; a tensor on any device or a list of ids).
    resid (..., d_model) -> logits (..., n_tokens)."""
    normed = adapter.final_norm(resid)
    head = adapter.lm_head
    if token_ids is None:
        return head(normed)
    token_ids = torch.as_tensor(token_ids, device=head.weight.device)
    weight = head.weight[token_ids]
    bias = head.bias[token_ids] if getattr(head, "bias", None) is not None else None
    out = normed.to(weight.dtype) @ weight.T
    return out + bias if bias is not None else out
