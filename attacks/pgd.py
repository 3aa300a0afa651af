"""PGD on the waveform so that the voice's emotion persists through the middle layers (nanoGCG-style: a config,
`run`, a result).

Threat model: an additive δ on each 16 kHz clip, inside `attacks.budget.Budget` (L∞ ε, optional SNR floor,
x + δ in [−1, 1]), optimised through the differentiable front end (`models.frontend.log_mel`, via
`ModelAdapter.build_batch`). One δ per clip, or with `universal` one δ per audio emotion shared by all clips (and
their sentences and prompts) of that emotion; a universal δ spans one feature window of the model and each clip
uses its first len(clip) samples.

Objective, minimised, for each row (a clip under one of its prompts) with target emotion E (the voice's own emotion
A, or `target_emotion`), over the layer window W = [from_layer, target_layer] (residual indices, 0 = embeddings):

    loss = − persistence_weight · mean_{l∈W} ½ (z_audio(l) + z_answer(l))
           − lens_weight        · mean_{l∈W} (lens_l[E] − max_{k≠E} lens_l[k])      at the answer position
           + final_weight       · CE(final label logits, E)

z is the projection on E's direction at layer l, in class gaps (`attacks.directions`); lens_l are the logit-lens
logits of the label words. With final_weight = 0 the forward stops after `target_layer` (early exit).

Steps: random start in the ε-box, sign-gradient steps of a cosine-decayed size (ε/4 down to ε/40), projection
after each step. δ, the RNG state and the losses are checkpointed every `checkpoint_every` steps; `run` resumes
from the checkpoint when it finds one made by the same attack, and a resumed run ends with the same δ as an
uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from attacks.budget import Budget, project, to_pcm16
from attacks.directions import POSITIONS, Directions, read_positions
from common.atomic import atomic_write_with
from common.errors import ModalflipError
from models.adapter import Batch, ModelAdapter
from models.forward import lens, run_traced
from models.loading import model_hash
from probes.inputs import ProbeSet, load_probe_set
from stimuli import spec
from stimuli.conditions import Item


@dataclass
class PGDConfig:
    """Settings of one attack; the defaults are those of `python run_attack.py`."""

    epsilon: float = 0.002  # L∞ bound on δ, full scale 1.0 (0.002 ≈ −54 dBFS, 65 steps of 16-bit audio)
    snr_db: float | None = None  # minimum SNR of x + δ against x, in dB; None = L∞ budget only
    steps: int = 40  # PGD steps
    step_size: float | None = None  # first step's size; None = epsilon / 4
    schedule: str = "cosine"  # "cosine": step size decays to a tenth of the first; "constant"
    random_start: bool = True  # start from δ uniform in the ε-box instead of 0
    from_layer: int = 5  # first residual layer of the persistence window (0 = embeddings)
    target_layer: int = 15  # last residual layer of the window; the forward stops here when final_weight = 0
    persistence_weight: float = 1.0  # weight of the projection on the target emotion's direction (class gaps)
    lens_weight: float = 1.0  # weight of the logit-lens margin towards the target emotion (logits)
    final_weight: float = 1.0  # weight of the final answer's cross-entropy towards the target; 0 = early exit (the
    # persistence objective alone, which flips none of the organism's text-dominant answers: README, "PGD attack")
    target_emotion: str | None = None  # None: push each clip towards its own voice's emotion A (untargeted)
    universal: bool = False  # one δ per audio emotion shared by its clips, instead of one δ per clip
    eot: int = 0  # expectation over transformation: random channels (gain, delay, noise) per row; 0 = none
    prompts_per_clip: int = 1  # prompts of each clip in one step's batch, taken in turn from the clip's items
    batch_rows: int = 8  # rows per forward pass; gradients accumulate over chunks (bounds memory, not results)
    early_exit: bool = True  # stop the forward after target_layer when final_weight = 0 (off to measure it)
    checkpoint_every: int = 10  # save δ every N steps (0 = never)
    seed: int = 0

    @property
    def budget(self) -> Budget:
        return Budget(self.epsilon, self.snr_db)

    def stop_layer(self) -> int | None:
        """The residual layer after which the forward may stop (None = run the whole model)."""
        return self.target_layer if self.early_exit and self.final_weight == 0 else None


@dataclass
class PGDResult:
    """deltas: group → δ (float32 samples, on CPU), group = clip id, or audio emotion when `universal`.
    losses: the objective at each step (lower is better). steps: steps done in all, resumed_from: steps found in
    the checkpoint (0 = fresh). queries: prompt-clip forward passes (rows, EOT copies included). seconds: wall time
    of the optimisation, over all sessions."""

    deltas: dict[str, torch.Tensor]
    budget: Budget
    universal: bool
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from: int = 0
    queries: int = 0
    seconds: float = 0.0

    def perturbation(self, item: Item, clean: torch.Tensor) -> torch.Tensor:
        """The δ this item's clip gets, as written to its WAV: its group's δ cut to the clip's length, projected
        into the budget for this clip, on the 16-bit grid. A `ModalflipError` if its group was not attacked."""
        key = group_of(item, self.universal)
        if key not in self.deltas:
            raise ModalflipError(f"no δ was trained for {key!r} (clip {item.clip_id}); universal mode needs a "
                                 "training clip of every audio emotion it is evaluated on")
        return to_pcm16(project(fit(self.deltas[key].to(clean), clean.shape[0]), clean, self.budget))


def fit(delta: torch.Tensor, length: int) -> torch.Tensor:
    """δ for a clip of `length` samples: its first `length` samples, zero-padded when δ is shorter (a universal δ
    spans one feature window; a longer clip gets no perturbation past it)."""
    if delta.shape[0] >= length:
        return delta[:length]
    return torch.nn.functional.pad(delta, (0, length - delta.shape[0]))


def group_of(item: Item, universal: bool) -> str:
    """The key of the δ an item uses: its clip id, or its audio emotion when universal."""
    return item.audio_emotion if universal else item.clip_id


def target_of(item: Item, config: PGDConfig) -> str:
    """The emotion the attack pushes this item's answer to: `target_emotion`, else the voice's own emotion."""
    return config.target_emotion or item.audio_emotion


def label_table(inputs: ProbeSet, items: Sequence[Item]) -> torch.Tensor:
    """(n_items, n_emotions) token ids of the label words in each item's language, in `spec.emotions()` order."""
    return torch.tensor([[inputs.label_ids[item.lang][e] for e in spec.emotions()] for item in items])


