"""Model adapters on tiny random models of every supported family (built from config classes, no downloads).

Each family is checked against its own processor path: the spans decode to the right tokens, the adapter's batch
gives the same logits as the processor's, the hooks see what `output_hidden_states` reports, resuming from any
layer reproduces the logits, and `load_model` round-trips a saved checkpoint with its self-check.
"""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from common.errors import ModalflipError
from models.adapter import ModelAdapter, check_aligned
from models.families.audio_flamingo3 import FAMILY as AF3
from models.families.base import resolve, whisper_pooled_tokens
from models.families.processor_shim import AudioChatProcessor
from models.families.qwen2_5_omni import FAMILY as OMNI
from models.forward import lens, resume, resume_suffix, run_traced
from models.loading import check_adapter, load_model
from models.prompting import chat_prompt
from stimuli import spec
from conftest import claim_prompts, tiny_qwen2_audio, two_clips

FAMILIES = ["qwen2_audio", "qwen2_5_omni", "audioflamingo3"]
N_LAYERS = 3

# Chat templates in the shape of the real checkpoints' (system/user/assistant turns, the audio placeholder where the
# audio part is); the real ones ship with the checkpoints and are read from there.
_TURNS = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
          "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'audio' %}"
          "AUDIO{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
OMNI_TEMPLATE = _TURNS.replace("AUDIO", "<|audio_bos|><|AUDIO|><|audio_eos|>")
AF3_TEMPLATE = _TURNS.replace("AUDIO", "<sound>")


def _text_config(tokenizer, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
                pad_token_id=tokenizer.pad_token_id, **extra)


def tiny_qwen2_5_omni(seed: int = 0) -> ModelAdapter:
    """A random Qwen2.5-Omni thinker (3 decoder layers of width 32, 1-layer audio and vision encoders), the
    organism's tokenizer, a 6 s Whisper extractor and the processor stand-in."""
    from models.organism import build

    tokenizer = build.build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = transformers.Qwen2_5OmniThinkerConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=32, output_dim=32, n_window=50, max_source_positions=300),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        text_config=_text_config(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "mrope_section": [2, 1, 1]}),
        audio_token_index=ids("<|AUDIO|>"), audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"), vision_start_token_id=151652,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=128, chunk_length=6)
    processor = AudioChatProcessor(tokenizer, extractor, OMNI_TEMPLATE, "<|AUDIO|>", whisper_pooled_tokens)
    return ModelAdapter(model, processor, OMNI, model_id="tiny-qwen2.5-omni")


def tiny_audio_flamingo3(seed: int = 0) -> ModelAdapter:
    """A random Audio Flamingo 3 (3 decoder layers of width 32, 1-layer encoder) with its real processor class
    over the organism's tokenizer plus `<sound>`: 2 s windows, up to 3 of them (6 s)."""
    from models.organism import build

    tokenizer = build.build_tokenizer()
    tokenizer.add_tokens(["<sound>"], special_tokens=True)
    config = transformers.AudioFlamingo3Config(
        audio_config=dict(num_mel_bins=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          hidden_size=32, max_source_positions=100),
        text_config=_text_config(tokenizer),
        audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"),
    )
    torch.manual_seed(seed)
    model = transformers.AudioFlamingo3ForConditionalGeneration(config).eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=128, chunk_length=2)
    processor = transformers.AudioFlamingo3Processor(feature_extractor=extractor, tokenizer=tokenizer,
                                                     chat_template=AF3_TEMPLATE, max_audio_len=6)
    return ModelAdapter(model, processor, AF3, model_id="tiny-audio-flamingo3")


BUILDERS = {"qwen2_audio": lambda: tiny_qwen2_audio(n_layers=N_LAYERS), "qwen2_5_omni": tiny_qwen2_5_omni,
            "audioflamingo3": tiny_audio_flamingo3}


@pytest.fixture(scope="module")
def built() -> dict[str, ModelAdapter]:
    return {}


def _tiny(built: dict[str, ModelAdapter], family: str) -> ModelAdapter:
    if family not in built:
        built[family] = BUILDERS[family]()
    return built[family]


@pytest.fixture(params=FAMILIES)
def adapter(request, built) -> ModelAdapter:
    return _tiny(built, request.param)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return two_clips()


@pytest.fixture
def batch_and_trace(adapter, clips):
    batch = adapter.build_batch(clips, claim_prompts())
    with torch.no_grad():
        trace = run_traced(adapter, batch)
    return batch, trace


