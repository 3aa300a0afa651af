"""Patching and logit-lens cost: `python -m bench.patching [--threads 2] [--pairs 8]`.

Prints, measured in one run on each model: the time of a full Patch Text + Patch Audio sweep over every layer done
naively (one full forward per patched layer) and done by modalflip (clean runs traced once, forwards resumed from
the patched layer, the layers of a sweep batched), their ratio (target >= 1.8x); and the logit lens's cost over a
plain forward that returns hidden states (target <= 1.1x). Models: the organism (if its weights are present) and a
random 32-layer config of Qwen2-Audio shape (30 s window, 750 audio tokens, hidden 256).
"""
from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from models.adapter import ModelAdapter
from models.families.qwen2_audio import FAMILY
from models.loading import ORGANISM_DIR, load_model
from probes import logit_lens, patching
from probes.inputs import load_probe_set
from stimuli.conditions import seed_items


def random_qwen2_audio_shape() -> ModelAdapter:
    """32 decoder layers like Qwen2-Audio-7B (no GQA), width 256, a 2-layer Whisper-style encoder, 30 s window."""
    from transformers import (PreTrainedTokenizerFast, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,
                              Qwen2AudioProcessor, WhisperFeatureExtractor)

    from models.organism import build

    tokenizer: PreTrainedTokenizerFast = build.build_tokenizer()
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer,
                                    chat_template=Qwen2AudioProcessor.default_chat_template.fget(None))
    config = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=512,
                          d_model=256, max_source_positions=1500),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=32,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    torch.manual_seed(0)
    return ModelAdapter(Qwen2AudioForConditionalGeneration(config).eval(), processor, FAMILY, "random-32-layer")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(adapter: ModelAdapter, n_pairs: int) -> dict:
    items = seed_items(["en"], ("conflict", "consistent"))
    probe_set = load_probe_set(adapter, items)
    pairs = patching.make_pairs(items)
    text = [p for p in pairs if p.kind == "text"][:n_pairs]
    audio = [p for p in pairs if p.kind == "audio"][:n_pairs]
    layers = list(range(adapter.n_layers))
    config = patching.PatchConfig(batch_pairs=n_pairs)

    def sweep(naive: bool):
        cfg = patching.PatchConfig(batch_pairs=n_pairs, naive=naive)
        patching.patched_label_logits(adapter, probe_set, text, layers, cfg)
        patching.patched_label_logits(adapter, probe_set, audio, layers, cfg)

    sweep(False)  # warm-up
    resumed = _time(lambda: sweep(False))
    naive = _time(lambda: sweep(True))
    lens_items = items[:n_pairs]
    batch = adapter.build_batch([probe_set.wave(i.clip_id) for i in lens_items],
                                [probe_set.prompt(i) for i in lens_items])

    @torch.no_grad()
    def plain():
        adapter.model(**batch.inputs, output_hidden_states=True, use_cache=False)

    @torch.no_grad()
    def lensed():
        logit_lens.label_logits(adapter, probe_set, lens_items, batch_size=len(lens_items))

    plain()
    plain_s = min(_time(plain) for _ in range(3))
    lens_s = min(_time(lensed) for _ in range(3))
    del config
    return dict(model=adapter.model_id, layers=adapter.n_layers, pairs=2 * len(text), naive=naive, resumed=resumed,
                lens=lens_s, plain=plain_s, tokens=int(batch.inputs["input_ids"].shape[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=8, help="pairs per kind (text, audio)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    adapters = []
    if (ORGANISM_DIR / "config.json").exists():
        adapters.append(load_model("organism", device=args.device))
    shaped = random_qwen2_audio_shape()
    shaped.model.to(args.device)
    adapters.append(shaped)
    table = Table(title=f"Patching sweep over every layer, text + audio ({args.threads} threads, {args.device})")
    for column in ("model", "layers", "tokens", "pairs", "naive s", "resumed s", "speed-up", "lens s", "plain s",
                   "lens / plain"):
        table.add_column(column)
    for adapter in adapters:
        r = bench(adapter, args.pairs)
        table.add_row(r["model"], str(r["layers"]), str(r["tokens"]), str(r["pairs"]), f"{r['naive']:.2f}",
                      f"{r['resumed']:.2f}", f"{r['naive'] / r['resumed']:.2f}x", f"{r['lens']:.3f}",
                      f"{r['plain']:.3f}", f"{r['lens'] / r['plain']:.2f}x")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
