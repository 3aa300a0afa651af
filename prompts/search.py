"""Prompt search: `run(adapter, probe_set, config) -> SearchResult`, an Optuna study over the prompt grammar.

Each trial samples a prompt from `prompts/grammar.json` (define-by-run, `prompts.grammar.suggest`), stores its slot
values and rendered text as user attrs (`slots`, `prompt`), and is scored by `prompts.objective` on the search items:
first on a slice of `slice_size` units, reported to a median pruner (hopeless prompts stop there), then on the rest.
A prompt the study has already scored is not scored again: the trial copies the earlier result (`repeat_of`).

Held-out items: `split_items` holds clips out of the search; only the final evaluation (`evaluate`) sees them, so
the reported flip rate is not graded by the search itself. The split is by clip: within each (language, voice
emotion) group of clips sorted by id, the clip at position p is held out when p + k is odd, k being the emotion's
index in `stimuli/spec/labels.json`; a group of one clip stays in the search. On the seed set that holds out A2
(happy, normal), A5 (sad, strong), A6 (angry, normal) and A9 (fearful, strong) of each language and searches on A1,
A3, A4, A7 and A8.

Studies resume and scale out: see `prompts.study` for storage and for how `trials` (the study's total of finished
trials) is kept exact across workers, kills and reruns.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from common.errors import ModalflipError
from common.stats import RateInterval, clustered_rate
from models.adapter import ModelAdapter
from probes.inputs import ProbeSet
from probes.logit_lens import label_logits
from prompts import study as studies
from prompts.grammar import Grammar, describe, load_grammar, suggest
from prompts.objective import OBJECTIVES, Score, Scorer, make_objective, prompted
from stimuli import spec
from stimuli.conditions import Item

SPLIT_RULE = "by clip: position + emotion index odd within (language, emotion) groups of >= 2 clips is held out"
MAX_FAILURES = 10  # consecutive failed trials (prompts the probes cannot score) before the search gives up


@dataclass
class SearchConfig:
    """How a study searches; the defaults are the documented `run_prompt_search.py` defaults."""

    study_name: str
    storage: str  # an SQLAlchemy URL or a journal file path (prompts.study)
    trials: int = 500  # the study's total of finished (complete or pruned) trials, over all workers and runs
    objective: str = "audio-flip"  # or "text-control"
    layers: tuple[int, int] = (5, 20)  # residual layers of the margin / patching window, inclusive
    multi_objective: bool = False  # NSGA-II on (score, prompt tokens) instead of TPE on the score
    slice_size: int = 8  # units scored before the pruner decides; 0 = no pruning (always none with NSGA-II)
    prune_after: int = 10  # trials finished before the pruner prunes
    startup_trials: int = 20  # random trials before TPE models the space
    batch_size: int = 16  # items per forward
    cache: str = "prefix"  # "none" | "audio" | "prefix" (prompts.objective)
    prefix_cache_mb: float = 1024  # memory for prefix key/value caches, least recently used ones dropped beyond it
    seed: int = 0  # sampler seed; several workers on one study should each get their own
    grammar_path: str | None = None  # default prompts/grammar.json
    model_hash: str = ""  # tie the study to the model and stimulus set it was made with
    stimulus_hash: str = ""


@dataclass
class SearchResult:
    study_name: str
    storage: str  # redacted
    finished: int  # complete + pruned trials in the study
    running: int  # trials still running in other workers when this one stopped
    best: list[dict]  # the top prompts (single objective: by score; NSGA-II: the Pareto front), best first
    trials: list[dict]  # one row per trial of the study (any state), by number
    ran: int  # trials this worker finished
    scored: int  # of those, trials that were scored (not repeats)
    queries: int  # item forwards this worker ran
    seconds: float  # wall-clock time of this worker
    trial_seconds: list[float] = field(default_factory=list)  # wall-clock time of each trial this worker scored
    prefix_hit_rate: float | None = None  # share of item forwards whose prefix came from the cache (this worker)


def split_items(items: list[Item]) -> tuple[list[Item], list[Item]]:
    """(search items, held-out items); see the module docstring for the rule."""
    emotions = spec.emotions()
    groups: dict[tuple[str, str], list[str]] = {}
    for item in items:
        clips = groups.setdefault((item.lang, item.audio_emotion), [])
        if item.clip_id not in clips:
            clips.append(item.clip_id)
    held = set()
    for (lang, emotion), clips in groups.items():
        if len(clips) < 2:
            continue
        k = emotions.index(emotion)
        held.update(clip for p, clip in enumerate(sorted(clips)) if (p + k) % 2 == 1)
    return [i for i in items if i.clip_id not in held], [i for i in items if i.clip_id in held]


def interleave(units: list, clip_of: Callable) -> list:
    """Units in round-robin order over their clips, so a slice of the first few spans many clips and languages."""
    by_clip: dict[str, list] = {}
    for unit in units:
        by_clip.setdefault(clip_of(unit), []).append(unit)
    lanes = list(by_clip.values())
    return [lane[i] for i in range(max(map(len, lanes), default=0)) for lane in lanes if i < len(lane)]


def label_ids_all(adapter: ModelAdapter) -> dict[str, dict[str, int]]:
    """Label token ids of every language a prompt may be written in."""
    return {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}


def _study_settings(config: SearchConfig, grammar: Grammar) -> dict:
    return dict(objective=config.objective, layers=list(config.layers), multi_objective=config.multi_objective,
                grammar_hash=grammar.hash, model_hash=config.model_hash, stimulus_hash=config.stimulus_hash,
                split=SPLIT_RULE)


def open_study(config: SearchConfig, grammar: Grammar) -> optuna.Study:
    """Create or resume the study; a `ModalflipError` when an existing one was made with other settings."""
    storage = studies.open_storage(config.storage)
    directions = ["maximize", "minimize"] if config.multi_objective else ["maximize"]
    try:
        existing = optuna.load_study(study_name=config.study_name, storage=storage)
        n_existing = len(existing.trials)
    except KeyError:
        n_existing = 0
    seed = int(np.random.SeedSequence([config.seed, n_existing]).generate_state(1)[0])  # no replay after a resume
    if config.multi_objective:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
        pruner = optuna.pruners.NopPruner()
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                             n_startup_trials=config.startup_trials)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=config.prune_after) if config.slice_size else \
            optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, study_name=config.study_name, directions=directions,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    except ValueError as err:
        raise ModalflipError(f"study {config.study_name!r}: {err}; pass another --study-name") from None
    wanted = _study_settings(config, grammar)
    stored = study.user_attrs.get("modalflip")
    if stored is None:
        study.set_user_attr("modalflip", wanted)
        if not study.trials:
            study.enqueue_trial(grammar.seed_prompt, user_attrs={"reference": "the stimulus set's conflict prompt"})
    elif stored != wanted or len(study.directions) != len(directions):
        differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise ModalflipError(f"study {config.study_name!r} in {studies.redact(config.storage)} was made with other "
                             f"settings ({', '.join(differ) or 'objectives'} differ); resume it with the same "
                             "settings, or start a new study with --study-name")
    return study


def run(adapter: ModelAdapter, probe_set: ProbeSet, config: SearchConfig,
        progress: Callable[[int, float | None], None] | None = None,
        say: Callable[[str], None] = print) -> SearchResult:
    """Run this worker's share of the study until it has `config.trials` finished trials; see module docstring.

    `probe_set` holds the search items (conflict items; text-control also needs the consistent ones) and may hold
    more: only the search split of its items is scored. `progress(finished, best score)` is called after each trial.
    A scoring batch that runs out of GPU memory is halved for the rest of the run, and `say` tells the user.
    """
    if config.objective not in OBJECTIVES:
        raise ModalflipError(f"unknown objective {config.objective!r}; known: {', '.join(OBJECTIVES)}")
    if config.trials < 1:
        raise ModalflipError("--trials must be at least 1")
    started = time.perf_counter()
    grammar = load_grammar(config.grammar_path)
    search, _ = split_items(probe_set.items)
    scorer = Scorer(adapter, config.layers, config.batch_size, config.cache, config.prefix_cache_mb, say)
    objective = make_objective(config.objective, scorer, search)
    if not objective.units:
        raise ModalflipError(f"no {config.objective} units among the search items: audio-flip needs conflict items, "
                             "text-control conflict and consistent items of the same clips")
    units = interleave(objective.units, lambda u: getattr(u, "clip_id", None) or u.receiver.clip_id)
    slice_size = 0 if config.multi_objective else min(config.slice_size, len(units))
    if slice_size == len(units):
        slice_size = 0
    label_ids = label_ids_all(adapter)
    langs = sorted({i.lang for i in probe_set.items})
    study = open_study(config, grammar)
    mine = {"ran": 0, "scored": 0, "failures": 0, "error": "", "seconds": []}

    def score_trial(trial: optuna.Trial):
        trial.set_user_attr("worker", studies.worker_id())
        studies.claim_slot(study, trial, config.trials)
        begin = time.perf_counter()
        sample = suggest(trial, grammar)
        trial.set_user_attr("prompt", describe(grammar, sample, langs))
        earlier = _scored_before(study, sample)
        if earlier is not None:
            trial.set_user_attr("repeat_of", earlier.number)
            trial.set_user_attr("score", earlier.user_attrs["score"])
            return earlier.values[0] if not config.multi_objective else tuple(earlier.values)
        asked = prompted(probe_set, grammar, sample, label_ids)
        forwards = scorer.forwards
        try:
            rows = []
            if slice_size:
                rows = objective.evaluate(asked, units[:slice_size])
                partial = objective.aggregate(rows, len(units))
                trial.report(partial.value, 0)
                if trial.should_prune():
                    _store(trial, partial, begin, scorer.forwards - forwards)
                    mine["seconds"].append(time.perf_counter() - begin)
                    raise optuna.TrialPruned()
            rows += objective.evaluate(asked, units[len(rows):])
        except ModalflipError as err:
            trial.set_user_attr("error", str(err))
            raise
        score = objective.aggregate(rows, len(units))
        _store(trial, score, begin, scorer.forwards - forwards)
        mine["seconds"].append(time.perf_counter() - begin)
        mine["scored"] += 1
        return (score.value, score.tokens) if config.multi_objective else score.value

    def after(study_: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state in studies.COUNTED:
            mine["ran"] += 1
            mine["failures"] = 0
        elif trial.state == TrialState.FAIL and "error" in trial.user_attrs:
            mine["failures"] += 1
            mine["error"] = trial.user_attrs["error"]
        if progress:
            progress(studies.counts(study_)[0], _best_value(study_))

    if progress:
        progress(studies.counts(study)[0], _best_value(study))
    while True:
        studies.fail_dead_trials(study)
        done, running = studies.counts(study)
        if done >= config.trials:
            break
        if done + running >= config.trials:
            if not studies.unclaimed(study):
                break  # the missing trials run in live workers
            time.sleep(1.0)  # a trial of a worker that may have died before recording itself: wait to know
            continue
        if mine["failures"] >= MAX_FAILURES:
            raise ModalflipError(f"{MAX_FAILURES} prompts in a row could not be scored; the last error: "
                                 f"{mine['error']}")
        study.optimize(score_trial, n_trials=1, catch=(studies.Surplus, ModalflipError), callbacks=[after],
                       gc_after_trial=False)
    done, running = studies.counts(study)
    return SearchResult(
        study_name=config.study_name, storage=studies.redact(config.storage), finished=done, running=running,
        best=best_trials(study, config.multi_objective), trials=[trial_row(t) for t in study.trials],
        ran=mine["ran"], scored=mine["scored"], queries=scorer.forwards, seconds=time.perf_counter() - started,
        trial_seconds=mine["seconds"],
        prefix_hit_rate=scorer.prefix_hits / (scorer.prefix_hits + scorer.prefix_misses)
        if scorer.prefix_hits + scorer.prefix_misses else None)


def _store(trial: optuna.Trial, score: Score, begin: float, forwards: int) -> None:
    """One user attr (one storage write): the score's parts, the trial's wall-clock seconds and item forwards."""
    trial.set_user_attr("score", dict({k: v for k, v in vars(score).items() if v is not None},
                                      seconds=round(time.perf_counter() - begin, 4), forwards=forwards))


def _scored_before(study: optuna.Study, sample: dict[str, str]) -> FrozenTrial | None:
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.params == sample and "score" in trial.user_attrs:
            return trial
    return None


def _best_value(study: optuna.Study) -> float | None:
    values = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(values) if values else None


def trial_row(trial: FrozenTrial) -> dict:
    """One trial as a flat dict (trials.csv): number, state, values, score parts, slots, prompt, worker."""
    score = trial.user_attrs.get("score", {})
    return dict(number=trial.number, state=trial.state.name,
                value=trial.values[0] if trial.values else None,
                tokens=score.get("tokens"), flip_rate=score.get("flip_rate"), margin=score.get("margin"),
                effect=score.get("effect"), units=score.get("n_units"),
                seconds=None if "repeat_of" in trial.user_attrs else score.get("seconds"),
                forwards=0 if "repeat_of" in trial.user_attrs else score.get("forwards"),
                repeat_of=trial.user_attrs.get("repeat_of"),
                slots=dict(trial.params), prompt=trial.user_attrs.get("prompt"),
                worker=trial.user_attrs.get("worker"), note=trial.user_attrs.get("error")
                or ("surplus" if trial.user_attrs.get("surplus") else trial.user_attrs.get("reference")))


def best_trials(study: optuna.Study, multi_objective: bool, top: int = 10) -> list[dict]:
    """Single objective: the `top` complete trials by score, distinct prompts only. NSGA-II: the Pareto front of
    (score, tokens), highest score first."""
    if multi_objective:
        chosen = sorted(study.best_trials, key=lambda t: (-t.values[0], t.values[1]))
    else:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if "repeat_of" not in t.user_attrs]
        chosen = sorted(complete, key=lambda t: (-t.values[0], t.number))[:top]
    return [trial_row(t) for t in chosen]


@dataclass
class Evaluation:
    """A prompt on held-out conflict items, read with the probes' own (uncached) logit lens."""

    items: list[dict]  # per item: item_id, clip_id, text_emotion, lang, flipped, answer, delta_window, delta_last
    interval: RateInterval  # flips / items with its 95% interval over clips

    @property
    def flips(self) -> int:
        return self.interval.k

    @property
    def n(self) -> int:
        return self.interval.n

    @property
    def flip_rate(self) -> float:
        return self.interval.rate or 0.0


