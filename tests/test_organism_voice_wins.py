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
                            "--heldout-sentences", "2", "--per-group", "3", "--threads", "1"]) == 0
    result = json.loads(out.read_text())
    report = json.loads((PILOT_DIR / "training_report.json").read_text())
    assert result["unit"] == "clip" and result["rule"] == report["audio_wins"].get("kind", "prosody")
    strong_styles = 4
    for lang in ("en", "zh"):
        for part, renders in (("heldout", 1), ("heldout_varied", result["varied_renders"])):
            scored = result[part][lang]
            styles = [v for key, v in result[f"{part}_marked_by_style"].items() if key.startswith(lang)]
            assert len(styles) == strong_styles
            assert all(0 < v["clips"] <= result["heldout_sentences"] * renders for v in styles)
            assert scored["marked"]["n"] + scored["unmarked"]["n"] == sum(v["clips"] for v in styles)
            assert scored["marked"]["n"] == sum(v["marked"] for v in styles)
        for mark in ("marked", "unmarked"):
            scored = result["training"][lang][mark]
            assert scored["n"] <= 3 and scored["k"] <= scored["n"] and scored["unit"] == "clip"
            assert scored["n_units"] == scored["n"]  # one item per clip
