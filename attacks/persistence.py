"""Does the voice's emotion survive the middle layers? Layer-by-layer readouts of conflict items, clean vs
adversarial.

`read` runs the full model once per chunk of items and keeps, for every residual layer l (0 = embeddings ..
n_layers): the projection on the target emotion's direction at the audio span and at the answer position (class
gaps, `attacks.directions`), the linear probe's guess (nearest clean audio-only class mean) at both places, and the
logit lens over the label words at the answer position. `summarize` compares two readouts: per-layer means,
probe accuracies (share of items the probe reads as the target emotion) and the deepest layer where the target
emotion still separates, i.e. the probe at the answer position reads it on at least half of the items. On a flat
layer, where every class mean coincides, the probe reads nothing and its accuracy is None: no separation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from attacks.directions import POSITIONS, Directions, read_positions
from attacks.pgd import label_logits, label_table
from models.adapter import ModelAdapter
from models.forward import run_traced
from probes.inputs import ProbeSet
from stimuli.conditions import Item

SEPARATES = 0.5  # the probe must read the target emotion on at least this share of items


@dataclass
class Readout:
    """One forward over items. answers: the label with the highest final logit, per item (emotion names).
    lens: (items, n_layers + 1, n_emotions) label-word logits of the logit lens at the answer position.
    projection[pos], probe[pos]: (items, n_layers + 1) projection on the target's direction (class gaps) and the
    probe's emotion index (−1 on flat layers), for pos in `POSITIONS`."""

    answers: list[str]
    lens: np.ndarray
    projection: dict[str, np.ndarray]
    probe: dict[str, np.ndarray]


@torch.no_grad()
def read(adapter: ModelAdapter, inputs: ProbeSet, items: Sequence[Item], waves: Sequence[torch.Tensor],
         targets: Sequence[int], directions: Directions, batch_rows: int = 8) -> Readout:
    """Readout of `items` (prompts and label words from `inputs`) with audio `waves`, one per item (clean or
    attacked); targets: the target emotion's index per item."""
    label_ids = label_table(inputs, items)
    directions = directions.to(adapter.device)
    layers = range(adapter.n_layers + 1)
    lens_rows, projection, probe = [], {p: [] for p in POSITIONS}, {p: [] for p in POSITIONS}
    for begin in range(0, len(items), batch_rows):
        chunk = range(begin, min(begin + batch_rows, len(items)))
        batch = adapter.build_batch([waves[i] for i in chunk], [inputs.prompt(items[i]) for i in chunk])
        trace = run_traced(adapter, batch)
        rows = torch.tensor([targets[i] for i in chunk], device=trace.resid[0].device)
        per_layer = {"lens": [], **{f"z_{p}": [] for p in POSITIONS}, **{f"p_{p}": [] for p in POSITIONS}}
        for layer in layers:
            read_at = {pos: value.float() for pos, value in read_positions(adapter, batch, trace.resid, layer).items()}
            per_layer["lens"].append(label_logits(adapter, read_at["answer"], label_ids[list(chunk)]).float())
            for pos in POSITIONS:
                per_layer[f"z_{pos}"].append(directions.project(pos, layer, read_at[pos], rows))
                per_layer[f"p_{pos}"].append(directions.probe(pos, layer, read_at[pos]))
        lens_rows.append(torch.stack(per_layer["lens"], 1).cpu())
        for pos in POSITIONS:
            projection[pos].append(torch.stack(per_layer[f"z_{pos}"], 1).cpu())
            probe[pos].append(torch.stack(per_layer[f"p_{pos}"], 1).cpu())
    lens_all = torch.cat(lens_rows).numpy()
    answers = [directions.emotions[int(i)] for i in lens_all[:, -1].argmax(-1)]
    return Readout(answers=answers, lens=lens_all,
                   projection={p: torch.cat(projection[p]).numpy() for p in POSITIONS},
                   probe={p: torch.cat(probe[p]).numpy() for p in POSITIONS})


def deepest_separating(accuracy: Sequence[float | None]) -> int | None:
    """The deepest layer whose probe accuracy is at least `SEPARATES` (None, a flat layer, never is); None if no
    layer is."""
    layers = [layer for layer, value in enumerate(accuracy) if value is not None and value >= SEPARATES]
    return layers[-1] if layers else None


def probe_accuracy(probe: np.ndarray, targets: np.ndarray) -> list[float | None]:
    """Per layer, the share of items the probe reads as their target; None where it reads nothing (flat layer)."""
    return [None if bool((column < 0).all()) else float((column == targets[:, 0]).mean()) for column in probe.T]


def summarize(clean: Readout, adversarial: Readout, targets: Sequence[int], window: tuple[int, int]) -> dict:
    """Per-layer persistence, clean vs adversarial: mean projections (class gaps), probe accuracies (share of
    items read as the target; None on flat layers), the deepest separating layer of each, and whether the
    adversarial one is deeper."""
    targets = np.asarray(targets)[:, None]
    out: dict = {"layers": list(range(clean.lens.shape[1])), "window": list(window), "separates_at": SEPARATES}
    for pos in POSITIONS:
        out[f"projection_{pos}"] = {"clean": clean.projection[pos].mean(0).tolist(),
                                    "adversarial": adversarial.projection[pos].mean(0).tolist()}
        out[f"probe_accuracy_{pos}"] = {"clean": probe_accuracy(clean.probe[pos], targets),
                                        "adversarial": probe_accuracy(adversarial.probe[pos], targets)}
    deepest = {name: deepest_separating(out["probe_accuracy_answer"][name]) for name in ("clean", "adversarial")}
    out["deepest_separating_layer"] = deepest
    out["survives_further"] = (deepest["adversarial"] if deepest["adversarial"] is not None else -1) > \
        (deepest["clean"] if deepest["clean"] is not None else -1)
    return out


def delta_logit(readout: Readout, text: Sequence[int], voice: Sequence[int]) -> np.ndarray:
    """Δlogit = logit(T) − logit(A): the lens logit of the text's label minus the voice's, per item and layer
    (items, n_layers + 1), in logits. Positive: the text leads; an attack that works lowers it."""
    rows = np.arange(len(voice))
    return readout.lens[rows, :, np.asarray(text)] - readout.lens[rows, :, np.asarray(voice)]
