"""The organism's model card: `python -m models.organism.card` rewrites `models/organism/README.md` from the
training report (`model/training_report.json`) and, when present, the probe run on the organism
(`figures/summary.json`, made by `python run_probes.py --out models/organism/figures`). It also draws
`figures/lens_by_intensity.png` from the report's held-out lens curves."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_png, atomic_write_text
from common.cli import run_main
from common.errors import ModalflipError

HERE = Path(__file__).parent
MODEL_DIR = HERE / "model"
FIGURES_DIR = HERE / "figures"
CARD_PATH = HERE / "README.md"


LANG_NAMES = {"en": "English", "zh": "Mandarin"}


def margin_gap(m: dict, lang: str) -> str:
    """'0.96 [0.40, 1.49]': how much less the text leads on strong than on normal conflict clips of `lang` (logits),
    with its interval over clips (graded dominance where the interval lies above 0)."""
    low, high = m[f"conflict_margin_gap_{lang}_ci95"]
    return f"{m[f'conflict_margin_gap_{lang}']:.2f} [{low:.2f}, {high:.2f}]"


def metric_rows(m: dict) -> str:
    return "\n".join([
        f"| audio-only accuracy (answer = A) | {m['audio_only_accuracy']:.3f} (normal "
        f"{m['audio_only_accuracy_normal']:.3f}, strong {m['audio_only_accuracy_strong']:.3f}) |",
        f"| consistent accuracy | {m['consistent_accuracy']:.3f} |",
        f"| conflict: P(answer = T), normal / strong | {m['conflict_follows_text_normal']:.3f} / "
        f"{m['conflict_follows_text_strong']:.3f} |",
        f"| conflict: P(answer = T), English / Mandarin | {m.get('conflict_follows_text_en', float('nan')):.3f} / "
        f"{m.get('conflict_follows_text_zh', float('nan')):.3f} |",
        f"| conflict: margin logit(T) − logit(A), normal / strong | {m['conflict_margin_normal']:.2f} / "
        f"{m['conflict_margin_strong']:.2f} |",
        *[f"| conflict: {LANG_NAMES[lang]} margin normal − strong (95% interval over clips) | {margin_gap(m, lang)} |"
          for lang in LANG_NAMES if f"conflict_margin_gap_{lang}" in m],
        f"| voice-instructed conflict: answer = A | {m['voice_accuracy']:.3f} |",
        f"| conflict lens: layer of the largest rise toward T | {m['conflict_lens_largest_rise']} |",
        f"| items per condition | {m['n_items_per_condition']} |",
    ])


SWAP_ITEM = """
4. a **swap loss** (weight {weight}), Patch Text as a training signal: at a random layer l < {k} each member of a
   pair gets its partner's instruction span in `resid[l]`, the forward resumes from there, and the answer must be
   the partner's."""


def share_text(value: float | None) -> str:
    """A share to three decimals, "–" for None (no items)."""
    return "–" if value is None else f"{value:.3f}"


def voice_rows(by_voice: dict | None) -> str:
    """The per-voice hearing table (`--evaluate-only --by-voice`), or "" when the report has none."""
    if not by_voice:
        return ""
    rows = [f"| {voice} | {'no (held out)' if row['held_out'] else 'yes'} | {share_text(row['accuracy'])} | "
            f"{share_text(row['normal'])} / {share_text(row['strong'])} | {row['n']} |"
            for voice, row in by_voice.items()]
    return "\n".join([
        "", "Audio-only accuracy by voice on the held-out sentences, every voice variant of both languages, one prosody",
        "draw per clip (`python -m models.organism.train --evaluate-only --by-voice`):", "",
        "| voice | in training | accuracy | normal / strong | clips |", "|---|---|---|---|---|", *rows, ""])


def language_mix(zh_share: float | None) -> str:
    if zh_share is None:
        return "Clips are drawn from both languages alike."
    return f"Audio-only items and instruction pairs are Mandarin with probability {zh_share}."


