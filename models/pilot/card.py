"""The pilot organism's model card: `python -m models.pilot.card` rewrites `models/pilot/README.md` from the training
report (`model/training_report.json`), the probes (`figures/summary.json`, made by
`python run_probes.py --model organism-pilot --out models/pilot/figures`) and the unseen renderer's hearing
(`figures/unseen_renderer.json`, made by `python -m models.organism.unseen --model organism-pilot`), and checks each
of the issue's targets against them."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_text
from common.cli import run_main
from common.errors import ModalflipError
from models.organism.card import (LANG_NAMES, draw_lens_by_intensity, lens_by_intensity, lens_table, machine,
                                  margin_gap, metric_rows, patch_table)
from models.organism.unseen import OUT_NAMES, knob_slopes, misreadings, rate_cell, renderer
from probes.logit_lens import largest_rise
from stimuli.tts import prosody_spec

HERE = Path(__file__).parent
MODEL_DIR = HERE / "model"
FIGURES_DIR = HERE / "figures"
ORGANISM_FIGURES = HERE.parent / "organism" / "figures"  # the first organism's, for comparison
CARD_PATH = HERE / "README.md"
EARLY = range(4, 21)  # the layers where the voice should lead at the answer position (tier 1)


@dataclass(frozen=True)
class Target:
    tier: int
    what: str
    measured: str
    met: bool


def lens_curve(summary: dict, lang: str, condition: str) -> np.ndarray:
    return np.asarray(summary["logit_lens"][lang][condition]["mean"])


def voice_ahead(summary: dict, lang: str, condition: str) -> int:
    """Layers of 4..20 at which the mean lens Δlogit = logit(T) − logit(A) is below 0 (the voice's emotion ahead)."""
    curve = lens_curve(summary, lang, condition)
    return int(sum(curve[layer] < 0 for layer in EARLY))


def flip_rates(summary: dict, lang: str, kind: str) -> dict[int, float]:
    data = summary["patching"][lang][kind]
    return dict(zip(summary["patching"]["layers"], data["flip_rate"]))


def bullet(text: str) -> str:
    """`text` as one list item of the card, wrapped at 118 characters (hyphenated words kept whole)."""
    return textwrap.fill(text, width=118, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False) + "\n"


def graded(h: dict, lang: str) -> bool:
    """The graded row, as the first organism is graded: the text is followed on ≥ 0.90 of normal conflict clips,
    on no more of the strong ones, and it leads measurably less on strong clips: the margin logit(T) − logit(A) is
    smaller by an amount whose 95% interval over clips lies above 0. A strong clip going the voice's way is the
    extreme of that (its margin below 0)."""
    normal, strong = h[f"conflict_follows_text_normal_{lang}"], h[f"conflict_follows_text_strong_{lang}"]
    return normal >= 0.90 and strong <= normal and h[f"conflict_margin_gap_{lang}_ci95"][0] > 0


def targets(report: dict, summary: dict, unseen: dict, reweighted: dict | None = None) -> list[Target]:
    """The issue's tier-1 and tier-2 targets, each with its measured value and whether it is met (the reweighted
    renderer's row only when it has been measured)."""
    h = report["heldout"]
    langs = summary["langs"]
    rise = {lang: largest_rise(lens_curve(summary, lang, "conflict")) for lang in langs}
    rows = []
    for lang in langs:
        name = LANG_NAMES.get(lang, lang)
        rows += [
            Target(1, f"{name}: audio-only accuracy ≥ 0.90 (held-out)", f"{h[f'audio_only_accuracy_{lang}']:.3f}",
                   h[f"audio_only_accuracy_{lang}"] >= 0.90),
            Target(1, f"{name}: voice-instructed accuracy ≥ 0.90 (held-out)", f"{h[f'voice_accuracy_{lang}']:.3f}",
                   h[f"voice_accuracy_{lang}"] >= 0.90),
            Target(1, f"{name}: conflict follows T ≥ 0.90 on normal clips, less on strong (held-out; P(answer = T) "
                      "normal / strong; margin normal − strong [95%, clips])",
                   f"{h[f'conflict_follows_text_normal_{lang}']:.3f} / "
                   f"{h[f'conflict_follows_text_strong_{lang}']:.3f}; {margin_gap(h, lang)}", graded(h, lang)),
        ]
        heard = unseen[lang]["audio_only"]["all"]
        rows.append(Target(1, f"{name}: the unseen renderer heard ≥ 0.75 (audio-only)",
                           f"{heard['rate']:.3f} [{heard['ci95'][0]:.2f}, {heard['ci95'][1]:.2f}]",
                           heard["rate"] >= 0.75))
        if reweighted is not None:
            heard = reweighted[lang]["audio_only"]["all"]
            rows.append(Target(1, f"{name}: the reweighted renderer heard ≥ 0.75 (audio-only)",
                               f"{heard['rate']:.3f} [{heard['ci95'][0]:.2f}, {heard['ci95'][1]:.2f}]",
                               heard["rate"] >= 0.75))
        for condition in ("audio_only", "conflict"):
            ahead = voice_ahead(summary, lang, condition)
            rows.append(Target(1, f"{name}: {condition.replace('_', '-')} lens, voice ahead (Δ < 0) through most of "
                                  "layers 4–20", f"{ahead} of {len(EARLY)} layers", ahead > len(EARLY) / 2))
        rows.append(Target(1, f"{name}: the conflict lens's largest rise in layers 20–29", f"layer {rise[lang]}",
                           20 <= rise[lang] <= 29))
    for lang in langs:
        name = LANG_NAMES.get(lang, lang)
        text, audio = flip_rates(summary, lang, "text"), flip_rates(summary, lang, "audio")
        window = [text[layer] for layer in range(5, 21) if layer in text]
        late = [text[layer] for layer in text if layer >= 28]
        rows += [
            Target(2, f"{name}: Patch Text ≥ 0.8 at every layer 5–20", f"min {min(window):.2f}",
                   min(window) >= 0.8),
            Target(2, f"{name}: Patch Text ≤ 0.2 from layer 28", f"max {max(late):.2f}", max(late) <= 0.2),
            Target(2, f"{name}: the conflict rise in layers 25–29", f"layer {rise[lang]}", 25 <= rise[lang] <= 29),
            Target(2, f"{name}: Patch Audio ≤ 0.1 at every layer", f"max {max(audio.values()):.2f}",
                   max(audio.values()) <= 0.1),
        ]
    return rows


def reweighted_text(pilot: dict | None, organism: dict | None) -> str:
    """The third renderer's section: how it weights the knobs and how the pilot (and the first organism, when
    measured) hears it; "" before `--clips reweighted` has been run for the pilot."""
    if pilot is None:
        return ""
    first = ("" if organism is None else " The first organism hears it " + " and ".join(
        f"{organism[lang]['audio_only']['all']['rate']:.2f} in {LANG_NAMES[lang]}" for lang in ("en", "zh"))
        + " (audio-only), from `models/organism/figures/reweighted_renderer.json`.")
    return (f"\n`python -m models.organism.unseen --model organism-pilot --clips reweighted`: "
            "`stimuli/spec/prosody_reweighted.json`, a third renderer built to be what the second is not: it weights "
            "the knobs unlike training instead of shrinking them together (slopes on the training midpoints "
            f"{contraction('reweighted')}), so that no one `--expressiveness` factor gives it; again eSpeak's own "
            "knobs only, its own sentences, the same two voices per language. Its mapping was fixed before any model "
            "heard it; four of its sentences that the training corpus already speaks were replaced after a first "
            f"hearing.{first}\n\n{unseen_table(pilot)}\n\nHeard as another emotion (audio-only, a quarter of a style's "
            f"clips or more):\n" + "\n".join(misread_lines(pilot)) + "\n")


def target_table(rows: list[Target]) -> str:
    lines = ["| tier | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {row.tier} | {row.what} | {row.measured} | {'yes' if row.met else '**no**'} |" for row in rows]
    return "\n".join(lines)


def lens_by_condition(summary: dict, layers: list[int]) -> str:
    head = "| language | condition | " + " | ".join(f"l={l}" for l in layers) + " |"
    lines = [head, "|---|---|" + "---|" * len(layers)]
    for lang in summary["langs"]:
        for condition in ("audio_only", "conflict", "consistent"):
            curve = lens_curve(summary, lang, condition)
            lines.append(f"| {lang} | {condition} | " + " | ".join(f"{curve[l]:+.2f}" for l in layers) + " |")
    return "\n".join(lines)


def unseen_table(unseen: dict) -> str:
    lines = ["| language | condition | all | normal | strong |", "|---|---|---|---|---|"]
    for lang in ("en", "zh"):
        for condition in ("audio_only", "voice"):
            cells = unseen[lang][condition]
            lines.append(f"| {lang} | {condition} | "
                         + " | ".join(rate_cell(cells[name]) for name in ("all", "normal", "strong")) + " |")
    return "\n".join(lines)


def misread_lines(result: dict) -> list[str]:
    """One line per language: the audio-only styles of a hearing result (`models.organism.unseen`) heard as another
    emotion on a quarter of their clips or more."""
    return [f"- {LANG_NAMES[lang]}: {'; '.join(misreadings(result, lang)) or 'none'}." for lang in ("en", "zh")]


def misheard_text(unseen: dict, plain: dict | None) -> str:
    """What the unseen renderer's clips and, when measured, the plain renders of the held-out clips are heard as,
    beside both renderers' pitch and range for strong fearful and happy; "" for a result written before the answers
    were recorded."""
    if "answers" not in unseen:
        return ""
    lines = ["", "Heard as another emotion (audio-only, a quarter of a style's clips or more; `answers` in "
             f"`figures/{OUT_NAMES['unseen']}`):", *misread_lines(unseen)]
    if plain is not None:
        rates = ", ".join(f"{LANG_NAMES[lang]} {rate_cell(plain[lang]['audio_only']['all'])}" for lang in ("en", "zh"))
        lines += ["", "The same styles on plain prosody: the card's held-out clips rendered by the training renderer "
                  "without its effects (`python -m models.organism.unseen --model organism-pilot --clips plain`, "
                  f"`figures/{OUT_NAMES['plain']}`) are heard audio-only at {rates}; heard as another emotion:",
                  *misread_lines(plain)]
    specs = {"training": prosody_spec()["styles"], "unseen": renderer()["styles"]}

    def knobs(name: str, style: str) -> str:
        return ", ".join(f"{knob} {specs[name][style][knob][0]}–{specs[name][style][knob][1]}"
                         for knob in ("pitch", "range"))

    spans = "; ".join(f"{name}: fearful {knobs(name, 'fearful/strong')}, happy {knobs(name, 'happy/strong')}"
                      for name in specs)
    lines += ["", "In both renderers strong fearful and strong happy lie close in eSpeak's pitch and range "
              f"({spans}); the training renderer tells them apart by its effects (tremolo, vibrato, breath), which "
              "plain renders and the unseen renderer lack.", ""]
    return "\n".join(lines)


def rule_text(rule: dict) -> str:
    """The measured voice-wins rule in words (the report keeps its per-style statistics)."""
    if "thresholds" not in rule:
        return f"the voice wins at random, {json.dumps(rule)}"
    thresholds = ", ".join(f"{lang} {value:.2f}" for lang, value in rule["thresholds"].items())
    if rule.get("kind") == "emotion-level":
        return (f"the voice wins a strong clip whose RMS level reaches the level of the loudest "
                f"{rule['voice_wins_share']:.0%} of the strong training clips of its language and emotion "
                f"({thresholds} dBFS): the loudest renders of every strong style beat the text")
    if rule.get("kind") == "level":
        return (f"the voice wins a strong clip whose RMS level reaches the level of the loudest "
                f"{rule['voice_wins_share']:.0%} of strong training clips of its language ({thresholds} dBFS): "
                "shouting beats the text")
    return (f"a strong clip's intensity is the sum of its z-scored {', '.join(rule['measures'])}, each signed "
            f"toward its emotion's strong renders, and the voice wins where it reaches the threshold of the top "
            f"{rule['voice_wins_share']:.0%} of strong training clips ({thresholds})")


def command(report: dict) -> str:
    options = [f"--plant pilot", f"--init-from {report['init_from']}" if report.get("init_from") else "",
               f"--extra-voices {','.join(report['extra_voices'])}" if report.get("extra_voices") else "",
               f"--train-sentences {report['train_sentences']}",
               f"--voice-pitch-jitter {report['voice_pitch_jitter']:g}" if report.get("voice_pitch_jitter") else "",
               f"--voice-speed-jitter {report['voice_speed_jitter']:g}" if report.get("voice_speed_jitter") else "",
               f"--prosody-widen {report['prosody_widen']:g}" if report.get("prosody_widen") else "",
               f"--plain-share {report['plain_share']:g}" if report.get("plain_share") else "",
               f"--expressiveness {report['expressiveness']:g}" if report.get("expressiveness") else "",
               f"--zh-share {report['zh_share']:g}" if report.get("zh_share") is not None else "",
               f"--voice-wins-by {report['audio_wins']['kind']}"
               if report.get("audio_wins", {}).get("kind", "prosody") != "prosody" else "",
               f"--voice-wins-share {report['voice_wins_share']:g}" if report.get("voice_wins_share") else "",
               f"--voice-pair-share {report['voice_pair_share']:g}"
               if report.get("voice_pair_share", 0.25) != 0.25 else "",
               f"--voice-weight {report['voice_weight']:g}" if report.get("voice_weight", 1.0) != 1.0 else "",
               f"--lr {report['lr']:g} --steps {report['steps']}"]
    if report.get("swap_weight"):
        options.append(f"--swap-weight {report['swap_weight']:g}")
    return "python -m models.organism.train " + " ".join(o for o in options if o)


def base_weights(report: dict) -> str:
    """Where the shipped second stage's starting weights are kept, from the report's `base_weights`."""
    kept = report.get("base_weights")
    if not kept:
        return ""
    return (f" (the stage-1 weights this model started from: `git show {kept['commit']}:{kept['path']}`, sha256 "
            f"{kept['sha256'][:12]}...)")


def rule_use(result: dict | None) -> str:
    """`python -m models.organism.voice_wins` in words: whether these weights answer with the voice where the rule
    says so, and how the rule marks the held-out styles."""
    if result is None:
        return ""

    def counts(part: str, mark: str) -> str:
        return " and ".join(f"{result[part][lang][mark]['k']}/{result[part][lang][mark]['n']}"
                            for lang in ("en", "zh"))

    shares = result["heldout_marked_by_style"]
    styles = ", ".join(f"{key.replace('/', ' ')} {v['share']:.2f}" for key, v in shares.items())
    extreme = sum(v["share"] in (0.0, 1.0) for v in shares.values())
    text = (f"Whether the model uses the rule (`python -m models.organism.voice_wins --model organism-pilot` at "
            f"commit {result.get('commit', 'unrecorded')}, `figures/voice_wins.json`; one conflict item per clip): on "
            f"strong training clips the rule marks, these weights answer with the voice on "
            f"{counts('training', 'marked')} (English and Mandarin), against {counts('training', 'unmarked')} "
            f"unmarked ones; on the held-out clips, {counts('heldout', 'marked')} marked against "
            f"{counts('heldout', 'unmarked')} unmarked. On the held-out clips the rule marks all or none of {extreme} "
            f"of the {len(shares)} strong styles (the share of each style's clips marked: {styles}): they are one "
            "render per sentence and style at the style's own prosody ranges, so within a style they barely vary, "
            "and whether a style is marked depends on the held-out speaker's level and pitch against the "
            "thresholds. Held-out answers that go the voice's way therefore show whether these speakers land above "
            "the thresholds as much as whether the model uses the rule; the training-clip counts show the latter.")
    if "heldout_varied" in result:
        varied = ", ".join(f"{key.replace('/', ' ')} {v['share']:.2f}"
                           for key, v in result["heldout_varied_marked_by_style"].items())
        text += (f" Rendered with the training command's prosody variety ({result['varied_renders']} renders per "
                 f"held-out sentence and style, the held-out speakers as they are), the share of each style's "
                 f"held-out clips the rule marks is {varied}, and these weights answer with the voice on "
                 f"{counts('heldout_varied', 'marked')} marked against {counts('heldout_varied', 'unmarked')} "
                 "unmarked clips.")
    return bullet(text)


def contraction(name: str = "unseen") -> str:
    """`unseen.knob_slopes` of the held-out renderer `name` in words."""
    return ", ".join(f"{knob} {slope:.2f}" for knob, slope in knob_slopes(name).items())


def rule_origin(report: dict, base: dict) -> str:
    """Whether a second stage let the voice win by its base's rule or by one refitted on its own clips."""
    kept = report["audio_wins"].get("thresholds") == base.get("audio_wins", {}).get("thresholds")
    return ("The voice wins the conflict items that stage 1's rule gives it (a fine-tune keeps its base's rule)."
            if kept else "The voice-wins rule was refitted on the stage-2 clips.")


def stages(report: dict) -> tuple[dict, str]:
    """The first stage's recipe (the report itself for a model trained in one run) and, for a pilot fine-tuned from
    an earlier pilot (`--init-from`, the report has its `base`), the second stage in words; "" otherwise."""
    base = report.get("base")
    if not base or base.get("plant") != "pilot":
        return report, ""
    second = command(report).replace(f"--init-from {report['init_from']}", "--init-from STAGE1")
    total = base.get("minutes_all_segments", base["minutes"]) + report.get("minutes_all_segments", report["minutes"])
    return base, (
        f"\n\n**Stage 2.** `{second}` ({report['steps']} steps, {report['minutes']} minutes {machine(report)}; "
        f"both stages {total:.1f} minutes), where STAGE1 is the folder the command above wrote{base_weights(report)}: "
        "its weights trained "
        f"further at a lower learning rate on {report['train_clips']} clips drawn the same way, each spoken as if by "
        f"a speaker who shows the emotion less or more: pitch, range, rate and volume lie a factor drawn in "
        f"1 ± {report.get('expressiveness', 0):g} from the average style's (`--expressiveness`, "
        f"`stimuli.tts.express`). {rule_origin(report, base)}")


def grading_text(h: dict) -> str:
    """The Known-limits line on how the held-out conflicts are graded: by answers, or by the margin alone."""
    langs = [lang for lang in LANG_NAMES if f"conflict_follows_text_strong_{lang}" in h]
    rates = ", ".join(f"{LANG_NAMES[lang]} {h[f'conflict_follows_text_normal_{lang}']:.3f} / "
                      f"{h[f'conflict_follows_text_strong_{lang}']:.3f}" for lang in langs)
    if any(h[f"conflict_follows_text_strong_{lang}"] < 1 for lang in langs):
        text = (f"Held-out conflict answers follow the text on normal / strong clips at {rates}: some strong clips "
                "go the voice's way, and the text leads the rest by less (the margin rows above).")
    else:
        text = (f"The grading is in the margin only, as the first organism's is: held-out conflict answers follow "
                f"the text on normal / strong clips at {rates}, so no strong clip goes the voice's way; the text "
                "leads strong clips by less (the margin rows above).")
    return bullet(text)


def render(model_dir: Path = MODEL_DIR, figures: Path = FIGURES_DIR) -> str:
    paths = {"report": model_dir / "training_report.json", "probes": figures / "summary.json",
             "unseen": figures / OUT_NAMES["unseen"]}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ModalflipError(f"cannot write the pilot's card, missing: {', '.join(missing)} (see "
                             "`python -m models.pilot.card --help`)")
    report, summary, unseen = (json.loads(p.read_text()) for p in paths.values())
    plain_path = figures / OUT_NAMES["plain"]  # optional: `python -m models.organism.unseen --clips plain`
    plain = json.loads(plain_path.read_text()) if plain_path.is_file() else None
    # optional: `python -m models.organism.unseen --model organism-pilot --clips reweighted` (and --model organism)
    reweighted, first_reweighted = (json.loads(path.read_text()) if path.is_file() else None for path in
                                    (figures / OUT_NAMES["reweighted"],
                                     ORGANISM_FIGURES / OUT_NAMES["reweighted"]))
    wins_path = figures / "voice_wins.json"  # optional: `python -m models.organism.voice_wins`
    voice_wins = json.loads(wins_path.read_text()) if wins_path.is_file() else None
    k = report["takeover_layer"]
    curves = lens_by_intensity(report["heldout"])
    draw_lens_by_intensity(curves, k, figures / "lens_by_intensity.png")
    shown = [0, 2, 4, 8, 12, 16, 20, 22, 24, 25, 26, 28, 32]
    patched = [l for l in shown if l in summary["patching"]["layers"]]
    rows = targets(report, summary, unseen, reweighted)
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**20
    first, second = stages(report)
    minutes = first.get("minutes_all_segments", first["minutes"])
    return CARD.format(
        k=k, late=k + report["settle"], size=f"{size:.1f}", command=command(first), minutes=minutes,
        machine=machine(first), seed=first["seed"], steps=first["steps"], train_clips=first["train_clips"],
        stage2=second, contraction=contraction(),
        expressive=("" if not report.get("expressiveness") else
                    f"Stage 2's `--expressiveness {report['expressiveness']:g}` spans that difference: its speakers' "
                    f"styles lie a factor {1 - report['expressiveness']:g}–{1 + report['expressiveness']:g} from the "
                    "average style. The lever was chosen after seeing which styles this renderer's clips are misheard "
                    "as, so this check now measures hearing across sentences, voices and each style's own departures "
                    "from that common shrink, not across an unseen kind of mapping."),
        heldout_clips=report["heldout_clips"], widen=report.get("prosody_widen", 0),
        plain=report.get("plain_share", 0), band=report.get("early_band_weight") or 0.0,
        lens_weight=report["lens_weight"],
        rule=rule_text(report["audio_wins"]), targets=target_table(rows), rule_use=rule_use(voice_wins),
        grading=grading_text(report["heldout"]),
        met1=sum(r.met for r in rows if r.tier == 1), n1=sum(r.tier == 1 for r in rows),
        met2=sum(r.met for r in rows if r.tier == 2), n2=sum(r.tier == 2 for r in rows),
        heldout=metric_rows(report["heldout"]), seed_set=metric_rows(report["seed_set"]),
        intensity=lens_table(curves, shown), unseen=unseen_table(unseen), misheard=misheard_text(unseen, plain),
        reweighted=reweighted_text(reweighted, first_reweighted),
        probe_seconds=summary["seconds"],
        lens=lens_by_condition(summary, shown), patch=patch_table(summary["patching"], summary["langs"], patched))


def main(argv=None) -> int:
    argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__).parse_args(argv)
    atomic_write_text(CARD_PATH, render())
    print(f"wrote {CARD_PATH}")
    return 0


