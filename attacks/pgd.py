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
           + final_weight       · answer_loss(final label logits z, E)

z_audio, z_answer are projections on E's direction at layer l, in class gaps (`attacks.directions`); lens_l are
the logit-lens logits of the label words. answer_loss is the cross-entropy (`loss="ce"`) or the Carlini–Wagner
margin max(max_{k≠E} z_k − z_E, −κ) (`loss="margin"`, in logits; it stops pushing once E leads by κ). With
final_weight = 0 the forward stops after `target_layer` (early exit).

Optimisers (`optimizer`), each followed by the projection into the budget after every step:
- "apgd": the step-size rule of APGD (Croce & Hein 2020, AutoAttack's parameter-free PGD): sign steps of size η,
  η = 2ε at first, with momentum (α = 0.75); at checkpoints 0.22, 0.41, 0.55, ... of the steps η halves, and δ
  restarts from the best point, when fewer than 75% of the steps since the last checkpoint lowered the loss or
  when neither η nor the best point changed. Nothing to tune against ε.
- "pgd": sign steps of `step_size` (absolute, full scale 1), decayed by `schedule`.
- "adam": Adam on δ with learning rate `step_size`, decayed by `schedule`.

Every step is one forward-backward of all rows. Each group (clip, or universal emotion) keeps its best iterate: the
δ whose rows answered E most often at that step (the attack's success criterion, read from the final answer when
the forward reaches it), ties broken by the lower loss; with early exit there is no answer and the loss alone
decides. The result holds the best δ per group over all `restarts` (random starts in the ball), so a larger budget,
whose ball contains the smaller one's, does not end worse because the last iterate wandered.

δ, the optimiser's state, the best iterates, the RNG state and the per-step curves are checkpointed every
`checkpoint_every` steps; `run` resumes from the checkpoint when it finds one made by the same attack, and a
resumed run ends with the same δ as an uninterrupted one.
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

OPTIMIZERS = ("apgd", "pgd", "adam")
LOSSES = ("ce", "margin")
SCHEDULES = ("cosine", "constant")
APGD_MOMENTUM = 0.75  # α: the step moves α of the way to the sign step and keeps 1 − α of the last move
APGD_RHO = 0.75  # share of steps between checkpoints that must lower the loss for η to stay


@dataclass
class PGDConfig:
    """Settings of one attack; the defaults are those of `python run_attack.py`. The optimiser, loss and steps were
    chosen by `python -m eval.optimizer_grid` on both built-in organisms (docs/attack-defaults-*.md): APGD, sign PGD
    and the margin loss flipped as many answers as APGD with cross-entropy, which needs no step size."""

    epsilon: float = 0.002  # L∞ bound on δ, full scale 1.0 (0.002 ≈ −54 dBFS, 65 steps of 16-bit audio)
    snr_db: float | None = None  # minimum SNR of x + δ against x, in dB; None = L∞ budget only
    optimizer: str = "apgd"  # "apgd" (step size adapts, starts at 2ε), "pgd" (sign steps), "adam"
    steps: int = 150  # forward-backward passes per restart: at ε 0.002 every optimiser's best iterates on both
    # organisms still gained between steps 100 and 150 (python -m eval.optimizer_grid, docs/attack-defaults-*.md)
    step_size: float = 0.0005  # pgd: sign step; adam: learning rate; absolute, full scale 1 (apgd ignores it)
    schedule: str = "cosine"  # pgd and adam: "cosine" decays the step to a tenth of step_size; "constant"
    restarts: int = 1  # independent runs from random starts in the ball; each group keeps its best δ over all
    random_start: bool = True  # start from δ uniform in the ε-box instead of 0
    loss: str = "ce"  # the final answer's loss: "ce" (cross-entropy) or "margin" (Carlini–Wagner, with kappa)
    kappa: float = 0.0  # margin loss: confidence in logits at which the target's lead stops counting
    from_layer: int = 5  # first residual layer of the persistence window (0 = embeddings)
    target_layer: int = 15  # last residual layer of the window; the forward stops here when final_weight = 0
    persistence_weight: float = 1.0  # weight of the projection on the target emotion's direction (class gaps)
    lens_weight: float = 1.0  # weight of the logit-lens margin towards the target emotion (logits)
    final_weight: float = 1.0  # weight of the final answer's loss towards the target; 0 = early exit (the
    # persistence objective alone; what it flips on both organisms: docs/attacks.md)
    target_emotion: str | None = None  # None: push each clip towards its own voice's emotion A (untargeted)
    universal: bool = False  # one δ per audio emotion shared by its clips, instead of one δ per clip
    eot: int = 0  # expectation over transformation: random channels (gain, delay, noise) per row; 0 = none
    prompts_per_clip: int | None = None  # prompts of each clip per step, taken in turn; None = all of them (then
    # every step scores the same rows, and the best iterate compares like with like)
    batch_rows: int = 8  # rows per forward pass; gradients accumulate over chunks (bounds memory, not results)
    early_exit: bool = True  # stop the forward after target_layer when final_weight = 0 (off to measure it)
    checkpoint_every: int = 10  # save the state every N steps (0 = never)
    seed: int = 0

    @property
    def budget(self) -> Budget:
        return Budget(self.epsilon, self.snr_db)

    def stop_layer(self) -> int | None:
        """The residual layer after which the forward may stop (None = run the whole model)."""
        return self.target_layer if self.early_exit and self.final_weight == 0 else None


@dataclass
class PGDResult:
    """deltas: group → the best δ found (float32 samples, on CPU), group = clip id, or audio emotion when
    `universal`. losses: the objective at each step (mean over rows, lower is better), restarts one after the
    other. curve: one dict per step: restart, step (within it), loss, flip_rate (share of the step's rows whose
    final answer is the target, None under early exit), best_flip_rate (the same for each group's best iterate so
    far) and step_size (mean over groups; apgd's η). hits: group → rows answering the target at its best δ (0
    under early exit). steps: steps done in all, resumed_from: steps found in the
    checkpoint (0 = fresh). queries: prompt-clip forward passes (rows, EOT copies included). seconds: wall time of
    the optimisation, summed over every run that resumed it."""

    deltas: dict[str, torch.Tensor]
    budget: Budget
    universal: bool
    losses: list[float] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)
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


