"""The probes' sanity properties, on a tiny random Qwen2-Audio (fast) and on the organism (known answer)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, sensitive_tiny_qwen2_audio
from models.forward import run_traced
from probes import logit_lens, patching
from probes.inputs import load_probe_set
from stimuli.conditions import seed_items
from stimuli import spec


@pytest.fixture(scope="module")
def tiny():
    return sensitive_tiny_qwen2_audio()


@pytest.fixture(scope="module")
def small_set(tiny):
    items = [i for i in seed_items(["en"], ("audio_only", "conflict", "consistent"))
             if i.clip_id in ("A1-en", "A3-en", "A5-en", "A7-en")]
    return load_probe_set(tiny, items)


def _batches(adapter, probe_set, pairs):
    receivers = [p.receiver for p in pairs]
    donors = [p.donor for p in pairs]
    r = adapter.build_batch([probe_set.wave(i.clip_id) for i in receivers], [probe_set.prompt(i) for i in receivers])
    d = adapter.build_batch([probe_set.wave(i.clip_id) for i in donors], [probe_set.prompt(i) for i in donors])
    return r, d


def test_lens_last_layer_equals_logits(tiny, small_set):
    result = logit_lens.run(tiny, small_set, logit_lens.LensConfig(batch_size=8, n_boot=50))
    for item_id, per_layer in result.label_logits.items():
        np.testing.assert_allclose(per_layer[-1], result.final_logits[item_id], atol=1e-5)


def test_lens_of_a_mixed_language_batch_reads_each_item_in_its_own_label_words(tiny):
    """The lens reads a whole batch at once; an English and a Mandarin item side by side must each get the logits
    of their own language's label words at every layer, as a one-item forward gives them."""
    from models.forward import lens

    conflict = [i for i in seed_items(["en", "zh"], ("conflict",)) if i.clip_id in ("A3-en", "A3-zh")]
    items = [i for i in conflict if i.lang == "en"][:2] + [i for i in conflict if i.lang == "zh"][:2]
    probe_set = load_probe_set(tiny, items)
    assert {i.lang for i in items} == {"en", "zh"}
    per_layer, final = logit_lens.label_logits(tiny, probe_set, items, batch_size=len(items))
    for item in items:
        batch = tiny.build_batch([probe_set.wave(item.clip_id)], [probe_set.prompt(item)])
        ids = torch.tensor([probe_set.label_ids[item.lang][e] for e in spec.emotions()])
        with torch.no_grad():
            trace = run_traced(tiny, batch, logits_at=batch.answer_positions())
            alone = torch.stack([lens(tiny, r[0, batch.spans[0].answer], ids) for r in trace.resid])
        np.testing.assert_allclose(per_layer[item.item_id], alone.numpy(), atol=1e-4)
        np.testing.assert_allclose(final[item.item_id], trace.logits[0, ids].numpy(), atol=1e-4)


def test_lens_recomputes_the_norm_on_each_layer(tiny, small_set):
    """Lens logits at layer l are the head on norm(resid[l]): never the last layer's norm scale reused."""
    item = small_set.items[0]
    batch = tiny.build_batch([small_set.wave(item.clip_id)], [small_set.prompt(item)])
    with torch.no_grad():
        trace = run_traced(tiny, batch)
        answer = batch.spans[0].answer
        for layer in (0, 2, 4):
            resid = trace.resid[layer][0, answer]
            expected = tiny.lm_head(tiny.final_norm(resid))
            ids = torch.arange(expected.shape[-1])
            from models.forward import lens
            torch.testing.assert_close(lens(tiny, resid, ids), expected, atol=1e-5, rtol=1e-5)


def test_conflict_readings_share_t_and_a_with_their_partners(tiny, small_set):
    result = logit_lens.run(tiny, small_set, logit_lens.LensConfig(batch_size=8, n_boot=50))
    conditions = {r["condition"] for r in result.readings}
    assert conditions == {"conflict", "consistent", "audio_only"}
    per_condition = {c: [(r["clip_id"], r["text_emotion"]) for r in result.readings if r["condition"] == c]
                     for c in conditions}
    assert per_condition["conflict"] == per_condition["consistent"] == per_condition["audio_only"]
    assert len(per_condition["conflict"]) == 4 * 4  # four clips, four T != A each


