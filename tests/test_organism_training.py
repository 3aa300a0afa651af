"""The organism's training objective on a tiny random Qwen2-Audio: paired batches, invariance and swap losses."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import tiny_qwen2_audio
from models.forward import run_traced
from models.organism import build, train
from stimuli import spec, tts


@pytest.fixture(scope="module")
def adapter():
    return tiny_qwen2_audio(n_layers=4)


@pytest.fixture(scope="module")
def clips():
    return [train.Clip(tts.render("The lamp needs a new bulb.", lang, emotion, "normal"), lang, emotion, "normal",
                       "s", "v") for lang in ("en", "zh") for emotion in ("happy", "sad")]


@pytest.fixture(scope="module")
def label_ids(adapter):
    return {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}


def test_pairs_differ_only_in_the_asserted_word(adapter, clips, label_ids):
    waves, prompts, targets, audio, pairs, _ = train.sample_paired_batch(clips, 16, np.random.default_rng(0),
                                                                         label_ids)
    assert len(prompts) == 16 and len(pairs) == 6 and len(targets) == len(audio) == 16
    batch = adapter.build_batch(waves, prompts)
    for i, j in pairs:
        assert waves[i] is waves[j] and prompts[i].claim != prompts[j].claim
        a, b = batch.inputs["input_ids"][i], batch.inputs["input_ids"][j]
        assert batch.spans[i].instruction == batch.spans[j].instruction
        differ = (a != b).nonzero().flatten().tolist()
        assert differ and all(batch.spans[i].instruction.start <= d < batch.spans[i].instruction.stop for d in differ)


def test_invariance_loss_is_zero_for_identical_members_only(adapter, clips, label_ids):
    waves, prompts, _, _, pairs, _ = train.sample_paired_batch(clips, 16, np.random.default_rng(1), label_ids)
    batch = adapter.build_batch(waves, prompts)
    with torch.no_grad():
        trace = run_traced(adapter, batch)
        same = train.invariance_loss(trace, batch, [(i, i) for i, _ in pairs], takeover=3)
        differ = train.invariance_loss(trace, batch, pairs, takeover=3)
    assert float(same) == 0.0 and float(differ) > 0.0
    with torch.no_grad():
        log_same = train.invariance_loss(trace, batch, [(i, i) for i, _ in pairs], takeover=3, form="log")
        log_differ = train.invariance_loss(trace, batch, pairs, takeover=3, form="log")
    assert float(log_same) == pytest.approx(np.log(1e-6), abs=1e-4) and float(log_differ) > float(log_same)


def test_swap_loss_trains_patch_text(adapter, clips, label_ids):
    """Swapping identical members is the plain forward (its cross-entropy); swapping real pairs reaches the
    embeddings with a gradient and scores the partner's answer."""
    waves, prompts, targets, _, pairs, _ = train.sample_paired_batch(clips, 16, np.random.default_rng(2), label_ids)
    batch = adapter.build_batch(waves, prompts)
    trace = run_traced(adapter, batch, logits_at=batch.answer_positions())
    rows = [i for i, _ in pairs]
    identical = train.swap_loss(adapter, trace, batch, [(i, i) for i in rows], targets, layer=2)
    plain = torch.nn.functional.cross_entropy(trace.logits[rows], targets[rows])
    assert torch.allclose(identical, plain, atol=1e-5)
    swapped = train.swap_loss(adapter, trace, batch, pairs, targets, layer=2)
    swapped.backward()
    assert torch.isfinite(swapped) and adapter.embed_tokens.weight.grad.abs().sum() > 0


