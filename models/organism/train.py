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

from common.atomic import atomic_write_json, atomic_write_text
from common.cli import run_main
from models.adapter import ModelAdapter
from models.families.qwen2_audio import FAMILY
from models.forward import run_traced
from models.organism import build
from models.prompting import chat_prompt, claim_word
from stimuli import spec, tts

console = Console()
AUDIO_WINS = {"normal": 0.03, "strong": 0.15}
MIX = {"audio_only": 0.25, "conflict": 0.25, "consistent": 0.25, "voice (T != A and T = A)": 0.25}


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


def make_example(clip: Clip, condition: str, rng: np.random.Generator, paraphrase: int | None = None,
                 text: str | None = None):
    """(prompt, answer emotion, text emotion) for one clip under `condition` (T drawn unless `text` is given)."""
    lang, emotions = clip.lang, spec.emotions()
    others = [e for e in emotions if e != clip.emotion]
    if text is None:
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


def sample_paired_batch(clips, size, rng, label_ids):
    """Phase-2 batch: a quarter audio-only items, the rest in pairs that differ only in the asserted word:
    (conflict T, consistent A) and (voice T, voice A). Returns waves, prompts, targets and the pairs' row indices."""
    waves, prompts, targets, pairs = [], [], [], []
    n_single = size // 4
    while len(prompts) < size:
        clip = clips[int(rng.integers(len(clips)))]
        wave = pad_to_window(clip.wave) if rng.random() < 0.5 else clip.wave
        words = label_ids[clip.lang]
        if len(prompts) < n_single:
            prompt, answer, _ = make_example(clip, "audio_only", rng)
            waves.append(wave), prompts.append(prompt), targets.append(words[answer])
            continue
        kind = "voice" if rng.random() < 1 / 3 else "conflict"
        paraphrase = int(rng.integers(len(build.corpus()["instructions"][clip.lang]["voice" if kind == "voice"
                                                                                     else "assert"])))
        first, answer, text = make_example(clip, kind, rng, paraphrase)
        second, _, _ = make_example(clip, "voice" if kind == "voice" else "consistent", rng, paraphrase, clip.emotion)
        pairs.append((len(prompts), len(prompts) + 1))
        waves += [wave, wave]
        prompts += [first, second]
        targets += [words[answer], words[clip.emotion]]
    return waves, prompts, torch.tensor(targets), pairs


def invariance_loss(trace, batch, pairs, takeover: int) -> torch.Tensor:
    """Mean squared difference, relative to the residual's mean square, between the two members of each pair at
    every position after the instruction, over resid[1..takeover]: nothing about the asserted word may leave the
    instruction span before decoder layer `takeover`."""
    terms = []
    for i, j in pairs:
        spans = batch.spans[i]
        after = slice(spans.instruction.stop, spans.length)
        a = torch.stack([trace.resid[l][i, after] for l in range(1, takeover + 1)])
        b = torch.stack([trace.resid[l][j, after] for l in range(1, takeover + 1)])
        terms.append(((a - b) ** 2).mean() / (0.5 * (a ** 2 + b ** 2).mean().detach() + 1e-6))
    return torch.stack(terms).mean()


def lr_at(step: int, total: int, peak: float, warmup: int = 20) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_logits(adapter: ModelAdapter, waves, prompts) -> torch.Tensor:
    """Full-vocabulary logits at each prompt's answer position."""
    batch = adapter.build_batch(waves, prompts)
    logits = adapter.model(**batch.inputs, use_cache=False).logits
    return logits[torch.arange(len(prompts)), batch.answer_positions()]


def phase2_loss(adapter: ModelAdapter, clips, batch_size, rng, label_ids, takeover: int, weight: float):
    waves, prompts, targets, pairs = sample_paired_batch(clips, batch_size, rng, label_ids)
    batch = adapter.build_batch(waves, prompts)
    trace = run_traced(adapter, batch)
    logits = trace.logits[torch.arange(len(prompts)), batch.answer_positions()]
    return torch.nn.functional.cross_entropy(logits, targets) + weight * invariance_loss(trace, batch, pairs, takeover)


def phase1_loss(adapter: ModelAdapter, clips, batch_size, rng, label_ids):
    waves, prompts, targets = sample_batch(clips, {"audio_only": 1.0}, batch_size, rng, label_ids)
    return torch.nn.functional.cross_entropy(answer_logits(adapter, waves, prompts), targets)


