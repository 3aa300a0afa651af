"""Activation patching: who is causally dominant, the text or the audio?

Patch Text at layer l: receiver = the consistent item (audio A, text says A), donor = the conflict item of the
same clip (audio A, text says T); the donor's residual over the instruction span (or only the claim-word tokens)
replaces the receiver's at layer l. Patch Audio at layer l: receiver as before, donor = a clip of emotion T (same
language, same intensity where it exists) under the same text (says A); the audio span is replaced. Either way we
read whether the answer flips to T, and the normalized effect (LD_patched - LD_receiver) / (LD_donor - LD_receiver)
with LD = logit(T) - logit(A), computed per pair and then aggregated. Patch Audio with an audio-only receiver (kind
"audio_only"): receiver = the audio-only item of a clip of voice A (no claim in the text), donor = the audio-only
item of a clip of emotion T (same language and sentence, same intensity where it exists), audio span replaced: up to
which layer does the voice alone still move the answer? Flip rates are clustered on the receiver's clip.

Speed: the clean runs of receivers and donors are traced once; patching at layer l resumes the forward from layer
l with the traced masks and rotary tables instead of recomputing layers 0..l-1, and all layers of a sweep share one
growing batch (rows join at their own layer). `naive=True` runs one full forward per layer with a hook instead
(the reference the bench and the tests compare against).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from common.errors import ModalflipError
from common.stats import UNIT_CLIP, cluster_bootstrap_mean, clustered_rates
from models.adapter import Batch, ModelAdapter, Spans, check_aligned
from models.forward import resume_suffix, run_traced
from probes.inputs import ProbeSet
from stimuli import spec
from stimuli.conditions import Item

KINDS = ("text", "audio", "audio_only")
KIND_NAMES = {"text": "Patch Text", "audio": "Patch Audio", "audio_only": "Patch Audio, audio-only receiver"}


@dataclass
class PatchConfig:
    text_mode: str = "instruction"  # "instruction": the whole instruction span; "claim": the asserted word only
    window: int = 1  # patch layers l..l+window-1 (1 = single layer)
    layers: list[int] | None = None  # residual layers to patch, sorted and deduplicated; default 0..n_layers-1
    batch_pairs: int = 8  # pairs traced together; a sweep holds batch_pairs x len(layers) rows
    naive: bool = False  # one full forward per layer (reference implementation)
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.layers is not None:
            self.layers = sorted({int(layer) for layer in self.layers})


@dataclass(frozen=True)
class Pair:
    kind: str  # "text" | "audio" | "audio_only"
    receiver: Item
    donor: Item
    audio_emotion: str  # A
    text_emotion: str  # T: the emotion a flip moves to


@dataclass
class PatchResult:
    layers: list[int]
    pairs: list[dict]  # per pair: ids, A, T, LD receiver/donor, per layer: LD patched, flipped, effect
    summary: dict = field(default_factory=dict)


MIN_DENOMINATOR = 0.1  # pairs whose donor and receiver LD differ less than this have no normalized effect


def normalized_effect(ld_patched: np.ndarray, ld_receiver: float, ld_donor: float) -> np.ndarray:
    """(LD_patched - LD_receiver) / (LD_donor - LD_receiver) per layer; NaN everywhere when the donor and receiver
    differ by less than `MIN_DENOMINATOR` (the ratio would only amplify noise)."""
    ld_patched = np.asarray(ld_patched, dtype=float)
    denominator = ld_donor - ld_receiver
    if abs(denominator) < MIN_DENOMINATOR:
        return np.full(ld_patched.shape, np.nan)
    return (ld_patched - ld_receiver) / denominator


def make_pairs(items: list[Item]) -> list[Pair]:
    """Text and audio pairs from the conflict and consistent items of a stimulus set, and audio pairs between its
    audio-only items (see module docstring)."""
    by_key = {(i.clip_id, i.condition, i.text_emotion): i for i in items}
    clips = {i.clip_id: i for i in items if i.condition == "consistent"}
    alone = {i.clip_id: i for i in items if i.condition == "audio_only"}
    pairs = []
    for clip_id, receiver in clips.items():
        a = receiver.audio_emotion
        for t in spec.emotions():
            if t == a:
                continue
            donor = by_key.get((clip_id, "conflict", t))
            if donor is not None:
                pairs.append(Pair("text", receiver, donor, a, t))
            audio_donor = _audio_donor(list(clips.values()), receiver, t)
            if audio_donor is not None:
                donor = by_key.get((audio_donor.clip_id, "conflict", a))
                if donor is not None:
                    pairs.append(Pair("audio", receiver, donor, a, t))
    for receiver in alone.values():
        for t in spec.emotions():
            donor = _audio_donor(list(alone.values()), receiver, t) if t != receiver.audio_emotion else None
            if donor is not None:
                pairs.append(Pair("audio_only", receiver, donor, receiver.audio_emotion, t))
    return pairs


def _audio_donor(candidates: list[Item], receiver: Item, emotion: str) -> Item | None:
    """The item among `candidates` whose clip has `emotion`, in the receiver's language and sentence, preferring the
    receiver's intensity."""
    options = [i for i in candidates if i.audio_emotion == emotion and i.lang == receiver.lang
               and i.sentence == receiver.sentence]
    same = [i for i in options if i.intensity == receiver.intensity]
    return (same or options or [None])[0]