@pytest.fixture
def logits(adapter, batch_and_trace):
    """The model's own logits over the traced batch, (batch, seq, vocab)."""
    batch, _ = batch_and_trace
    with torch.no_grad():
        return adapter.model(**batch.inputs, use_cache=False).logits


def _squash(text: str) -> str:
    return "".join(text.lower().split())


def test_spans_decode_to_the_right_tokens(adapter, batch_and_trace):
    batch, _ = batch_and_trace
    tokenizer = adapter.tokenizer
    for row, (spans, prompt) in enumerate(zip(batch.spans, batch.prompts)):
        ids = batch.inputs["input_ids"][row]
        audio = ids[spans.audio]
        assert len(audio) > 0 and bool((audio == adapter.audio_token_id).all())
        assert int((ids == adapter.audio_token_id).sum()) == len(audio)
        assert _squash(tokenizer.decode(ids[spans.instruction])) == _squash(prompt.instruction)
        assert _squash(tokenizer.decode(ids[spans.claim])) == _squash(prompt.claim)
        assert spans.claim.start >= spans.instruction.start and spans.claim.stop <= spans.instruction.stop
        assert spans.answer == spans.length - 1 == int(batch.inputs["attention_mask"][row].sum()) - 1
        assert tokenizer.convert_ids_to_tokens(int(ids[spans.answer])) == "assistant"


def test_audio_tokens_follow_duration(adapter, batch_and_trace, clips):
    """25 audio tokens per second of audio (40 ms each), whatever the window layout."""
    batch, _ = batch_and_trace
    for spans, clip in zip(batch.spans, clips):
        assert abs((spans.audio.stop - spans.audio.start) - 25 * len(clip) / 16000) <= 1


def _processor_inputs(adapter, clips, prompts) -> dict[str, torch.Tensor]:
    """The family's own input path: the HF processor (or its stand-in) on the rendered chats and numpy clips."""
    texts = [adapter.render(p) for p in prompts]
    if isinstance(adapter.processor, AudioChatProcessor):
        inputs = adapter.processor(text=texts, audio=clips)
    else:
        inputs = adapter.processor(text=texts, audio=clips, return_tensors="pt", text_kwargs={"padding": True},
                                   audio_kwargs={"sampling_rate": adapter.sampling_rate})
    return {k: v for k, v in inputs.items() if k != "num_audio_tokens"}


def test_batch_logits_equal_processor_logits(adapter, clips, batch_and_trace, logits):
    batch, _ = batch_and_trace
    ours = logits
    reference = _processor_inputs(adapter, clips, batch.prompts)
    features = adapter.family.features_key
    mask_key = adapter.family.feature_mask_key
    assert torch.equal(batch.inputs[mask_key].long(), reference[mask_key].long())
    assert torch.allclose(batch.inputs[features], reference[features], atol=1e-4)
    with torch.no_grad():
        theirs = adapter.model(**reference, use_cache=False).logits
    for row, spans in enumerate(batch.spans):
        real = reference["attention_mask"][row].bool()  # the processor pads on the left, the adapter on the right
        assert torch.equal(reference["input_ids"][row][real], batch.inputs["input_ids"][row, :spans.length])
        assert torch.allclose(theirs[row][real], ours[row, :spans.length], atol=1e-5)