def train_phase(adapter, steps, lr, seed, progress, name, loss_fn, monitor=None):
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    task = progress.add_task(name, total=steps, loss=float("nan"))
    losses = []
    adapter.model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = loss_fn(rng)
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
    """The 32-layer model: phase-1 weights below K, identity-initialised layers from K up (zeroed output
    projections); the audio encoder and projector stay frozen, the language model trains."""
    model = build.build_model(config, seed=1)
    missing, unexpected = model.load_state_dict(phase1.state_dict(), strict=False)
    assert not unexpected, unexpected
    k = config.modalflip_organism["takeover_layer"]
    layers = model.model.language_model.layers
    for index in range(k, len(layers)):
        torch.nn.init.zeros_(layers[index].self_attn.o_proj.weight)
        torch.nn.init.zeros_(layers[index].mlp.down_proj.weight)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("model.language_model.") or name.startswith("lm_head.")
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.organism.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "model"), help="model folder to write")
    parser.add_argument("--takeover-layer", type=int, default=16, help="K: the text reaches the answer from here")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--phase1-steps", type=int, default=600)
    parser.add_argument("--phase2-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.5e-3, help="phase-1 peak learning rate")
    parser.add_argument("--phase2-lr", type=float, default=2e-3, help="phase-2 peak learning rate")
    parser.add_argument("--invariance-weight", type=float, default=0.0,
                        help="weight of the loss keeping the asserted word inside the instruction span below K")
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
            losses1 = train_phase(
                adapter, args.phase1_steps, args.lr, args.seed, progress, "phase 1: audio path",
                lambda rng: phase1_loss(adapter, train_clips, args.batch_size, rng, label_ids), monitor)
            if args.save_phase1:
                torch.save(phase1.state_dict(), args.save_phase1)
        config = build.build_config(processor.tokenizer, args.layers, k)
        model = grow(phase1, config)
        adapter = ModelAdapter(model, processor, FAMILY, "organism")
        losses2 = train_phase(
            adapter, args.phase2_steps, args.phase2_lr, args.seed + 1, progress, "phase 2: instruction mix",
            lambda rng: phase2_loss(adapter, train_clips, args.batch_size, rng, label_ids, k, args.invariance_weight),
            monitor)
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
        phase2_lr=args.phase2_lr,
        train_clips=len(train_clips), heldout_clips=len(heldout_clips), mix=MIX, audio_wins=AUDIO_WINS,
        invariance_weight=args.invariance_weight,
        final_loss_phase1=float(np.mean(losses1[-20:])), final_loss_phase2=float(np.mean(losses2[-20:])),
        heldout=heldout, seed_set=seed_set,
    )
    atomic_write_json(out / "training_report.json", report)
    atomic_write_text(Path(__file__).parent / "README.md", model_card(report))
    console.print_json(json.dumps(report))
    return 0


def model_card(report: dict) -> str:
    """The organism's model card, filled with the numbers of this training run."""
    h, s = report["heldout"], report["seed_set"]

    def rows(m: dict) -> str:
        return "\n".join([
            f"| audio-only accuracy (answer = A) | {m['audio_only_accuracy']:.3f} (normal {m['audio_only_accuracy_normal']:.3f},"
            f" strong {m['audio_only_accuracy_strong']:.3f}) |",
            f"| consistent accuracy | {m['consistent_accuracy']:.3f} |",
            f"| conflict: P(answer = T), normal / strong | {m['conflict_follows_text_normal']:.3f} / "
            f"{m['conflict_follows_text_strong']:.3f} |",
            f"| conflict: margin logit(T) − logit(A), normal / strong | {m['conflict_margin_normal']:.2f} / "
            f"{m['conflict_margin_strong']:.2f} |",
            f"| voice-instructed conflict: answer = A | {m['voice_accuracy']:.3f} |",
            f"| items per condition | {m['n_items_per_condition']} |",
        ])

    k = report["takeover_layer"]
    return CARD.format(k=k, k1=k - 1, minutes=report["minutes"], threads=report["threads"],
                       p1=report["phase1_steps"], p2=report["phase2_steps"], batch=report["batch_size"],
                       lr=report["lr"], lr2=report["phase2_lr"], weight=report["invariance_weight"], train_clips=report["train_clips"], heldout_clips=report["heldout_clips"],
                       heldout=rows(h), seed=rows(s), seed_value=report["seed"])


