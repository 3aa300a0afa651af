"""Peak memory and speed of the probes at one batch size:
`python -m bench.memory --config organism|tiny|qwen2-audio-7b --dtype bf16 --batch-pairs 8 --device cpu|cuda`.

Prints, measured in one run: the memory the weights take, then for the logit lens (`--lens-batch` items per forward,
every layer read at the answer) and for a Patch Text sweep over every layer (`--batch-pairs` pairs per forward, the
resumed sweep of `probes.patching`) the seconds per item / per 100 pairs and the peak memory. Peak memory is
`torch.cuda.max_memory_allocated` on CUDA (reset before each probe) and the process's RSS high-water mark
(`resource.getrusage`, never reset: weights included) on CPU. Each probe runs once untimed on one batch first.

Configs: the organism (its weights); `tiny`, a random 4-layer Qwen2-Audio of width 32 with the organism's processor;
`qwen2-audio-7b`, random weights in Qwen2-Audio-7B-Instruct's exact shape (`bench/configs/qwen2-audio-7b-instruct.json`,
the checkpoint's config.json values) with the organism's tokenizer and a 30 s Whisper front end: built directly on
the GPU in the asked dtype, and refused on CPU (it would need its weights' size in RAM and hours per sweep).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from rich.console import Console
from rich.table import Table

from common.cli import run_main
from common.errors import ModalflipError
from models.adapter import ModelAdapter
from models.families.qwen2_audio import FAMILY
from models.loading import load_model, resolve_device, resolve_dtype
from probes import logit_lens, patching
from probes.inputs import load_probe_set
from stimuli.conditions import seed_items

CONFIGS = ("organism", "tiny", "qwen2-audio-7b")
QWEN2_AUDIO_7B = Path(__file__).parent / "configs" / "qwen2-audio-7b-instruct.json"


def qwen2_audio_7b_config(audio_token_id: int):
    """Qwen2-Audio-7B-Instruct's config, with the audio placeholder of the tokenizer the bench uses."""
    from transformers import Qwen2AudioConfig

    data = json.loads(QWEN2_AUDIO_7B.read_text())
    return Qwen2AudioConfig.from_dict(dict(data, audio_token_index=audio_token_id))


def parameter_count(config) -> int:
    """Parameters of a Qwen2-Audio built from `config` (counted on the meta device: nothing is allocated)."""
    from transformers import Qwen2AudioForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def build(name: str, device: torch.device, dtype: torch.dtype) -> ModelAdapter:
    """The adapter of config `name` on `device` in `dtype`; a `ModalflipError` for the 7B config on CPU."""
    if name == "organism":
        return load_model("organism", device=str(device), dtype=str(dtype).removeprefix("torch."))
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, \
        WhisperFeatureExtractor

    from models.organism import build as organism

    processor = organism.build_processor()
    tokenizer = processor.tokenizer
    audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    if name == "tiny":
        config = Qwen2AudioConfig(
            audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                              d_model=32, max_source_positions=organism.WINDOW_SECONDS * 50),
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id),
            audio_token_id=audio_id)
    else:
        config = qwen2_audio_7b_config(audio_id)
        if device.type != "cuda":
            n = parameter_count(config)
            size = n * torch.finfo(dtype).bits / 8
            raise ModalflipError(f"qwen2-audio-7b has {n / 1e9:.1f} B parameters, {size / 2**30:.1f} GiB of "
                                 f"{str(dtype).removeprefix('torch.')} weights before any activation: not a CPU run; "
                                 "use --device cuda on a GPU with at least twice that free")
        processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128),
                                        tokenizer=tokenizer,
                                        chat_template=Qwen2AudioProcessor.default_chat_template.fget(None))
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=dtype).eval()
    return ModelAdapter(model, processor, FAMILY, f"random {name}")


def peak_bytes(device: torch.device) -> int:
    """The peak since the last reset on CUDA; the process's RSS high-water mark on CPU (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(job: Callable[[], object], device: torch.device) -> tuple[float, int]:
    """(seconds, peak bytes) of one call of `job`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    job()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, peak_bytes(device)