def test_hooks_see_output_hidden_states(adapter, batch_and_trace):
    batch, trace = batch_and_trace
    with torch.no_grad():
        out = adapter.model(**batch.inputs, output_hidden_states=True, use_cache=False)
    states = out.hidden_states  # index 0 embeddings, i the output of layer i; the last one already final-normed
    assert len(states) == len(trace.resid) == adapter.n_layers + 1
    for layer in range(adapter.n_layers):
        assert torch.allclose(trace.resid[layer], states[layer], atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(adapter.final_norm(trace.resid[-1]), states[-1], atol=1e-6)


def test_traced_answer_logits_equal_the_models_logits_there(adapter, batch_and_trace, logits):
    batch, _ = batch_and_trace
    answers = batch.answer_positions()
    with torch.no_grad():
        at_answer = run_traced(adapter, batch, logits_at=answers).logits  # (batch, vocab)
    assert torch.allclose(at_answer, logits[torch.arange(len(answers)), answers], atol=1e-5)


def test_lens_last_layer_equals_logits(adapter, batch_and_trace, logits):
    _, trace = batch_and_trace
    with torch.no_grad():
        assert torch.allclose(lens(adapter, trace.resid[-1]), logits, atol=1e-5)
        some = torch.tensor([3, 7, 11])
        assert torch.allclose(lens(adapter, trace.resid[-1], some), logits[..., some], atol=1e-5)


@pytest.mark.parametrize("start", [0, 1, N_LAYERS - 1, N_LAYERS])
def test_resume_reproduces_logits(adapter, batch_and_trace, logits, start):
    _, trace = batch_and_trace
    with torch.no_grad():
        final = resume(adapter, trace, start, trace.resid[start])
        assert torch.allclose(lens(adapter, final), logits, atol=1e-5)
        swapped = resume(adapter, trace, start, trace.resid[start][[1, 0]], rows=torch.tensor([1, 0]))
        assert torch.allclose(lens(adapter, swapped), logits[[1, 0]], atol=1e-5)


@pytest.mark.parametrize("equal_lengths", [False, True], ids=["padded batch", "no padding mask"])
def test_resume_from_a_prefix_reproduces_the_suffix(adapter, clips, equal_lengths):
    """Resuming only positions >= p on the traced run's prefix keys and values gives the full resume's logits there,
    with the traced mask (padded batch) and with the causal mask built when the run had none."""
    waves = [clips[0], clips[0]] if equal_lengths else clips
    batch = adapter.build_batch(waves, claim_prompts())
    prefix = int(batch.spans[0].instruction.start)
    with torch.no_grad():
        logits = adapter.model(**batch.inputs, use_cache=False).logits
        trace = run_traced(adapter, batch, kv_prefix=prefix)
        assert trace.prefix == prefix and len(trace.prefix_kv) == adapter.n_layers
        for start in (0, N_LAYERS - 1):
            suffix = resume_suffix(adapter, trace, start, trace.resid[start][:, prefix:])
            assert torch.allclose(lens(adapter, suffix), logits[:, prefix:], atol=1e-5)
            swapped = resume_suffix(adapter, trace, start, trace.resid[start][[1, 0], prefix:], rows=torch.tensor([1, 0]))
            assert torch.allclose(lens(adapter, swapped), logits[[1, 0], prefix:], atol=1e-5)


def test_early_stop_records_the_same_residuals(adapter, batch_and_trace, logits):
    batch, trace = batch_and_trace
    with torch.no_grad():
        early = run_traced(adapter, batch, stop_after=1)
        assert early.logits is None and len(early.resid) == 2
        for layer in range(2):
            assert torch.equal(early.resid[layer], trace.resid[layer])
        resumed = resume(adapter, early, 1, early.resid[1])
        assert torch.allclose(lens(adapter, resumed), logits, atol=1e-5)


def test_forward_from_embeddings_reproduces_logits(adapter, batch_and_trace, logits):
    """`inputs_embeds` (audio merged) instead of token ids: same positions (3-D for Omni), same logits."""
    batch, trace = batch_and_trace
    answers = batch.answer_positions()
    with torch.no_grad():
        again = run_traced(adapter, batch, inputs_embeds=trace.resid[0], logits_at=answers)
    assert torch.allclose(again.logits, logits[torch.arange(len(answers)), answers], atol=1e-5)


def test_waveform_gradient_reaches_through_the_model(adapter, clips):
    wave = torch.tensor(clips[0], requires_grad=True)
    batch = adapter.build_batch([wave], claim_prompts(("happy",)))
    logits = adapter.model(**batch.inputs, use_cache=False).logits
    logits[0, batch.spans[0].answer].logsumexp(-1).backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_label_token_ids_errors_name_the_words(built):
    adapter = _tiny(built, "qwen2_audio")
    ids = adapter.label_token_ids(spec.label_words("en"))
    assert len(set(ids.values())) == 5
    with pytest.raises(ModalflipError, match="'very happy'.*2 tokens"):
        adapter.label_token_ids({"happy": "very happy", "sad": "sad"})
    with pytest.raises(ModalflipError, match="'happy today' and 'happy now' share their first token"):
        adapter.label_token_ids({"happy": "happy today", "sad": "happy now"}, single=False)


def test_check_aligned_names_the_differing_span(adapter, clips):
    words = spec.label_words("en")
    same_clip = adapter.build_batch([clips[0], clips[0]], claim_prompts(("happy", "sad")))
    check_aligned(*same_clip.spans)  # one clip, label words of equal token length: aligned
    other_clip = adapter.build_batch(clips, claim_prompts(("happy", "happy")))
    with pytest.raises(ModalflipError, match="audio spans differ"):
        check_aligned(*other_clip.spans)
    longer = [claim_prompts(("happy",))[0], chat_prompt(spec.render_instruction("en", "voice", words["sad"]), "en",
                                                   claim=words["sad"])]
    with pytest.raises(ModalflipError, match="instruction spans differ"):
        check_aligned(*adapter.build_batch([clips[0], clips[0]], longer).spans)


def test_clip_longer_than_the_model_takes_is_an_error(adapter):
    too_long = torch.zeros(int(adapter.max_audio_seconds * adapter.sampling_rate) + 1)
    with pytest.raises(ModalflipError, match="longer than the model's"):
        adapter.build_batch([too_long], claim_prompts(("happy",)))


def test_audio_flamingo3_spans_several_windows(built, clips):
    adapter = _tiny(built, "audioflamingo3")
    assert adapter.max_windows == 3 and adapter.max_audio_seconds == 6
    batch = adapter.build_batch(clips, claim_prompts())
    windows = [int(np.ceil(len(c) / 32000)) for c in clips]
    assert batch.inputs["input_features"].shape[0] == sum(windows) and windows[1] == 3


# -- loading -------------------------------------------------------------------------------------------------------

def test_load_model_round_trips_a_saved_checkpoint(adapter, clips, tmp_path):
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded = load_model(str(tmp_path), device="cpu", self_check=True)
    assert loaded.family is adapter.family and loaded.n_layers == N_LAYERS
    assert isinstance(loaded.processor, AudioChatProcessor) == (adapter.family is OMNI)
    prompts = claim_prompts()
    with torch.no_grad():
        ours = adapter.model(**adapter.build_batch(clips, prompts).inputs, use_cache=False).logits
        theirs = loaded.model(**loaded.build_batch(clips, prompts).inputs, use_cache=False).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_full_qwen2_5_omni_checkpoint_loads_as_its_thinker(built, tmp_path):
    """A Qwen2.5-Omni release holds the thinker under `thinker_config` and `thinker.*` weights (plus talker), and
    names `Qwen2_5OmniProcessor`, which cannot be built without torchvision: the stand-in takes over."""
    adapter = _tiny(built, "qwen2_5_omni")
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    extractor_file = tmp_path / "preprocessor_config.json"
    extractor = json.loads(extractor_file.read_text())
    extractor_file.write_text(json.dumps(extractor | {"processor_class": "Qwen2_5OmniProcessor"}))
    thinker = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni", "thinker_config": thinker,
                                                      "architectures": ["Qwen2_5OmniForConditionalGeneration"]}))
    weights = load_file(tmp_path / "model.safetensors")
    save_file({f"thinker.{k}": v for k, v in weights.items()}, tmp_path / "model.safetensors", {"format": "pt"})
    loaded = load_model(str(tmp_path), device="cpu")
    assert type(loaded.model) is type(adapter.model) and loaded.family is OMNI
    assert isinstance(loaded.processor, AudioChatProcessor)
    theirs = loaded.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in adapter.model.state_dict().items())


