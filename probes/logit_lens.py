"""Logit lens: where is the audio-vs-text conflict resolved?

For every item and every residual layer l (0 = embeddings ... n_layers = last decoder layer), the model's final
norm is applied to that layer's own residual at the answer position and the LM head is read on the label tokens
only. A *reading* pairs an item with an asserted emotion T != A and reports

    delta[l] = logit_l(T) - logit_l(A)

for the conflict item (text says T), the consistent item (text says A) and the audio-only item of the same clip,
so the three curves share T and A. Items of one clip are not independent: intervals come from a cluster bootstrap
over clips.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from common.stats import UNIT_CLIP, cluster_bootstrap_mean
from models.adapter import ModelAdapter
from models.forward import lens, run_traced
from probes.inputs import ProbeSet
from stimuli import spec
from stimuli.conditions import Item

CONDITIONS = ("conflict", "consistent", "audio_only")


@dataclass
class LensConfig:
    batch_size: int = 16  # items per forward pass
    n_boot: int = 1000  # cluster-bootstrap resamples
    seed: int = 0


@dataclass
class LensResult:
    n_layers: int
    label_logits: dict[str, np.ndarray]  # item id -> (n_layers + 1, n_emotions) lens logits at the answer
    final_logits: dict[str, np.ndarray]  # item id -> (n_emotions,) the model's own logits at the answer
    top1_is_label: dict[str, bool]  # item id -> the top-1 token of the whole vocabulary is a label token
    label_mass: dict[str, float]  # item id -> softmax probability on the language's label tokens (0..1)
    readings: list[dict]  # one per (clip, T, condition): ids, A, T, intensity, "delta": list over layers
    summary: dict = field(default_factory=dict)  # lang -> condition -> curve, interval, critical layer


@dataclass
class AnswerReadout:
    """What the forward passes of `read_items` give per item id (see there)."""

    per_layer: dict[str, np.ndarray]  # (n_layers + 1, n_emotions) lens logits of the label tokens at the answer
    final: dict[str, np.ndarray]  # (n_emotions,) the model's own label logits at the answer
    top1_is_label: dict[str, bool]
    label_mass: dict[str, float]


@torch.no_grad()
def read_items(adapter: ModelAdapter, probe_set: ProbeSet, items: list[Item], batch_size: int,
               tick: Callable[[int], None] | None = None) -> AnswerReadout:
    """Per item: lens logits of its language's label tokens at every layer, the model's own label logits, whether
    the top-1 token of the full vocabulary is one of those label tokens, and the softmax mass on them (0..1)."""
    emotions = spec.emotions()
    out = AnswerReadout({}, {}, {}, {})
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = adapter.build_batch([probe_set.wave(i.clip_id) for i in chunk], [probe_set.prompt(i) for i in chunk])
        answers = batch.answer_positions()
        trace = run_traced(adapter, batch, logits_at=answers)
        rows = torch.arange(len(chunk), device=answers.device)
        resid = torch.stack([r[rows, answers] for r in trace.resid])  # (n_layers + 1, batch, d_model)
        # each row's own label words (its language's), read for the whole chunk at once: one copy off the device
        ids = torch.tensor([[probe_set.label_ids[item.lang][e] for e in emotions] for item in chunk],
                           device=resid.device)  # (batch, n_emotions)
        unique, inverse = torch.unique(ids, return_inverse=True)
        lensed = lens(adapter, resid, unique)  # (n_layers + 1, batch, n_unique)
        lensed = lensed.gather(2, inverse.unsqueeze(0).expand(lensed.shape[0], -1, -1)).float().cpu().numpy()
        vocab = trace.logits.float()  # (batch, vocab) the model's logits at the answer
        own = vocab.gather(1, ids).cpu().numpy()  # (batch, n_emotions)
        top1 = (vocab.argmax(dim=1, keepdim=True) == ids).any(dim=1).cpu().numpy()
        mass = vocab.softmax(dim=1).gather(1, ids).sum(dim=1).cpu().numpy()
        for j, item in enumerate(chunk):
            out.per_layer[item.item_id] = lensed[:, j]
            out.final[item.item_id] = own[j]
            out.top1_is_label[item.item_id] = bool(top1[j])
            out.label_mass[item.item_id] = float(mass[j])
        if tick:
            tick(len(chunk))
    return out


def label_logits(adapter: ModelAdapter, probe_set: ProbeSet, items: list[Item], batch_size: int,
                 tick: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Lens logits of the label tokens at every layer, and the model's own label logits, per item id."""
    readout = read_items(adapter, probe_set, items, batch_size, tick)
    return readout.per_layer, readout.final