def bench(adapter: ModelAdapter, batch_pairs: int, lens_batch: int, n_pairs: int, n_items: int) -> dict:
    """Seconds and peak memory of the logit lens on `n_items` conflict items and of a Patch Text sweep over every
    layer on `n_pairs` pairs (English seed clips, padded to the model's window)."""
    items = seed_items(["en"], ("conflict", "consistent"))
    pairs = [p for p in patching.make_pairs(items) if p.kind == "text"][:n_pairs]
    lens_items = [i for i in items if i.condition == "conflict"][:n_items]
    used = {i.item_id for p in pairs for i in (p.receiver, p.donor)} | {i.item_id for i in lens_items}
    probe_set = load_probe_set(adapter, [i for i in items if i.item_id in used])
    layers = list(range(adapter.n_layers))
    config = patching.PatchConfig(batch_pairs=batch_pairs, layers=layers)

    def lens(chosen):
        return lambda: logit_lens.label_logits(adapter, probe_set, chosen, lens_batch)

    def sweep(chosen):
        return lambda: patching.patched_label_logits(adapter, probe_set, chosen, layers, config)

    with torch.no_grad():
        lens(lens_items[:lens_batch])()  # warm-up, one batch
        lens_s, lens_peak = measure(lens(lens_items), adapter.device)
        sweep(pairs[:batch_pairs])()
        sweep_s, sweep_peak = measure(sweep(pairs), adapter.device)
    return dict(items=len(lens_items), lens_s=lens_s, lens_peak=lens_peak, pairs=len(pairs), sweep_s=sweep_s,
                sweep_peak=sweep_peak, tokens=int(adapter.window_seconds * 25), layers=adapter.n_layers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="organism")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-pairs", type=int, default=8, help="Patch Text pairs per forward")
    parser.add_argument("--lens-batch", type=int, default=logit_lens.LensConfig.batch_size,
                        help="logit-lens items per forward")
    parser.add_argument("--pairs", type=int, help="pairs swept (default: two batches)")
    parser.add_argument("--items", type=int, help="logit-lens items read (default: two batches)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (pinned)")
    args = parser.parse_args(argv)
    if args.batch_pairs < 1 or args.lens_batch < 1:
        raise ModalflipError("--batch-pairs and --lens-batch must be at least 1")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    before = peak_bytes(device)
    adapter = build(args.config, device, dtype)
    weights = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    r = bench(adapter, args.batch_pairs, args.lens_batch, args.pairs or 2 * args.batch_pairs,
              args.items or 2 * args.lens_batch)
    gib = 2**30
    dtype_name = str(dtype).removeprefix("torch.")
    table = Table(title=f"{args.config} ({r['layers']} layers, {r['tokens']} audio tokens per clip, {dtype_name}, "
                        f"{device}, {torch.get_num_threads()} threads)")
    for column in ("probe", "rows per forward", "measured", "seconds", "s per item", "s per 100 pairs",
                   "peak GiB"):
        table.add_column(column, justify="right")
    table.add_row("logit lens", str(args.lens_batch), f"{r['items']} items", f"{r['lens_s']:.2f}",
                  f"{r['lens_s'] / r['items']:.4f}", "-", f"{r['lens_peak'] / gib:.2f}")
    table.add_row("Patch Text, every layer", f"{args.batch_pairs} pairs x {r['layers']} layers",
                  f"{r['pairs']} pairs", f"{r['sweep_s']:.2f}", "-", f"{100 * r['sweep_s'] / r['pairs']:.1f}",
                  f"{r['sweep_peak'] / gib:.2f}")
    console = Console()
    console.print(table)
    where = "allocated on the GPU" if device.type == "cuda" else "RSS high-water of this process, weights included"
    console.print(f"weights {weights / 2**20:.1f} MiB; peak = {where}"
                  + (f" (before loading: {before / gib:.2f} GiB)" if device.type != "cuda" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