def _positions(spans: Spans, kind: str, text_mode: str) -> slice:
    if kind in ("audio", "audio_only"):
        return spans.audio
    if text_mode == "claim":
        if spans.claim is None:
            raise ModalflipError("claim-word patching needs items whose instruction asserts an emotion")
        return spans.claim
    return spans.instruction


def _masks(receiver: Batch, donor: Batch, kind: str, text_mode: str, receivers: list[Item],
           donors: list[Item]) -> torch.Tensor:
    """(pairs, seq) boolean mask of the positions to copy; refuses misaligned pairs with a message."""
    seq = receiver.inputs["input_ids"].shape[1]
    if donor.inputs["input_ids"].shape[1] != seq:
        raise ModalflipError(
            "donor and receiver batches differ in length: pad clips to one duration (the default; do not pass "
            "--no-pad) so that audio spans align")
    mask = torch.zeros(len(receivers), seq, dtype=torch.bool, device=receiver.inputs["input_ids"].device)
    for row, (r_spans, d_spans) in enumerate(zip(receiver.spans, donor.spans)):
        check_aligned(r_spans, d_spans, f"donor {donors[row].item_id} and receiver {receivers[row].item_id}")
        mask[row, _positions(r_spans, kind, text_mode)] = True
    return mask


@torch.no_grad()
def patched_label_logits(adapter: ModelAdapter, probe_set: ProbeSet, pairs: list[Pair], layers: list[int],
                         config: PatchConfig, tick: Callable[[int], None] | None = None) -> np.ndarray:
    """Label logits at the answer after patching, (pairs, len(layers), n_emotions); all pairs of one kind. Column j
    is `layers[j]`, whatever the order of `layers` (repeats are computed once)."""
    emotions = spec.emotions()
    swept = sorted(set(layers))
    out = np.zeros((len(pairs), len(swept), len(emotions)), dtype=np.float32)
    for start in range(0, len(pairs), config.batch_pairs):
        chunk = pairs[start:start + config.batch_pairs]
        receivers = [p.receiver for p in chunk]
        donors = [p.donor for p in chunk]
        r_batch = adapter.build_batch([probe_set.wave(i.clip_id) for i in receivers],
                                      [probe_set.prompt(i) for i in receivers])
        d_batch = adapter.build_batch([probe_set.wave(i.clip_id) for i in donors],
                                      [probe_set.prompt(i) for i in donors])
        mask = _masks(r_batch, d_batch, chunk[0].kind, config.text_mode, receivers, donors)
        ids = torch.tensor([[probe_set.label_ids[p.receiver.lang][e] for e in emotions] for p in chunk],
                           device=adapter.device)
        donor_trace = run_traced(adapter, d_batch)
        if config.naive:
            logits = _naive(adapter, r_batch, donor_trace.resid, mask, swept, config.window, ids)
        else:
            logits = _resumed(adapter, r_batch, donor_trace.resid, mask, swept, config.window, ids)
        out[start:start + len(chunk)] = logits.float().cpu().numpy()
        if tick:
            tick(len(chunk))
    return out[:, [swept.index(layer) for layer in layers]]


