"""The leaderboard's content, independent of how it is drawn: filtering, grouping, ranking and the cells of a row.

Flip rates are compared fairly only between runs on the same model (id and config hash), stimulus set, language and
budget, so the board is a list of `Group`s, one table each. Baselines spend no budget: they appear in every group of
their model, stimulus set and language, and method or budget filters never hide them.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from common.errors import ModalflipError
from eval.baselines import is_baseline
from eval.records import Record

CAPTION = ("Comparable only within this table: same model and config, stimulus set, language and budget. "
           "Baselines spend no budget and appear in every table of their model and stimulus set. 95% CI: cluster "
           "bootstrap over clips (the unit; n = clips). Δlogit = logit(T) − logit(A), change from the conflict "
           "prompt; negative = toward the voice.")
RANKING = ("Ranked by flip rate, ties by the lower bound of its 95% interval; intervals resample clips "
           "(cluster bootstrap), the independent unit.")
NO_BASELINE = "No baseline records for this model, stimulus set and language: run run_probes.py to add them."
COLUMNS = ("#", "id", "method", "settings", "seed", "flips", "flip rate", "95% CI", "clips",
           "Δlogit last", "Δlogit window", "queries", "time")
NUMERIC = frozenset(COLUMNS) - {"id", "method", "settings"}  # right-aligned


@dataclass(frozen=True)
class Filters:
    """Which records the board shows; an empty tuple admits everything."""

    models: tuple[str, ...] = ()
    langs: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    budget: tuple[tuple[str, float], ...] = ()  # (key, value) pairs that a record's budget must match

    def admits(self, record: Record) -> bool:
        if self.models and record.model_id not in self.models:
            return False
        if self.langs and record.lang not in self.langs:
            return False
        if is_baseline(record):
            return True
        if self.methods and record.method not in self.methods:
            return False
        return all(key in record.budget and math.isclose(record.budget[key], value, rel_tol=1e-9, abs_tol=1e-12)
                   for key, value in self.budget)


def parse_budget_filter(text: str) -> tuple[str, float]:
    """'linf=0.002' → ("linf", 0.002); a `ModalflipError` for anything else."""
    key, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or not key.strip() or number is None:
        raise ModalflipError(f"budget filter {text!r} is not KEY=NUMBER, e.g. linf=0.002 or prompt_tokens=20")
    return key.strip(), number


@dataclass
class Group:
    """One table of the board: records that may be compared, ranked best first."""

    model_id: str
    model_hash: str
    stimulus_hash: str
    lang: str
    budget: dict[str, float]
    entries: list[Record]

    @property
    def has_baseline(self) -> bool:
        return any(is_baseline(record) for record in self.entries)

    def title(self) -> str:
        return (f"{self.model_id} (model {self.model_hash[:8]}) · stimuli {self.stimulus_hash[:8]} · "
                f"lang {self.lang} · budget {budget_text(self.budget)}")

    def columns(self) -> list[str]:
        """`COLUMNS`, with the Δlogit window's layers named when all entries share one window."""
        windows = {tuple(record.window) for record in self.entries}
        if len(windows) != 1:
            return list(COLUMNS)
        first, last = windows.pop()
        return [f"Δlogit L{first}–{last}" if column == "Δlogit window" else column for column in COLUMNS]


def rank(records: Sequence[Record]) -> list[Record]:
    """Best first: flip rate, then the interval's lower bound (more clips, firmer rate), then more items, then
    oldest."""
    return sorted(records, key=lambda r: (-r.flip_rate, -r.ci_low, -r.n_items, r.created, r.record_id))


def build_board(records: Sequence[Record], filters: Filters = Filters()) -> list[Group]:
    """The groups of the board, each ranked, ordered by model, stimulus set, language and budget.

    A group with a budget holds its records plus the baselines of its model, stimulus set and language. The
    budget-free group is shown only when it holds more than baselines or its baselines have no other group.
    """
    kept = [record for record in records if filters.admits(record)]
    baselines: dict[tuple, list[Record]] = defaultdict(list)
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for record in kept:
        (baselines if is_baseline(record) else groups)[record.group_key()].append(record)
    for key, found in baselines.items():
        setting = key[:4]
        with_budget = [group_key for group_key in groups if group_key[:4] == setting]
        for group_key in with_budget or [key]:
            groups[group_key].extend(found)
    board = [Group(model_id=key[0], model_hash=key[1], stimulus_hash=key[2], lang=key[3], budget=dict(key[4]),
                   entries=rank(entries)) for key, entries in groups.items()]
    return sorted(board, key=lambda g: (g.model_id, g.model_hash, g.stimulus_hash, g.lang, sorted(g.budget.items())))


def cells(record: Record, position: int) -> list[str]:
    """The row of `record` at rank `position` (from 1), one string per entry of `COLUMNS`."""
    return [
        str(position),
        record.short_id,
        record.method,
        settings_text(record.settings),
        str(record.seed),
        f"{record.flips}/{record.n_items}",
        f"{record.flip_rate:.3f}",
        f"{record.ci_low:.3f}–{record.ci_high:.3f}",
        str(record.n_units) if record.ci_unit == "clip" else f"{record.n_units} ({record.ci_unit})",
        _signed(record.delta_last),
        _signed(record.delta_window),
        str(record.queries),
        duration_text(record.seconds),
    ]


def budget_text(budget: dict[str, float]) -> str:
    """'linf=0.002, snr_db=35' or 'none'."""
    return ", ".join(f"{key}={value:g}" for key, value in sorted(budget.items())) or "none"


def settings_text(settings: dict, width: int = 48) -> str:
    """The settings as 'key=value' pairs, shortened to `width` characters."""
    text = ", ".join(f"{key}={_compact(value)}" for key, value in settings.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _compact(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"