def evaluate(adapter: ModelAdapter, probe_set: ProbeSet, sample: dict[str, str], items: list[Item],
             layers: tuple[int, int], batch_size: int = 16, grammar_path: str | None = None) -> Evaluation:
    """Flip rate (answer = the voice's A) of `sample` on the conflict `items`, with its interval over clips, and per
    item Δlogit = logit(T) − logit(A) at the last layer and averaged over the window (logits)."""
    grammar = load_grammar(grammar_path)
    conflict = [i for i in items if i.condition == "conflict"]
    if not conflict:
        raise ModalflipError("no held-out conflict items: the stimulus set needs at least two clips of one emotion "
                             "in a language")
    asked = prompted(probe_set, grammar, sample, label_ids_all(adapter))
    per_layer, final = label_logits(adapter, asked, conflict, batch_size)
    emotions = spec.emotions()
    rows = []
    for item in conflict:
        a, t = emotions.index(item.audio_emotion), emotions.index(item.text_emotion)
        delta = per_layer[item.item_id][:, t] - per_layer[item.item_id][:, a]
        answer = emotions[int(np.argmax(final[item.item_id]))]
        rows.append(dict(item_id=item.item_id, clip_id=item.clip_id, text_emotion=item.text_emotion, lang=item.lang,
                         flipped=answer == item.audio_emotion, answer=answer,
                         delta_window=round(float(delta[layers[0]:layers[1] + 1].mean()), 5),
                         delta_last=round(float(delta[-1]), 5)))
    interval = clustered_rate([r["flipped"] for r in rows], [r["clip_id"] for r in rows])
    return Evaluation(items=rows, interval=interval)
