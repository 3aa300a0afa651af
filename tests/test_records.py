"""The results store: records round-trip, bad files are reported and skipped, old schemas load, baselines, CSV."""
from __future__ import annotations

import csv
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.errors import ModalflipError
from common.stats import clustered_rate, wilson_interval
from eval.baselines import CONFLICT_PROMPT, JUDGE_BY_VOICE, BaselineRun, baseline_records
from eval.records import (SCHEMA_VERSION, Record, artifacts_dir, code_version, load_records, make_record,
                          record_from_dict, write_csv, write_record)

REPO = Path(__file__).resolve().parent.parent


def outcomes(flags: str, prefix: str = "item") -> list[dict]:
    """'1101' → four items, flipped where the flag is 1."""
    return [{"item_id": f"{prefix}{i}", "flipped": flag == "1"} for i, flag in enumerate(flags)]


def sample(runs: Path, method: str = "pgd", flags: str = "1101000011", **changes) -> Record:
    fields = dict(method=method, settings={"steps": 200, "step_size": 2e-4}, model_id="organism",
                  model_hash="c0ffee12", stimulus_hash="5eed5e7a", lang="en", budget={"linf": 0.002, "snr_db": 35.0},
                  seed=0, items=outcomes(flags), delta_last=2.5, delta_window=1.25, seconds=12.5, queries=2000,
                  artifacts=runs / f"{method}-run", figures=["lens.png"])
    fields.update(changes)
    return make_record(**fields)


def test_make_record_derives_counts_rate_and_the_clip_level_interval_from_items(tmp_path):
    record = sample(tmp_path, flags="1101000011")
    assert (record.n_items, record.flips, record.flip_rate) == (10, 5, 0.5)
    expected = clustered_rate([int(f) for f in "1101000011"], [f"item{i}" for i in range(10)])
    assert (record.ci_low, record.ci_high) == pytest.approx((expected.low, expected.high))
    assert (record.ci_unit, record.n_units) == ("clip", 10)
    assert record.schema_version == SCHEMA_VERSION and record.window == [5, 20]
    assert re.fullmatch(r"[0-9a-f]{32}", record.record_id)


def test_items_of_one_clip_widen_the_interval_and_count_as_one_unit(tmp_path):
    """Four items of each of five clips, two clips flipped throughout: 5 units, not 20."""
    items = [{"item_id": f"A{c}-en/conflict/T={t}", "flipped": c < 2} for c in range(5)
             for t in ("happy", "sad", "angry", "fearful")]
    record = sample(tmp_path, items=items)
    assert (record.flips, record.n_items, record.n_units) == (8, 20, 5)
    assert record.items[0]["clip_id"] == "A0-en"
    assert record.ci_high - record.ci_low > 1.3 * (wilson_interval(8, 20)[1] - wilson_interval(8, 20)[0])


def test_make_record_rejects_items_a_runner_got_wrong(tmp_path):
    with pytest.raises(ValueError, match="flipped"):
        sample(tmp_path, items=[{"item_id": "a", "flipped": 1}])
    with pytest.raises(ValueError, match="twice"):
        sample(tmp_path, items=[{"item_id": "a", "flipped": True}, {"item_id": "a", "flipped": False}])
    with pytest.raises(ValueError, match="at least one item"):
        sample(tmp_path, items=[])


def test_written_record_loads_back_unchanged(tmp_path):
    runs = tmp_path / "runs"
    record = sample(runs, items=[{"item_id": "A3-en", "flipped": True, "delta_last": 3.25}])
    path = write_record(record, runs)
    assert path.parent == runs / "records"
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-pgd-{record.short_id}\.json", path.name)
    (loaded,), problems = load_records(runs)
    assert problems == []
    assert loaded.artifacts == "pgd-run"  # stored relative to runs/, so the folder can be moved
    assert artifacts_dir(loaded, runs) == runs / "pgd-run"
    assert {**vars(loaded), "artifacts": record.artifacts} == vars(record)


def test_artifacts_outside_the_runs_folder_are_stored_absolute(tmp_path):
    record = sample(tmp_path, artifacts=tmp_path / "elsewhere")
    write_record(record, tmp_path / "runs")
    (loaded,), _ = load_records(tmp_path / "runs")
    assert Path(loaded.artifacts) == (tmp_path / "elsewhere").resolve()


def test_concurrent_writers_never_clash(tmp_path):
    runs = tmp_path / "runs"
    records = [sample(runs, seed=seed) for seed in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(lambda record: write_record(record, runs), records))
    assert len(set(paths)) == 24
    loaded, problems = load_records(runs)
    assert problems == [] and sorted(r.seed for r in loaded) == list(range(24))


def test_malformed_and_partial_records_are_reported_and_skipped_and_the_rest_loads(tmp_path):
    runs = tmp_path / "runs"
    good = [write_record(sample(runs, seed=seed), runs) for seed in range(2)]
    folder = runs / "records"
    valid = json.loads(good[0].read_text())
    bad = {
        "truncated.json": good[0].read_text()[:200],
        "missing.json": json.dumps({k: v for k, v in valid.items() if k not in ("flips", "items")}),
        "wrong-type.json": json.dumps({**valid, "record_id": "x1", "seed": "zero"}),
        "inconsistent.json": json.dumps({**valid, "record_id": "x2", "flips": 9}),
        "future.json": json.dumps({**valid, "record_id": "x3", "schema_version": SCHEMA_VERSION + 1}),
        "bad-window.json": json.dumps({**valid, "record_id": "x4", "window": [5, 10, 20]}),
        "duplicate.json": json.dumps(valid),
        "list.json": "[]",
    }
    for name, text in bad.items():
        (folder / name).write_text(text)
    records, problems = load_records(runs)
    assert sorted(r.seed for r in records) == [0, 1]
    reasons = {path.name: reason for path, reason in problems}
    assert set(reasons) == set(bad)
    assert "not valid JSON" in reasons["truncated.json"]
    assert "missing flips, items" in reasons["missing.json"]
    assert "seed" in reasons["wrong-type.json"]
    assert "counts disagree" in reasons["inconsistent.json"]
    assert "newer" in reasons["future.json"]
    assert "window" in reasons["bad-window.json"]
    assert "repeats record id" in reasons["duplicate.json"]