def answer_loss(logits: torch.Tensor, targets: torch.Tensor, config: PGDConfig) -> torch.Tensor:
    """Per-row loss of the final label logits (rows, n_emotions) towards `targets` (rows,): cross-entropy (nats),
    or the margin max(max_{k≠E} z_k − z_E, −κ) (logits)."""
    if config.loss == "ce":
        return torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    target = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], float("-inf")).amax(-1)
    return (others - target).clamp_min(-config.kappa)


@dataclass
class Evaluation:
    """One forward of a batch. loss: (rows,) the objective per row, with its graph; parts: the batch means of its
    terms (persistence in class gaps, lens margin in logits, the answer loss as `final_ce` or `final_margin`) and
    of `loss`; hits: (rows,) bool, the final answer is the target, or None when the forward stopped early."""

    loss: torch.Tensor
    parts: dict[str, float]
    hits: torch.Tensor | None


def objective(adapter: ModelAdapter, batch: Batch, targets: torch.Tensor, label_ids: torch.Tensor,
              directions: Directions, config: PGDConfig) -> Evaluation:
    """The loss to minimise per row (see the module docstring), its parts and whether each row's answer is the
    target. targets: (rows,) target emotion indices into `spec.emotions()`; label_ids: (rows, n_emotions) token ids.
    `directions` may live on any device; `run` moves it to the model's once."""
    trace = run_traced(adapter, batch, stop_after=config.stop_layer())
    device = trace.resid[0].device
    targets = targets.to(device)
    others = torch.ones(len(batch), len(directions.emotions), dtype=torch.bool, device=device)
    others[torch.arange(len(batch), device=device), targets] = False
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
    persistence, margin = persistence / len(layers), margin / len(layers)
    loss = -config.persistence_weight * persistence - config.lens_weight * margin
    parts = {"persistence": float(persistence.detach().mean()), "lens_margin": float(margin.detach().mean())}
    hits = None
    if config.stop_layer() is None:
        final = read_positions(adapter, batch, trace.resid, adapter.n_layers)["answer"]
        logits = label_logits(adapter, final, label_ids).float()
        hits = (logits.detach().argmax(-1) == targets).cpu()
        if config.final_weight > 0:
            answer = answer_loss(logits, targets, config)
            loss = loss + config.final_weight * answer
            parts[f"final_{config.loss}"] = float(answer.detach().mean())
    parts["loss"] = float(loss.detach().mean())
    return Evaluation(loss, parts, hits)


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
    check_settings(config)
    adapter.check_layer(config.target_layer, "--target-layer")
    adapter.check_layer(config.from_layer, "--from-layer")