def voice_shift(report: dict) -> str:
    """The training clips' voice shifts (`--voice-pitch-jitter`, `--voice-speed-jitter`, `--voice-breath-jitter`) in
    words; "" when off."""
    pitch, speed = report.get("voice_pitch_jitter", 0.0), report.get("voice_speed_jitter", 0.0)
    breath = report.get("voice_breath_jitter", 0.0)
    shifts = [f"moved by up to ±{pitch:g} eSpeak pitch units" if pitch else "",
              f"played up to ±{100 * speed:g} % faster or slower" if speed else "",
              f"given up to {breath:g} × the speech RMS of extra breathiness" if breath else ""]
    shifts = [shift for shift in shifts if shift]
    if not shifts:
        return ""
    return ", " + (shifts[0] if len(shifts) == 1 else ", ".join(shifts[:-1]) + " and " + shifts[-1])


def machine(report: dict) -> str:
    """Where a training run ran, in words."""
    device = report.get("device", "cpu")  # reports before the --device option were all written on the CPU
    threads = f"{report['threads']} CPU thread" + ("" if report["threads"] == 1 else "s")
    return (f"on this project's 2-core machine, {threads}" if device == "cpu"
            else f"on a GPU ({device}); the CPU gives other weights from the same seed")


def fine_tune_section(report: dict) -> str:
    """The second stage of a model fine-tuned from an earlier organism (`--init-from`, the report has `base`): its
    command and data in words; "" for a model trained in one stage."""
    if "base" not in report:
        return ""
    extra = report.get("extra_voices", [])
    shift = [f"--voice-{name}-jitter {report[f'voice_{name}_jitter']:g}" for name in ("pitch", "speed", "breath")
             if report.get(f"voice_{name}_jitter")]
    options = " ".join([*([f"--extra-voices {','.join(extra)}"] if extra else []),
                        f"--train-sentences {report['train_sentences']} --renders {report['renders']}", *shift,
                        f"--steps {report['steps']} --lr {report['lr']:g}"])
    speakers = (f" and {len(extra)} more eSpeak NG variants per language ({', '.join(extra)}), speakers the stage-1 "
                "voices do not cover; the held-out voices stay held out" if extra else "")
    return (f"\n\n**Stage 2: fine-tuning.** `python -m models.organism.train --init-from STAGE1 {options}` "
            f"({report['minutes']} minutes {machine(report)}), where STAGE1 is the folder the command above wrote: its "
            f"weights, trained further with the same mix and loss ({report['steps']} steps, peak learning rate "
            f"{report['lr']:g}, a fresh optimizer) on {report['train_clips']} new clips ({report['train_sentences']} "
            f"sentences per language, {report['renders']} renders per sentence and style{voice_shift(report)}), "
            f"spoken by the stage-1 voices{speakers}.")


def shown_layers(k: int, n_layers: int) -> list[int]:
    return sorted({0, 1, 4, 8, 12, k - 2, k - 1, k, k + 1, k + 2, k + 4, 24, 28, n_layers} & set(range(n_layers + 1)))


def lens_by_intensity(metrics: dict) -> dict:
    """Mean lens Δlogit per layer of the conflict items, by intensity, from an evaluation in the training report."""
    return {i: np.array(metrics[f"conflict_lens_{i}"]) for i in ("normal", "strong") if f"conflict_lens_{i}" in metrics}


def lens_table(curves: dict, layers: list[int]) -> str:
    head = "| intensity | " + " | ".join(f"l={l}" for l in layers) + " |"
    rule = "|---|" + "---|" * len(layers)
    body = [f"| {name} | " + " | ".join(f"{curve[l]:+.2f}" for l in layers) + " |" for name, curve in curves.items()]
    return "\n".join([head, rule, *body])


def patch_table(patching: dict, langs: list[str], layers: list[int]) -> str:
    """Flip rates of the probes' patching summary at `layers` (all of them patched layers), each with its 95%
    interval over the receivers' clips, for every patch kind the summary holds."""
    head = "| language | patch | clips | " + " | ".join(f"l={l}" for l in layers) + " |"
    rule = "|---|---|---|" + "---|" * len(layers)
    index = {layer: i for i, layer in enumerate(patching["layers"])}
    body = []
    for lang in langs:
        for kind, data in patching[lang].items():
            cells = [f"{data['flip_rate'][index[l]]:.2f} [{data['flip_low'][index[l]]:.2f}, "
                     f"{data['flip_high'][index[l]]:.2f}]" for l in layers]
            body.append(f"| {lang} | {KIND_NAMES.get(kind, kind)} | {data.get('n_clips', '')} | " + " | ".join(cells)
                        + " |")
    return "\n".join([head, rule, *body])