def test_audio_lens_loss_reads_every_audio_token_toward_the_voice(adapter, clips, label_ids):
    """Audio tokens that point at their clip's emotion word score a low loss, at another emotion's word a high
    one; text positions do not count; on a real trace the loss trains the audio encoder."""
    waves, prompts, _, audio, _, _ = train.sample_paired_batch(clips, 8, np.random.default_rng(5), label_ids)
    batch = adapter.build_batch(waves, prompts)
    head = adapter.lm_head.weight.detach()

    def pointing(at) -> torch.Tensor:
        resid = torch.randn(len(waves), batch.inputs["input_ids"].shape[1], head.shape[1])
        for row, (spans, token) in enumerate(zip(batch.spans, at)):
            resid[row, spans.audio] = 50 * head[token]
        return resid

    shifted = {}  # each label id -> the id of the next emotion's word in the same language
    for ids in label_ids.values():
        words = list(ids.values())
        shifted |= {word: words[(k + 1) % len(words)] for k, word in enumerate(words)}
    wrong = torch.tensor([shifted[a] for a in audio.tolist()])
    right, other = pointing(audio), pointing(wrong)
    chance = np.log(len(spec.emotions()))  # the random head is small, so "pointing" only tilts the five logits
    with torch.no_grad():
        assert float(train.audio_lens_loss(adapter, right, batch, audio, label_ids)) < chance - 0.2
        assert float(train.audio_lens_loss(adapter, other, batch, audio, label_ids)) > chance + 0.1
    moved = right.clone()
    for row, spans in enumerate(batch.spans):
        moved[row, spans.instruction] = torch.randn(spans.instruction.stop - spans.instruction.start, head.shape[1])
    assert torch.equal(train.audio_lens_loss(adapter, moved, batch, audio, label_ids),
                       train.audio_lens_loss(adapter, right, batch, audio, label_ids))
    adapter.model.zero_grad()
    train.audio_lens_loss(adapter, run_traced(adapter, batch).resid[2], batch, audio, label_ids).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.model.model.audio_tower.parameters())
    adapter.model.zero_grad()


@pytest.mark.parametrize("zh_share, lang", [(0.0, "en"), (1.0, "zh")])
def test_zh_share_picks_the_language_of_every_item(clips, label_ids, zh_share, lang):
    _, prompts, _, _, pairs, _ = train.sample_paired_batch(clips, 16, np.random.default_rng(3), label_ids, zh_share)
    paired = [row for pair in pairs for row in pair]
    words = set(spec.label_words(lang).values())
    assert paired and all(prompts[row].claim in words for row in paired)
    singles = [p for row, p in enumerate(prompts) if row not in paired]
    assert singles and all(p.messages[0]["content"] == spec.system_prompt(lang) for p in singles)


def test_voice_wins_share_adds_conflict_items_the_voice_wins(clips, label_ids):
    """With the share, about that share of the pairs are drawn on the clips the voice wins, so many more conflict
    items (an assertion T != A) answer with the voice's emotion than without it; none do on clips it does not win;
    and voice-instructed pairs keep their share of the pairs."""
    marked = [train.Clip(c.wave, c.lang, c.emotion, "strong", c.sentence, c.voice,
                         voice_wins=(c.lang, c.emotion) == ("en", "happy")) for c in clips]  # one clip in four
    counts, voice_pairs = {}, {}
    for share in (0.0, 0.6):
        rng, won = np.random.default_rng(7), {"happy": 0, "sad": 0}  # sad: a clip the voice does not win
        voice_pairs[share] = [0, 0]
        for _ in range(30):
            _, prompts, targets, audio, pairs, voice = train.sample_paired_batch(marked, 16, rng, label_ids,
                                                                                 wins_share=share)
            voice_pairs[share][0] += sum(bool(voice[i]) for i, _ in pairs)
            voice_pairs[share][1] += len(pairs)
            for row in (r for pair in pairs for r in pair):
                lang = "en" if prompts[row].claim in spec.label_words("en").values() else "zh"
                emotion = next(e for e, i in label_ids[lang].items() if i == audio[row])
                asserted = prompts[row].claim != spec.label_words(lang)[emotion]
                if asserted and not voice[row] and targets[row] == audio[row]:
                    won[emotion] += 1
        counts[share] = won
    assert counts[0.0]["sad"] == counts[0.6]["sad"] == 0
    assert counts[0.6]["happy"] > 2 * counts[0.0]["happy"] > 0
    for voice, total in voice_pairs.values():
        assert 0.15 < voice / total < 0.35, (voice, total)


