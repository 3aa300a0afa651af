"""Qwen3-Omni (thinker), Phi-4-multimodal and Voxtral on tiny random builds (from config classes, no downloads).

Per family: the spans decode to the audio placeholder, the instruction, the claim and the last prompt token; the
differentiable front end equals the family's own feature extractor (1e-4) and the adapter's batch gives the
reference input path's logits (1e-5); the lens at the last layer equals the logits; resuming from any layer, from a
prefix's keys and values, or from `inputs_embeds` reproduces them (1e-5); a saved build loads with its self-check;
the probes' prompt search runs a trial and PGD runs steps; `run_probes.py --model PATH` runs on a saved build.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from safetensors.torch import load_file, save_file

from attacks import directions as directions_module
from attacks import pgd
from common.errors import ModalflipError
from models.adapter import ModelAdapter
from models.families import phi4_multimodal, qwen3_omni, voxtral
from models.families.processor_shim import AudioChatProcessor
from models.forward import lens, resume, resume_suffix, run_traced
from models.loading import load_model
from probes.inputs import load_probe_set
from prompts.search import SearchConfig
from prompts.search import run as search
from stimuli import tts
from stimuli.conditions import seed_items
from conftest import ROOT, claim_prompts, two_clips

N_LAYERS = 3
FAMILIES = ["qwen3_omni", "phi4_multimodal", "voxtral"]

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'audio' %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Voxtral's prompt layout (mistral-common renders the real one): system prompt, then the user turn with the audio.
VOXTRAL_TEMPLATE = (
    "<s>{% for message in messages %}{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ message['content'] }}"
    "[/SYSTEM_PROMPT]{% elif message['role'] == 'user' %}[INST]{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}[BEGIN_AUDIO][AUDIO]{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}[/INST]{% endif %}{% endfor %}")
ANSWER_TOKEN = {qwen3_omni.FAMILY.name: "assistant", phi4_multimodal.FAMILY.name: "<|assistant|>",
                voxtral.FAMILY.name: "[/INST]"}


def _tokenizer(*extra: str):
    from models.organism import build

    tokenizer = build.build_tokenizer()
    if extra:
        tokenizer.add_tokens(list(extra), special_tokens=True)
    return tokenizer


def _text_config(tokenizer, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
                pad_token_id=tokenizer.pad_token_id, **extra)


def tiny_qwen3_omni(seed: int = 0) -> ModelAdapter:
    """A random Qwen3-Omni thinker: 3 MoE decoder layers of width 32 (4 experts, 2 per token), a 1-layer audio
    encoder, the organism's tokenizer, a 6 s Whisper extractor and the processor stand-in padding to the longest."""
    tokenizer = _tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = transformers.Qwen3OmniMoeThinkerConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=32, output_dim=32, n_window=50, n_window_infer=100, downsample_hidden_size=8,
                          max_source_positions=300),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           deepstack_visual_indexes=[0]),
        text_config=_text_config(tokenizer, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                 head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                              "mrope_section": [2, 1, 1]}),
        audio_token_id=ids("<|AUDIO|>"), audio_start_token_id=ids("<|audio_bos|>"),
        vision_start_token_id=151652,  # the real checkpoints' config carries it; get_rope_index reads it
    )
    torch.manual_seed(seed)
    model = transformers.Qwen3OmniMoeThinkerForConditionalGeneration(config).eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=128, chunk_length=6)
    processor = AudioChatProcessor(tokenizer, extractor, QWEN_TEMPLATE, "<|AUDIO|>", qwen3_omni.audio_tokens,
                                   feature_padding="longest")
    return ModelAdapter(model, processor, qwen3_omni.FAMILY, model_id="tiny-qwen3-omni")


def tiny_phi4_multimodal(seed: int = 0) -> ModelAdapter:
    """A random Phi-4-multimodal: 3 decoder layers of width 32, a 1-block conformer of width 16, the organism's
    tokenizer plus Phi's turn tokens and `<|audio|>`, its real feature extractor and the model-card template."""
    tokenizer = _tokenizer("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|audio|>")
    pad = tokenizer.pad_token_id
    config = transformers.Phi4MultimodalConfig(
        **_text_config(tokenizer), original_max_position_embeddings=1024, bos_token_id=pad, eos_token_id=pad,
        audio_config=dict(hidden_size=16, intermediate_size=24, num_blocks=1, num_attention_heads=2,
                          ext_pw_out_channel=16, depthwise_separable_out_channel=16, nemo_conv_channels=16,
                          audio_token_id=tokenizer.convert_tokens_to_ids("<|audio|>")),
        vision_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, crop_size=28),
    )
    torch.manual_seed(seed)
    model = transformers.Phi4MultimodalForCausalLM(config).eval()
    family = phi4_multimodal.FAMILY
    processor = phi4_multimodal.Phi4AudioProcessor(
        tokenizer, transformers.Phi4MultimodalFeatureExtractor(), family.chat_template, "<|audio|>",
        family.audio_token_count, family.feature_mask_key, family.feature_padding)
    return ModelAdapter(model, processor, family, model_id="tiny-phi4-multimodal")