def readings(items: list[Item], logits: dict[str, np.ndarray]) -> list[dict]:
    """delta = logit(T) - logit(A) per layer for the conflict, consistent and audio-only item of each (clip, T)."""
    index = {e: i for i, e in enumerate(spec.emotions())}
    by_clip: dict[str, dict[str, Item]] = {}
    for item in items:
        by_clip.setdefault(item.clip_id, {})[f"{item.condition}/{item.text_emotion}"] = item
    rows = []
    for clip_id, group in by_clip.items():
        for key, conflict in group.items():
            if not key.startswith("conflict/"):
                continue
            a, t = conflict.audio_emotion, conflict.text_emotion
            partners = {"conflict": conflict, "consistent": group.get(f"consistent/{a}"),
                        "audio_only": group.get("audio_only/None")}
            for condition, item in partners.items():
                if item is None:
                    continue
                curve = logits[item.item_id][:, index[t]] - logits[item.item_id][:, index[a]]
                rows.append(dict(item_id=item.item_id, clip_id=clip_id, lang=item.lang, condition=condition,
                                 audio_emotion=a, text_emotion=t, intensity=item.intensity,
                                 delta=[round(float(v), 5) for v in curve]))
    return rows


def critical_layer(curve: np.ndarray) -> int:
    """The residual layer l (1..n) with the largest absolute first difference |delta[l] - delta[l-1]|."""
    return int(np.argmax(np.abs(np.diff(curve)))) + 1


def largest_rise(curve: np.ndarray) -> int:
    """The residual layer l (1..n) with the largest rise toward T, delta[l] - delta[l-1] (the takeover by the
    text). Unlike `critical_layer` it ignores the voice's emotion arriving early (a fall), which on a model that
    hears the voice at the answer position from layer 1 is the largest absolute change."""
    return int(np.argmax(np.diff(curve))) + 1


def sign_settles(curve: np.ndarray) -> int:
    """The first layer from which the sign of delta stays that of the last layer."""
    final = np.sign(curve[-1])
    layer = len(curve) - 1
    while layer > 0 and np.sign(curve[layer - 1]) == final:
        layer -= 1
    return layer


def summarize(rows: list[dict], n_boot: int, seed: int) -> dict:
    """Per language and condition: mean delta per layer with a 95% cluster-bootstrap interval (clips resampled),
    the critical layer of the mean curve, and the mean per-reading critical layer with its interval."""
    summary: dict = {}
    for lang in sorted({r["lang"] for r in rows}):
        summary[lang] = {}
        for condition in CONDITIONS:
            sub = [r for r in rows if r["lang"] == lang and r["condition"] == condition]
            if not sub:
                continue
            curves = np.array([r["delta"] for r in sub])
            clusters = [r["clip_id"] for r in sub]
            mean, low, high = cluster_bootstrap_mean(curves, clusters, n_boot=n_boot, seed=seed)
            per_item = np.array([[critical_layer(c), sign_settles(c)] for c in curves], dtype=float)
            crit_mean, crit_low, crit_high = cluster_bootstrap_mean(per_item, clusters, n_boot=n_boot, seed=seed)
            summary[lang][condition] = dict(
                n_readings=len(sub), n_clips=len(set(clusters)), unit=UNIT_CLIP,
                mean=mean.round(4).tolist(), low=low.round(4).tolist(), high=high.round(4).tolist(),
                critical_layer=critical_layer(mean), largest_rise=largest_rise(mean),
                sign_settles=sign_settles(mean),
                critical_layer_items=dict(mean=round(float(crit_mean[0]), 2), low=round(float(crit_low[0]), 2),
                                          high=round(float(crit_high[0]), 2)),
                sign_settles_items=dict(mean=round(float(crit_mean[1]), 2), low=round(float(crit_low[1]), 2),
                                        high=round(float(crit_high[1]), 2)),
            )
    summary["interval_note"] = ("95% intervals from a cluster bootstrap that resamples clips, not items: the items "
                                "of one clip share its audio and are not independent")
    return summary


def run(adapter: ModelAdapter, probe_set: ProbeSet, config: LensConfig,
        tick: Callable[[int], None] | None = None) -> LensResult:
    """The logit lens over every item of `probe_set`; see the module docstring. `tick(n)` reports n items done."""
    readout = read_items(adapter, probe_set, probe_set.items, config.batch_size, tick)
    rows = readings(probe_set.items, readout.per_layer)
    return LensResult(n_layers=adapter.n_layers, label_logits=readout.per_layer, final_logits=readout.final,
                      top1_is_label=readout.top1_is_label, label_mass=readout.label_mass, readings=rows,
                      summary=summarize(rows, config.n_boot, config.seed))