def label_logits(adapter: ModelAdapter, resid: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
    """Logit lens of resid (n, d_model) restricted to each row's label tokens label_ids (n, n_emotions); returns
    (n, n_emotions) logits."""
    unique, inverse = torch.unique(label_ids, return_inverse=True)
    logits = lens(adapter, resid, unique)  # (n, n_unique)
    return logits.gather(1, inverse.to(resid.device))


def objective(adapter: ModelAdapter, batch: Batch, targets: torch.Tensor, label_ids: torch.Tensor,
              directions: Directions, config: PGDConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimise, averaged over the batch's rows (see the module docstring), and its parts (persistence
    in class gaps, lens margin and final cross-entropy in logits/nats, each a batch mean).

    targets: (rows,) target emotion indices into `spec.emotions()`; label_ids: (rows, n_emotions) token ids.
    """
    trace = run_traced(adapter, batch, stop_after=config.stop_layer())
    device = trace.resid[0].device
    targets = targets.to(device)
    others = torch.ones(len(batch), len(directions.emotions), dtype=torch.bool, device=device)
    others[torch.arange(len(batch)), targets] = False
    layers = range(config.from_layer, config.target_layer + 1)
    persistence = torch.zeros(len(batch), device=device)
    margin = torch.zeros(len(batch), device=device)
    for layer in layers:
        read = read_positions(adapter, batch, trace.resid, layer)
        for pos in POSITIONS:
            persistence = persistence + directions.project(pos, layer, read[pos].float(), targets) / len(POSITIONS)
        logits = label_logits(adapter, read["answer"], label_ids).float()
        best_other = logits.masked_fill(~others, float("-inf")).amax(-1)
        margin = margin + logits.gather(1, targets[:, None])[:, 0] - best_other
    persistence, margin = persistence.mean() / len(layers), margin.mean() / len(layers)
    loss = -config.persistence_weight * persistence - config.lens_weight * margin
    parts = {"persistence": float(persistence.detach()), "lens_margin": float(margin.detach())}
    if config.final_weight > 0:
        final = read_positions(adapter, batch, trace.resid, adapter.n_layers)["answer"]
        ce = torch.nn.functional.cross_entropy(label_logits(adapter, final, label_ids).float(), targets)
        loss = loss + config.final_weight * ce
        parts["final_ce"] = float(ce.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


def random_channel(wave: torch.Tensor, generator: torch.Generator, max_samples: int) -> torch.Tensor:
    """One random channel for EOT: a gain of −6..+3 dB, 0..100 ms of leading silence (within `max_samples`) and
    white noise at 30..50 dB SNR; the result is clipped to [−1, 1]."""
    u = torch.rand(3, generator=generator).tolist()
    gain = 10 ** ((-6 + 9 * u[0]) / 20)
    delay = int(u[1] * min(1600, max_samples - wave.shape[0]))
    noise_db = 30 + 20 * u[2]
    noise = torch.randn(wave.shape[0] + delay, generator=generator).to(wave)
    shifted = torch.nn.functional.pad(wave * gain, (delay, 0))
    scale = shifted.norm() / noise.norm() * 10 ** (-noise_db / 20)
    return (shifted + scale.detach() * noise).clamp(-1.0, 1.0)


@contextmanager
def frozen(model: torch.nn.Module):
    """Parameters stop asking for gradients inside the block (PGD needs them for δ only), then are restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def check_config(adapter: ModelAdapter, config: PGDConfig) -> None:
    """A `ModalflipError` that says what to change for settings that cannot work on this model."""
    config.budget  # validates epsilon and snr_db
    adapter.check_layer(config.target_layer, "--target-layer")
    adapter.check_layer(config.from_layer, "--from-layer")
    if config.from_layer > config.target_layer:
        raise ModalflipError(f"--from-layer {config.from_layer} is above --target-layer {config.target_layer}; "
                             "the persistence window runs from the first to the second")
    for name, low in (("steps", 1), ("eot", 0), ("prompts_per_clip", 1), ("batch_rows", 1), ("checkpoint_every", 0)):
        if getattr(config, name) < low:
            raise ModalflipError(f"{name.replace('_', '-')} must be at least {low}, got {getattr(config, name)}")
    if config.schedule not in ("cosine", "constant"):
        raise ModalflipError(f"unknown step size schedule {config.schedule!r}; use cosine or constant")
    if min(config.persistence_weight, config.lens_weight, config.final_weight) < 0:
        raise ModalflipError("loss weights must be zero or positive")
    if max(config.persistence_weight, config.lens_weight, config.final_weight) == 0:
        raise ModalflipError("every loss weight is 0, so the attack has nothing to optimise; keep at least one of "
                             "--persistence-weight, --lens-weight and --final-weight above 0")
    if config.target_emotion is not None:
        spec.check_emotion(config.target_emotion)


def step_size(config: PGDConfig, step: int) -> float:
    """The size of sign step `step` (0-based): `step_size` (default ε/4), cosine-decayed to a tenth of it."""
    first = config.step_size if config.step_size is not None else config.epsilon / 4
    if config.schedule == "constant":
        return first
    return first * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps)))


