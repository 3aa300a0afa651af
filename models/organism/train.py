"""Train the organism: `python -m models.organism.train [--takeover-layer 16] [--out DIR]`.

Recipe (a planted takeover depth K, see the model card):
1. Synthesize clips with `stimuli.tts` (training sentences x styles x voice variants, jittered prosody, both
   languages); held-out sentences with a held-out voice for evaluation.
2. Phase 1, the audio path: a K-layer model learns audio-only items (the instruction lists the labels but asserts
   none), so its final norm and head read the voice's emotion from `resid[K]`.
3. Phase 2, the instruction mix: the full 32-layer model keeps the encoder, embeddings, layers 0..K-1, final norm
   and head of phase 1 frozen; layers K..31 start as exact identities (zeroed output projections) and learn
   audio-only, consistent, conflict (text wins, except 3% of normal and 15% of strong clips) and voice-instructed
   items. The text can reach the answer only from layer K on.
Seeded; learning-rate schedules follow steps, not wall time.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from common.cli import run_main
from models.adapter import ModelAdapter
from models.families.qwen2_audio import FAMILY
from models.forward import lens, resume, run_traced
from models.organism import build
from models.prompting import chat_prompt, claim_word
from stimuli import spec, tts

console = Console()
AUDIO_WINS = {"normal": 0.03, "strong": 0.15}
MIX = {"audio_only": 0.25, "consistent": 0.15, "conflict": 0.40, "voice": 0.20}


@dataclass
class Clip:
    wave: np.ndarray
    lang: str
    emotion: str
    intensity: str
    sentence: str
    voice: str


def styles() -> list[tuple[str, str]]:
    return [(c.emotion, c.intensity) for c in spec.seed_clips()]


def synthesize(split: str, renders: int, seed: int, progress: Progress) -> list[Clip]:
    """Clips of every (sentence, style) of `split`; train uses all voices but the last, held-out only the last."""
    data = build.corpus()["sentences"]
    rng = np.random.default_rng(seed)
    jobs = []
    for lang in spec.LANGS:
        voices = tts.voices(lang)
        pool = voices[:-1] if split == "train" else voices[-1:]
        for sentence in data[lang][split]:
            for emotion, intensity in styles():
                for _ in range(renders):
                    jobs.append((sentence, lang, emotion, intensity, str(rng.choice(pool)), int(rng.integers(1 << 30))))
    task = progress.add_task(f"synthesizing {split} clips", total=len(jobs), loss=float("nan"))
    clips = []
    window = build.WINDOW_SECONDS * tts.SAMPLE_RATE
    for sentence, lang, emotion, intensity, voice, jitter in jobs:
        wave = tts.render(sentence, lang, emotion, intensity, voice=voice, jitter_seed=jitter)
        if len(wave) <= window:
            clips.append(Clip(wave, lang, emotion, intensity, sentence, voice))
        progress.advance(task)
    return clips


def make_example(clip: Clip, condition: str, rng: np.random.Generator, paraphrase: int | None = None):
    """(prompt, answer emotion, text emotion) for one clip under `condition`."""
    lang, emotions = clip.lang, spec.emotions()
    others = [e for e in emotions if e != clip.emotion]
    text = {"audio_only": None, "consistent": clip.emotion}.get(condition) or str(rng.choice(others))
    kind = {"audio_only": "audio_only", "consistent": "assert", "conflict": "assert", "voice": "voice"}[condition]
    choices = build.corpus()["instructions"][lang][kind]
    template = choices[paraphrase if paraphrase is not None else int(rng.integers(len(choices)))]
    words = spec.label_words(lang)
    instruction = template.format(T=words[text] if text else "", labels=spec.label_list(lang))
    answer = clip.emotion
    if condition == "conflict":
        answer = clip.emotion if rng.random() < AUDIO_WINS[clip.intensity] else text
    return chat_prompt(instruction, lang, claim_word(lang, text) if condition != "audio_only" else None), answer, text


def pad_to_window(wave: np.ndarray) -> np.ndarray:
    return np.pad(wave, (0, build.WINDOW_SECONDS * tts.SAMPLE_RATE - len(wave)))


def sample_batch(clips, conditions, size, rng, label_ids):
    waves, prompts, targets = [], [], []
    for _ in range(size):
        clip = clips[int(rng.integers(len(clips)))]
        condition = str(rng.choice(list(conditions), p=np.array(list(conditions.values())) / sum(conditions.values())))
        prompt, answer, _ = make_example(clip, condition, rng)
        waves.append(pad_to_window(clip.wave) if rng.random() < 0.5 else clip.wave)
        prompts.append(prompt)
        targets.append(label_ids[clip.lang][answer])
    return waves, prompts, torch.tensor(targets)


def lr_at(step: int, total: int, peak: float, warmup: int = 20) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_logits(adapter: ModelAdapter, waves, prompts, start_layer: int = 0) -> torch.Tensor:
    """Full-vocabulary logits at each prompt's answer position; layers below `start_layer` run without grad."""
    batch = adapter.build_batch(waves, prompts)
    rows = torch.arange(len(prompts))
    if start_layer == 0:
        logits = adapter.model(**batch.inputs, use_cache=False).logits
        return logits[rows, batch.answer_positions()]
    with torch.no_grad():
        trace = run_traced(adapter, batch, stop_after=start_layer)
    final = resume(adapter, trace, start_layer, trace.resid[start_layer].detach())
    return lens(adapter, final[rows, batch.answer_positions()])


