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
    """The lens at the last layer equals the logits of the model's own forward (its own norm and head), not only
    the answer-row readout the probes compute."""
    result = logit_lens.run(tiny, small_set, logit_lens.LensConfig(batch_size=8, n_boot=50))
    for item in small_set.items:
        batch = tiny.build_batch([small_set.wave(item.clip_id)], [small_set.prompt(item)])
        with torch.no_grad():
            own = tiny.model(**batch.inputs, use_cache=False).logits[0, batch.spans[0].answer]
        ids = [small_set.label_ids[item.lang][e] for e in spec.emotions()]
        np.testing.assert_allclose(result.label_logits[item.item_id][-1], own[ids].numpy(), atol=1e-5)
        np.testing.assert_allclose(result.final_logits[item.item_id], own[ids].numpy(), atol=1e-5)


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
    tiny.model.config.modalflip_organism = {"takeover_layer": 2}  # as the organism's config plants it
    try:
        tiny.model.save_pretrained(model_dir)
    finally:
        del tiny.model.config.modalflip_organism
    tiny.processor.save_pretrained(model_dir)
    out, runs = tmp_path / "out", tmp_path / "runs"
    run = subprocess.run([sys.executable, "run_probes.py", "--model", str(model_dir), "--lang", "en", "--out",
                          str(out), "--runs-dir", str(runs), "--n-boot", "50"], cwd=ROOT, capture_output=True,
                         text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "250"})
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_layers"] == 5 and len(summary["logit_lens"]["en"]["conflict"]["mean"]) == 6
    assert summary["pad_seconds"] == tiny.window_seconds and "pad_rule" in summary
    assert summary["answer"] == {"readout": "label"}
    assert set(summary["patching"]["en"]) == {"text", "audio", "audio_only"} and summary["patching"]["unit"] == "clip"
    assert summary["patching"]["en"]["audio_only"]["n_clips"] == 9
    assert summary["accuracy"]["en"]["conflict"]["answers_T"]["unit"] == "clip"
    # the takeover layer is a decoder-layer index; the tables count residual layers (decoder layer K's output is K + 1)
    assert summary["planted_takeover"] == {"decoder_layer": 2, "residual_layer": 3}
    assert "decoder layer K = 2" in run.stdout and "residual layer 3" in run.stdout
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert {r["probe"] for r in rows} == {"answer", "lens", "patch_text", "patch_audio", "patch_audio_only"}
    assert (out / "logit_lens.png").stat().st_size > 10_000 and (out / "patching.png").stat().st_size > 10_000
    methods = sorted(json.loads(p.read_text())["method"] for p in (runs / "records").glob("*.json"))
    assert methods == ["baseline:conflict-prompt", "baseline:judge-by-voice"]


def test_a_trained_takeover_is_reported_as_trained_not_as_planted_unmixed_layers(tmp_path, tiny):
    """The pilot organism attends everywhere: its K is where training puts the lens, and nothing below it is
    unmixed, so the probes must not print the token-local plant's claim for it."""
    model_dir = tmp_path / "tiny-pilot"
    tiny.model.config.modalflip_organism = {"takeover_layer": 2, "plant": "pilot", "local_below_takeover": False,
                                            "settle": 3}
    try:
        tiny.model.save_pretrained(model_dir)
    finally:
        del tiny.model.config.modalflip_organism
    tiny.processor.save_pretrained(model_dir)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "run_probes.py", "--model", str(model_dir), "--lang", "en", "--out",
                          str(out), "--runs-dir", str(tmp_path / "runs"), "--n-boot", "20"], cwd=ROOT,
                         capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "250"})
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["planted_takeover"] is None
    assert summary["trained_takeover"] == {"voice_through_residual": 2, "answer_at_residual": 5}
    assert "trained dynamics" in run.stdout and "unmixed" not in run.stdout


def test_patch_layers_in_any_order_or_repeated_give_each_layer_its_own_column(tiny, small_set):
    """An unsorted or repeated layer list reads each listed layer in its own column (it used to swap or crash)."""
    pairs = [p for p in patching.make_pairs(small_set.items) if p.kind == "text"][:3]
    reference = patching.patched_label_logits(tiny, small_set, pairs, [0, 2, 4], patching.PatchConfig())
    for naive in (False, True):
        shuffled = patching.patched_label_logits(tiny, small_set, pairs, [4, 0, 2, 4],
                                                 patching.PatchConfig(naive=naive))
        np.testing.assert_allclose(shuffled, reference[:, [2, 0, 1, 2]], atol=1e-5)