def tiny_voxtral(seed: int = 0) -> ModelAdapter:
    """A random Voxtral: 3 Llama decoder layers of width 32, a 1-layer encoder of width 32 (4 frames per token), a
    6 s window (75 audio tokens), the organism's tokenizer plus Mistral's control tokens, the processor stand-in."""
    tokenizer = _tokenizer("<s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[BEGIN_AUDIO]",
                           "[AUDIO]")
    config = transformers.VoxtralConfig(
        audio_config=dict(num_mel_bins=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                          hidden_size=32, max_source_positions=300),
        text_config=_text_config(tokenizer, head_dim=8), audio_token_id=tokenizer.convert_tokens_to_ids("[AUDIO]"))
    torch.manual_seed(seed)
    model = transformers.VoxtralForConditionalGeneration(config).eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=128, chunk_length=6)
    processor = AudioChatProcessor(tokenizer, extractor, VOXTRAL_TEMPLATE, "[AUDIO]", voxtral.audio_tokens, None)
    return ModelAdapter(model, processor, voxtral.FAMILY, model_id="tiny-voxtral")


BUILDERS = {"qwen3_omni": tiny_qwen3_omni, "phi4_multimodal": tiny_phi4_multimodal, "voxtral": tiny_voxtral}


@pytest.fixture(scope="module")
def built() -> dict[str, ModelAdapter]:
    return {}


@pytest.fixture(params=FAMILIES)
def adapter(request, built) -> ModelAdapter:
    if request.param not in built:
        built[request.param] = BUILDERS[request.param]()
    return built[request.param]


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return two_clips()


@pytest.fixture
def batch_and_trace(adapter, clips):
    """The batch, its traced run, and the model's own logits (batch, pos, vocab) from a plain forward."""
    batch = adapter.build_batch(clips, claim_prompts())
    with torch.no_grad():
        trace = run_traced(adapter, batch)
        logits = adapter.model(**batch.inputs, use_cache=False).logits
    return batch, trace, logits


def _squash(text: str) -> str:
    return "".join(text.lower().split())


def test_spans_decode_to_the_right_tokens(adapter, batch_and_trace):
    batch, _, _ = batch_and_trace
    tokenizer = adapter.tokenizer
    for row, (spans, prompt) in enumerate(zip(batch.spans, batch.prompts)):
        ids = batch.inputs["input_ids"][row]
        assert len(ids[spans.audio]) > 0 and bool((ids[spans.audio] == adapter.audio_token_id).all())
        assert int((ids == adapter.audio_token_id).sum()) == spans.audio.stop - spans.audio.start
        assert _squash(tokenizer.decode(ids[spans.instruction])) == _squash(prompt.instruction)
        assert _squash(tokenizer.decode(ids[spans.claim])) == _squash(prompt.claim)
        assert spans.answer == spans.length - 1 == int(batch.inputs["attention_mask"][row].sum()) - 1
        assert tokenizer.convert_ids_to_tokens(int(ids[spans.answer])) == ANSWER_TOKEN[adapter.family.name]


def test_audio_tokens_per_second(built, clips):
    """Qwen3-Omni: about 13 per second; Phi-4: 12.5; Voxtral: 75 per 6 s window whatever the clip holds."""
    rates = {"qwen3_omni": 13, "phi4_multimodal": 12.5}
    for name, rate in rates.items():
        adapter = built.get(name) or built.setdefault(name, BUILDERS[name]())
        batch = adapter.build_batch(clips, claim_prompts())
        for spans, clip in zip(batch.spans, clips):
            assert abs((spans.audio.stop - spans.audio.start) - rate * len(clip) / 16000) <= 1.5
    adapter = built.get("voxtral") or built.setdefault("voxtral", BUILDERS["voxtral"]())
    batch = adapter.build_batch(clips, claim_prompts())
    assert [s.audio.stop - s.audio.start for s in batch.spans] == [75, 75]