def test_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(ModalflipError, match="does not exist"):
        load_model(str(tmp_path / "no-such-checkpoint"), device="cpu")
    with pytest.raises(ModalflipError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_unsupported_architecture_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModalflipError, match="'bert' is not supported.*qwen2_audio"):
        load_model(str(tmp_path), device="cpu")
    transformers.GraniteSpeechConfig().save_pretrained(tmp_path)
    with pytest.raises(ModalflipError, match="'granite_speech' is not supported: its feature extractor imports"):
        load_model(str(tmp_path), device="cpu")


def test_self_check_failure_names_family_and_version(adapter):
    """A family whose lens path points at the wrong norm (as if a transformers release moved the final norm)."""
    model = copy.deepcopy(adapter.model)
    wrong = "model.language_model.layers.0.input_layernorm"
    with torch.no_grad():
        resolve(model, wrong).weight.mul_(2.0)  # random init leaves every norm at 1: make the wrong one differ
    family = dataclasses.replace(adapter.family, paths=dict(adapter.family.paths, norm=wrong))
    broken = ModelAdapter(model, adapter.processor, family, model_id="broken")
    with pytest.raises(ModalflipError) as caught:
        check_adapter(broken)
    assert adapter.family.name in str(caught.value) and transformers.__version__ in str(caught.value)
    check_adapter(adapter)


def test_model_hash_follows_the_weights_not_only_the_config():
    from conftest import tiny_qwen2_audio
    from models.loading import config_hash, model_hash

    first, same, retrained = tiny_qwen2_audio(seed=0), tiny_qwen2_audio(seed=0), tiny_qwen2_audio(seed=1)
    assert config_hash(first) == config_hash(retrained)
    assert model_hash(first) == model_hash(same)
    assert model_hash(first) != model_hash(retrained)
