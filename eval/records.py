"""The results store: one JSON record per run under `<runs_dir>/records/`, written atomically.

Every runner (`run_probes.py`, `run_prompt_search.py`, `run_attack.py`) builds its record with `make_record`, which
derives the counts, flip rate and its clustered interval from the per-item outcomes, and saves it with `write_record`.
One file per record means concurrent runs never write the same file. `load_records` reads them all back; a file
that is malformed or partial is reported in `problems` and skipped, and records of an older schema are upgraded.

A flip is an item on which the model's answer follows the emotion in the voice instead of the one the text
asserts. Δlogit = logit(T) − logit(A), the text's label minus the voice's, read through the logit lens in logits
(the pilot's definition, used by every probe, table and figure); `delta_last` is the mean change of Δlogit at the
last layer relative to the unmodified conflict prompt (negative = toward the voice), `delta_window` the same
averaged over the layers in `window` (inclusive, layer 0 = embeddings).

Items are not independent: the items of one clip share its audio (and, in an attack, its δ). The interval of a
flip rate resamples the clip (`common.stats.clustered_rate`); each item names its clip in `clip_id` (derived from
the item id `<clip id>/<condition>/T=<emotion>` when a runner does not give it) and the record names the unit in
`ci_unit` with the number of units in `n_units`.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import types
import typing
import uuid
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from common.atomic import atomic_write_json, atomic_write_text
from common.errors import ModalflipError
from common.stats import UNIT_CLIP, clustered_rate, wilson_interval

SCHEMA_VERSION = 2
DEFAULT_WINDOW = (5, 20)
RECORDS_SUBDIR = "records"


@dataclass
class Record:
    """One run of one method on one model and stimulus set, as stored in `<runs_dir>/records/*.json`."""

    record_id: str  # uuid4 hex; the board shows the first 8 characters, `--compare` takes any unique prefix
    created: str  # ISO 8601, UTC
    method: str  # "pgd", "prompt-search", "baseline:conflict-prompt", ...
    settings: dict[str, Any]  # the method's configuration, enough to rerun it
    model_id: str
    model_hash: str  # models.loading.model_hash: config and weight fingerprint
    stimulus_hash: str  # `stimuli.spec.spec_hash()` of the stimulus set
    lang: str  # the runner's `--lang`: "en", "zh" or "both"
    budget: dict[str, float]  # e.g. {"linf": 0.002, "snr_db": 35.0} or {"prompt_tokens": 20}; {} for none
    seed: int
    code_version: str  # `git describe --always --dirty`, else the installed package version, else "unknown"
    n_items: int  # conflict items the method was run on
    flips: int
    flip_rate: float  # flips / n_items
    ci_low: float  # 95% interval of flip_rate, resampling `ci_unit`s (cluster bootstrap; see common.stats)
    ci_high: float
    delta_last: float | None  # mean shift of Δlogit = logit(T) − logit(A) at the last layer (logits); None if not measured
    delta_window: float | None  # mean shift of Δlogit over layers window[0]..window[1] (logits)
    window: list[int]  # [first, last] layer of the Δlogit window, inclusive
    seconds: float  # wall-clock time of the run
    queries: int  # model forward passes (prompt search, attack iterations); 0 where not counted
    artifacts: str  # the run's output folder; relative paths are relative to runs_dir
    items: list[dict[str, Any]]  # per item: {"item_id": str, "flipped": bool, ...optional extras}
    figures: list[str] = field(default_factory=list)  # figure files, relative to the artifacts folder
    ci_unit: str = UNIT_CLIP  # the independent unit the interval resamples
    n_units: int = 0  # how many of them the items span
    schema_version: int = SCHEMA_VERSION

    def group_key(self) -> tuple:
        """What must agree for two records to be compared fairly: model, stimulus set, language and budget."""
        return (self.model_id, self.model_hash, self.stimulus_hash, self.lang, tuple(sorted(self.budget.items())))

    @property
    def short_id(self) -> str:
        return self.record_id[:8]


def make_record(
    *,
    method: str,
    settings: dict[str, Any],
    model_id: str,
    model_hash: str,
    stimulus_hash: str,
    lang: str,
    budget: dict[str, float],
    seed: int,
    items: Sequence[dict[str, Any]],
    delta_last: float | None,
    delta_window: float | None,
    seconds: float,
    queries: int,
    artifacts: str | os.PathLike,
    window: tuple[int, int] = DEFAULT_WINDOW,
    figures: Sequence[str] = (),
    unit: str = UNIT_CLIP,
) -> Record:
    """A new record whose counts, flip rate and clustered interval are computed from `items`.

    `items` holds one dict per conflict item with at least `item_id` (str, unique) and `flipped` (bool), and
    ideally `clip_id` (the cluster; derived from the item id when missing) and `text_emotion`; other keys (the
    item's own Δlogit, the answer text, ...) are kept as they are. `unit` names what the interval resamples
    ("clip"; an attack whose items share one universal δ says so). Raises ValueError for malformed items, which is
    a bug in the calling runner.
    """
    items = [_with_cluster(dict(item)) for item in items]
    problem = _items_problem(items) or _budget_problem(budget)
    if problem:
        raise ValueError(problem)
    flips = sum(item["flipped"] for item in items)
    interval = item_interval(items, unit)
    return Record(
        record_id=uuid.uuid4().hex,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        method=method,
        settings=dict(settings),
        model_id=model_id,
        model_hash=model_hash,
        stimulus_hash=stimulus_hash,
        lang=lang,
        budget=dict(budget),
        seed=int(seed),
        code_version=code_version(),
        n_items=len(items),
        flips=flips,
        flip_rate=flips / len(items),
        ci_low=interval.low,
        ci_high=interval.high,
        delta_last=None if delta_last is None else float(delta_last),
        delta_window=None if delta_window is None else float(delta_window),
        window=list(window),
        seconds=float(seconds),
        queries=int(queries),
        artifacts=str(artifacts),
        items=items,
        figures=[str(figure) for figure in figures],
        ci_unit=unit,
        n_units=interval.n_units,
    )


def clip_of(item: dict[str, Any]) -> str:
    """The clip an item belongs to: its `clip_id`, else the part of its id before the first '/'."""
    return str(item.get("clip_id") or item["item_id"].split("/", 1)[0])


def claim_of(item: dict[str, Any]) -> str | None:
    """The emotion the item's text asserts: its `text_emotion`, else the `T=<emotion>` part of its id."""
    if item.get("text_emotion"):
        return str(item["text_emotion"])
    match = re.search(r"(?:^|/)T=([^/]+)", item["item_id"])
    return match.group(1) if match else None


def item_interval(items: Sequence[dict[str, Any]], unit: str = UNIT_CLIP):
    """`common.stats.clustered_rate` of the items' flips, clustered on their clips."""
    return clustered_rate([item["flipped"] for item in items], [clip_of(item) for item in items], unit)


def _with_cluster(item: dict[str, Any]) -> dict[str, Any]:
    if isinstance(item.get("item_id"), str) and "clip_id" not in item:
        item["clip_id"] = clip_of(item)
    return item


def write_record(record: Record, runs_dir: str | os.PathLike = "runs") -> Path:
    """Write `record` atomically to `<runs_dir>/records/<timestamp>-<method>-<id8>.json`; returns that path.

    An artifacts folder inside `runs_dir` is stored relative to it, so the results folder can be copied elsewhere
    (from the GPU machine to a laptop) and its board still finds the figures.
    """
    runs_dir = Path(runs_dir)
    stamp = datetime.fromisoformat(record.created).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    method = re.sub(r"[^A-Za-z0-9_.-]+", "-", record.method).strip("-") or "run"
    path = runs_dir / RECORDS_SUBDIR / f"{stamp}-{method}-{record.short_id}.json"
    data = asdict(record)
    data["artifacts"] = _portable(Path(record.artifacts), runs_dir)
    return atomic_write_json(path, data)


def load_records(runs_dir: str | os.PathLike = "runs") -> tuple[list[Record], list[tuple[Path, str]]]:
    """All records under `<runs_dir>/records/`, oldest file name first, and the files that were skipped.

    Returns (records, problems); each problem is (path, reason) for a file that is not valid JSON, lacks a field,
    has a field of the wrong type, disagrees with its own items, or repeats another file's record id. A missing
    folder gives two empty lists.
    """
    folder = Path(runs_dir) / RECORDS_SUBDIR
    records: list[Record] = []
    problems: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            record = record_from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as err:
            problems.append((path, f"unreadable: {err}"))
            continue
        except json.JSONDecodeError as err:
            problems.append((path, f"not valid JSON (truncated?): {err}"))
            continue
        except ModalflipError as err:
            problems.append((path, str(err)))
            continue
        if record.record_id in seen:
            problems.append((path, f"repeats record id {record.record_id} of {seen[record.record_id].name}"))
            continue
        seen[record.record_id] = path
        records.append(record)
    return records, problems


def record_from_dict(data: Any) -> Record:
    """A `Record` from parsed JSON of any schema version; a `ModalflipError` says what is wrong with it."""
    if not isinstance(data, dict):
        raise ModalflipError(f"a record is a JSON object, not {type(data).__name__}")
    data = upgrade(data)
    hints = typing.get_type_hints(Record)
    missing = [f.name for f in fields(Record) if f.name not in data and _required(f)]
    if missing:
        raise ModalflipError(f"partial record: missing {', '.join(missing)}")
    known = {f.name: data[f.name] for f in fields(Record) if f.name in data}
    for name, value in known.items():
        if not _conforms(value, hints[name]):
            raise ModalflipError(f"field {name} is {type(value).__name__}, expected {_hint_name(hints[name])}")
    record = Record(**known)
    problem = (_items_problem(record.items) or _budget_problem(record.budget) or _counts_problem(record)
               or _window_problem(record.window))
    if problem:
        raise ModalflipError(problem)
    return record


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """`data` lifted step by step from its `schema_version` (0 when absent) to `SCHEMA_VERSION`."""
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or version < 0:
        raise ModalflipError(f"schema_version {version!r} is not a version number")
    if version > SCHEMA_VERSION:
        raise ModalflipError(
            f"schema_version {version} is newer than this modalflip reads ({SCHEMA_VERSION}); update modalflip"
        )
    while version < SCHEMA_VERSION:
        data = _UPGRADES[version](data)
        version = data["schema_version"]
    return data


def _from_v0(old: dict[str, Any]) -> dict[str, Any]:
    """Schema 0, the draft layout before per-item `items`: `id`, `model`, `language`, `time_s`, outcomes as a flat map
    {item_id: flipped} with no counts, and no model hash, code version, layer window or figures."""
    new = {key: value for key, value in old.items()
           if key not in ("id", "model", "language", "time_s", "outcomes")}
    renamed = {"id": "record_id", "model": "model_id", "language": "lang", "time_s": "seconds"}
    new.update({renamed[key]: old[key] for key in renamed if key in old})
    outcomes = old.get("outcomes")
    if isinstance(outcomes, dict):
        items = [{"item_id": item_id, "flipped": flipped} for item_id, flipped in outcomes.items()]
        flips = sum(item["flipped"] is True for item in items)
        low, high = wilson_interval(flips, len(items))
        new.update(items=items, n_items=len(items), flips=flips, flip_rate=flips / max(len(items), 1),
                   ci_low=low, ci_high=high)
    new.setdefault("model_hash", "unknown")
    new.setdefault("code_version", "unknown")
    new.setdefault("window", list(DEFAULT_WINDOW))
    new["schema_version"] = 1
    return new


def _from_v1(old: dict[str, Any]) -> dict[str, Any]:
    """Schema 1: item-level Wilson intervals and Δlogit as logit(A) − logit(T). Schema 2 clusters the interval on
    the clip and uses the pilot's sign, logit(T) − logit(A): the record's shifts and the prompt search's per-item
    margins (`margin`, `margin_last`, A − T) change sign (the latter become `delta_window`, `delta_last`); the
    baselines' per-item `delta_last` was T − A already."""
    new = dict(old)
    for key in ("delta_last", "delta_window"):
        if isinstance(new.get(key), (int, float)) and not isinstance(new.get(key), bool):
            new[key] = -new[key]
    items = new.get("items")
    if isinstance(items, list) and not _items_problem(items):
        upgraded = []
        for item in items:
            item = _with_cluster(dict(item))
            for old_key, new_key in (("margin", "delta_window"), ("margin_last", "delta_last")):
                if isinstance(item.get(old_key), (int, float)) and new_key not in item:
                    item[new_key] = -item.pop(old_key)
            upgraded.append(item)
        interval = item_interval(upgraded)
        new.update(items=upgraded, ci_low=interval.low, ci_high=interval.high, ci_unit=UNIT_CLIP,
                   n_units=interval.n_units)
    new["schema_version"] = 2
    return new


_UPGRADES = {0: _from_v0, 1: _from_v1}


def artifacts_dir(record: Record, runs_dir: str | os.PathLike = "runs") -> Path:
    """The record's artifacts folder; a relative `artifacts` is resolved against `runs_dir`."""
    path = Path(record.artifacts)
    return path if path.is_absolute() else Path(runs_dir) / path


def write_csv(records: Sequence[Record], path: str | os.PathLike) -> Path:
    """Export `records` as CSV, one row per record (per-item outcomes left out), atomically; returns the path.

    Each budget key gets a `budget_<key>` column; `settings` and `window` are JSON text.
    """
    budget_keys = sorted({key for record in records for key in record.budget})
    scalar = [f.name for f in fields(Record) if f.name not in ("settings", "budget", "window", "items", "figures")]
    header = scalar + [f"budget_{key}" for key in budget_keys] + ["window", "settings"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for record in records:
        writer.writerow(
            [getattr(record, name) for name in scalar]
            + [record.budget.get(key, "") for key in budget_keys]
            + [json.dumps(record.window), json.dumps(record.settings, sort_keys=True)]
        )
    return atomic_write_text(path, buffer.getvalue())


@lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe --always --dirty` of the checkout this package lives in, else its installed version."""
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                                  text=True, timeout=10)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        return metadata.version("modalflip")
    except metadata.PackageNotFoundError:
        return "unknown"


def _portable(artifacts: Path, runs_dir: Path) -> str:
    try:
        return str(artifacts.resolve().relative_to(runs_dir.resolve()))
    except ValueError:
        return str(artifacts.resolve())


def _required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _items_problem(items: Any) -> str | None:
    if not items:
        return "a record needs at least one item"
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("item_id"), str):
            return f"item {index} has no string item_id"
        if not isinstance(item.get("flipped"), bool):
            return f"item {item['item_id']} has no true/false 'flipped'"
        if item["item_id"] in seen:
            return f"item id {item['item_id']} appears twice"
        seen.add(item["item_id"])
    return None


def _budget_problem(budget: dict) -> str | None:
    for key, value in budget.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"budget {key} is {value!r}, not a number"
    return None


def _counts_problem(record: Record) -> str | None:
    flips = sum(item["flipped"] for item in record.items)
    if record.n_items != len(record.items) or record.flips != flips:
        return (f"counts disagree with items: n_items={record.n_items}, flips={record.flips}, "
                f"but items hold {len(record.items)} with {flips} flipped")
    if abs(record.flip_rate - flips / len(record.items)) > 1e-9:
        return f"flip_rate {record.flip_rate} is not flips / n_items"
    return None


def _window_problem(window: list) -> str | None:
    if len(window) != 2 or not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in window):
        return f"window {window!r} is not [first, last] layer"
    return None


def _conforms(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, origin or hint)


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)