def test_front_end_and_batch_logits_equal_the_reference_path(adapter, clips, batch_and_trace):
    """The family's own extractor (through the processor stand-in, as its HF processor calls it) and the adapter's
    differentiable front end give the same features and mask, token ids and logits."""
    batch, trace, model_logits = batch_and_trace
    reference = adapter.processor(text=[adapter.render(p) for p in batch.prompts], audio=clips)
    features, mask_key = adapter.family.features_key, adapter.family.feature_mask_key
    assert batch.inputs[features].shape == reference[features].shape
    assert (batch.inputs[features] - reference[features]).abs().max() <= 1e-4
    if mask_key is not None:
        assert torch.equal(batch.inputs[mask_key].long(), reference[mask_key].long())
    with torch.no_grad():
        logits = adapter.model(**reference, use_cache=False).logits
    for row, spans in enumerate(batch.spans):
        real = reference["attention_mask"][row].bool()  # the reference pads on the left, the adapter on the right
        assert torch.equal(reference["input_ids"][row][real], batch.inputs["input_ids"][row, :spans.length])
        assert torch.allclose(logits[row][real], model_logits[row, :spans.length], atol=1e-5)


def test_phi4_front_end_equals_its_extractor_clip_by_clip(built, clips):
    adapter = built.get("phi4_multimodal") or built.setdefault("phi4_multimodal", tiny_phi4_multimodal())
    extractor = adapter.extractor
    for clip in clips:
        expected = extractor([clip], sampling_rate=16000, return_tensors="pt")["audio_input_features"]
        features, mask = phi4_multimodal.log_mel([torch.from_numpy(clip)], extractor, torch.device("cpu"), 10 ** 6)
        assert features.shape == expected.shape and (features - expected).abs().max() <= 1e-4 and bool(mask.all())
    with pytest.raises(ModalflipError, match="longer than the model's 30 s audio window"):
        adapter.build_batch([np.zeros(30 * 16000 + 1, dtype=np.float32)], claim_prompts(("happy",)))


def test_hooks_see_output_hidden_states(adapter, batch_and_trace):
    batch, trace, model_logits = batch_and_trace
    with torch.no_grad():
        out = adapter.model(**batch.inputs, output_hidden_states=True, use_cache=False)
        states = out.hidden_states
        assert len(states) == len(trace.resid) == adapter.n_layers + 1
        for layer in range(adapter.n_layers):
            assert torch.allclose(trace.resid[layer], states[layer], atol=1e-6)
        assert torch.allclose(adapter.final_norm(trace.resid[-1]), states[-1], atol=1e-6)
        assert torch.allclose(out.logits, model_logits, atol=1e-6)


def test_lens_last_layer_equals_logits(adapter, batch_and_trace):
    _, trace, model_logits = batch_and_trace
    with torch.no_grad():
        assert torch.allclose(lens(adapter, trace.resid[-1]), model_logits, atol=1e-5)


def test_resume_reproduces_logits(adapter, batch_and_trace):
    _, trace, model_logits = batch_and_trace
    with torch.no_grad():
        for start in range(N_LAYERS + 1):
            final = resume(adapter, trace, start, trace.resid[start])
            assert torch.allclose(lens(adapter, final), model_logits, atol=1e-5)
        swapped = resume(adapter, trace, 1, trace.resid[1][[1, 0]], rows=torch.tensor([1, 0]))
        assert torch.allclose(lens(adapter, swapped), model_logits[[1, 0]], atol=1e-5)


def test_resume_from_a_prefix_and_from_embeddings_reproduce_logits(adapter, batch_and_trace):
    batch, trace, model_logits = batch_and_trace
    prefix = int(batch.spans[0].instruction.start)
    with torch.no_grad():
        cut = run_traced(adapter, batch, kv_prefix=prefix)
        assert cut.prefix == prefix
        suffix = resume_suffix(adapter, cut, 1, cut.resid[1][:, prefix:])
        assert torch.allclose(lens(adapter, suffix), model_logits[:, prefix:], atol=1e-5)
        again = run_traced(adapter, batch, inputs_embeds=trace.resid[0])
        assert torch.allclose(lens(adapter, again.resid[-1]), model_logits, atol=1e-5)


def test_waveform_gradient_reaches_through_the_model(adapter, clips):
    wave = torch.tensor(clips[0], requires_grad=True)
    batch = adapter.build_batch([wave], claim_prompts(("happy",)))
    logits = adapter.model(**batch.inputs, use_cache=False).logits
    logits[0, batch.spans[0].answer].logsumexp(-1).backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_load_model_round_trips_a_saved_checkpoint(adapter, clips, tmp_path):
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu", self_check=True)
    assert loaded.family is adapter.family and loaded.n_layers == N_LAYERS
    assert type(loaded.processor) is type(adapter.processor)
    prompts = claim_prompts()
    with torch.no_grad():
        ours = adapter.model(**adapter.build_batch(clips, prompts).inputs, use_cache=False).logits
        theirs = loaded.model(**loaded.build_batch(clips, prompts).inputs, use_cache=False).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_full_qwen3_omni_checkpoint_loads_as_its_thinker(built, tmp_path):
    """A Qwen3-Omni release holds the thinker under `thinker_config` and `thinker.*` weights."""
    adapter = built.get("qwen3_omni") or built.setdefault("qwen3_omni", tiny_qwen3_omni())
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    thinker = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_omni_moe", "thinker_config": thinker,
                                                      "architectures": ["Qwen3OmniMoeForConditionalGeneration"]}))
    weights = load_file(tmp_path / "model.safetensors")
    save_file({f"thinker.{k}": v for k, v in weights.items()}, tmp_path / "model.safetensors", {"format": "pt"})
    loaded = load_model(str(tmp_path), device="cpu")
    assert type(loaded.model) is type(adapter.model) and loaded.family is qwen3_omni.FAMILY
    theirs = loaded.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in adapter.model.state_dict().items())


