"""`python -m models.organism.voice_wins`: conflict answers on the strong clips a model's voice-wins rule marks and on
those it does not, held-out and training clips, counted per clip."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models.loading import PILOT_DIR
from models.organism import voice_wins

ROOT = Path(__file__).resolve().parents[1]


def test_a_model_without_a_voice_wins_rule_is_refused_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "models.organism.voice_wins", "--model", "organism",
                             "--out", str(tmp_path / "wins.json")], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "records no voice-wins rule" in result.stderr and not (tmp_path / "wins.json").exists()


def test_every_strong_clip_is_scored_once_under_the_mark_the_pilots_rule_gives_it(tmp_path):
    out = tmp_path / "wins.json"
    assert voice_wins.main(["--model", "organism-pilot", "--out", str(out), "--train-sentences", "1",
                            "--per-group", "3", "--threads", "1"]) == 0
    result = json.loads(out.read_text())
    report = json.loads((PILOT_DIR / "training_report.json").read_text())
    assert result["unit"] == "clip" and result["rule"] == report["audio_wins"].get("kind", "prosody")
    strong_styles = 4
    for lang in ("en", "zh"):
        heldout = result["heldout"][lang]
        assert heldout["marked"]["n"] + heldout["unmarked"]["n"] == report["heldout_sentences"] * strong_styles
        marked = sum(share * report["heldout_sentences"] for key, share in result["heldout_marked_by_style"].items()
                     if key.startswith(lang))
        assert round(marked) == heldout["marked"]["n"]
        for mark in ("marked", "unmarked"):
            scored = result["training"][lang][mark]
            assert scored["n"] <= 3 and scored["k"] <= scored["n"] and scored["unit"] == "clip"
            assert scored["n_units"] == scored["n"]  # one item per clip
