"""The two baselines every board shows: the unmodified conflict prompt and a plain "judge by the voice" prompt.

`run_probes.py` runs both prompts on the conflict items it probes and passes the per-item outcomes here; the records
it gets back go through `write_record` like any other. Baselines spend no budget, so the board shows them in every
group of their model, stimulus set and language, next to the attacks they are the reference for.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from eval.records import DEFAULT_WINDOW, Record, make_record

CONFLICT_PROMPT = "baseline:conflict-prompt"
JUDGE_BY_VOICE = "baseline:judge-by-voice"


def is_baseline(record: Record) -> bool:
    return record.method.startswith("baseline:")


@dataclass
class BaselineRun:
    """One baseline prompt run on the conflict items.

    items: one dict per conflict item, `{"item_id": str, "flipped": bool, ...extras}`; flipped means the answer
        named the voice's emotion instead of the one the text asserts.
    settings: what rebuilds the prompt, e.g. {"template": "judge_by_voice"} (a key of stimuli/spec/templates.json).
    delta_last, delta_window: mean shift of Δlogit = logit(T) − logit(A) (text label − voice label, logits)
        relative to the unmodified conflict prompt, at the last layer and averaged over the layer window (negative =
        toward the voice); ignored for the conflict prompt itself, whose shift is 0 by definition.
    seconds, queries: wall-clock time and forward passes spent on this prompt.
    figures: figure files relative to the artifacts folder (logit-lens curves, ...).
    """

    items: Sequence[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    delta_last: float | None = None
    delta_window: float | None = None
    seconds: float = 0.0
    queries: int = 0
    figures: Sequence[str] = ()


def baseline_records(
    *,
    conflict: BaselineRun,
    judge_by_voice: BaselineRun,
    model_id: str,
    model_hash: str,
    stimulus_hash: str,
    lang: str,
    seed: int,
    artifacts: str | os.PathLike,
    window: tuple[int, int] = DEFAULT_WINDOW,
) -> list[Record]:
    """The two baseline records, [conflict prompt, judge by the voice], with an empty budget."""
    shared = dict(model_id=model_id, model_hash=model_hash, stimulus_hash=stimulus_hash, lang=lang, budget={},
                  seed=seed, artifacts=artifacts, window=window)
    return [
        make_record(method=CONFLICT_PROMPT, settings=conflict.settings, items=conflict.items,
                    delta_last=0.0, delta_window=0.0, seconds=conflict.seconds, queries=conflict.queries,
                    figures=conflict.figures, **shared),
        make_record(method=JUDGE_BY_VOICE, settings=judge_by_voice.settings, items=judge_by_voice.items,
                    delta_last=judge_by_voice.delta_last, delta_window=judge_by_voice.delta_window,
                    seconds=judge_by_voice.seconds, queries=judge_by_voice.queries,
                    figures=judge_by_voice.figures, **shared),
    ]