def _label_readout(adapter, final: torch.Tensor, answers: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor):
    """Final norm + head on the label rows of each pair's language: (rows, n_emotions)."""
    resid = final[torch.arange(len(rows), device=final.device), answers[rows]]
    normed = adapter.final_norm(resid)
    weight = adapter.lm_head.weight[ids[rows]]  # (rows, n_emotions, d_model)
    return torch.einsum("rd,red->re", normed.to(weight.dtype), weight)


def _resumed(adapter, r_batch, donor_resid, mask, layers, window, ids) -> torch.Tensor:
    """The batched, resumed sweep over `layers` (sorted, no repeats): rows patched at layer l join the running
    batch at l. Positions before the first patched one are the receiver's clean ones at every layer, so only the
    suffix from there is recomputed, on the clean run's keys and values of the prefix (`resume_suffix`; the whole
    sequence where the family cannot, then `trace.prefix` is 0)."""
    first = int(mask.float().argmax(dim=1).min())
    trace = run_traced(adapter, r_batch, kv_prefix=first)
    first = trace.prefix
    mask = mask[:, first:]
    n_pairs = mask.shape[0]
    answers = r_batch.answer_positions() - first
    hidden, rows, starts = None, [], []
    for index in range(min(layers), adapter.n_layers):
        if index in layers:
            new = torch.where(mask[..., None], donor_resid[index][:, first:], trace.resid[index][:, first:])
            hidden = new if hidden is None else torch.cat([hidden, new])
            rows += list(range(n_pairs))
            starts += [index] * n_pairs
        row_ids = torch.tensor(rows, device=mask.device)
        if window > 1:
            active = torch.tensor([s < index < s + window for s in starts], device=mask.device)
            if active.any():
                repatch = active[:, None, None] & mask[row_ids][..., None]
                hidden = torch.where(repatch, donor_resid[index][row_ids][:, first:], hidden)
        hidden = resume_suffix(adapter, trace, index, hidden, stop=index + 1, rows=row_ids)
    readout = _label_readout(adapter, hidden, answers, row_ids, ids)  # (layers * pairs, n_emotions)
    return readout.reshape(len(layers), n_pairs, -1).transpose(0, 1)


def _naive(adapter, r_batch, donor_resid, mask, layers, window, ids) -> torch.Tensor:
    """One full forward per patched layer, the patch applied by a pre-hook on the decoder layers."""
    answers = r_batch.answer_positions()
    rows = torch.arange(mask.shape[0], device=mask.device)
    results = []
    for layer in layers:
        targets = set(range(layer, min(layer + window, adapter.n_layers)))
        handles = []
        for index in targets:
            def hook(module, args, kwargs, index=index):
                hidden = args[0] if args else kwargs["hidden_states"]
                patched = torch.where(mask[..., None], donor_resid[index], hidden)
                if args:
                    return (patched,) + tuple(args[1:]), kwargs
                return args, {**kwargs, "hidden_states": patched}
            handles.append(adapter.decoder_layers[index].register_forward_pre_hook(hook, with_kwargs=True))
        try:
            trace = run_traced(adapter, r_batch)
        finally:
            for handle in handles:
                handle.remove()
        results.append(_label_readout(adapter, trace.resid[-1], answers, rows, ids))
    return torch.stack(results, dim=1)