def test_a_voxtral_checkpoint_without_a_jinja_template_stops_with_the_reason(built, tmp_path):
    """Real Voxtral checkpoints leave chat rendering to mistral_common: without a Jinja template, loading stops."""
    adapter = built.get("voxtral") or built.setdefault("voxtral", tiny_voxtral())
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    with pytest.raises(ModalflipError, match="ships no chat template"):
        load_model(str(tmp_path), device="cpu")


def test_gemma3n_stops_at_load_with_its_reason(tmp_path):
    transformers.Gemma3nConfig().save_pretrained(tmp_path)
    with pytest.raises(ModalflipError, match="'gemma3n' is not supported: .*AltUp"):
        load_model(str(tmp_path), device="cpu")


# -- probes, search and attack on the tiny builds -------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_one_search_trial_and_two_attack_steps_run(built, family, tmp_path):
    adapter = built.get(family) or built.setdefault(family, BUILDERS[family]())
    items = seed_items(["en"], ("audio_only", "conflict"))
    conflict = [i for i in items if i.condition == "conflict"]
    probe_set = load_probe_set(adapter, conflict[:4])
    config = SearchConfig(study_name="t", storage=str(tmp_path / "study.log"), trials=1, layers=(1, 2),
                          slice_size=0, startup_trials=1, batch_size=4)
    result = search(adapter, probe_set, config)
    assert result.finished == 1 and result.scored == 1
    directions = directions_module.compute(adapter, [i for i in items if i.clip_id in ("A7-en", "A3-en")])
    chosen = [i for i in conflict if i.clip_id == "A7-en"][:2]
    attack = pgd.PGDConfig(from_layer=1, target_layer=2, steps=2, checkpoint_every=1, prompts_per_clip=2)
    run = pgd.run(adapter, chosen, attack, directions)
    assert run.steps == 2 and all(np.isfinite(run.losses))
    assert max(float(d.abs().max()) for d in run.deltas.values()) <= attack.epsilon + 1e-7


def test_a_universal_attack_spans_the_familys_own_window(built):
    """Phi-4's extractor has no `n_samples`: the universal δ takes its length from the family's window."""
    adapter = built.get("phi4_multimodal") or built.setdefault("phi4_multimodal", tiny_phi4_multimodal())
    items = seed_items(["en"], ("audio_only", "conflict"))
    directions = directions_module.compute(adapter, [i for i in items if i.clip_id in ("A7-en", "A3-en")])
    chosen = [i for i in items if i.condition == "conflict" and i.clip_id == "A7-en"][:1]
    attack = pgd.PGDConfig(from_layer=1, target_layer=2, steps=1, checkpoint_every=0, universal=True)
    run = pgd.run(adapter, chosen, attack, directions)
    window = round(adapter.window_seconds * adapter.sampling_rate)
    assert run.steps == 1 and [d.shape[-1] for d in run.deltas.values()] == [window]


def test_run_probes_accepts_a_saved_tiny_build(built, tmp_path):
    adapter = built.get("phi4_multimodal") or built.setdefault("phi4_multimodal", tiny_phi4_multimodal())
    model_dir = tmp_path / "tiny-phi4"
    adapter.model.save_pretrained(model_dir)
    adapter.processor.save_pretrained(model_dir)
    rows = []
    for emotion, sentence in (("happy", "The train leaves at noon."), ("sad", "We meet again tomorrow.")):
        sf.write(tmp_path / f"{emotion}.wav", tts.render(sentence, "en", emotion, "strong"), 16000)
        rows.append({"id": emotion, "path": f"{emotion}.wav", "emotion": emotion, "intensity": "strong",
                     "lang": "en", "sentence": sentence, "style": "plain", "source": "test"})
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "run_probes.py", "--model", str(model_dir), "--device", "cpu", "--lang",
                          "en", "--stimuli", str(manifest), "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
                          "--n-boot", "20"],
                         cwd=ROOT, capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "120"})
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_layers"] == N_LAYERS and len(summary["logit_lens"]["en"]["conflict"]["mean"]) == N_LAYERS + 1