def test_a_missing_results_folder_has_no_records_and_no_problems(tmp_path):
    assert load_records(tmp_path / "nothing-here") == ([], [])


def test_schema0_record_loads_with_old_names_and_flat_outcomes(tmp_path):
    old = {
        "id": "0ld0ld0ld0ld", "created": "2025-01-15T09:30:00+00:00", "method": "pgd",
        "settings": {"steps": 100}, "model": "organism", "stimulus_hash": "5eed5e7a", "language": "zh",
        "budget": {"linf": 0.004}, "seed": 3, "outcomes": {"B1-zh": True, "B2-zh": False, "B1-zh/T=sad": True},
        "delta_last": 1.5, "delta_window": None, "time_s": 61.0, "queries": 300, "artifacts": "pgd-old",
    }
    folder = tmp_path / "runs" / "records"
    folder.mkdir(parents=True)
    (folder / "20250115T093000Z-pgd-0ld0ld0l.json").write_text(json.dumps(old))
    (record,), problems = load_records(tmp_path / "runs")
    assert problems == []
    assert (record.record_id, record.model_id, record.lang, record.seconds) == ("0ld0ld0ld0ld", "organism", "zh", 61.0)
    assert (record.n_items, record.flips, record.flip_rate) == (3, 2, pytest.approx(2 / 3))
    assert (record.ci_low, record.ci_high, record.n_units) == (0.0, 1.0, 2)  # of two clips one flips throughout
    assert record.items[0] == {"item_id": "B1-zh", "flipped": True, "clip_id": "B1-zh"}
    assert (record.model_hash, record.code_version) == ("unknown", "unknown")
    assert (record.window, record.figures) == ([5, 20], [])
    assert record.schema_version == SCHEMA_VERSION


def test_schema1_record_takes_the_pilots_sign_and_a_clustered_interval():
    old = {
        "record_id": "1d" * 16, "created": "2026-11-20T09:30:00+00:00", "method": "prompt-search", "settings": {},
        "model_id": "organism", "model_hash": "c0ffee12", "stimulus_hash": "5eed5e7a", "lang": "en", "budget": {},
        "seed": 0, "code_version": "abc", "n_items": 8, "flips": 4, "flip_rate": 0.5, "ci_low": 0.2, "ci_high": 0.8,
        "delta_last": -2.0, "delta_window": -1.0, "window": [5, 20], "seconds": 1.0, "queries": 8, "artifacts": "x",
        "items": [{"item_id": f"A{c}-en/conflict/T={t}", "flipped": c == 0, "margin": 1.5, "margin_last": 2.5}
                  for c in range(2) for t in ("happy", "sad", "angry", "fearful")],
        "schema_version": 1,
    }
    record = record_from_dict(old)
    assert (record.delta_last, record.delta_window) == (2.0, 1.0)  # A − T became T − A
    assert record.items[0]["delta_window"] == -1.5 and record.items[0]["delta_last"] == -2.5
    assert "margin" not in record.items[0] and record.items[0]["clip_id"] == "A0-en"
    assert (record.n_units, record.ci_unit) == (2, "clip")
    assert (record.ci_low, record.ci_high) == (0.0, 1.0)  # was the item-level 0.2..0.8 of 8 items


def test_schema0_record_without_outcomes_is_reported_as_partial():
    with pytest.raises(ModalflipError, match="partial record: missing .*items"):
        record_from_dict({"id": "x", "method": "pgd", "model": "organism"})


def test_code_version_is_git_describe_in_a_checkout():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
    assert code_version() == described


def test_baseline_records_are_the_two_prompts_without_budget(tmp_path):
    conflict = BaselineRun(items=outcomes("1000"), settings={"template": "conflict"}, delta_last=9.0, seconds=3.0)
    voice = BaselineRun(items=outcomes("1100"), settings={"template": "judge_by_voice"}, delta_last=0.5,
                        delta_window=0.25, queries=4)
    first, second = baseline_records(conflict=conflict, judge_by_voice=voice, model_id="organism",
                                     model_hash="c0ffee12", stimulus_hash="5eed5e7a", lang="en", seed=0,
                                     artifacts=tmp_path / "probes")
    assert (first.method, second.method) == (CONFLICT_PROMPT, JUDGE_BY_VOICE)
    assert first.budget == second.budget == {}
    assert (first.flips, second.flips) == (1, 2)
    assert (first.delta_last, first.delta_window) == (0.0, 0.0)  # the reference shifts nothing
    assert (second.delta_last, second.delta_window, second.queries) == (0.5, 0.25, 4)


def test_csv_export_has_one_row_per_record_with_budget_columns(tmp_path):
    records = [sample(tmp_path, seed=1), sample(tmp_path, method="prompt-search", budget={"prompt_tokens": 20})]
    path = write_csv(records, tmp_path / "records.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["record_id"] for row in rows] == [r.record_id for r in records]
    assert rows[0]["budget_linf"] == "0.002" and rows[0]["budget_prompt_tokens"] == ""
    assert rows[1]["budget_prompt_tokens"] == "20"
    assert float(rows[0]["flip_rate"]) == records[0].flip_rate
    assert json.loads(rows[0]["settings"]) == records[0].settings
