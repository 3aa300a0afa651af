"""The optimiser grid behind run_attack.py's defaults: one smoke run end to end, and its resume."""
from __future__ import annotations

import json

from eval import optimizer_grid


def test_the_grid_writes_its_page_and_a_rerun_skips_the_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(optimizer_grid, "CONFIGS", optimizer_grid.CONFIGS[1:])  # two runs keep the test short
    monkeypatch.setattr(optimizer_grid, "PAIRS", optimizer_grid.PAIRS[1:])
    runs, page = tmp_path / "runs", tmp_path / "defaults.md"
    argv = ["--fast", "--runs-dir", str(runs), "--page", str(page), "--threads", "1"]
    assert optimizer_grid.main(argv) == 0
    text = page.read_text()
    for config in optimizer_grid.CONFIGS:
        assert f"| {config.name} | 0.002 |" in text and f"| {config.name} | 0.03 |" in text
        assert (runs / config.slug / "sweep.json").is_file()
    assert text.count("| `python -m eval.leaderboard") == 2 * len(optimizer_grid.PAIRS)
    timings = json.loads((runs / "timings.json").read_text())
    assert set(timings) == {c.slug for c in optimizer_grid.CONFIGS}

    ran = []
    monkeypatch.setattr(optimizer_grid, "run_step", lambda argv, threads: ran.append(argv) or
                        optimizer_grid.Step(list(argv), 0.0, _compare_output(argv, runs)))
    assert optimizer_grid.main(argv) == 0
    assert not [a for a in ran if a[0] == "run_attack.py"]  # every configuration had finished
    assert page.read_text().split("\n", 3)[3] == text.split("\n", 3)[3]  # same numbers (the header has the date)


def _compare_output(argv, runs):
    from eval.leaderboard import comparison_text
    from eval.paired import compare
    from eval.records import load_records

    records = load_records(runs)[0]
    a, b = (next(r for r in records if r.short_id == short) for short in argv[-2:])
    return comparison_text(a, b, compare(a, b))