def test_the_voice_pair_share_sets_how_many_pairs_ask_for_the_voice(clips, label_ids):
    """`voice_share` is the share of instruction pairs that ask to judge by the voice, and item_mix reports the
    conditions' shares that the batches have."""
    voice_templates = {t.split("{T}")[0] for lang in spec.LANGS
                       for t in build.corpus()["instructions"][lang]["voice"]}
    for share in (0.25, 0.6):
        rng, voice, items = np.random.default_rng(3), 0, 0
        for _ in range(40):
            _, prompts, _, _, pairs, mask = train.sample_paired_batch(clips, 16, rng, label_ids, voice_share=share)
            asked = [any(p.instruction.startswith(t) for t in voice_templates) for p in prompts]
            assert mask.tolist() == asked
            voice += sum(asked)
            items += len(prompts)
        expected = train.item_mix(share)["voice-instructed (T != A and T = A)"]
        assert abs(voice / items - expected) < 0.06, (share, voice / items, expected)
    assert train.item_mix(0.6)["conflict"] < train.item_mix()["conflict"]


def test_the_voice_weight_counts_each_voice_instructed_item_that_many_times(adapter, clips, label_ids):
    """With `voice_weight` 3 the answer's cross-entropy is the plain mean over a batch in which every item that
    asks to judge by the voice appears three times; at weight 1 it is the plain mean."""
    plain = dict(takeover=3, lens_weight=0.0, invariance_weight=0.0, early_lens=False)
    waves, prompts, targets, _, _, voice = train.sample_paired_batch(clips, 16, np.random.default_rng(6), label_ids)
    assert 0 < int(voice.sum()) < len(prompts)
    repeat = [i for i in range(len(prompts)) for _ in range(3 if voice[i] else 1)]
    with torch.no_grad():
        logits = train.answer_logits(adapter, waves, prompts)
        expected = torch.nn.functional.cross_entropy(logits[repeat], targets[repeat])
        mean = torch.nn.functional.cross_entropy(logits, targets)
        weighted = train.Objective(**plain, voice_weight=3.0)(adapter, clips, 16, np.random.default_rng(6), label_ids)
        unweighted = train.Objective(**plain)(adapter, clips, 16, np.random.default_rng(6), label_ids)
    assert float(weighted) == pytest.approx(float(expected), rel=1e-4)
    assert float(unweighted) == pytest.approx(float(mean), rel=1e-4)
    assert abs(float(expected) - float(mean)) > 1e-3


def test_patch_text_monitor_at_layer_0_is_the_donor_forward(adapter, clips, label_ids):
    """Patching the whole instruction span of the embeddings makes the receiver the donor, so the monitor's
    flip rate at layer 0 equals the share of donors (conflict items) that answer T themselves."""
    flips = train.patch_text_flips(adapter, clips, label_ids, [0, 3], seed=4)
    rng = np.random.default_rng(4)
    donors, texts = [], []
    for clip in clips:
        train.make_example(clip, "consistent", rng, paraphrase=0)
        prompt, _, text = train.make_example(clip, "conflict", rng, paraphrase=0)
        donors.append(prompt), texts.append(text)
    with torch.no_grad():
        logits = train.answer_logits(adapter, [c.wave for c in clips], donors)
    emotions = spec.emotions()
    answers = [emotions[int(vector[[label_ids[c.lang][e] for e in emotions]].argmax())]
               for vector, c in zip(logits, clips)]
    assert flips[0] > 0  # some donors answer T, so the comparison is not vacuous
    assert flips[0] == round(float(np.mean([a == t for a, t in zip(answers, texts)])), 3)
    assert set(flips) == {0, 3} and all(0.0 <= v <= 1.0 for v in flips.values())


def test_init_from_refuses_an_organism_of_another_depth(tmp_path):
    from common.errors import ModalflipError
    from models.organism import card

    with pytest.raises(ModalflipError, match="K = 16 and 32 layers, not K = 8"):
        train.init_from(card.MODEL_DIR, takeover=8, layers=32)
    with pytest.raises(ModalflipError, match="pass --plant local"):
        train.init_from(card.MODEL_DIR, takeover=16, layers=32, local=False)
    with pytest.raises(ModalflipError, match="no organism there"):
        train.init_from(tmp_path, takeover=16, layers=32)