def check_settings(config: PGDConfig) -> None:
    """A `ModalflipError` for settings that cannot work on any model (checked before one loads)."""
    config.budget  # validates epsilon and snr_db
    if config.from_layer > config.target_layer:
        raise ModalflipError(f"--from-layer {config.from_layer} is above --target-layer {config.target_layer}; "
                             "the persistence window runs from the first to the second")
    for name, low in (("steps", 1), ("restarts", 1), ("eot", 0), ("batch_rows", 1), ("checkpoint_every", 0)):
        if getattr(config, name) < low:
            raise ModalflipError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(config, name)}")
    if config.prompts_per_clip is not None and config.prompts_per_clip < 1:
        raise ModalflipError(f"--prompts-per-clip must be at least 1, got {config.prompts_per_clip}")
    for name, value, known in (("optimizer", config.optimizer, OPTIMIZERS), ("loss", config.loss, LOSSES),
                               ("schedule", config.schedule, SCHEDULES)):
        if value not in known:
            raise ModalflipError(f"unknown --{name} {value!r}; use one of {', '.join(known)}")
    if not (math.isfinite(config.step_size) and config.step_size > 0):
        raise ModalflipError(f"--step-size must be a positive number (full scale 1), got {config.step_size}")
    if not (math.isfinite(config.kappa) and config.kappa >= 0):
        raise ModalflipError(f"--kappa must be zero or a positive number of logits, got {config.kappa}")
    if min(config.persistence_weight, config.lens_weight, config.final_weight) < 0:
        raise ModalflipError("loss weights must be zero or positive")
    if max(config.persistence_weight, config.lens_weight, config.final_weight) == 0:
        raise ModalflipError("every loss weight is 0, so the attack has nothing to optimise; keep at least one of "
                             "--persistence-weight, --lens-weight and --final-weight above 0")
    if config.target_emotion is not None:
        spec.check_emotion(config.target_emotion)


def scheduled_step(config: PGDConfig, step: int) -> float:
    """pgd's sign step / adam's learning rate at `step` (0-based, within a restart): `step_size`, cosine-decayed
    to a tenth of it unless the schedule is constant."""
    if config.schedule == "constant":
        return config.step_size
    return config.step_size * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps)))