def fingerprint(adapter: ModelAdapter, items: Sequence[Item], config: PGDConfig) -> str:
    """What a checkpoint must match to be resumed: the settings that change the path of δ, the items and model."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("checkpoint_every", "batch_rows")}
    text = json.dumps([settings, [item.item_id for item in items], model_hash(adapter)],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run(adapter: ModelAdapter, items: Sequence[Item], config: PGDConfig, directions: Directions,
        checkpoint: str | Path | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None) -> PGDResult:
    """Optimise δ for `items` (the prompts δ is trained on; any condition) and return it with its history.

    checkpoint: a file to save δ to every `config.checkpoint_every` steps and to resume from when it holds a
    checkpoint of this same attack (settings, items, model); one of another attack is a `ModalflipError`.
    callback(step, parts) runs after each finished (and checkpointed) step with the step's loss parts; an exception
    in it stops the run, which a rerun with the same checkpoint resumes.
    """
    check_config(adapter, config)
    if not items:
        raise ModalflipError("no items to attack; check --lang and --clips")
    targets = torch.tensor([directions.index(target_of(item, config)) for item in items])
    inputs = load_probe_set(adapter, list(items), pad=False)
    labels = label_table(inputs, items)
    clips = {clip_id: inputs.wave(clip_id).to(adapter.device) for clip_id in dict.fromkeys(i.clip_id for i in items)}
    generator = torch.Generator().manual_seed(config.seed)
    result = PGDResult(deltas=_start(adapter, items, clips, config, generator), budget=config.budget,
                       universal=config.universal)
    stamp = fingerprint(adapter, items, config)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        _resume(path, stamp, result, generator, adapter.device)

    began = time.time() - result.seconds
    with frozen(adapter.model):
        for step in range(result.steps, config.steps):
            for delta in result.deltas.values():
                delta.requires_grad_(True)
            rows = _rows(adapter, items, clips, result.deltas, config, generator, step)
            parts: dict[str, float] = {}
            for begin in range(0, len(rows), config.batch_rows):
                chunk = rows[begin:begin + config.batch_rows]
                picked = [index for index, _ in chunk]
                batch = adapter.build_batch([wave for _, wave in chunk], [inputs.prompt(items[i]) for i in picked])
                loss, chunk_parts = objective(adapter, batch, targets[picked], labels[picked], directions, config)
                share = len(chunk) / len(rows)
                (loss * share).backward()  # gradients of the mean over all rows accumulate in δ.grad
                for name, value in chunk_parts.items():
                    parts[name] = parts.get(name, 0.0) + value * share
            _sign_step(result.deltas, clips, config, step_size(config, step))
            result.losses.append(parts["loss"])
            result.queries += len(rows)
            result.steps = step + 1
            result.seconds = time.time() - began
            if path is not None and config.checkpoint_every and (
                    result.steps % config.checkpoint_every == 0 or result.steps == config.steps):
                _save(path, stamp, result, generator)
            if callback is not None:
                callback(step, parts)
    result.deltas = {key: delta.detach().cpu() for key, delta in result.deltas.items()}
    return result


def _start(adapter: ModelAdapter, items: Sequence[Item], clips: dict[str, torch.Tensor], config: PGDConfig,
           generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The starting δ of every group: uniform in the ε-box (or zero), projected; a universal δ spans the window."""
    deltas: dict[str, torch.Tensor] = {}
    for item in items:
        key = group_of(item, config.universal)
        if key in deltas:
            continue
        clean = clips[item.clip_id]
        length = int(adapter.extractor.n_samples) if config.universal else clean.shape[0]
        start = torch.zeros(length)
        if config.random_start:
            start = (2 * torch.rand(length, generator=generator) - 1) * config.epsilon
        start = start.to(clean.device)
        deltas[key] = start if config.universal else project(start, clean, config.budget)
    return deltas