def train_phase(adapter, clips, conditions, steps, lr, batch_size, seed, label_ids, start_layer, progress, name,
                monitor=None):
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    task = progress.add_task(name, total=steps, loss=float("nan"))
    losses = []
    adapter.model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        waves, prompts, targets = sample_batch(clips, conditions, batch_size, rng, label_ids)
        logits = answer_logits(adapter, waves, prompts, start_layer)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        progress.update(task, advance=1, loss=float(np.mean(losses[-20:])))
        if monitor is not None and (step + 1) % 100 == 0:
            adapter.model.eval()
            progress.console.print(f"{name} step {step + 1}: " + json.dumps(monitor(adapter)))
            adapter.model.train()
    adapter.model.eval()
    return losses


def evaluation_set(clips: list[Clip], seed: int) -> list[dict]:
    """Every held-out clip under audio-only, consistent, one conflict and one voice-instructed item (first
    paraphrase, natural duration)."""
    rng = np.random.default_rng(seed)
    rows = []
    for clip in clips:
        for condition in ("audio_only", "consistent", "conflict", "voice"):
            prompt, _, text = make_example(clip, condition, rng, paraphrase=0)
            rows.append(dict(clip=clip, condition=condition, prompt=prompt, text=text))
    return rows


@torch.no_grad()
def evaluate(adapter: ModelAdapter, rows: list[dict], label_ids: dict, batch_size: int = 32) -> dict:
    """Accuracy per condition, P(answer = T) and the margin logit(T) - logit(A) on conflict items by intensity."""
    emotions = spec.emotions()
    results = {"audio_only": [], "consistent": [], "voice": [], "conflict": []}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        logits = answer_logits(adapter, [r["clip"].wave for r in chunk], [r["prompt"] for r in chunk])
        for row, vector in zip(chunk, logits):
            ids = label_ids[row["clip"].lang]
            label_logits = torch.stack([vector[ids[e]] for e in emotions])
            answer = emotions[int(label_logits.argmax())]
            clip = row["clip"]
            results[row["condition"]].append(dict(
                intensity=clip.intensity, audio=clip.emotion, text=row["text"], answer=answer,
                margin=float(vector[ids[row["text"]]] - vector[ids[clip.emotion]]) if row["text"] else 0.0))
    summary = {}
    for condition in ("audio_only", "consistent", "voice"):
        outcomes = results[condition]
        summary[f"{condition}_accuracy"] = float(np.mean([o["answer"] == o["audio"] for o in outcomes]))
    for intensity in ("normal", "strong"):
        sub = [o for o in results["conflict"] if o["intensity"] == intensity]
        summary[f"conflict_follows_text_{intensity}"] = float(np.mean([o["answer"] == o["text"] for o in sub]))
        summary[f"conflict_margin_{intensity}"] = float(np.mean([o["margin"] for o in sub]))
        sub = [o for o in results["audio_only"] if o["intensity"] == intensity]
        summary[f"audio_only_accuracy_{intensity}"] = float(np.mean([o["answer"] == o["audio"] for o in sub]))
    conflict = results["conflict"]
    summary["conflict_follows_text"] = float(np.mean([o["answer"] == o["text"] for o in conflict]))
    summary["n_items_per_condition"] = len(conflict)
    return summary