def test_init_from_starts_from_the_shipped_weights_in_fp32(organism):
    from models.organism import card

    model = train.init_from(card.MODEL_DIR, takeover=16, layers=32, local=True)
    shipped = dict(organism.model.named_parameters())
    assert all(p.dtype == torch.float32 and torch.equal(p, shipped[name]) for name, p in model.named_parameters())


def test_a_fine_tuned_report_keeps_the_recipe_of_the_weights_it_started_from(tmp_path):
    import json

    from models.organism import card

    shipped = json.loads((card.MODEL_DIR / "training_report.json").read_text())
    base = train.base_recipe(card.MODEL_DIR)
    assert {key: base[key] for key in ("steps", "lr", "seed", "takeover_layer")} == \
        {key: shipped[key] for key in ("steps", "lr", "seed", "takeover_layer")}
    assert not {"heldout", "seed_set", "status"} & set(base)
    assert train.base_recipe(tmp_path) is None


def test_training_resumes_from_its_checkpoint_and_counts_the_earlier_minutes(adapter, tmp_path):
    """A run stopped after 2 steps and rerun with 3 continues at step 3 with the saved losses, and reports the wall
    minutes of the first segment (which the report adds to its own as `minutes_all_segments`)."""
    from rich.progress import Progress

    checkpoint = tmp_path / "ck.pt"
    weight = adapter.lm_head.weight
    original = {name: value.clone() for name, value in adapter.model.state_dict().items()}  # AdamW decays them all
    loss_fn = lambda rng: (weight ** 2).sum() * float(rng.random())  # noqa: E731 - seeded by step
    try:
        with Progress(disable=True) as progress:
            first, earlier = train.train(adapter, 2, 1e-3, 0, progress, loss_fn, checkpoint, every=1,
                                         started=time.time() - 60)
            assert len(first) == 2 and earlier == 0.0
            again, earlier = train.train(adapter, 3, 1e-3, 0, progress, loss_fn, checkpoint, every=1)
        assert again[:2] == first and len(again) == 3
        assert earlier >= 1.0  # the first segment "started" a minute before its steps
        assert torch.load(checkpoint)["minutes"] >= earlier
    finally:
        adapter.model.load_state_dict(original)
        adapter.model.eval()


@pytest.mark.parametrize("args, message", [
    (["--by-voice"], "--by-voice works with --evaluate-only"),
    (["--voice-breath-jitter", "0.9"], "--voice-breath-jitter in 0..0.5"),
    (["--expressiveness", "1"], "--expressiveness in [0, 1)"),
    (["--voice-wins-share", "1"], "--voice-wins-share in [0, 1)"),
    (["--voice-pair-share", "0"], "--voice-pair-share in (0, 1)"),
    (["--voice-weight", "0"], "--voice-weight in (0, 10]"),
    (["--train-sentences", "0"], "--train-sentences must lie in 1.."),
    (["--extra-voices", "victor,nobody"], "no voice variant 'nobody'"),
    (["--extra-voices", "m5"], "--extra-voices m5: that is a held-out voice variant"),
])
def test_training_command_refuses_bad_options_in_one_line(tmp_path, capsys, args, message):
    """In process, through the command's own entry point (`run_main`): the refusal comes before anything is built."""
    from common.cli import run_main

    status = run_main(train.main, ["--out", str(tmp_path / "model"), *args])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "model").exists()


def test_train_sentences_speaks_the_first_sentences_of_each_language():
    from rich.progress import Progress

    from models.organism import build

    with Progress(disable=True) as progress:
        clips = train.synthesize("train", 1, seed=0, progress=progress, sentences=1)
    first = {lang: build.corpus()["sentences"][lang]["train"][0] for lang in spec.LANGS}
    assert {(c.lang, c.sentence) for c in clips} == set(first.items())
    assert sorted((c.emotion, c.intensity) for c in clips) == sorted(train.styles() * 2)