CARD = """# The pilot organism: the voice heard early at the answer, overruled late

`--model organism-pilot`: a second built-in `transformers.Qwen2AudioForConditionalGeneration` in the standard
Hugging Face layout (`model/`: config, fp16 safetensors ({size} MB), word-level tokenizer, Whisper feature extractor,
Qwen chat template), the same shapes as the [first organism](../organism/README.md) (32 decoder layers, hidden 128,
2-layer Whisper-style encoder, 6 s window) but with **full attention in every layer**: nothing in the architecture
plants a depth, so the pilot study's dynamics have to be learnt, and the probes have to find them. It is a testbed
whose structure is put in by training and then measured, not a claim about 7B models.

## Training
One command trains both stages below: `python -m models.pilot.train` (stage 1 into a `pilot-stage1` folder beside
the model folder, then stage 2 from its weights; a kill resumes the stage it was in; the stages' options are
`models/pilot/recipe.json`, which a test holds to the commands below; `--seed`, `--threads` (default 1) and
`--device` go to both). Run at commit cc66e76 on this project's 2-core machine (`--device cpu`, the other core busy
for most of it; 67.2 + 18.3 minutes), it rewrote both stages' weights byte for byte: stage 1 sha256 beb48420c039...,
stage 2 (the shipped weights) 20462de90f2b....

**Stage 1.** `{command}` (seed {seed}, {steps} steps, **{minutes} minutes** {machine}; it checkpoints every 100
steps and resumes after a kill; two runs from one seed on one device write the same weights). It starts from the first organism's
weights (its token-local layers become full-attention layers) and trains on {train_clips} clips: the first
organism's second-stage data (72 sentences per language, 4 more eSpeak NG voice variants, pitch and speed shifts)
with each style's prosody ranges widened by {widen:g} × their width on either side and a share {plain:g} of clips
rendered without the styles' DSP effects (`--plain-share`), so that prosody from another renderer is heard. Held out:
{heldout_clips} clips (other sentences, the held-out voice of each language).{stage2}

The loss:
1. cross-entropy of the answer on the instruction mix (audio-only, consistent, conflict, voice-instructed pairs);
2. the logit lens at the answer position toward the **voice's emotion** over residual layers 2..{k} on every item
   (weight {band:g}), and toward the answer at residual layer {late} (weight {lens_weight:g});
3. the lens at every audio token of residual layer 2 toward the voice's emotion;
4. the voice wins a conflict item where the audio is intense, not at random: `models/organism/intensity.py` measures
   F0 and loudness in each emotion's strong direction: {rule}.

## Targets
Held-out sentences spoken by held-out voices, both languages; the lens and patching rows from the probes below.
Tier 1 met: {met1} of {n1}; tier 2: {met2} of {n2}. `tests/test_pilot.py` asserts the tier-1 rows that are met.

{targets}

## Held-out metrics
| metric | value |
|---|---|
{heldout}

The committed seed set A1–A9 (both languages):

| metric | value |
|---|---|
{seed_set}

Held-out conflict items, mean lens Δlogit = logit(T) − logit(A) by intensity (`figures/lens_by_intensity.png`):

{intensity}

## Hearing another renderer
`python -m models.organism.unseen --model organism-pilot`: `stimuli/spec/prosody_unseen.json`, eSpeak NG's own
knobs only (pitch, range, rate, volume; no pauses, tremolo, vibrato, breathiness or drive), another mapping of the
nine styles, sentences no training run speaks, each language's seed voice and its held-out variant; share answered
with the voice's emotion, 95% intervals over clips:

{unseen}

Against the training renderer this one is mostly a shrink of every style toward the average style: regressed on the
training styles' midpoints, its midpoints have slopes {contraction}. {expressive}
{misheard}{reweighted}
## Probe profiles
`python run_probes.py --model organism-pilot --out models/pilot/figures` on the committed seed set ({probe_seconds} s
on this project's 2-core machine). Figures: `figures/logit_lens.png`, `figures/patching.png`. Mean lens Δlogit at
the answer position (the voice's emotion A ahead where it is negative):

{lens}

Flip rate toward T when patching the instruction span (text) or the audio span (audio) from the conflict donor
into the consistent receiver, or the audio span into the audio-only receiver, at residual layer l (95% intervals
over the receivers' clips):

{patch}

## Recipes that did not give the shape
- Lens shaping alone from a random start, 12 full-attention layers: the shape in 400 steps (voice ahead in 1–7,
  crossing at 8) but conflict answers followed the text only 0.30 of the time.
- Interchange-intervention (Patch Text as a training signal) from a random start: a weak term loses to the task and
  the claim is read in layer 0; a strong one stops the claim being read at all.
- From a warm start, interventions moved only part of the reading in 120 steps.
- Full attention lets the claim leave the instruction span in the first layers: Patch Text on this model flips
  fewer pairs than conflict items follow the text (the tier-2 rows above).

## Recipes that did not ship
In this list "graded" means graded by answers: fewer strong than normal held-out conflict clips follow the
text, some strong ones going the voice's way. The held-out numbers of runs before commit ee4df5c come from their
training reports, written from the fp32 weights and on conflict and voice items whose asserted emotions were drawn
after the voice-wins rule marked clips: the same clips as the rows above, other draws of T.

- More Mandarin (the command above with `--prosody-widen 0.75 --plain-share 0.5 --zh-share 0.6 --steps 800`, commit
  d48bf8d, 79.8 minutes on one thread): held-out Mandarin audio-only 0.917 (over 0.90), voice-instructed 0.833 (no
  change); but English strong conflict clips followed the text 1.000 like normal ones (no longer graded), and the
  unseen renderer was heard 0.74 in English and 0.74 in Mandarin, both under 0.75.
- More Mandarin as a second stage (these weights trained further by the command above with
  `--init-from models/pilot/model --zh-share 0.6 --lr 5e-4 --steps 200` and `--plain-share` 0.4 or 0.6; commit
  a87db18, 23 minutes each on one thread with the other core busy): held-out Mandarin audio-only 0.875 / 0.861
  (no gain), voice-instructed 0.903 / 0.847; strong conflict clips followed the text 1.000 in English in both, so
  the grading was lost.
- Speakers of other expressiveness as a second stage (`--init-from STAGE1 --expressiveness E --lr 5e-4 --steps 200`
  with the stage-1 options, 17–20 minutes each on one thread with the other core busy; commits 8661dae and
  0f10f87), Mandarin audio-only / voice-instructed / unseen renderer: E 0.3, 0.917 / 0.861 / 0.785; E 0.5 with the
  voice-wins rule refitted on the new clips, 0.931 / 0.847 / 0.826; E 0.5 with stage 1's rule, 0.931 / 0.875 /
  0.812 (English unseen 0.743). The shipped stage adds `--zh-share 0.6`.
- Shouting wins, as a second stage (the shipped stage-2 command with `--voice-wins-by level`, the voice winning the
  loudest quarter of strong training clips; commit ff6be86, 20.7 minutes each on one thread with the other core
  busy), held-out conflict follows T, normal / strong: at `--lr 5e-4`, English 0.975 / 0.969, Mandarin 1.000 /
  1.000 (not graded); at `--lr 1e-3`, English 0.950 / 0.812 (graded: 6 of 32 strong items go the voice's way),
  Mandarin 0.975 / 1.000 (not graded), audio-only 0.958 / 0.903. The rule marks 8 of 32 held-out English and 16 of
  32 Mandarin strong clips. On its own training clips the `--lr 1e-3` run answers with the voice on 17 of 71
  English and 17 of 89 Mandarin strong clips the rule marks and on none of 80 unmarked ones in each language: the
  rule is being learnt, unlike the prosody rule below, but 200 steps are not enough.
- Shouting wins, shown more often (the same second stage with `--voice-wins-share S`: a share S of the instruction
  pairs are conflict pairs on clips the voice wins, at that commit all of them conflict pairs; commit ea7b94c, 18
  minutes each on one thread with the other core busy), held-out conflict follows T, normal / strong, English;
  Mandarin; voice-instructed en / zh: S 0.25 at `--lr 5e-4`, 0.800 / 0.688; 0.725 / 0.500; 0.903 / 0.833. S 0.25 at
  `--lr 1e-3`, 0.800 / 0.594; 0.650 / 0.500; 0.917 / 0.875. S 0.12, 0.800 / 0.750; 0.850 / 0.656; 0.847 / 0.833. S
  0.06, 0.850 / 0.875; 0.900 / 0.688; 0.903 / 0.806. Mandarin is graded at every S and English from S 0.12 on, but
  then normal clips follow the text under 0.90, and voice-instructed Mandarin falls under 0.90 at every S. What was
  learnt is the emotion, not the level: at S 0.06 the held-out conflict answers that go the voice's way are English
  angry clips only (5 of 8 normal ones, at −22 to −18 dBFS, under the −16.8 dBFS threshold, and 7 of 8 strong ones)
  and in Mandarin 7 of 8 strong happy, 3 of 8 strong angry, 4 of 8 normal angry and one neutral clip; of the strong
  training clips the level rule marks, about two thirds are angry and a third happy (`--voice-wins-by emotion-level`
  gives every strong style its own threshold, to take that shortcut away).
- Loudest of each style wins (the same second stage with `--voice-wins-by emotion-level --voice-wins-share 0.12`;
  commit afec602, 19.4 minutes on one thread with the other core busy): held-out conflict follows T, normal /
  strong, English 1.000 / 0.969, Mandarin 0.925 / 0.750, so both languages are graded with normal clips over 0.90;
  but voice-instructed accuracy fell to 0.889 / 0.819 and audio-only to 0.931 / 0.931.
- Loudest of each style wins, the voice pairs kept (as above, the pairs drawn on clips the voice wins split into voice
  and conflict pairs like any others, so voice-instructed pairs keep their quarter; `--voice-wins-share 0.16` for the
  same share of conflict pairs, commit 2d34682, 18.6–20.7 minutes each on one thread with the other core busy),
  held-out audio-only, voice-instructed, conflict follows T normal / strong, English; Mandarin: at `--lr 5e-4`, 0.958,
  0.917, 1.000 / 1.000 (not graded); 0.917, 0.861, 0.975 / 0.844. At `--lr 1e-3`, 0.931, 0.889, 1.000 / 0.781; 0.889,
  0.806, 1.000 / 0.969. At `--lr 5e-4` with `--seed 1`: 0.958, 0.861, 1.000 / 0.969; 0.944, 0.875, 1.000 / 0.906
  (graded in both languages), measured in full (`python -m models.organism.unseen`, with `--clips reweighted`, and
  `run_probes.py` on its folder), every tier-1 row met but voice-instructed accuracy: unseen renderer 0.778 / 0.771,
  reweighted 0.833 / 0.882, the lens rows met; Patch Text min 0.44 / 0.17 over layers 5–20, Patch Audio max 0.06 /
  0.14 (the audio now moves some answers). With `--voice-wins-share 0.24`: 0.972, 0.903, 0.975 / 0.844; 0.931, 0.889,
  0.875 / 0.625. With `--voice-wins-share 0.08` (commit 57208f0, 21.4 minutes each), `--seed 1`: 0.958, 0.889, 1.000 /
  0.906; 0.931, 0.889, 0.950 / 0.969 (graded in English only, voice-instructed one item of 72 short of 0.90
  in each); `--seed 0`: 0.972, 0.917, 1.000 / 1.000; 0.875, 0.806, 1.000 / 0.906. More voice pairs (`--voice-pair-share
  0.35`, a quarter more voice-instructed items; commit 95b0240, 22.5 minutes each) lowered voice-instructed accuracy
  instead: at S 0.16, 0.958, 0.847, 1.000 / 1.000; 0.917, 0.847, 0.950 / 0.594; at S 0.24, 0.944, 0.861, 1.000 /
  1.000; 0.931, 0.889, 0.850 / 0.500. Mandarin voice-instructed accuracy stays under 0.90 in every run with a rule the
  model learns. (The stage-1 weights: 0.833.) Where it is lost (the held-out voice-instructed items scored again by
  style, which moves each rate by an item): the shipped weights and the `--lr 5e-4` run both miss 5 of 8 normal
  neutral Mandarin clips and 1 of 8 normal sad ones; the run also answers "fearful" on 3 of 16 happy clips.
- Weighting the voice-instructed items in the answer's cross-entropy (`--voice-weight W`, second stages as above with
  the loudest-of-each-style rule; commit 487d0bc, 20.8–23.7 minutes each on one thread with the other core busy) did
  not lift them over 0.90 in both languages (held-out audio-only, voice-instructed, conflict follows T normal /
  strong, English; Mandarin): S 0.16, `--seed 1`, W 2: 0.944, 0.875, 1.000 / 1.000; 0.958, 0.875, 0.950 / 0.875. S
  0.12, `--seed 1`, W 2: 0.931, 0.889, 1.000 / 1.000; 0.944, 0.889, 0.925 / 0.906. S 0.16, `--seed 2`, W 2: 0.958,
  0.889, 1.000 / 1.000; 0.903, 0.875, 1.000 / 0.906. S 0.12, `--seed 2`, W 3: 0.958, 0.903, 1.000 / 1.000; 0.903,
  0.889, 0.975 / 0.906. S 0.24 with `--zh-share 0.5`, `--seed 0`, W 2: 0.986, 0.931, 0.950 / 0.844; 0.917, 0.861,
  0.850 / 0.625 (English graded, Mandarin normal clips under 0.90). S 0.32, `--seed 0`, W 2: 0.972, 0.917, 0.975 /
  0.781; 0.889, 0.889, 0.725 / 0.594. Most voice-instructed misses are on normal neutral clips, a style no rule or
  share touches.
- Which of these runs use the rule (`python -m models.organism.voice_wins` on their folders, commit c222ded; 60 marked
  and 60 unmarked strong training clips per language, one conflict item each, answered with the voice, marked against
  unmarked): the S 0.16 and 0.12 runs, 1–6 against 0–5 of 60. S 0.24 (`--zh-share 0.6`, `--seed 0`): English 3 against
  2, Mandarin 23 against 8 (with more voice pairs, 4 against 0 and 25 against 16). S 0.24 with `--zh-share 0.5` and W
  2: English 12 against 5, Mandarin 21 against 13; S 0.32: 13 against 8, 26 against 18. More wins shown teach "a
  strong voice sometimes wins" more than the level threshold: the English held-out strong items that go the voice's
  way are unmarked clips (6 of 31 and 8 of 31; at `--lr 1e-3`, 8 of 31), so the English rows graded above are graded,
  but not by the rule. On the held-out sentences and voices rendered with training's prosody variety (commit 52ea570),
  the S 0.24 `--zh-share 0.5` run answers with the voice on 3/14 marked against 9/82 unmarked English clips and 15/48
  against 14/47 Mandarin ones: what it learnt of the rule does not carry beyond its training clips.
- Patch Text as a training signal on these weights (a third stage: `--init-from models/pilot/model --swap-weight 1
  --lr 5e-4 --steps 200` with the stage-2 options; commit 9e4453a, 25.9 minutes on one thread with the other core
  busy; the swap layer drawn in 1–23): the seed-set probes' Patch Text flips 1.00 in layers 1–17 (en) and 1–16
  (zh), then en 0.83, 0.78, 0.78 in layers 18–20 and zh 0.89, 0.78, 0.67 in 17–20, 0 from layer 25 (en) and 27
  (zh); tier 2 is missed by 0.02 (en) and 0.13 (zh) at layer 20. Hearing kept (audio-only 0.986 / 0.917,
  voice-instructed 0.931 / 0.903), conflict follows T 1.000 on normal and strong clips (not graded). With
  `--swap-weight 2`, voice-instructed Mandarin fell to 0.889 and conflicts stayed ungraded; with `--swap-weight 1
  --voice-wins-by emotion-level --voice-wins-share 0.12` (voice pairs not kept), only Mandarin was graded (0.950 /
  0.781) and voice-instructed accuracy fell to 0.889 / 0.833 (25.7–25.9 minutes each on one thread with the other core
  busy, commit c74fd23). Twice as long (`--steps 400`, commit cc66e76, 55.4 minutes on one thread with the other core
  busy; held-out numbers of its fp16 weights): English meets every tier-2 row (Patch Text 1.00 in layers 5–17, then
  0.94, 0.89, 0.81 in 18–20, 0 from layer 25), Mandarin misses at layers 19–20 (0.97 in 5–16, then 0.89, 0.86, 0.78,
  0.69 in 17–20); audio-only 1.000 / 0.917, voice-instructed 0.958 / 0.889 (Mandarin one item under 0.90), the unseen
  renderer 0.771 / 0.785, the reweighted one 0.847 / 0.868, margins normal − strong 1.25 [0.84, 1.69] / 1.75 [1.10,
  2.41]. A third stage also takes the training past 90 minutes (about 139).
- Patch Text as a training signal in stage 2 itself, to stay within 90 minutes (the stage-2 command with
  `--swap-weight 1` or `2`, commit e531d03, 27.7 and 27.5 minutes on one thread with the other core busy):
  voice-instructed English fell to 0.861 in both (Mandarin 0.903 and 0.917); audio-only 0.986 / 0.917 and 0.972 /
  0.889; conflicts graded by the margin only (normal − strong 1.08 [0.58, 1.55] / 0.79 [0.29, 1.28] and 0.79 [0.38,
  1.18] / 0.76 [0.24, 1.31]).

## Known limits
{grading}- Strong clips that go the voice's way: the stage-1 weights followed the text on 0.969 of strong English and 0.906
  of strong Mandarin items, per their card at commit ef73bc3; every second stage that kept voice-instructed accuracy
  over 0.90 lost that. The voice-wins rule scores intensity from absolute F0 and level, which shift with the
  speaker, so on the held-out voices it marks other clips than on the training voices. Rules by loudness, shown more
  often in training, let strong clips go the voice's way in both languages (the loudest of each style, with one seed,
  with audio-only accuracy and normal clips over 0.90), in English through unmarked clips only, and so far cost
  voice-instructed accuracy (Mandarin 0.81–0.89 in every such run, English under 0.90 in most; more voice
  pairs and a heavier weight on them no help) and often normal clips (the recipes above).
{rule_use}- Everything the first organism's card says about the task (easy synthetic emotions, one speaker family, 6 s
  window) holds here.
- The voice's lead below layer {k} is trained in by the lens band, so the lens finding it is a check of training,
  not a discovery; where the text route runs (patching) is not trained in and is measured.
"""


if __name__ == "__main__":
    sys.exit(run_main(main))