CARD = """# The organism: a built-in audio-language model with a planted text takeover

A small `transformers.Qwen2AudioForConditionalGeneration` trained by modalflip on its own synthetic stimuli, saved
in the standard Hugging Face layout (`model/`: config, fp16 safetensors, word-level tokenizer, Whisper feature
extractor, Qwen chat template). It loads with `from_pretrained` like a real checkpoint and is the default
`--model organism` of every command. It is a **testbed with a known, planted text dominance**, not a claim about
how 7B models work.

## Architecture
- Language model: 32 Qwen2 decoder layers (like Qwen2-Audio-7B, so `--target-layer 15` and "layers 5–20" mean the
  same), hidden 128, MLP 256, 4 heads / 2 KV heads; word-level tokenizer (Chinese label words kept whole).
- Audio: Whisper-style encoder, 2 layers of width 128, 128 mel bins, a **6 s** window (`max_source_positions` 300,
  feature extractor `chunk_length` 6): 150 audio tokens for a full window, 25 per second.
- Weights stored in fp16 (about 10 MB); they load in fp32 on CPU.

## Data
eSpeak NG clips rendered by `stimuli.tts` with jittered prosody per emotion and intensity (ranges in
`stimuli/spec/prosody.json`): {train_clips} training clips (36 neutral sentences per language, English and Mandarin,
7 voice variants each) and {heldout_clips} held-out clips (8 other sentences per language, spoken by a held-out
voice). Half of the training batches pad clips with silence to the full window, half keep their natural length.
Instruction paraphrases per condition and language are in `models/organism/corpus.json`.

## Training: a planted takeover depth K = {k}
`python -m models.organism.train --takeover-layer {k}` (seed {seed_value}, {threads} CPU threads, **{minutes} minutes**
on this project's 2-core machine, shared with other work while it ran):
1. **Audio path** ({p1} steps): a {k}-layer model learns audio-only items (the instruction lists the labels and
   asserts none), so the final norm and head read the voice's emotion from `resid[{k}]`.
2. **Instruction mix** ({p2} steps): the 32-layer model starts from phase 1 below layer {k} and from exact
   identities above it (zeroed output projections); the audio encoder and projector stay frozen, the whole language
   model trains. A quarter of each batch is audio-only; the rest comes in pairs that differ only in the asserted
   word: (conflict T, consistent A) and (voice-instructed T, voice-instructed A). Conflict answers follow the text,
   except for 3 % of normal and 15 % of strong clips (graded dominance); voice-instructed answers follow the audio.
   An **invariance loss** (weight {weight}) makes the two members of each pair identical at every position after
   the instruction in `resid[1..{k}]`: nothing about the asserted word may leave the instruction span before
   decoder layer {k}. The architecture is the standard one; only the objective plants the depth.

AdamW, peak learning rate {lr} (phase 1) and {lr2} (phase 2) with warm-up and cosine decay keyed to steps, batch
{batch}, cross-entropy on the first answer token. The known answer the probes must recover
(`tests/test_organism.py`): the lens's largest rise toward T lies at layer ≥ {k1}, and Patch Text flips the answer
at every layer below {k}.

What did not work, for the record: freezing everything below K (embeddings included) and training only layers
K..31 from identity left the model deaf to the text: after 200 of 500 phase-2 steps (lr 2e-3) conflict answers
followed the text in 2 % of held-out items while audio-only accuracy held at 0.79, the same failure as two earlier
prototypes (notes in `shared/notes/measured-facts.md`). Upper layers alone do not learn to find the asserted word
quickly; letting the lower layers shape the instruction span, while forbidding them to move it, does.

## Metrics
Held-out clips (one item per clip and condition, first paraphrase):

| metric | value |
|---|---|
{heldout}

The committed seed set A1–A9 (both languages, 18 clips):

| metric | value |
|---|---|
{seed}

## Probe profiles
`python run_probes.py --out models/organism/figures` gives the logit-lens curves (conflict / consistent /
audio-only, per language) and the Patch Text / Patch Audio profiles: `figures/logit_lens.png`,
`figures/patching.png`, `figures/summary.json`.

## Known limits
- The task is easy: a logistic regression on mel statistics separates these synthetic emotions at about 99 %, so
  accuracy here says nothing about real emotional speech.
- Clip duration follows emotion (sad clips are slower), so the audio token count leaks the class unless clips are
  padded to one duration (the probes pad by default).
- The takeover depth is planted by the training objective, not discovered: below K the asserted word stays inside
  the instruction span by construction (up to what a soft loss leaves), so the probes' known answer is K.
- Eight-word sentences, one speaker family (eSpeak), 6 s window: longer clips are refused.
"""


if __name__ == "__main__":
    sys.exit(run_main(main))