def apgd_checkpoints(steps: int) -> list[int]:
    """The steps (0-based) at which APGD may halve η: ⌈p_j · steps⌉ for p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), below `steps`."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(round(x * steps, 9)) for x in p[1:]}  # rounded: 0.57 · 100 is 57, not 57.000…1
    return sorted(mark for mark in marks if 0 < mark < steps)


def fingerprint(adapter: ModelAdapter, items: Sequence[Item], config: PGDConfig, inputs: ProbeSet,
                start: dict[str, torch.Tensor] | None = None) -> str:
    """What a checkpoint must match to be resumed: the settings that change the path of δ, the items, their
    prompts, the model and the starting δs when given."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("checkpoint_every", "batch_rows")}
    prompts = [inputs.prompt(item).messages for item in items]
    starts = {key: hashlib.sha256(delta.detach().cpu().numpy().tobytes()).hexdigest()
              for key, delta in (start or {}).items()}
    text = json.dumps([settings, [item.item_id for item in items], prompts, model_hash(adapter), starts],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Group:
    """The optimisation state of one δ (a clip's, or a universal emotion's). delta: the current iterate; prev: the
    one before (apgd's momentum). best, best_hits, best_loss: the best iterate over all restarts (rows answering
    the target there, −1 before any step; mean loss over its rows), the one the result keeps. run_best, run_grad,
    run_hits, run_loss: the best iterate of this restart and its gradient, where apgd goes back to. eta: apgd's
    step size; last_loss: the previous step's loss; improved: steps since apgd's last checkpoint that lowered it;
    reduced: whether η was halved at that checkpoint; mark_hits, mark_loss, mark_step: this restart's best point
    there and the checkpoint's step.
    m, v, t: adam's moments and step count."""

    delta: torch.Tensor
    best: torch.Tensor
    best_hits: int = -1
    best_loss: float = math.inf
    prev: torch.Tensor | None = None
    run_best: torch.Tensor | None = None
    run_grad: torch.Tensor | None = None
    run_hits: int = -1
    run_loss: float = math.inf
    eta: float = 0.0
    last_loss: float = math.inf
    improved: int = 0
    reduced: bool = False
    mark_hits: int = -1
    mark_loss: float = math.inf
    mark_step: int = 0
    m: torch.Tensor | None = None
    v: torch.Tensor | None = None
    t: int = 0

    def restart(self, start: torch.Tensor, eta: float) -> None:
        """A fresh optimiser run from `start`; only the best iterate over all restarts carries over."""
        self.delta, self.prev, self.run_best, self.run_grad = start, start.clone(), start.clone(), None
        self.run_hits, self.run_loss = -1, math.inf
        self.eta, self.last_loss, self.improved, self.reduced = eta, math.inf, 0, False
        self.mark_hits, self.mark_loss, self.mark_step = -1, math.inf, 0
        self.m, self.v, self.t = torch.zeros_like(start), torch.zeros_like(start), 0

    def offer(self, hits: int, loss: float, grad: torch.Tensor) -> None:
        """Record the current iterate, with its rows' hits and mean loss, as this restart's and the overall best
        if its rows answer the target more often, or as often with a lower loss."""
        if (hits, -loss) > (self.run_hits, -self.run_loss):
            self.run_best, self.run_grad = self.delta.detach().clone(), grad.clone()
            self.run_hits, self.run_loss = hits, loss
        if (hits, -loss) > (self.best_hits, -self.best_loss):
            self.best, self.best_hits, self.best_loss = self.delta.detach().clone(), hits, loss


def run(adapter: ModelAdapter, items: Sequence[Item], config: PGDConfig, directions: Directions,
        checkpoint: str | Path | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None,
        inputs: ProbeSet | None = None, start: dict[str, torch.Tensor] | None = None) -> PGDResult:
    """Optimise δ for `items` (the prompts δ is trained on; any condition) and return the best δ per group with
    the history.

    inputs: the clips and prompts (a `ProbeSet` holding every item's clip); default: the items' own prompts.
    start: group → δ the first restart begins from instead of a random start (projected into this budget), e.g.
    the best δs of a smaller budget: the first step then scores them, so the best iterate here is at least as good
    on the attack's criterion as theirs (a sweep's success cannot fall as ε grows).
    checkpoint: a file to save the state to every `config.checkpoint_every` steps and to resume from when it holds
    a checkpoint of this same attack (settings, items, model); one of another attack is a `ModalflipError`.
    callback(step, parts) runs after each finished (and checkpointed) step, counted over all restarts, with the
    step's loss parts (batch means) and `flip_rate` when the answer was read; an exception in it stops the run,
    which a rerun with the same checkpoint resumes.
    """
    check_config(adapter, config)
    if not items:
        raise ModalflipError("no items to attack; check --lang, --clips and --stimuli")
    directions = directions.to(adapter.device)
    targets = torch.tensor([directions.index(target_of(item, config)) for item in items])
    inputs = inputs if inputs is not None else load_probe_set(adapter, list(items), pad=False)
    labels = label_table(inputs, items)
    clips = {clip_id: inputs.wave(clip_id).to(adapter.device) for clip_id in dict.fromkeys(i.clip_id for i in items)}
    keys = list(dict.fromkeys(group_of(item, config.universal) for item in items))
    generator = torch.Generator().manual_seed(config.seed)
    result = PGDResult(deltas={}, budget=config.budget, universal=config.universal)
    groups: dict[str, Group] = {}
    stamp = fingerprint(adapter, items, config, inputs, start)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        groups = _resume(path, stamp, result, generator, adapter.device)
    marks = set(apgd_checkpoints(config.steps))

    began = time.time() - result.seconds
    total = config.restarts * config.steps
    with frozen(adapter.model):
        while result.steps < total:
            restart, step = divmod(result.steps, config.steps)
            if step == 0:
                _restart(adapter, clips, keys, groups, config, generator, start if restart == 0 else None)
            for group in groups.values():
                group.delta.requires_grad_(True)
            rows = _rows(adapter, items, clips, groups, config, generator, result.steps)
            parts: dict[str, float] = {}
            row_loss, row_hits = [], []
            for begin in range(0, len(rows), config.batch_rows):
                chunk = rows[begin:begin + config.batch_rows]
                picked = [index for index, _ in chunk]
                batch = adapter.build_batch([wave for _, wave in chunk], [inputs.prompt(items[i]) for i in picked])
                evaluation = objective(adapter, batch, targets[picked], labels[picked], directions, config)
                (evaluation.loss.sum() / len(rows)).backward()  # gradients of the mean over all rows accumulate
                row_loss += evaluation.loss.detach().cpu().tolist()
                row_hits += evaluation.hits.tolist() if evaluation.hits is not None else [False] * len(chunk)
                for name, value in evaluation.parts.items():
                    parts[name] = parts.get(name, 0.0) + value * len(chunk) / len(rows)
            answered = config.stop_layer() is None
            by_group: dict[str, list[int]] = {}
            for position, (index, _) in enumerate(rows):
                by_group.setdefault(group_of(items[index], config.universal), []).append(position)
            for key, positions in by_group.items():
                group = groups[key]
                grad = group.delta.grad if group.delta.grad is not None else torch.zeros_like(group.delta)
                loss = sum(row_loss[p] for p in positions) / len(positions)
                hits = sum(row_hits[p] for p in positions)
                group.offer(hits, loss, grad.detach())
                if step + 1 < config.steps:  # the last step of a restart only scores its iterate
                    clean = None if config.universal else clips[key]
                    _update(group, grad.detach(), loss, step, marks, clean, config)
                group.delta = group.delta.detach()
            if answered:
                parts["flip_rate"] = sum(row_hits) / len(rows)
            result.losses.append(parts["loss"])
            result.curve.append({
                "restart": restart, "step": step, "loss": parts["loss"],
                "flip_rate": parts.get("flip_rate"),
                "best_flip_rate": sum(max(g.best_hits, 0) for g in groups.values()) / len(rows) if answered else None,
                "step_size": (sum(g.eta for g in groups.values()) / len(groups) if config.optimizer == "apgd"
                              else scheduled_step(config, step))})
            result.queries += len(rows)
            result.steps += 1
            result.seconds = time.time() - began
            if path is not None and config.checkpoint_every and (
                    result.steps % config.checkpoint_every == 0 or result.steps == total):
                _save(path, stamp, result, groups, generator)
            if callback is not None:
                callback(result.steps - 1, parts)
    result.deltas = {key: group.best.detach().cpu() for key, group in groups.items()}
    result.hits = {key: max(group.best_hits, 0) for key, group in groups.items()}
    return result


def _project(delta: torch.Tensor, clean: torch.Tensor | None, config: PGDConfig) -> torch.Tensor:
    """δ into the budget: for a clip (`clean`) the full projection; a universal δ (clean None) only into the
    ε-box, since each clip projects its own slice when it uses it."""
    if clean is None:
        return delta.clamp(-config.epsilon, config.epsilon)
    return project(delta, clean, config.budget)


def _restart(adapter: ModelAdapter, clips: dict[str, torch.Tensor], keys: list[str], groups: dict[str, Group],
             config: PGDConfig, generator: torch.Generator, given: dict[str, torch.Tensor] | None) -> None:
    """A new start for every group: its `given` δ, else uniform in the ε-box (or zero), projected; a universal δ
    spans the window."""
    device = next(iter(clips.values())).device
    for key in keys:
        clean = None if config.universal else clips[key]
        length = int(round(adapter.window_seconds * adapter.sampling_rate)) if config.universal else clean.shape[0]
        start = torch.zeros(length)
        if config.random_start:
            start = (2 * torch.rand(length, generator=generator) - 1) * config.epsilon
        if given is not None and key in given:
            start = fit(given[key].detach().cpu().float(), length)
        start = _project(start.to(device), clean, config)
        if key not in groups:
            groups[key] = Group(delta=start, best=start.clone())
        groups[key].restart(start, 2 * config.epsilon)


def _update(group: Group, grad: torch.Tensor, loss: float, step: int, marks: set[int],
            clean: torch.Tensor | None, config: PGDConfig) -> None:
    """One optimiser step of `group` from its current iterate, whose gradient and mean loss are given."""
    with torch.no_grad():
        x = group.delta.detach()
        if config.optimizer == "pgd":
            group.delta = _project(x - scheduled_step(config, step) * grad.sign(), clean, config)
            return
        if config.optimizer == "adam":
            group.t += 1
            group.m = 0.9 * group.m + 0.1 * grad
            group.v = 0.999 * group.v + 0.001 * grad * grad
            m_hat, v_hat = group.m / (1 - 0.9 ** group.t), group.v / (1 - 0.999 ** group.t)
            rate = scheduled_step(config, step)
            group.delta = _project(x - rate * m_hat / (v_hat.sqrt() + 1e-12), clean, config)
            return
        if step > 0 and loss < group.last_loss:
            group.improved += 1
        group.last_loss = loss
        if step == 0:
            group.mark_hits, group.mark_loss, group.mark_step = group.run_hits, group.run_loss, 0
        elif step in marks:
            since = step - group.mark_step
            stalled = group.improved < APGD_RHO * since
            unchanged = not group.reduced and (group.run_hits, group.run_loss) == (group.mark_hits, group.mark_loss)
            group.reduced = stalled or unchanged
            if group.reduced:
                group.eta /= 2
                x, grad = group.run_best, group.run_grad
                group.prev = x  # no momentum across the jump back to the best point
            group.improved, group.mark_step = 0, step
            group.mark_hits, group.mark_loss = group.run_hits, group.run_loss
        z = _project(x - group.eta * grad.sign(), clean, config)
        moved = z if step == 0 else _project(
            x + APGD_MOMENTUM * (z - x) + (1 - APGD_MOMENTUM) * (x - group.prev), clean, config)
        group.prev, group.delta = x, moved


def _rows(adapter: ModelAdapter, items: Sequence[Item], clips: dict[str, torch.Tensor], groups: dict[str, Group],
          config: PGDConfig, generator: torch.Generator, step: int) -> list[tuple[int, torch.Tensor]]:
    """This step's (item index, adversarial waveform) rows: `prompts_per_clip` items of every clip (all when
    None), in turn, each through `eot` random channels (or none)."""
    by_clip: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_clip.setdefault(item.clip_id, []).append(index)
    rows = []
    for clip_id, indices in by_clip.items():
        k = len(indices) if config.prompts_per_clip is None else min(config.prompts_per_clip, len(indices))
        for index in [indices[(step * k + j) % len(indices)] for j in range(k)]:
            clean = clips[clip_id]
            delta = fit(groups[group_of(items[index], config.universal)].delta, clean.shape[0])
            for _ in range(max(config.eot, 1)):  # one graph per row: rows may land in different chunks
                wave = clean + project(delta, clean, config.budget)
                if config.eot:
                    wave = random_channel(wave, generator, int(adapter.max_audio_seconds * adapter.sampling_rate))
                rows.append((index, wave))
    return rows


def _save(path: Path, stamp: str, result: PGDResult, groups: dict[str, Group], generator: torch.Generator) -> None:
    state = {"fingerprint": stamp, "steps": result.steps, "queries": result.queries, "seconds": result.seconds,
             "losses": list(result.losses), "curve": json.dumps(result.curve), "generator": generator.get_state(),
             "groups": {key: {name: value.detach().cpu() if isinstance(value, torch.Tensor) else value
                              for name, value in vars(group).items()} for key, group in groups.items()}}
    atomic_write_with(path, lambda buffer: torch.save(state, buffer))


def _resume(path: Path, stamp: str, result: PGDResult, generator: torch.Generator,
            device: torch.device) -> dict[str, Group]:
    try:
        state = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError) as err:
        raise ModalflipError(f"checkpoint {path} cannot be read ({err}); delete it to start the attack over") from None
    if state.get("fingerprint") != stamp or "groups" not in state:
        raise ModalflipError(f"{path} holds the checkpoint of a different attack (other settings, items or model); "
                             "use another --out folder, or delete the checkpoint to start over")
    generator.set_state(state["generator"])
    result.steps = result.resumed_from = int(state["steps"])
    result.queries, result.seconds, result.losses = int(state["queries"]), float(state["seconds"]), state["losses"]
    result.curve = json.loads(state["curve"])
    groups = {}
    for key, fields in state["groups"].items():
        group = Group(delta=fields["delta"].to(device), best=fields["best"].to(device))
        for name, value in fields.items():
            setattr(group, name, value.to(device) if isinstance(value, torch.Tensor) else value)
        groups[key] = group
    return groups