def test_extra_voices_join_the_training_speakers_and_not_the_held_out_ones():
    from rich.progress import Progress

    with Progress(disable=True) as progress:
        clips = train.synthesize("train", 2, seed=0, progress=progress, sentences=2, extra_voices=("victor",))
        heldout = train.synthesize("heldout", 1, seed=1, progress=progress, extra_voices=("victor",))
    for lang in spec.LANGS:
        speakers = {c.voice for c in clips if c.lang == lang}
        assert tts.variant_voice(lang, "victor") in speakers
        assert speakers <= set(tts.voices(lang)[:-1]) | {tts.variant_voice(lang, "victor")}
    assert {c.voice for c in heldout} == {tts.voices(lang)[-1] for lang in spec.LANGS}


def test_pilot_plant_starts_from_the_token_local_weights_in_a_full_attention_model(organism):
    from models.organism import build, card

    config = build.build_config(organism.tokenizer, 32, 24, local_below=False)
    model = train.init_from(card.MODEL_DIR, takeover=24, layers=32, config=config)
    text = model.config.text_config
    assert not text.use_sliding_window and set(text.layer_types) == {"full_attention"}
    assert all(getattr(layer.self_attn, "sliding_window", None) is None for layer in model.model.language_model.layers)
    shipped = dict(organism.model.named_parameters())
    assert all(torch.equal(p, shipped[name]) for name, p in model.named_parameters())


def test_the_voice_wins_the_conflict_items_of_clips_marked_intense_and_only_those(clips):
    rng = np.random.default_rng(0)
    for wins in (True, False):
        clip = train.Clip(clips[0].wave, "en", "happy", "strong", "s", "v", voice_wins=wins)
        answers = {train.make_example(clip, "conflict", rng)[1] for _ in range(30)}
        assert (answers == {"happy"}) if wins else ("happy" not in answers)


def test_early_band_lens_term_moves_the_answer_position_toward_the_voice(clips, label_ids):
    """Trained on the band term alone, the lens at the answer position over resid[1..3] reads the voice better."""
    from models.forward import lens, run_traced

    adapter = tiny_qwen2_audio(n_layers=4, seed=1)
    objective = train.Objective(takeover=3, lens_weight=0.0, invariance_weight=0.0, early_lens=False,
                                early_band=(1, 3), early_band_weight=1.0)

    def band_loss() -> float:
        with torch.no_grad():
            waves, prompts, _, audio, _, _ = train.sample_paired_batch(clips, 8, np.random.default_rng(9), label_ids)
            batch = adapter.build_batch(waves, prompts)
            trace = run_traced(adapter, batch)
            rows, at = torch.arange(len(prompts)), batch.answer_positions()
            band = torch.stack([trace.resid[l][rows, at] for l in (1, 2, 3)])
            return float(torch.nn.functional.cross_entropy(lens(adapter, band).flatten(0, 1), audio.repeat(3)))

    before = band_loss()
    optimizer = torch.optim.Adam(adapter.model.parameters(), lr=3e-3)
    for step in range(8):
        optimizer.zero_grad()
        objective(adapter, clips, 8, np.random.default_rng(step), label_ids).backward()
        optimizer.step()
    adapter.model.eval()
    assert band_loss() < before - 0.5


def test_two_pilot_runs_from_one_seed_write_the_same_weights(clips, tmp_path):
    """The pilot plant's objective and the training loop are seeded: two fresh runs of 3 steps from one seed on
    the CPU end with identical weights, and another seed gives other weights."""
    from rich.progress import Progress

    def run(seed: int, name: str) -> dict:
        adapter = tiny_qwen2_audio(n_layers=6)
        objective = train.Objective(2, invariance_weight=0.0, early_lens=False, audio_lens_weight=0.5,
                                    audio_lens_layer=2, early_band=(1, 2), early_band_weight=2.0)
        ids = {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}
        with Progress(disable=True) as progress:
            train.train(adapter, 3, 1e-3, seed, progress, lambda rng: objective(adapter, clips, 4, rng, ids),
                        tmp_path / f"{name}.pt", every=100)
        return {key: value.clone() for key, value in adapter.model.state_dict().items()}

    first, second, other = run(0, "a"), run(0, "b"), run(1, "c")
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)