def run(adapter: ModelAdapter, probe_set: ProbeSet, final_logits: dict[str, np.ndarray],
        config: PatchConfig, tick: Callable[[int], None] | None = None) -> PatchResult:
    """Patch Text and Patch Audio sweeps (and Patch Audio on audio-only receivers) over `config.layers`;
    `final_logits` are the clean label logits per item (from the logit lens run) that give LD of receivers and
    donors. Flips read the label readout: the argmax over the five label tokens moves to T."""
    layers = config.layers if config.layers is not None else list(range(adapter.n_layers))
    for layer in layers:
        if not 0 <= layer < adapter.n_layers:
            adapter.check_layer(layer, "patch layer")
            raise ModalflipError(f"patch layer {layer}: patching resid[{adapter.n_layers}] cannot reach the answer; "
                                 f"use layers 0..{adapter.n_layers - 1}")
    pairs = make_pairs(probe_set.items)
    if not pairs:
        raise ModalflipError("no donor/receiver pairs: patching needs conflict and consistent items, or audio-only "
                             "items of clips of different emotions")
    index = {e: i for i, e in enumerate(spec.emotions())}
    rows: list[dict] = []
    for kind in KINDS:
        kind_pairs = [p for p in pairs if p.kind == kind]
        if not kind_pairs:
            continue
        logits = patched_label_logits(adapter, probe_set, kind_pairs, layers, config, tick)
        for pair, per_layer in zip(kind_pairs, logits):
            t, a = index[pair.text_emotion], index[pair.audio_emotion]
            ld_r = float(final_logits[pair.receiver.item_id][t] - final_logits[pair.receiver.item_id][a])
            ld_d = float(final_logits[pair.donor.item_id][t] - final_logits[pair.donor.item_id][a])
            ld_p = per_layer[:, t] - per_layer[:, a]
            effect = normalized_effect(ld_p, ld_r, ld_d)
            rows.append(dict(
                kind=kind, receiver=pair.receiver.item_id, donor=pair.donor.item_id, clip_id=pair.receiver.clip_id,
                lang=pair.receiver.lang, audio_emotion=pair.audio_emotion, text_emotion=pair.text_emotion,
                intensity=pair.receiver.intensity, ld_receiver=round(ld_r, 5), ld_donor=round(ld_d, 5),
                ld_patched=[round(float(v), 5) for v in ld_p],
                flipped=[bool(v) for v in per_layer.argmax(axis=1) == t],
                effect=[None if np.isnan(v) else round(float(v), 5) for v in effect],
            ))
    return PatchResult(layers=layers, pairs=rows, summary=summarize(rows, layers, config))


def summarize(rows: list[dict], layers: list[int], config: PatchConfig) -> dict:
    """Per language and kind, per layer: flip rate with its 95% cluster-bootstrap interval over the receivers'
    clips and the mean normalized effect with a cluster-bootstrap interval; plus the layer ranges where patching
    flips >= 50% of pairs."""
    summary: dict = {"layers": layers, "window": config.window, "text_mode": config.text_mode, "readout": "label",
                     "unit": UNIT_CLIP}
    for lang in sorted({r["lang"] for r in rows}):
        summary[lang] = {}
        for kind in KINDS:
            sub = [r for r in rows if r["lang"] == lang and r["kind"] == kind]
            if not sub:
                continue
            clips = [r["clip_id"] for r in sub]
            flips = np.array([r["flipped"] for r in sub], dtype=bool)
            intervals = clustered_rates(flips, clips, n_boot=config.n_boot, seed=config.seed)
            effects = np.array([[np.nan if v is None else v for v in r["effect"]] for r in sub], dtype=float)
            usable = ~np.isnan(effects).any(axis=1)
            if usable.any():
                mean, low, high = cluster_bootstrap_mean(effects[usable], [c for c, u in zip(clips, usable) if u],
                                                         n_boot=config.n_boot, seed=config.seed)
            else:
                mean = low = high = np.full(len(layers), np.nan)
            rate = flips.mean(axis=0)
            summary[lang][kind] = dict(
                n_pairs=len(sub), n_clips=len(set(clips)), unit=UNIT_CLIP, n_pairs_with_effect=int(usable.sum()),
                flip_rate=rate.round(4).tolist(), flip_low=[round(i.low, 4) for i in intervals],
                flip_high=[round(i.high, 4) for i in intervals], flip_interval=[i.method for i in intervals],
                effect=np.round(mean, 4).tolist(), effect_low=np.round(low, 4).tolist(),
                effect_high=np.round(high, 4).tolist(),
                flip_window=_ranges([layer for layer, r in zip(layers, rate) if r >= 0.5]),
            )
    summary["notes"] = ("flip rates and effects: 95% cluster bootstrap over the receivers' clips (Wilson over clips "
                        "where every clip has the same rate); effects are per-pair normalized effects averaged; "
                        f"pairs whose donor and receiver differ by < {MIN_DENOMINATOR} in LD have no normalized "
                        "effect; flips read the argmax over the label tokens")
    return summary


def _ranges(layers: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 6] -> [[0, 2], [5, 6]]."""
    out: list[list[int]] = []
    for layer in layers:
        if out and layer == out[-1][1] + 1:
            out[-1][1] = layer
        else:
            out.append([layer, layer])
    return out
