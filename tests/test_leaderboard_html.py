"""The HTML board is one self-contained page: headless Chromium finds the table rows and the figures decode.

CI installs Chromium with `.ci/install-chromium.sh`; without it the browser test fails rather than skips, so a
missing browser cannot pass for a working page.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from eval.baselines import BaselineRun, baseline_records
from eval.board import build_board
from eval.board_html import render_html
from eval.records import Record, load_records, make_record, write_record

REPO = Path(__file__).resolve().parent.parent


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG of one colour, built by hand so the test needs no imaging library."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def attack(runs: Path, method: str, flips: int, figures: dict[str, bytes | None]) -> Record:
    """A record on 20 items whose artifacts folder holds `figures` (None: listed in the record but absent)."""
    folder = runs / f"{method}-run"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        if data is not None:
            (folder / name).write_bytes(data)
    return make_record(method=method, settings={"steps": 100, "note": "<b>not markup</b>"}, model_id="organism",
                       model_hash="c0ffee12", stimulus_hash="5eed5e7a", lang="en", budget={"linf": 0.002}, seed=0,
                       items=[{"item_id": f"item{i}", "flipped": i < flips} for i in range(20)], delta_last=2.0,
                       delta_window=1.0, seconds=60.0, queries=2000, artifacts=folder, figures=list(figures))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A results folder: two attacks with figures (one missing, one corrupt), a weak attack, and the baselines."""
    runs = tmp_path / "runs"
    records = [
        attack(runs, "pgd", 15, {"lens.png": png(120, 80, (30, 110, 200)), "missing.png": None}),
        attack(runs, "pgd-eot", 12, {"lens.png": png(120, 80, (200, 90, 30)), "corrupt.png": b"not a png"}),
        attack(runs, "pgd-weak", 1, {"lens.png": png(120, 80, (0, 0, 0))}),  # below the top 2: not embedded
        *baseline_records(conflict=BaselineRun(items=[{"item_id": f"item{i}", "flipped": i < 2} for i in range(20)]),
                          judge_by_voice=BaselineRun(items=[{"item_id": f"item{i}", "flipped": i < 4}
                                                            for i in range(20)]),
                          model_id="organism", model_hash="c0ffee12", stimulus_hash="5eed5e7a", lang="en", seed=0,
                          artifacts=runs / "probes-run"),
    ]
    for record in records:
        write_record(record, runs)
    return runs


def test_page_is_self_contained_and_notes_figures_it_cannot_embed(runs):
    records, _ = load_records(runs)
    page = render_html(build_board(records), [], runs_dir=runs, top_figures=2)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing fetched from outside the page
    assert page.count('src="data:image/png;base64,') == 3  # pgd lens, pgd-eot lens, pgd-eot corrupt
    assert "Figure left out: #1 pgd" in page and "missing.png" in page
    assert "&lt;b&gt;not markup&lt;/b&gt;" in page and "<b>not markup</b>" not in page


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("Chromium is not installed, so the HTML board cannot be checked: run .ci/install-chromium.sh "
                "(Debian's `chromium` package)")


def test_headless_chromium_shows_the_table_and_loads_the_figures(runs, tmp_path):
    page = tmp_path / "board.html"
    done = subprocess.run([sys.executable, "-m", "eval.leaderboard", "--runs-dir", str(runs), "--html", str(page),
                           "--top-figures", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    browser = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    dom = browser.stdout
    assert browser.returncode == 0 and "<table>" in dom, browser.stderr[-2000:]
    assert len(re.findall(r"<tr[^>]*data-record-id=", dom)) == 5
    assert len(re.findall(r'<tr class="baseline"', dom)) == 2
    assert "Comparable only within this table" in dom
    assert 'data-figures-total="3"' in dom
    assert 'data-figures-loaded="2"' in dom  # both real PNGs decode; the corrupt one does not