def test_patch_config_sorts_and_dedupes_its_layers(tiny, small_set):
    assert patching.PatchConfig(layers=[4, 0, 2, 4]).layers == [0, 2, 4]
    lens = logit_lens.run(tiny, small_set, logit_lens.LensConfig(batch_size=16, n_boot=20))
    result = patching.run(tiny, small_set, lens.final_logits, patching.PatchConfig(layers=[3, 1, 3], n_boot=20))
    assert result.layers == [1, 3] == result.summary["layers"]
    assert all(len(r["flipped"]) == 2 for r in result.pairs)


def test_patch_flip_intervals_resample_the_receivers_clips():
    """Eight pairs from two clips, one clip always flipping and one never: the interval is the clip bootstrap's
    (the whole range), not a Wilson interval over eight independent pairs."""
    from common.stats import clustered_rate

    rows = [dict(kind="audio", lang="en", clip_id=clip, effect=[None], flipped=[clip == "c0"])
            for clip in ("c0", "c1") for _ in range(4)]
    data = patching.summarize(rows, [5], patching.PatchConfig(n_boot=200))["en"]["audio"]
    expected = clustered_rate([r["flipped"][0] for r in rows], [r["clip_id"] for r in rows], n_boot=200)
    assert (data["flip_low"][0], data["flip_high"][0]) == (round(expected.low, 4), round(expected.high, 4))
    assert data["flip_low"][0] == 0.0 and data["flip_high"][0] == 1.0
    assert data["unit"] == "clip" and data["n_clips"] == 2 and data["n_pairs"] == 8


def test_audio_only_pairs_take_a_donor_clip_of_emotion_t_in_the_same_sentence():
    items = seed_items(["en"], ("audio_only", "conflict", "consistent"))
    pairs = [p for p in patching.make_pairs(items) if p.kind == "audio_only"]
    assert pairs and all(p.receiver.condition == p.donor.condition == "audio_only" for p in pairs)
    assert all(p.donor.audio_emotion == p.text_emotion != p.audio_emotion for p in pairs)
    assert all(p.donor.sentence == p.receiver.sentence and p.donor.lang == p.receiver.lang for p in pairs)


@pytest.fixture(scope="module")
def organism_alone(organism):
    items = seed_items(["en"], ("audio_only",))
    probe_set = load_probe_set(organism, items)
    return probe_set, [p for p in patching.make_pairs(items) if p.kind == "audio_only"]


def test_patch_audio_on_an_audio_only_receiver_flips_most_pairs_at_layer_0(organism, organism_alone):
    """The organism hears the voice: swapping in the audio of a clip of emotion T before any layer moves most
    audio-only answers to T."""
    probe_set, pairs = organism_alone
    logits = patching.patched_label_logits(organism, probe_set, pairs, [0], patching.PatchConfig())
    emotions = spec.emotions()
    flipped = [per_layer[0].argmax() == emotions.index(p.text_emotion) for p, per_layer in zip(pairs, logits)]
    assert np.mean(flipped) >= 0.7, np.mean(flipped)


def test_patch_audio_only_receiver_with_itself_is_identity(organism, organism_alone):
    probe_set, pairs = organism_alone
    selves = [patching.Pair("audio_only", p.receiver, p.receiver, p.audio_emotion, p.text_emotion)
              for p in pairs[::4][:4]]
    patched = patching.patched_label_logits(organism, probe_set, selves, [0, 16, 31], patching.PatchConfig())
    _, final = logit_lens.label_logits(organism, probe_set, [p.receiver for p in selves], batch_size=4)
    for pair, per_layer in zip(selves, patched):
        for column in per_layer:
            np.testing.assert_allclose(column, final[pair.receiver.item_id], atol=1e-4)


