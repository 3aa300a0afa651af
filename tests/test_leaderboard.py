"""The leaderboard: ranking, fair groups, filters, the paired test at the clip, Markdown and the command line."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from common.errors import ModalflipError
from eval.baselines import BaselineRun, baseline_records
from eval.board import Filters, build_board, parse_budget_filter, rank
from eval.leaderboard import markdown, print_board
from eval.paired import compare, find_record
from eval.records import Record, make_record, write_record

REPO = Path(__file__).resolve().parent.parent
ORGANISM = dict(model_id="organism", model_hash="c0ffee12", stimulus_hash="5eed5e7a", lang="en")


def run(method: str, flips: int, n: int, budget: dict | None = None, **changes) -> Record:
    """A record whose first `flips` of `n` items (item0, item1, ...) flipped."""
    items = [{"item_id": f"item{i}", "flipped": i < flips} for i in range(n)]
    fields = dict(ORGANISM, method=method, settings={"steps": 100},
                  budget={"linf": 0.002} if budget is None else budget, seed=0, items=items, delta_last=1.0,
                  delta_window=0.5, seconds=30.0, queries=100, artifacts=f"{method}-run")
    fields.update(changes)
    return make_record(**fields)


def baselines(flips: tuple[int, int] = (2, 4), n: int = 20, **changes) -> list[Record]:
    setting = {**ORGANISM, **changes}
    return baseline_records(
        conflict=BaselineRun(items=[{"item_id": f"item{i}", "flipped": i < flips[0]} for i in range(n)]),
        judge_by_voice=BaselineRun(items=[{"item_id": f"item{i}", "flipped": i < flips[1]} for i in range(n)]),
        seed=0, artifacts="probes-run", **setting,
    )


def test_ranked_by_flip_rate_then_by_the_lower_bound_of_the_interval():
    small = run("pgd-small", 5, 10)  # 0.5 on 10 items: wide interval
    large = run("pgd-large", 20, 40)  # 0.5 on 40 items: higher lower bound
    best = run("pgd-best", 7, 10)
    worst = run("pgd-worst", 1, 10)
    assert [r.method for r in rank([small, worst, large, best])] == ["pgd-best", "pgd-large", "pgd-small", "pgd-worst"]
    assert large.ci_low > small.ci_low


def test_only_same_model_stimuli_language_and_budget_share_a_table_and_baselines_join_each():
    records = [
        run("pgd", 8, 20),
        run("pgd", 9, 20, budget={"linf": 0.004}),
        run("pgd", 3, 20, model_id="other-lalm"),
        run("pgd", 4, 20, stimulus_hash="0the7set"),
        run("pgd", 5, 20, lang="zh"),
        run("prompt-search", 6, 20, budget={"prompt_tokens": 20}),
        *baselines(),
    ]
    board = build_board(records)
    assert len(board) == 6
    for group in board:
        assert len({r.group_key() for r in group.entries if not r.method.startswith("baseline:")}) == 1
    ours = [g for g in board if (g.model_id, g.stimulus_hash, g.lang) == ("organism", "5eed5e7a", "en")]
    assert sorted(str(g.budget) for g in ours) == ["{'linf': 0.002}", "{'linf': 0.004}", "{'prompt_tokens': 20}"]
    assert all(g.has_baseline and len(g.entries) == 3 for g in ours)
    assert not any(g.has_baseline for g in board if g not in ours)


def test_baselines_alone_still_get_a_table():
    (group,) = build_board(baselines())
    assert group.budget == {} and [r.method for r in group.entries] == ["baseline:judge-by-voice",
                                                                         "baseline:conflict-prompt"]


def test_filters_select_records_but_never_hide_baselines():
    records = [run("pgd", 8, 20), run("pgd", 9, 20, budget={"linf": 0.004}), run("prompt-search", 2, 20),
               run("pgd", 8, 20, lang="zh"), *baselines(), *baselines(lang="zh")]
    filters = Filters(methods=("pgd",), langs=("en",), budget=(parse_budget_filter("linf=0.002"),))
    (group,) = build_board(records, filters)
    assert [r.method for r in group.entries] == ["pgd", "baseline:judge-by-voice", "baseline:conflict-prompt"]
    assert build_board(records, Filters(models=("absent",))) == []


def test_bad_budget_filter_says_how_to_write_it():
    with pytest.raises(ModalflipError, match="KEY=NUMBER"):
        parse_budget_filter("linf")


def test_compare_of_one_item_per_clip_is_the_exact_mcnemar_test():
    both = [f"s{i}" for i in range(12)]
    a_flipped = set(both[:9])  # discordant: s1..s8 A only, s9 B only
    b_flipped = {"s0", "s9"}
    a = run("pgd", 0, 0, items=[{"item_id": i, "flipped": i in a_flipped} for i in both + ["a-only"]])
    b = run("baseline", 0, 0, items=[{"item_id": i, "flipped": i in b_flipped} for i in both])
    result = compare(a, b)
    assert (result.n_shared, result.only_in_a, result.only_in_b) == (12, 1, 0)
    assert (result.test.items_a_not_b, result.test.items_b_not_a) == (8, 1)
    assert result.test.difference == pytest.approx(9 / 12 - 2 / 12)
    assert result.test.p_value == pytest.approx(0.0390625)  # 2 * P(Binomial(9, 1/2) <= 1)


def conflict_items(flipped_clips: set[str], n_clips: int = 18, condition: str = "conflict") -> list[dict]:
    """Four items per clip (A = neutral, T = the other four emotions); all items of a listed clip flipped."""
    claims = ("happy", "sad", "angry", "fearful")
    return [{"item_id": f"A{c}-en/{condition}/T={t}", "flipped": f"A{c}-en" in flipped_clips}
            for c in range(n_clips) for t in claims]


def test_compare_is_paired_at_the_clip_and_matches_methods_by_clip_and_claim():
    attack = run("pgd", 0, 0, items=conflict_items({"A0-en", "A1-en"}))
    voice = run("baseline:judge-by-voice", 0, 0, budget={}, items=conflict_items(set(), condition="voice"))
    result = compare(attack, voice)
    assert result.n_shared == 72 and result.only_in_a == result.only_in_b == 0  # voice/T=x pairs with conflict/T=x
    assert (result.test.items_a_not_b, result.test.units_a_more, result.test.n_units) == (8, 2, 18)
    assert result.test.p_value == pytest.approx(0.5)  # two clips, not eight items: 2 / 2^2


def test_compare_without_shared_items_is_a_user_error():
    a = run("pgd", 2, 4)
    b = run("pgd", 2, 4, items=[{"item_id": "other", "flipped": True}])
    with pytest.raises(ModalflipError, match="share no items"):
        compare(a, b)


def test_record_ids_resolve_by_unique_prefix():
    records = [run("pgd", 1, 2), run("pgd", 2, 2)]
    assert find_record(records, records[1].record_id[:12]) is records[1]
    with pytest.raises(ModalflipError, match="matches 2 records"):
        find_record(records, "")
    with pytest.raises(ModalflipError, match="no record id"):
        find_record(records, "not-an-id")


def test_markdown_has_one_captioned_table_per_group_and_lists_skipped_files():
    text = markdown(build_board([run("pgd", 8, 20), run("pgd", 9, 20, lang="zh"), *baselines()]),
                    [(Path("runs/records/bad.json"), "not valid JSON")])
    assert text.count("| # | id | method | settings |") == 2
    assert text.count("_Comparable only within this table") == 2
    assert "No baseline records" in text  # the zh group has none
    assert "- `runs/records/bad.json`: not valid JSON" in text


def test_a_narrow_terminal_drops_the_least_needed_columns_instead_of_wrapping():
    records = [run("pgd", 8, 20, settings={"steps": 500, "step_size": 2e-4, "objective": "delta_logit_window"}),
               *baselines()]
    out = io.StringIO()
    print_board(build_board(records), Console(file=out, width=80))
    text = out.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert all(f"│ {r.short_id} │ {r.method}" in text for r in records)  # ids and methods unbroken
    assert f"0.400 │ {records[0].ci_low:.3f}–{records[0].ci_high:.3f} │    20 │" in text  # 20 clips
    assert "Left out for width: settings, seed" in text


def leaderboard(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eval.leaderboard", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"})


def test_cli_draws_the_board_writes_markdown_and_csv_and_skips_a_broken_record(tmp_path):
    runs = tmp_path / "runs"
    kept = [run("pgd", 8, 20), *baselines()]
    for record in kept:
        write_record(record, runs)
    (runs / "records" / "broken.json").write_text('{"record_id": "abc", "method": ')
    done = leaderboard("--runs-dir", str(runs), "--markdown", str(tmp_path / "board.md"),
                       "--csv", str(tmp_path / "records.csv"))
    assert done.returncode == 0, done.stderr
    assert "warning: skipped" in done.stderr and "broken.json" in done.stderr
    assert all(record.short_id in done.stdout for record in kept)
    assert "Comparable only within this table" in done.stdout
    assert "| # | id | method |" in (tmp_path / "board.md").read_text(encoding="utf-8")
    with open(tmp_path / "records.csv", newline="", encoding="utf-8") as handle:
        assert sorted(row["record_id"] for row in csv.DictReader(handle)) == sorted(r.record_id for r in kept)


def test_cli_compare_reports_paired_difference_and_a_bad_compare_is_one_line_and_status_2(tmp_path):
    runs = tmp_path / "runs"
    attack = run("pgd", 9, 20)
    conflict, _ = baselines(flips=(1, 4))
    other = run("pgd", 3, 3, items=[{"item_id": "elsewhere", "flipped": True}])
    for record in (attack, conflict, other):
        write_record(record, runs)
    done = leaderboard("--runs-dir", str(runs), "--compare", attack.short_id, conflict.short_id)
    assert done.returncode == 0, done.stderr
    assert "paired difference A − B = +0.400" in done.stdout
    assert "unit: clip; exact sign-flip over clusters p = 0.0078" in done.stdout
    for pair in ((attack.short_id, other.short_id), (attack.short_id, "nosuchid")):
        done = leaderboard("--runs-dir", str(runs), "--compare", *pair)
        assert done.returncode == 2
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ")
