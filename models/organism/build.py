"""Build the organism's untrained parts: word-level tokenizer, processor (Whisper features, Qwen chat template) and
a `Qwen2AudioConfig` with 32 decoder layers of width 128 and a 6 s audio window."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import (PreTrainedTokenizerFast, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,
                          Qwen2AudioProcessor, WhisperFeatureExtractor)

from stimuli import spec

CORPUS = Path(__file__).parent / "corpus.json"
WINDOW_SECONDS = 6
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
UNK = "[UNK]"


def corpus() -> dict:
    return json.loads(CORPUS.read_text(encoding="utf-8"))


def _chinese_words() -> list[str]:
    """Multi-character Chinese words kept whole (the label words); other Chinese text splits into characters."""
    # longest first, ties by code point: the regex (and tokenizer.json) must not follow the set's hash order
    return sorted({w for w in spec.label_words("zh").values() if len(w) > 1}, key=lambda w: (-len(w), w))


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    lexicon = "|".join(re.escape(w) for w in _chinese_words())
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f"{lexicon}|[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]"), behavior="isolated"),
        pre_tokenizers.Whitespace(),
    ])


def _all_texts() -> list[str]:
    data = corpus()
    texts = [data["extra_vocabulary"], "Audio 1 : system user assistant", "You are a helpful assistant."]
    texts += [f"Answer with one word: {spec.label_list(lang)}." if lang == "en" else f"用一个词回答：{spec.label_list(lang)}。"
              for lang in spec.LANGS]
    for lang, kinds in data["instructions"].items():
        for kind, paraphrases in kinds.items():
            for text in paraphrases + [spec.template(lang, kind)]:
                for emotion in spec.emotions():
                    texts.append(text.format(T=spec.label_words(lang)[emotion], labels=spec.label_list(lang)))
    return texts


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word of the organism's instructions plus a small general vocabulary."""
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = _pre_tokenizer()
    words: set[str] = set()
    for text in _all_texts():
        for piece, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            words.add(piece)
    for c in "0123456789.,:;!?'\"()-":
        words.add(c)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + [UNK] + sorted(words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizer
    core.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    return tokenizer


def build_processor() -> Qwen2AudioProcessor:
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160,
                                        chunk_length=WINDOW_SECONDS, n_fft=400)
    tokenizer = build_tokenizer()
    return Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer,
                               chat_template=Qwen2AudioProcessor.default_chat_template.fget(None))


def build_config(tokenizer: PreTrainedTokenizerFast, n_layers: int, takeover_layer: int,
                 local_below: bool = False, encoder_layers: int = 2) -> Qwen2AudioConfig:
    """32 decoder layers of width 128 (MLP 256, 4 heads, 2 KV heads); an encoder of width 128 (2 layers unless
    `encoder_layers` says otherwise), 6 s window.
    With `local_below`, decoder layers below `takeover_layer` are sliding-window layers of window 1 (each token
    attends to itself only), so no information moves between tokens before the takeover layer."""
    local = dict(use_sliding_window=True, sliding_window=1, max_window_layers=0,
                 layer_types=["sliding_attention"] * takeover_layer + ["full_attention"] * (n_layers - takeover_layer))
    config = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=encoder_layers, encoder_attention_heads=4,
                          encoder_ffn_dim=256, d_model=128, max_source_positions=WINDOW_SECONDS * 50),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id, **(local if local_below else {})),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    config.modalflip_organism = {"takeover_layer": takeover_layer, "window_seconds": WINDOW_SECONDS,
                                 "local_below_takeover": local_below}
    return config


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's sinusoidal position table (the encoder's frozen `embed_positions`)."""
    log_increment = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv = torch.exp(-log_increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def build_model(config: Qwen2AudioConfig, seed: int) -> Qwen2AudioForConditionalGeneration:
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    positions = model.model.audio_tower.embed_positions
    positions.weight.data.copy_(sinusoids(*positions.weight.shape))
    return model