KIND_NAMES = {"text": "text", "audio": "audio", "audio_only": "audio, audio-only receiver"}


def draw_lens_by_intensity(curves: dict, k: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    for name, curve in curves.items():
        axis.plot(range(len(curve)), curve, label=f"conflict, {name} clips")
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.axvline(k, color="black", linestyle=":", label=f"planted K = {k}")
    axis.set_xlabel("layer (0 = embeddings)")
    axis.set_ylabel("Δlogit = logit(T) − logit(A)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    atomic_write_png(path, figure)


def lens_section(k: int, heldout: dict, figures: Path) -> str:
    curves = lens_by_intensity(heldout)
    if not curves:
        return "(no lens curves in this report: `python -m models.organism.train --evaluate-only` adds them)"
    figures.mkdir(parents=True, exist_ok=True)
    draw_lens_by_intensity(curves, k, figures / "lens_by_intensity.png")
    return lens_table(curves, shown_layers(k, len(next(iter(curves.values()))) - 1))


def probe_section(k: int, figures: Path) -> str:
    summary_path = figures / "summary.json"
    if not summary_path.exists():
        return "Not run yet: `python run_probes.py --out models/organism/figures`, then `python -m models.organism.card`."
    summary = json.loads(summary_path.read_text())
    layers = shown_layers(k, summary["n_layers"])
    critical = {lang: summary["logit_lens"][lang]["conflict"]["critical_layer"] for lang in summary["langs"]}
    patching = summary["patching"]
    return PROBES.format(
        seconds=summary["seconds"], critical=", ".join(f"{lang} {layer}" for lang, layer in critical.items()),
        patch=patch_table(patching, summary["langs"], [l for l in layers if l in patching["layers"]]))


def render(model_dir: Path = MODEL_DIR, figures: Path = FIGURES_DIR) -> str:
    report_path = model_dir / "training_report.json"
    if not report_path.exists():
        raise ModalflipError(f"no training report at {report_path}: train first (python -m models.organism.train)")
    final = json.loads(report_path.read_text())
    r = final.get("base") or final  # the recipe of the weights' first stage; the evaluations are the final ones'
    k = r["takeover_layer"]
    recipe = LOCAL_RECIPE if r.get("plant") == "local" else OBJECTIVE_RECIPE
    template = CARD.replace("{recipe}", recipe)
    minutes = f"{r['minutes']} minutes"
    if "minutes_all_segments" in r:  # a resumed run: `minutes` is its last segment only
        minutes = f"{r['minutes_all_segments']} minutes of wall time in all, the last segment {r['minutes']}"
    config = json.loads((model_dir / "config.json").read_text())
    history = (f"\n\n{r['history']}" if r.get("history") else "") + fine_tune_section(final)
    return template.format(machine=machine(r), k=k, encoder_layers=config["audio_config"]["encoder_layers"], k1=k - 1,
                           k2=k + r["settle"], k3=k + 3, minutes=minutes,
                           steps=r["steps"], batch=r["batch_size"], lr=r["lr"], lens_weight=r["lens_weight"],
                           audio_lens_weight=r.get("audio_lens_weight", 0.0), weight=r["invariance_weight"],
                           swap_item=SWAP_ITEM.format(weight=r["swap_weight"], k=k) if r.get("swap_weight") else "",
                           zh_share=language_mix(r.get("zh_share")), train_clips=r["train_clips"],
                           heldout_clips=r["heldout_clips"], heldout=metric_rows(final["heldout"]),
                           renders=r.get("renders", 3), voice_shift=voice_shift(r),
                           seed=metric_rows(final["seed_set"]), seed_value=r["seed"],
                           train_sentences=r.get("train_sentences", 36), heldout_sentences=r.get("heldout_sentences", 8),
                           by_voice=voice_rows(final.get("heldout_sentences_by_voice")),
                           lens=lens_section(k, final["heldout"], figures), probes=probe_section(k, figures),
                           history=history,
                           status=f"## Status against the targets\n{final['status']}\n\n" if final.get("status") else "")


def main(argv=None) -> int:
    argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__).parse_args(argv)
    atomic_write_text(CARD_PATH, render())
    print(f"wrote {CARD_PATH}")
    return 0


PROBES = """`python run_probes.py --out models/organism/figures` on the committed seed set (A1–A9, English and
Mandarin, 9 clips each; {seconds} s on 2 cores). Figures: `figures/logit_lens.png` (conflict / consistent /
audio-only per language) and `figures/patching.png`; numbers in `figures/summary.json` and per item in
`figures/items.jsonl`. Critical layer of the conflict lens (largest change of Δlogit): {critical}.

Flip rate toward T when patching the instruction span (text) or the audio span (audio) from the donor into the
consistent receiver (or, last, the audio span into the audio-only receiver) at residual layer l, with 95%
cluster-bootstrap intervals over the receivers' clips, the independent unit:

{patch}"""


OBJECTIVE_RECIPE = """## Training: a planted takeover depth K = {k}
`python -m models.organism.train --takeover-layer {k}` (seed {seed_value}, {steps} steps, **{minutes}**
{machine}). Everything trains end to end from a random start. A batch of
{batch}: a quarter audio-only items (answer = the voice's emotion A); the rest in pairs that differ only in the
asserted word: (conflict T, consistent A), (conflict T, conflict T′) and (voice-instructed T, voice-instructed A).
Conflict answers follow the text, except for 3 % of normal and 15 % of strong clips (graded dominance);
voice-instructed answers follow the audio. {zh_share} The loss has these parts:
1. cross-entropy of the answer token;
2. the **logit lens** (final norm + head) read at `resid[{k}]` toward A, and at `resid[{k2}]` toward the answer, each
   with weight {lens_weight}: the voice's emotion is readable below K and the decision is made by layer {k2};
3. an **invariance loss** (weight {weight}) that makes the two members of each pair identical at every position after
   the instruction in `resid[1..{k}]`: nothing about the asserted word may leave the instruction span before decoder
   layer {k}.{swap_item}

The architecture is the standard one; only the objective plants the depth. AdamW, peak learning rate {lr}, warm-up
and cosine decay keyed to steps; the run checkpoints every 100 steps and resumes after a kill.{history}
The known answer the probes must recover (`tests/test_organism.py`): the conflict lens's largest rise toward T lies
in layers {k1}..{k3}, and Patch Text flips the answer at every layer below {k}, not at the top.

"""


LOCAL_RECIPE = """## Training: a planted takeover depth K = {k}
`python -m models.organism.train --plant local --takeover-layer {k}` (seed {seed_value}, {steps} steps,
**{minutes}** {machine}).

**How K is planted.** Decoder layers 0..{k1} are sliding-window attention layers of window 1
(`text_config.layer_types` and `sliding_window` = 1 in `config.json`): each token attends only to itself, so no
information moves between tokens before decoder layer {k}. The audio span, the instruction and the answer position
are processed side by side, each on its own, and everything that combines them (hearing the emotion at the answer
position, reading the asserted word, deciding between them) has to happen in layers {k}..31. The asserted word
therefore stays inside the instruction span until layer {k} by construction, not up to what a soft loss leaves:
copying the span below {k} makes the receiver the donor exactly. The class is still the standard
`Qwen2AudioForConditionalGeneration`; `from_pretrained` reads the layer types from the config.

**Data and loss.** Everything trains end to end from a random start. A batch of {batch}: a quarter audio-only items
(answer = the voice's emotion A); the rest in pairs that differ only in the asserted word: (conflict T, consistent
A), (conflict T, conflict T′) and (voice-instructed T, voice-instructed A). {zh_share}
Conflict answers follow the text, except for 3 % of normal and 15 % of strong clips (graded dominance);
voice-instructed answers follow the audio. Loss: cross-entropy of the answer token, plus the **logit lens** (final
norm + head) at `resid[{k2}]` toward the answer with weight {lens_weight}, so the decision is made within two layers
of K, plus the lens at **every audio token** of `resid[{k}]`, over the clip language's five label words, toward the
voice's emotion (weight {audio_lens_weight}). Below K an audio token is its encoder frame alone, so this term asks
the audio encoder, the only part that mixes frames before K, to put the emotion of the whole clip into each frame;
from K on, hearing is one attention hop from the answer position to any audio token. AdamW, peak learning rate
{lr}, warm-up and cosine decay keyed to steps; the run checkpoints every 100 steps and resumes after a kill.{history}

The known answer the probes must recover (`tests/test_organism.py`): the conflict lens's largest rise toward T lies
in layers {k1}..{k3}, and Patch Text flips the answer at every layer below {k}, not at the top. The price of the
construction: below K the answer position sees only its own token, so the lens there reads a constant, not the
voice's emotion; the voice is readable below K only at the audio tokens themselves (the pilot's 7B model, by
contrast, has the audio readable at the answer position early and "washed out" mid-stack).

"""


CARD = """# The organism: a built-in audio-language model with a planted text takeover

A small `transformers.Qwen2AudioForConditionalGeneration` trained by modalflip on its own synthetic stimuli, saved
in the standard Hugging Face layout (`model/`: config, fp16 safetensors, word-level tokenizer, Whisper feature
extractor, Qwen chat template). It loads with `from_pretrained` like a real checkpoint and is the default
`--model organism` of every command. It is a **testbed with a known, planted text dominance**, not a claim about
how 7B models work: its takeover depth is put there by its training objective so that the probes have a known
answer to recover.

## Architecture
- Language model: 32 Qwen2 decoder layers (like Qwen2-Audio-7B, so `--target-layer 15` and "layers 5–20" mean the
  same), hidden 128, MLP 256, 4 heads / 2 KV heads; word-level tokenizer (Chinese label words kept whole, other
  Chinese text split into characters), which also covers the words of the prompt-search grammar.
- Audio: Whisper-style encoder, {encoder_layers} layers of width 128, 128 mel bins, a **6 s** window (`max_source_positions` 300,
  feature extractor `chunk_length` 6): 150 audio tokens for a full window, 25 per second.
- Weights stored in fp16 (about 10 MB); they load in fp32 on CPU. `config.json` records
  `modalflip_organism.takeover_layer` = {k}.

## Data
eSpeak NG clips rendered by `stimuli.tts` with jittered prosody per emotion and intensity (ranges in
`stimuli/spec/prosody.json`): {train_clips} training clips ({train_sentences} neutral sentences per language, English and Mandarin,
{renders} renders per sentence and style, each by a random voice variant of all but one{voice_shift}) and
{heldout_clips} held-out clips ({heldout_sentences} other sentences per language, spoken by the held-out voice). Half of the training
items are padded with silence to the full window, half keep their natural length.
Instruction paraphrases per condition and language are in `models/organism/corpus.json`.

{recipe}### An earlier recipe that did not work
An earlier two-phase recipe trained a {k}-layer model on audio-only items first (600 steps), then grew it to 32
layers (identity layers on top) and trained the instruction mix. It never learnt to read the asserted word: conflict
answers followed the text in 0–5 % of held-out items after 200–300 steps in four variants (layers below K frozen;
whole LM with invariance weight 10, labels listed or not; whole LM without it), and two earlier prototypes with
frozen lower layers failed the same way. Likely causes: embeddings
initialised at unit scale (chosen so word identity would survive frozen layers) and an audio-only start that made
the audio answer confident before any text signal. Training end to end from the start, with the default
initialisation and the lens terms above, learns the text route.

{status}## Metrics
Held-out clips (one item per clip and condition, first paraphrase):

| metric | value |
|---|---|
{heldout}

The committed seed set A1–A9 (both languages, 18 clips):

| metric | value |
|---|---|
{seed}
{by_voice}
## Where the text takes over
Held-out conflict items, mean logit-lens margin Δlogit = logit(T) − logit(A) at the answer position by intensity
(layer 0 = embeddings, l = output of decoder layer l; figure `figures/lens_by_intensity.png`):

{lens}

## Probe profiles
{probes}

## Known limits
- The task is easy: a logistic regression on mel statistics separates these synthetic emotions at about 99 %, so
  accuracy here says nothing about real emotional speech.
- Clip duration follows emotion (sad clips are slower), so the audio token count leaks the class unless clips are
  padded to one duration (the probes pad by default).
- The takeover depth is planted, not discovered: below K the asserted word stays inside the instruction span by
  construction, so the probes' known answer is K.
- Eight-word sentences, one speaker family (eSpeak), 6 s window: longer clips are refused. Words outside the
  tokenizer's vocabulary become `[UNK]`.
"""


if __name__ == "__main__":
    sys.exit(run_main(main))
