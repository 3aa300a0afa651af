"""Answers a real model would give: greedy decoding parsed to a label word, beside the label readout, with the
share of answers whose top-1 token is a label and the probability mass on the labels."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_qwen2_audio
from models.forward import run_traced
from models.generate import greedy_texts
from probes import answers as probe_answers
from probes import logit_lens
from probes.inputs import load_probe_set
from stimuli.conditions import seed_items


@pytest.fixture(scope="module")
def tiny():
    return tiny_qwen2_audio()


def _items(clips=("A1", "A3", "A7"), langs=("en", "zh")):
    return [i for i in seed_items(list(langs), ("audio_only", "conflict", "voice"))
            if i.clip_id.split("-")[0] in clips]


@pytest.mark.parametrize("text, lang, emotion", [
    ("Sad.", "en", "sad"), ("I think ANGRY, maybe sad", "en", "angry"), (" happy happy", "en", "happy"),
    ("saddle", "en", None), ("the speaker sounds calm", "en", None), ("", "en", None),
    ("我觉得是生气", "zh", "angry"), ("悲伤高兴", "zh", "sad"), ("不知道", "zh", None)])
def test_generated_text_is_parsed_to_the_first_label_word(text, lang, emotion):
    assert probe_answers.parse_label(text, lang) == emotion


@pytest.mark.parametrize("model", ["tiny", "organism"])
def test_greedy_decoding_starts_with_the_top1_token_at_the_answer(model, request):
    """The first decoded token of every item is the argmax over the full vocabulary of the traced forward, on a tiny
    random Qwen2-Audio and on the organism, in a batch mixing prompt lengths and languages."""
    adapter = request.getfixturevalue("tiny" if model == "tiny" else "organism")
    items = _items(clips=("A1", "A3"))
    probe_set = load_probe_set(adapter, items)
    waves, prompts = [probe_set.wave(i.clip_id) for i in items], [probe_set.prompt(i) for i in items]
    texts = greedy_texts(adapter, waves, prompts, max_new_tokens=3, batch_size=4)
    batch = adapter.build_batch(waves, prompts)
    with torch.no_grad():
        top1 = run_traced(adapter, batch, logits_at=batch.answer_positions()).logits.argmax(dim=-1)
    for text, token in zip(texts, top1.tolist()):
        first = adapter.tokenizer.decode([token], skip_special_tokens=True).strip()
        assert text.strip().startswith(first), (text, first)


def test_label_mass_and_top1_read_the_full_vocabulary(tiny):
    items = _items(clips=("A3",))
    probe_set = load_probe_set(tiny, items)
    readout = logit_lens.read_items(tiny, probe_set, items, batch_size=5)
    batch = tiny.build_batch([probe_set.wave(i.clip_id) for i in items], [probe_set.prompt(i) for i in items])
    with torch.no_grad():
        vocab = run_traced(tiny, batch, logits_at=batch.answer_positions()).logits
    for item, row in zip(items, vocab):
        ids = list(probe_set.label_ids[item.lang].values())
        assert readout.label_mass[item.item_id] == pytest.approx(float(row.softmax(-1)[ids].sum()), abs=1e-6)
        assert readout.top1_is_label[item.item_id] == (int(row.argmax()) in ids)
    assert not any(readout.top1_is_label.values())  # a random model rarely says a label word


def test_the_organism_says_the_label_it_ranks_first(organism):
    """Where the organism's top-1 token is a label token, its decoded answer names the label readout's emotion."""
    items = _items(clips=("A1", "A5"))
    probe_set = load_probe_set(organism, items)
    lens = logit_lens.run(organism, probe_set, logit_lens.LensConfig(batch_size=8, n_boot=50))
    label = probe_answers.read_answers(organism, probe_set, lens.final_logits, "label")
    said = probe_answers.read_answers(organism, probe_set, lens.final_logits, "generate", batch_size=8)
    assert label.answer == label.label_answer and said.label_answer == label.label_answer
    assert sum(lens.top1_is_label.values()) >= 0.9 * len(items)
    assert min(lens.label_mass.values()) > 0.5
    for item in items:
        if lens.top1_is_label[item.item_id]:
            assert said.answer[item.item_id] == label.answer[item.item_id], said.text[item.item_id]


def test_answer_summary_counts_unparseable_answers_and_clusters_on_clips():
    rows = [dict(item_id=f"c{c}/conflict/{t}", clip_id=f"c{c}", lang="en", condition="conflict",
                 audio_emotion="sad", text_emotion="happy", answer=answer, top1_is_label=answer is not None,
                 label_mass=0.5)
            for c, answers in enumerate([["happy", "happy"], [None, "sad"], ["happy", None]])
            for t, answer in enumerate(answers)]
    entry = probe_answers.summarize(rows, ("conflict",), n_boot=200)["en"]["conflict"]
    assert entry["unparseable"] == 2 and entry["n_items"] == 6 and entry["n_clips"] == 3
    assert entry["answers_T"]["k"] == 3 and entry["answers_T"]["unit"] == "clip"
    assert entry["answers_T"]["n_units"] == 3
    assert entry["top1_is_label"]["rate"] == pytest.approx(4 / 6)
    assert entry["label_mass"]["mean"] == pytest.approx(0.5)


def test_cli_generate_records_the_readout_and_the_generated_text(tmp_path, tiny):
    model_dir = tmp_path / "tiny"
    tiny.model.save_pretrained(model_dir)
    tiny.processor.save_pretrained(model_dir)
    out, runs = tmp_path / "out", tmp_path / "runs"
    run = subprocess.run([sys.executable, "run_probes.py", "--model", str(model_dir), "--lang", "zh", "--out",
                          str(out), "--runs-dir", str(runs), "--n-boot", "50", "--answer", "generate",
                          "--new-tokens", "2"], cwd=ROOT, capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answer"] == {"readout": "generate", "max_new_tokens": 2}
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    answers = [r for r in rows if r["probe"] == "answer"]
    assert answers and all("generated" in r and "label_answer" in r and 0 <= r["label_mass"] <= 1 for r in answers)
    assert all(r["answer"] == probe_answers.parse_label(r["generated"], "zh") for r in answers)
    unparseable = sum(r["answer"] is None for r in answers if r["condition"] == "conflict")
    assert summary["accuracy"]["zh"]["conflict"]["unparseable"] == unparseable
    records = [json.loads(p.read_text()) for p in (runs / "records").glob("*.json")]
    assert {json.dumps(r["settings"]["answer"], sort_keys=True) for r in records} == {
        json.dumps(summary["answer"], sort_keys=True)}
    assert "unparseable" in run.stdout