def test_baselines_report_delta_as_t_minus_a_and_name_clip_and_claim(tmp_path):
    """Record-level delta_last/delta_window are Δlogit = logit(T) − logit(A), the judge-by-voice prompt's shift from
    the conflict prompt (negative = toward the voice), as every item's own delta_last; items carry clip_id and
    text_emotion so a judge-by-voice item pairs with the conflict item of the same clip and claim."""
    from types import SimpleNamespace

    from probes import answers as probe_answers
    from probes.run import _baselines

    items = [i for i in seed_items(["en"], ("conflict", "voice")) if i.clip_id in ("A1-en", "A5-en")]
    rng = np.random.default_rng(0)
    curves = {i.item_id: rng.normal(size=(6, 5)) + (3.0 if i.condition == "voice" else 0.0) * np.eye(5)[
        spec.emotions().index(i.audio_emotion)] for i in items}
    lens = SimpleNamespace(label_logits=curves)
    answers = probe_answers.Answers("label", {i.item_id: "sad" for i in items}, {i.item_id: "sad" for i in items}, {})
    conflict_record, voice_record = _baselines(items, lens, answers, "en", SimpleNamespace(model="m", seed=0),
                                               SimpleNamespace(n_layers=5), "hash", "stimuli", tmp_path, 1.0)
    emotions = spec.emotions()

    def delta(item):
        return curves[item.item_id][-1, emotions.index(item.text_emotion)] - curves[item.item_id][
            -1, emotions.index(item.audio_emotion)]

    by_id = {i.item_id: i for i in items}
    for record in (conflict_record, voice_record):
        for row in record.items:
            item = by_id[row["item_id"]]
            assert row["delta_last"] == pytest.approx(delta(item), abs=1e-4)
            assert (row["clip_id"], row["text_emotion"]) == (item.clip_id, item.text_emotion)
    shift = (np.mean([delta(i) for i in items if i.condition == "voice"])
             - np.mean([delta(i) for i in items if i.condition == "conflict"]))
    assert voice_record.delta_last == pytest.approx(shift) and voice_record.delta_last < 0
    assert {(r["clip_id"], r["text_emotion"]) for r in voice_record.items} == {
        (r["clip_id"], r["text_emotion"]) for r in conflict_record.items}
    assert voice_record.settings["answer"] == {"readout": "label"}


def test_out_of_memory_halves_the_batch_and_gives_the_unforced_results(tiny, small_set, monkeypatch):
    """A forward over more than three rows raises CUDA's out-of-memory error: the lens and the patching sweep retry
    with half their batch and say so, decoding starts from the lens batch that fit, and the numbers are those of a
    run that never ran out."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from probes import answers as probe_answers
    from probes.run import probe

    def run_all(say):
        lens_config = logit_lens.LensConfig(batch_size=16, n_boot=50)
        patch_config = patching.PatchConfig(layers=[0, 2, 4], batch_pairs=8, n_boot=50)
        with Progress(console=Console(file=io.StringIO())) as progress:
            results = probe(tiny, small_set, lens_config, patch_config, "generate", 2, progress, say)
        return results, lens_config.batch_size, patch_config.batch_pairs

    (lens, patch, answers), lens_batch, patch_batch = run_all(lambda message: None)
    assert (lens_batch, patch_batch) == (16, 8)

    def limited(function, size_of):
        def wrapper(*args, **kwargs):
            if size_of(*args, **kwargs) > 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return function(*args, **kwargs)
        return wrapper

    def rows(adapter, batch, **kwargs):
        return len(batch)

    monkeypatch.setattr(logit_lens, "run_traced", limited(logit_lens.run_traced, rows))
    monkeypatch.setattr(patching, "run_traced", limited(patching.run_traced, rows))
    monkeypatch.setattr(probe_answers, "greedy_texts",
                        limited(probe_answers.greedy_texts, lambda *args, batch_size, **kw: batch_size))
    said: list[str] = []
    (forced_lens, forced_patch, forced_answers), lens_batch, patch_batch = run_all(said.append)
    assert (lens_batch, patch_batch) == (2, 2)
    assert "out of memory at lens items per forward = 16; retrying with 8" in said
    assert "out of memory at patching pairs per forward = 8; retrying with 4" in said
    for item_id, logits in lens.final_logits.items():
        np.testing.assert_allclose(forced_lens.final_logits[item_id], logits, atol=1e-5)
    assert forced_answers.answer == answers.answer and forced_answers.text == answers.text
    assert [r["flipped"] for r in forced_patch.pairs] == [r["flipped"] for r in patch.pairs]
    np.testing.assert_allclose([r["ld_patched"] for r in forced_patch.pairs], [r["ld_patched"] for r in patch.pairs],
                               atol=1e-4)
    assert forced_patch.summary["en"]["text"]["flip_rate"] == patch.summary["en"]["text"]["flip_rate"]
