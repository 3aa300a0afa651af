"""Emotion directions per layer, learnt from clean audio-only runs: differences of class means, cached on disk.

For every clean audio-only item, the residual stream is read at two places (`POSITIONS`): the mean over the audio
span, and the answer position. Per layer l (0 = embeddings .. n_layers) and emotion E, `means[pos][E, l]` is the
mean over items whose voice expresses E. The direction of E is the unit vector along μ_E − mean_{k≠E} μ_k, and
its length (the class gap) is the unit of `project`: a projection of 1 means one class gap towards E, measured
from the centre (the mean of the class means). The same class means make a linear probe: the nearest class mean.

The class means depend on the weights and the clips, so the cache key hashes the model config, a fingerprint of
the weights, the stimulus spec and the bytes of every WAV used.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from common.atomic import atomic_write_with
from common.errors import ModalflipError
from models.adapter import Batch, ModelAdapter
from models.forward import run_traced
from models.loading import model_hash
from probes.inputs import load_probe_set
from stimuli import spec
from stimuli.conditions import Item

POSITIONS = ("audio", "answer")
CACHE_VERSION = 1


@dataclass
class Directions:
    """Class means of clean audio-only residuals. means[pos]: (n_emotions, n_layers + 1, d_model) float32, rows in
    `emotions` order; counts: items per emotion (an emotion with 0 items has no direction)."""

    emotions: list[str]
    means: dict[str, torch.Tensor]
    counts: list[int]
    key: str = ""
    # derived in __post_init__, per position: centre (n_layers + 1, d), unit directions (n_emotions, n_layers + 1,
    # d) and class gaps (n_emotions, n_layers + 1); `present` marks emotions with at least one item; `flat` marks
    # (emotion, layer) where the classes do not separate at all (the organism's answer position below its
    # takeover layer, which sees only its own token): no direction there, the projection is 0
    present: torch.Tensor = field(init=False, repr=False)
    centre: dict[str, torch.Tensor] = field(init=False, repr=False)
    unit: dict[str, torch.Tensor] = field(init=False, repr=False)
    gap: dict[str, torch.Tensor] = field(init=False, repr=False)
    flat: dict[str, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self):
        present = torch.tensor([c > 0 for c in self.counts])
        if int(present.sum()) < 2:
            raise ModalflipError("emotion directions need clean audio-only clips of at least two emotions; "
                                 f"got counts {dict(zip(self.emotions, self.counts))}")
        self.present = present
        self.centre, self.unit, self.gap, self.flat = {}, {}, {}, {}
        for pos, means in self.means.items():
            kept = means[present]
            n = kept.shape[0]
            others = (kept.sum(0, keepdim=True) - means) / (n - 1)  # mean of the other present classes
            diff = means - others  # (n_emotions, n_layers + 1, d)
            gap = diff.norm(dim=-1)  # (n_emotions, n_layers + 1)
            self.centre[pos] = kept.mean(0)  # (n_layers + 1, d)
            self.unit[pos] = diff / gap.clamp_min(1e-12).unsqueeze(-1)
            self.gap[pos] = gap.clamp_min(1e-12)
            self.flat[pos] = gap <= 1e-4 * self.centre[pos].norm(dim=-1).clamp_min(1e-12)

    @property
    def n_layers(self) -> int:
        return self.means[POSITIONS[0]].shape[1] - 1

    def index(self, emotion: str) -> int:
        """The row of `emotion`; a `ModalflipError` when no clean clip of it was seen."""
        row = self.emotions.index(emotion)
        if not self.present[row]:
            raise ModalflipError(f"no clean audio-only clip expresses {emotion!r}, so it has no direction; "
                                 "include such clips (--lang both) or choose another target emotion")
        return row

    def to(self, device: torch.device | str) -> "Directions":
        """A copy whose means and derived tensors live on `device` (moved once, so that `project` and `probe`
        copy nothing per call); the same object when it is there already."""
        device = torch.device(device)
        if self.present.device == device:
            return self
        moved = copy.copy(self)
        for name in ("means", "centre", "unit", "gap", "flat"):
            setattr(moved, name, {pos: value.to(device) for pos, value in getattr(self, name).items()})
        moved.present = self.present.to(device)
        return moved

    def project(self, pos: str, layer: int, resid: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Projection of resid (n, d_model) at `layer` on the direction of emotion rows[i] (indices into
        `emotions`), in class gaps from the centre; returns (n,), 0 where the classes do not separate (`flat`).
        resid, rows and these directions live on one device (`to`)."""
        unit = self.unit[pos][rows, layer]  # (n, d)
        projection = ((resid - self.centre[pos][layer]) * unit).sum(-1) / self.gap[pos][rows, layer]
        return torch.where(self.flat[pos][rows, layer], torch.zeros_like(projection), projection)

    def flat_layer(self, pos: str) -> torch.Tensor:
        """(n_layers + 1,) bool: layers where every present class mean coincides (no class separates)."""
        return self.flat[pos][self.present].all(0)

    def probe(self, pos: str, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """The linear probe: index of the nearest present class mean to each row of resid (n, d_model); (n,).
        −1 (no reading) on a layer where all class means coincide, where the nearest mean would be a tie broken
        by the order of the emotions, not a separation. resid and these directions live on one device."""
        if bool(self.flat_layer(pos)[layer]):
            return torch.full((resid.shape[0],), -1, dtype=torch.long, device=resid.device)
        means = self.means[pos][:, layer].to(resid.dtype)  # (n_emotions, d)
        scores = resid @ means.T - 0.5 * (means * means).sum(-1)
        scores[:, ~self.present] = float("-inf")
        return scores.argmax(-1)


def read_positions(adapter: ModelAdapter, batch: Batch, resid: Sequence[torch.Tensor], layer: int
                   ) -> dict[str, torch.Tensor]:
    """{"audio": mean over each row's audio span, "answer": the answer position}, each (rows, d_model), read from
    `resid[layer]`."""
    hidden = resid[layer]
    audio = torch.stack([hidden[i, s.audio].mean(0) for i, s in enumerate(batch.spans)])
    rows = torch.arange(len(batch), device=hidden.device)
    return {"audio": audio, "answer": hidden[rows, batch.answer_positions()]}


@torch.no_grad()
def compute(adapter: ModelAdapter, items: Sequence[Item], batch_rows: int = 8) -> Directions:
    """Class means from clean audio-only `items` (other conditions are ignored), one forward per chunk of rows."""
    items = [item for item in items if item.condition == "audio_only"]
    emotions = spec.emotions()
    if not items:
        raise ModalflipError("no clean audio-only items to learn emotion directions from")
    inputs = load_probe_set(adapter, items, pad=False)
    sums = {pos: torch.zeros(len(emotions), adapter.n_layers + 1, _width(adapter), device=adapter.device)
            for pos in POSITIONS}  # (emotions, layers, d), summed on the model's device
    counts = [0] * len(emotions)
    for start in range(0, len(items), batch_rows):
        chunk = items[start:start + batch_rows]
        batch = adapter.build_batch([inputs.wave(i.clip_id) for i in chunk], [inputs.prompt(i) for i in chunk])
        trace = run_traced(adapter, batch)
        rows = [emotions.index(item.audio_emotion) for item in chunk]
        index = torch.tensor(rows, device=adapter.device)
        for layer in range(adapter.n_layers + 1):
            read = read_positions(adapter, batch, trace.resid, layer)
            for pos in POSITIONS:
                sums[pos][:, layer].index_add_(0, index, read[pos].float())
        for row in rows:
            counts[row] += 1
    divisor = torch.tensor(counts, dtype=torch.float32).clamp_min(1).view(-1, 1, 1)
    return Directions(emotions, {pos: sums[pos].cpu() / divisor for pos in POSITIONS}, counts)


def cache_key(adapter: ModelAdapter, items: Sequence[Item]) -> str:
    """Hash of what the class means depend on: the model (config and weights), stimulus spec, clips' bytes."""
    clips = sorted({(item.clip_id, str(item.audio_path)) for item in items if item.condition == "audio_only"})
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, model_hash(adapter), spec.spec_hash(), [c for c, _ in clips]]).encode())
    for _, path in clips:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()[:16]


def load_or_compute(adapter: ModelAdapter, items: Sequence[Item], cache_dir: str | Path,
                    batch_rows: int = 8) -> tuple[Directions, bool]:
    """The directions for these clean audio-only items, from `<cache_dir>/directions-<key>.pt` when it exists, else
    computed and saved there. Returns (directions, whether they came from the cache)."""
    key = cache_key(adapter, items)
    path = Path(cache_dir) / f"directions-{key}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return Directions(saved["emotions"], saved["means"], saved["counts"], key), True
        except (RuntimeError, KeyError, EOFError):
            pass  # unreadable cache: recompute and overwrite it
    directions = compute(adapter, items, batch_rows)
    directions.key = key
    state = {"emotions": directions.emotions, "means": directions.means, "counts": directions.counts}
    atomic_write_with(path, lambda buffer: torch.save(state, buffer))
    return directions, False


def _width(adapter: ModelAdapter) -> int:
    return int(adapter.embed_tokens.weight.shape[1])
