"""`run_attack.py --window-from PROBES`: the persistence window read off the attacked model's own probes, from the
layer where the voice's emotion becomes readable to the measured takeover, and refused in one line when it cannot
be read."""
from __future__ import annotations

import json

import pytest

import numpy as np

from attacks.window import from_probes, language_window
from conftest import ROOT
from probes.logit_lens import largest_rise

ORGANISM_PROBES = ROOT / "models" / "organism" / "figures" / "summary.json"


def _curves(audio_high: list[float], conflict_rise: int) -> dict:
    """One language's logit-lens curves as run_probes.py writes them (only the fields the rule reads are real): the
    conflict curve falls toward the voice at layer 1 by more than it later rises toward T at `conflict_rise`."""
    flat = [0.0] * len(audio_high)
    conflict = [0.0] + [-3.0 if layer < conflict_rise else -1.0 for layer in range(1, len(audio_high))]
    return {"audio_only": {"mean": flat, "low": [h - 1 for h in audio_high], "high": audio_high},
            "conflict": {"mean": conflict, "low": flat, "high": flat, "critical_layer": 1}}


def _summary(tmp_path, model_hash: str = "0" * 16, **langs: dict):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"model_hash": model_hash, "logit_lens": langs}))
    return path


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_on_the_organism_the_probe_window_runs_from_the_readable_voice_to_the_takeover(lang):
    summary = json.loads(ORGANISM_PROBES.read_text())
    curves = summary["logit_lens"][lang]
    window = from_probes(ORGANISM_PROBES, [lang])
    high = curves["audio_only"]["high"]
    assert high[window.first] < 0 and all(h >= 0 for h in high[1:window.first])
    assert window.last == largest_rise(np.asarray(curves["conflict"]["mean"])) == curves["conflict"]["critical_layer"]
    # the organism's voice becomes readable only at its planted takeover: a short window there
    assert summary["planted_takeover"]["residual_layer"] <= window.first <= window.last <= window.first + 2
    assert window.as_dict() == {"from": window.first, "to": window.last, "rule": "probes",
                                "probes": str(ORGANISM_PROBES)}


def test_with_several_languages_the_window_is_the_latest_start_to_the_earliest_end(tmp_path):
    en = _curves([0.5, 0.3, -0.1, -0.2, -0.3, -0.3, -0.4, -0.5], conflict_rise=6)  # 2..6
    zh = _curves([0.5, 0.3, 0.2, 0.1, -0.3, -0.3, -0.4, -0.5], conflict_rise=7)  # 4..7
    assert language_window(en) == (2, 6) and language_window(zh) == (4, 7)
    window = from_probes(_summary(tmp_path, en=en, zh=zh), ["en", "zh"])
    assert (window.first, window.last) == (4, 6)


def test_the_window_ends_at_the_rise_toward_the_text_not_at_the_voice_arriving(tmp_path):
    """A model that hears the voice at the answer position from layer 1 has its largest absolute change there; the
    takeover is the largest rise toward T."""
    curves = _curves([0.5, -0.2, -0.3, -0.3, -0.4, -0.5, -0.5], conflict_rise=5)
    assert curves["conflict"]["critical_layer"] == 1 and language_window(curves) == (1, 5)


def test_layer_zero_never_starts_the_window(tmp_path):
    """Layer 0 is the embeddings, identical for every clip at the answer position: it reads no voice."""
    assert language_window(_curves([-0.1, 0.2, -0.3, -0.4], conflict_rise=3)) == (2, 3)


@pytest.mark.parametrize("langs, message", [
    ({"en": _curves([0.5, 0.2, 0.1, -0.2, -0.3], 2), "zh": _curves([0.5, -0.2, -0.1, -0.2, -0.3], 3)},
     "gives an empty window"),  # en 3..2: the voice becomes readable after the takeover
    ({"en": _curves([0.5, 0.2, 0.1, 0.2, 0.3], 2), "zh": _curves([0.5, -0.2, -0.1, -0.2, -0.3], 3)},
     "never readable at the answer position in en"),
    ({"en": _curves([0.5, -0.2, -0.1, -0.2, -0.3], 3)}, "no audio-only and conflict logit lens for 'zh'"),
])
def test_a_window_the_probes_cannot_give_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, langs, message):
    from common.cli import run_main
    from run_attack import main

    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--window-from", str(_summary(tmp_path, **langs)), "--lang", "both", "--out", str(out),
            "--runs-dir", str(runs), "--steps", "1", "--device", "cpu"]
    assert run_main(main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists() and not runs.exists()


@pytest.mark.parametrize("extra, message", [
    (["--window-from", "nowhere"], "no readable probe summary at nowhere;"),
    (["--window-from", str(ROOT / "README.md")], "no readable probe summary"),
    (["--window-from", str(ORGANISM_PROBES), "--from-layer", "5"], "cannot go with --from-layer"),
    (["--window-from", str(ORGANISM_PROBES), "--target-layer", "20"], "cannot go with --target-layer"),
    (["--window-from", str(ORGANISM_PROBES), "--transfer-from", "somewhere"], "cannot go with --transfer-from"),
])
def test_a_missing_summary_or_a_second_window_is_refused_before_the_model_loads(tmp_path, capsys, extra, message):
    from common.cli import run_main
    from run_attack import main

    out = tmp_path / "out"
    argv = ["--model", str(tmp_path / "no-model"), "--lang", "en", "--out", str(out), "--runs-dir",
            str(tmp_path / "runs"), *extra]
    assert run_main(main, argv) == 2  # the model path does not exist: refused before anything loads
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_probes_of_another_model_are_refused_after_it_loads_and_before_anything_is_written(tmp_path, capsys):
    from common.cli import run_main
    from run_attack import main

    summary = json.loads(ORGANISM_PROBES.read_text())
    other = tmp_path / "other-probes"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps(dict(summary, model_hash="f" * 16)))
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--window-from", str(other), "--lang", "en", "--clips", "A4", "--steps", "1", "--device", "cpu",
            "--out", str(out), "--runs-dir", str(runs)]
    assert run_main(main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"was measured on model {'f' * 16}" in lines[0], lines
    assert not out.exists() and not (runs / "records").exists()


def test_an_attack_on_the_organism_records_the_probe_window_and_how_it_was_chosen(tmp_path, capsys):
    from run_attack import main

    out, runs = tmp_path / "out", tmp_path / "runs"
    probes = ORGANISM_PROBES.parent
    assert main(["--window-from", str(probes), "--lang", "en", "--clips", "A4", "--steps", "1", "--device", "cpu",
                 "--out", str(out), "--runs-dir", str(runs)]) == 0
    expected = from_probes(probes, ["en"])
    window = {"from": expected.first, "to": expected.last, "rule": "probes", "probes": str(ORGANISM_PROBES)}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["window"] == window
    assert (metrics["settings"]["from_layer"], metrics["settings"]["target_layer"]) == (expected.first, expected.last)
    assert metrics["persistence"]["window"] == [expected.first, expected.last]
    record = json.loads(next((runs / "records").glob("*.json")).read_text())
    assert record["settings"]["window"] == window and record["window"] == [expected.first, expected.last]
    assert f"window {expected.first}..{expected.last} (rule: probes" in " ".join(capsys.readouterr().out.split())
