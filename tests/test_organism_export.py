"""The organisms' held-out clips as a manifest, and the universal δ's split by sentence."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.progress import Progress

from attacks.experiment import universal_split
from models.organism import export, train
from stimuli.audio_io import load_audio
from stimuli.conditions import Item
from stimuli.manifest import read_manifest


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout")
    assert export.main(["--out", str(out), "--lang", "en"]) == 0
    return out


def test_the_export_is_the_training_runs_held_out_split(exported):
    clips = read_manifest(exported / "manifest.jsonl")
    held = [c for c in train.synthesize("heldout", 1, export.HELDOUT_SEED, Progress(disable=True)) if c.lang == "en"]
    assert len(clips) == len(held) == len({c.id for c in clips})
    for row, clip in zip(clips, held):
        wave = load_audio(row.audio_path)
        assert (row.sentence, row.emotion, row.intensity) == (clip.sentence, clip.emotion, clip.intensity)
        assert wave.shape == clip.wave.shape and np.abs(wave - clip.wave).max() < 1e-3
    assert len({c.sentence for c in clips}) == 8 and {c.id.split("-")[1] for c in clips} == {f"A{i}" for i in
                                                                                              range(1, 10)}


def test_a_failed_export_leaves_no_manifest(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "write_wav", broken)
    with pytest.raises(RuntimeError):
        export.main(["--out", str(tmp_path), "--lang", "en"])
    assert not (tmp_path / "manifest.jsonl").exists()


def _item(clip: str, lang: str, emotion: str, sentence: str, intensity: str = "normal") -> Item:
    return Item(item_id=f"{clip}/conflict", clip_id=clip, audio_path=Path(f"{clip}.wav"), lang=lang,
                condition="conflict", audio_emotion=emotion, text_emotion="happy", intensity=intensity,
                instruction="", sentence=sentence)


def test_a_universal_delta_is_held_out_by_sentence_where_a_language_has_several():
    en = [_item(f"S{s}-{e}-en", "en", e, f"sentence {s}") for s in range(1, 5) for e in ("angry", "sad")]
    zh = [_item(f"A{i}-zh", "zh", e, "seed", i_) for i, (e, i_) in
          enumerate((("angry", "normal"), ("angry", "strong"), ("sad", "normal"), ("sad", "strong")))]
    train_items, held_items, split = universal_split(en + zh)
    held_en = {i.sentence for i in held_items if i.lang == "en"}
    assert held_en == {"sentence 2", "sentence 4"} == set(split["held_out_sentences"])
    assert not held_en & {i.sentence for i in train_items if i.lang == "en"}
    # one sentence: the clips of each emotion alternate
    assert {i.clip_id for i in held_items if i.lang == "zh"} == {"A1-zh", "A3-zh"}
    assert {i.audio_emotion for i in train_items} == {i.audio_emotion for i in held_items} == {"angry", "sad"}


def test_the_seed_set_keeps_its_clip_split():
    items = [_item(f"A{i}-en", "en", "angry", "seed", ("normal", "strong")[i % 2]) for i in range(4)]
    _, held_items, split = universal_split(items)
    assert "held_out_sentences" not in split and len({i.clip_id for i in held_items}) == 2


def test_a_universal_sweep_on_the_export_scores_held_out_sentences_only(exported, tiny_checkpoint, tmp_path):
    from run_attack import main

    rows = [line for line in (exported / "manifest.jsonl").read_text().splitlines()
            if json.loads(line)["id"].split("-")[0] in ("S1", "S2") and json.loads(line)["id"].split("-")[1] in
            ("A2", "A7")]
    subset = tmp_path / "manifest.jsonl"
    subset.write_text("\n".join(rows).replace('"path": "en/', f'"path": "{exported}/en/') + "\n")
    assert main(["--model", str(tiny_checkpoint), "--device", "cpu", "--lang", "en", "--steps", "1",
                 "--from-layer", "1", "--target-layer", "3", "--stimuli", str(subset), "--universal",
                 "--epsilon", "0.001,0.002", "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")]) == 0
    sweep = json.loads((tmp_path / "out/sweep.json").read_text())
    assert sweep["unit"] == "clip (one universal δ)" and len(sweep["points"]) == 2
    for point in sweep["points"]:
        metrics = json.loads((tmp_path / "out" / point["folder"] / "metrics.json").read_text())
        split = metrics["universal_split"]
        sentence_of = {json.loads(r)["id"]: json.loads(r)["sentence"] for r in rows}
        assert split["held_out_sentences"] == sorted(set(sentence_of.values()))[1::2]
        assert {c["clip_id"] for c in metrics["perceptual"]["clips"] if not c["held_out"]} == set(split["train"])
        assert {sentence_of[c] for c in split["held_out"]} == set(split["held_out_sentences"])
        assert not {sentence_of[c] for c in split["train"]} & set(split["held_out_sentences"])
        assert metrics["flips"]["evaluated_on"] == "held-out sentences"