def test_patch_with_self_is_identity(tiny, small_set):
    pairs = [p for p in patching.make_pairs(small_set.items) if p.kind == "text"][:3]
    r, _ = _batches(tiny, small_set, pairs)
    with torch.no_grad():
        clean = run_traced(tiny, r)
        mask = torch.ones(len(pairs), r.inputs["input_ids"].shape[1], dtype=torch.bool)
        ids = torch.tensor([[small_set.label_ids["en"][e] for e in ("neutral", "happy", "sad", "angry", "fearful")]]
                           * len(pairs))
        patched = patching._resumed(tiny, r, clean.resid, mask, [0, 2, 4], 1, ids)
        expected = patching._label_readout(tiny, clean.resid[-1], r.answer_positions(), torch.arange(len(pairs)), ids)
    for column in range(3):
        torch.testing.assert_close(patched[:, column], expected, atol=1e-5, rtol=1e-5)


def test_patching_every_position_reproduces_the_donor(tiny, small_set):
    pairs = [p for p in patching.make_pairs(small_set.items) if p.kind == "audio"][:3]
    r, d = _batches(tiny, small_set, pairs)
    ids = torch.tensor([[small_set.label_ids["en"][e] for e in ("neutral", "happy", "sad", "angry", "fearful")]]
                       * len(pairs))
    with torch.no_grad():
        donor = run_traced(tiny, d)
        mask = torch.ones(len(pairs), r.inputs["input_ids"].shape[1], dtype=torch.bool)
        patched = patching._resumed(tiny, r, donor.resid, mask, [1, 3], 1, ids)
        expected = patching._label_readout(tiny, donor.resid[-1], d.answer_positions(), torch.arange(len(pairs)), ids)
    for column in range(2):
        torch.testing.assert_close(patched[:, column], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 2])
def test_resumed_sweep_equals_naive_full_forwards(tiny, small_set, window):
    pairs = [p for p in patching.make_pairs(small_set.items) if p.kind == "text"][:4]
    layers = [0, 1, 3, 4]
    fast = patching.patched_label_logits(tiny, small_set, pairs, layers, patching.PatchConfig(window=window))
    slow = patching.patched_label_logits(tiny, small_set, pairs, layers,
                                         patching.PatchConfig(window=window, naive=True))
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_effects_are_per_pair_then_averaged():
    """Two pairs with effects 0.5 and 0.1 average to 0.3; averaging LDs first would give 1.5/11 = 0.136."""
    rows = [dict(kind="text", lang="en", clip_id=f"c{i}", effect=[e], flipped=[f])
            for i, (e, f) in enumerate([(0.5, True), (0.1, False)])]
    summary = patching.summarize(rows, [3], patching.PatchConfig(n_boot=50))
    assert summary["en"]["text"]["effect"] == [pytest.approx(0.3)]
    assert summary["en"]["text"]["flip_rate"] == [0.5]
    assert summary["en"]["text"]["flip_window"] == [[3, 3]]


def test_misaligned_pairs_are_refused(tiny):
    items = [i for i in seed_items(["en"], ("conflict", "consistent")) if i.clip_id in ("A1-en", "A5-en")]
    unpadded = load_probe_set(tiny, items, pad=False)
    pairs = [p for p in patching.make_pairs(items) if p.kind == "audio"]
    from common.errors import ModalflipError
    with pytest.raises(ModalflipError, match="pad clips to one duration"):
        patching.patched_label_logits(tiny, unpadded, pairs, [0], patching.PatchConfig())


def test_cli_bad_model_is_one_line_exit_2(tmp_path):
    run = subprocess.run([sys.executable, "run_probes.py", "--model", str(tmp_path / "nowhere"), "--out",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error:")


def test_cli_writes_summary_figures_and_records(tmp_path, tiny):
    model_dir = tmp_path / "tiny"
    tiny.model.save_pretrained(model_dir)
    tiny.processor.save_pretrained(model_dir)
    out, runs = tmp_path / "out", tmp_path / "runs"
    run = subprocess.run([sys.executable, "run_probes.py", "--model", str(model_dir), "--lang", "en", "--out",
                          str(out), "--runs-dir", str(runs), "--n-boot", "50"], cwd=ROOT, capture_output=True,
                         text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "120"})
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_layers"] == 5 and len(summary["logit_lens"]["en"]["conflict"]["mean"]) == 6
    assert summary["pad_seconds"] > 0
    assert (out / "logit_lens.png").stat().st_size > 10_000 and (out / "patching.png").stat().st_size > 10_000
    methods = sorted(json.loads(p.read_text())["method"] for p in (runs / "records").glob("*.json"))
    assert methods == ["baseline:conflict-prompt", "baseline:judge-by-voice"]