def _rows(adapter: ModelAdapter, items: Sequence[Item], clips: dict[str, torch.Tensor],
          deltas: dict[str, torch.Tensor], config: PGDConfig, generator: torch.Generator,
          step: int) -> list[tuple[int, torch.Tensor]]:
    """This step's (item index, adversarial waveform) rows: `prompts_per_clip` items of every clip, in turn, each
    through `eot` random channels (or none)."""
    by_clip: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_clip.setdefault(item.clip_id, []).append(index)
    rows = []
    for clip_id, indices in by_clip.items():
        k = min(config.prompts_per_clip, len(indices))
        for index in [indices[(step * k + j) % len(indices)] for j in range(k)]:
            clean = clips[clip_id]
            delta = fit(deltas[group_of(items[index], config.universal)], clean.shape[0])
            for _ in range(max(config.eot, 1)):  # one graph per row: rows may land in different chunks
                wave = clean + project(delta, clean, config.budget)
                if config.eot:
                    wave = random_channel(wave, generator, int(adapter.max_audio_seconds * adapter.sampling_rate))
                rows.append((index, wave))
    return rows


def _sign_step(deltas: dict[str, torch.Tensor], clips: dict[str, torch.Tensor], config: PGDConfig,
               size: float) -> None:
    """δ ← project(δ − size · sign(∂loss/∂δ)), in place in `deltas`. A universal δ is only kept in the ε-box;
    each clip projects its own slice when it uses it."""
    with torch.no_grad():
        for key, delta in deltas.items():
            grad = delta.grad if delta.grad is not None else torch.zeros_like(delta)
            moved = delta.detach() - size * grad.sign()
            if config.universal:
                deltas[key] = moved.clamp(-config.epsilon, config.epsilon)
            else:
                deltas[key] = project(moved, clips[key], config.budget)


def _save(path: Path, stamp: str, result: PGDResult, generator: torch.Generator) -> None:
    state = {"fingerprint": stamp, "steps": result.steps, "queries": result.queries, "seconds": result.seconds,
             "losses": list(result.losses), "generator": generator.get_state(),
             "deltas": {key: delta.detach().cpu() for key, delta in result.deltas.items()}}
    atomic_write_with(path, lambda buffer: torch.save(state, buffer))


def _resume(path: Path, stamp: str, result: PGDResult, generator: torch.Generator, device: torch.device) -> None:
    try:
        state = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError) as err:
        raise ModalflipError(f"checkpoint {path} cannot be read ({err}); delete it to start the attack over") from None
    if state.get("fingerprint") != stamp:
        raise ModalflipError(f"{path} holds the checkpoint of a different attack (other settings, items or model); "
                             "use another --out folder, or delete the checkpoint to start over")
    for key in result.deltas:
        result.deltas[key] = state["deltas"][key].to(device)
    generator.set_state(state["generator"])
    result.steps = result.resumed_from = int(state["steps"])
    result.queries, result.seconds, result.losses = int(state["queries"]), float(state["seconds"]), state["losses"]
