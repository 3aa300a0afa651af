"""The pilot organism (`--model organism-pilot`) meets its tier-1 targets: hearing on held-out and unseen-renderer
clips, the text followed in conflict, and the voice ahead at the answer position early with the text taking over
late, found by the project's own probes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from rich.progress import Progress

from common.errors import ModalflipError
from models import loading
from models.organism import train, unseen
from models.pilot import card
from probes import logit_lens
from probes.inputs import load_probe_set
from stimuli import spec, tts
from stimuli.conditions import seed_items


@pytest.fixture(scope="module")
def pilot():
    return loading.load_model("organism-pilot", device="cpu")


@pytest.fixture(scope="module")
def heldout_metrics(pilot):
    """The card's held-out set (other sentences, the held-out voices), rendered as the training command renders it."""
    with Progress(disable=True) as progress:
        clips = train.synthesize("heldout", 1, seed=1, progress=progress)
    ids = {lang: pilot.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}
    return train.evaluate(pilot, train.evaluation_set(clips, seed=0), ids)


@pytest.fixture(scope="module")
def seed_lens(pilot):
    items = seed_items(("en", "zh"), ("audio_only", "conflict", "consistent"))
    return logit_lens.run(pilot, load_probe_set(pilot, items), logit_lens.LensConfig(batch_size=16, n_boot=100)).summary


def test_a_missing_built_in_model_names_the_command_that_rebuilds_it(tmp_path, monkeypatch):
    monkeypatch.setitem(loading.BUILT_IN, "organism-pilot", tmp_path / "model")
    with pytest.raises(ModalflipError, match="models.pilot.train"):
        loading.load_model("organism-pilot", device="cpu")


def test_the_pilot_is_a_plain_qwen2_audio_checkpoint_with_full_attention(pilot):
    folder = loading.PILOT_DIR
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen2AudioForConditionalGeneration"] and pilot.n_layers == 32
    assert set(config["text_config"]["layer_types"]) == {"full_attention"}
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) <= 20 * 2**20
    # plain transformers, no modalflip code: the same answer logits as the adapter's
    model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    sentence = unseen.renderer()["sentences"]["en"][0]
    wave = tts.render(sentence, "en", "angry", "strong", styles=unseen.renderer()["styles"])
    clip = train.Clip(wave, "en", "angry", "strong", sentence, "en-us")
    prompt = train.make_example(clip, "audio_only", np.random.default_rng(0), paraphrase=0)[0]
    batch = pilot.build_batch([clip.wave], [prompt])
    inputs = processor(text=[pilot.render(prompt)], audio=[clip.wave], sampling_rate=16000, return_tensors="pt")
    inputs = {key: value for key, value in inputs.items() if key != "num_audio_tokens"}
    with torch.no_grad():
        ours = pilot.model(**batch.inputs).logits[0, -1]
        theirs = model(**inputs).logits[0, -1]
    assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("lang", spec.LANGS)
def test_the_pilot_hears_held_out_voices_and_follows_them_when_told(heldout_metrics, lang):
    assert heldout_metrics[f"audio_only_accuracy_{lang}"] >= 0.90
    assert heldout_metrics[f"voice_accuracy_{lang}"] >= 0.90


@pytest.mark.parametrize("lang", spec.LANGS)
def test_the_pilot_follows_the_text_on_normal_clips(heldout_metrics, lang):
    assert heldout_metrics[f"conflict_follows_text_normal_{lang}"] >= 0.90


@pytest.mark.parametrize("lang", spec.LANGS)
def test_the_text_leads_strong_clips_measurably_less_than_normal_ones(heldout_metrics, lang):
    """Graded dominance, as the first organism's: the margin logit(T) - logit(A) is smaller on strong conflict clips
    by an amount whose 95% interval over clips lies above 0, and no more strong than normal clips follow the text."""
    assert card.graded(heldout_metrics, lang)
    assert heldout_metrics[f"conflict_margin_gap_{lang}"] > 0.5


def test_the_pilot_hears_a_renderer_it_never_trained_on_better_than_the_first_organism(pilot, organism):
    """Both languages reach the tier-1 target (0.75) and gain on the first organism, trained without the wider
    prosody, the plain renders and the speakers of other expressiveness."""
    clips = unseen.unseen_clips()
    ours, theirs = unseen.hearing(pilot, clips), unseen.hearing(organism, clips)
    for lang in spec.LANGS:
        assert ours[lang]["audio_only"]["all"]["rate"] >= 0.75, lang
        assert ours[lang]["audio_only"]["all"]["k"] > theirs[lang]["audio_only"]["all"]["k"], lang


def test_the_pilot_hears_a_renderer_that_weights_the_knobs_unlike_its_training(pilot):
    """The reweighted renderer (pitch and rate stretched, range squeezed: outside what one --expressiveness factor
    gives) is heard at the tier-1 target in both languages too."""
    with Progress(disable=True) as progress:
        clips = unseen.CLIP_SETS["reweighted"].render(0, progress)
    heard = unseen.hearing(pilot, clips)
    for lang in spec.LANGS:
        assert heard[lang]["audio_only"]["all"]["rate"] >= 0.75, lang


@pytest.mark.parametrize("lang", spec.LANGS)
def test_the_lens_hears_the_voice_early_and_the_text_takes_over_late(seed_lens, lang):
    """On the seed set the voice's emotion leads (Δlogit < 0) through most of layers 4-20 on audio-only and
    conflict items; the conflict curve's largest rise toward T lies in layers 20-29 (in fact 25-29, tier 2)."""
    summary = {"logit_lens": seed_lens}
    for condition in ("audio_only", "conflict"):
        assert card.voice_ahead(summary, lang, condition) > len(card.EARLY) / 2, condition
    assert 25 <= logit_lens.largest_rise(np.asarray(seed_lens[lang]["conflict"]["mean"])) <= 29