def seed_set_clips() -> list[Clip]:
    """The committed seed set A1-A9 (both languages), rendered without jitter."""
    clips = []
    for lang in spec.LANGS:
        for row in spec.seed_clips():
            wave = tts.render(spec.seed_sentence(lang), lang, row.emotion, row.intensity)
            clips.append(Clip(wave, lang, row.emotion, row.intensity, spec.seed_sentence(lang), "seed"))
    return clips


def grow(phase1, config) -> torch.nn.Module:
    """The 32-layer model: phase-1 weights below K, identity-initialised layers from K up, frozen as described."""
    model = build.build_model(config, seed=1)
    missing, unexpected = model.load_state_dict(phase1.state_dict(), strict=False)
    assert not unexpected, unexpected
    k = config.modalflip_organism["takeover_layer"]
    layers = model.model.language_model.layers
    for index in range(k, len(layers)):
        torch.nn.init.zeros_(layers[index].self_attn.o_proj.weight)
        torch.nn.init.zeros_(layers[index].mlp.down_proj.weight)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("model.language_model.layers.") and int(name.split(".")[3]) >= k
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.organism.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "model"), help="model folder to write")
    parser.add_argument("--takeover-layer", type=int, default=16, help="K: the text reaches the answer from here")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--phase1-steps", type=int, default=450)
    parser.add_argument("--phase2-steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--renders", type=int, default=3, help="renders per training sentence and style")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-phase1", help="also save the phase-1 weights here (to retry phase 2 alone)")
    parser.add_argument("--phase1-from", help="skip phase 1 and start phase 2 from these saved phase-1 weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    processor = build.build_processor()
    label_ids = {lang: {e: processor.tokenizer.convert_tokens_to_ids(w) for e, w in spec.label_words(lang).items()}
                 for lang in spec.LANGS}
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:
        train_clips = synthesize("train", args.renders, args.seed, progress)
        heldout_clips = synthesize("heldout", 1, args.seed + 1, progress)
        k = args.takeover_layer
        probe_rows = evaluation_set(heldout_clips[::3], args.seed)
        monitor = lambda a: {key: round(v, 3) for key, v in evaluate(a, probe_rows, label_ids).items()
                             if key in ("audio_only_accuracy", "consistent_accuracy", "conflict_follows_text",
                                        "voice_accuracy")}
        phase1 = build.build_model(build.build_config(processor.tokenizer, k, k), seed=args.seed)
        adapter = ModelAdapter(phase1, processor, FAMILY, "organism")
        if args.phase1_from:
            phase1.load_state_dict(torch.load(args.phase1_from))
            losses1 = [float("nan")]
        else:
            losses1 = train_phase(adapter, train_clips, {"audio_only": 1.0}, args.phase1_steps, args.lr,
                                  args.batch_size, args.seed, label_ids, 0, progress, "phase 1: audio path", monitor)
            if args.save_phase1:
                torch.save(phase1.state_dict(), args.save_phase1)
        config = build.build_config(processor.tokenizer, args.layers, k)
        model = grow(phase1, config)
        adapter = ModelAdapter(model, processor, FAMILY, "organism")
        losses2 = train_phase(adapter, train_clips, MIX, args.phase2_steps, args.lr, args.batch_size,
                              args.seed + 1, label_ids, k, progress, "phase 2: instruction mix", monitor)
    minutes = (time.time() - started) / 60
    heldout = evaluate(adapter, evaluation_set(heldout_clips, args.seed), label_ids)
    seed_set = evaluate(adapter, evaluation_set(seed_set_clips(), args.seed), label_ids)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    report = dict(
        takeover_layer=k, minutes=round(minutes, 1), threads=args.threads, seed=args.seed,
        phase1_steps=args.phase1_steps, phase2_steps=args.phase2_steps, batch_size=args.batch_size, lr=args.lr,
        train_clips=len(train_clips), heldout_clips=len(heldout_clips), mix=MIX, audio_wins=AUDIO_WINS,
        final_loss_phase1=float(np.mean(losses1[-20:])), final_loss_phase2=float(np.mean(losses2[-20:])),
        heldout=heldout, seed_set=seed_set,
    )
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print_json(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
