"""Train the organism: `python -m models.organism.train [--takeover-layer 16] [--out DIR]`.

Recipe (a planted takeover depth K; the model card says why and what failed before):
1. Synthesize clips with `stimuli.tts` (training sentences x styles x voice variants, jittered prosody, both
   languages); held-out sentences with a held-out voice for evaluation.
2. Train the 32-layer model end to end on the instruction mix: audio-only, consistent, conflict (text wins, except
   3% of normal and 15% of strong clips) and voice-instructed items, in pairs that differ only in the asserted word.
3. Plant K. `--plant local` (default): decoder layers below K are sliding-window layers of window 1, so nothing
   crosses tokens before K; the loss adds the logit lens at resid[K+2] toward the answer and at every audio token of
   resid[K] toward the voice. `--plant objective`: full attention everywhere; the lens at resid[K] must read the
   voice and at resid[K+2] the answer, and the pairs must be identical after the instruction in resid[1..K].
   `--plant pilot` (the pilot study's dynamics; shipped as `--model organism-pilot`, models/pilot/model, with
   the command in its card): full attention everywhere; the lens at the answer
   position reads the voice's emotion over resid[2..K] on every item and the answer at resid[K+2], every audio token
   of resid[2] reads the voice, and the voice wins a conflict item where the audio is intense
   (`models/organism/intensity.py`) instead of at random. `--init-from` the token-local organism starts from its
   weights in a full-attention model.
Seeded; the learning-rate schedule follows steps, not wall time; checkpoints every 100 steps and resumes.

The shipped weights add a second stage: `--init-from STAGE1 --extra-voices victor,Annie,Denis,shelby
--train-sentences 72 --voice-pitch-jitter 8 --steps 600 --lr 5e-4` fine-tunes the first stage's weights with the same
loss on more speakers and sentences (the report keeps the first stage's recipe as `base`; the card gives both).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from common.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from common.cli import run_main
from common.errors import ModalflipError
from common.stats import difference_of_means
from models.adapter import ModelAdapter
from models.families.qwen2_audio import FAMILY
from models.forward import lens, resume, run_traced
from models.loading import resolve_device
from models.organism import build, card
from models.organism import intensity as intensity_rule
from models.prompting import chat_prompt, claim_word
from stimuli import spec, tts

console = Console()
AUDIO_WINS = {"normal": 0.03, "strong": 0.15}
MODEL_DIRS = {"local": Path(__file__).parent / "model", "pilot": Path(__file__).parent.parent / "pilot" / "model"}
CHECKPOINTS = {"local": "organism-training.pt", "pilot": "pilot-training.pt"}
VOICE_PAIR_SHARE = 0.25  # the share of instruction pairs that ask to judge by the voice


def item_mix(voice_share: float = VOICE_PAIR_SHARE) -> dict[str, float]:
    """The expected share of each condition among a batch's items (`sample_paired_batch`): a quarter audio-only,
    the rest in pairs, `voice_share` of them voice pairs, the others a conflict item with a consistent or a
    second conflict partner."""
    pairs = 0.75
    return {"audio_only": 0.25, "conflict": round(pairs * (1 - voice_share) * 0.75, 2),
            "consistent": round(pairs * (1 - voice_share) * 0.25, 2),
            "voice-instructed (T != A and T = A)": round(pairs * voice_share, 2)}


@dataclass
class Clip:
    wave: np.ndarray
    lang: str
    emotion: str
    intensity: str
    sentence: str
    voice: str
    voice_wins: bool | None = None  # in a conflict item; None: drawn with the AUDIO_WINS probability of its intensity


def styles() -> list[tuple[str, str]]:
    return [(c.emotion, c.intensity) for c in spec.seed_clips()]


@dataclass(frozen=True)
class VoiceJitter:
    """How far each training clip's speaker is moved from its voice variant: a base-pitch offset drawn uniformly
    in +-`pitch` eSpeak units, a speed factor in 1 +- `speed` and extra breathiness in [0, `breath`] (see
    `tts.VoiceShift`); and how far each style's prosody may stray: its ranges widened by `widen` times their width
    on either side (`tts.draw_prosody`), the share `plain` of clips rendered without the styles' effects
    (`tts.VoiceShift.plain`), and how expressive the speaker is: a factor drawn uniformly in 1 +- `expressive`
    (`tts.express`). Zero: the variants, ranges and effects as they are."""

    pitch: float = 0.0
    speed: float = 0.0
    breath: float = 0.0
    widen: float = 0.0
    plain: float = 0.0
    expressive: float = 0.0

    def draw(self, rng: np.random.Generator) -> tts.VoiceShift:
        pitch, speed = float(rng.uniform(-self.pitch, self.pitch)), float(1 + rng.uniform(-self.speed, self.speed))
        # drawn only when asked for, so runs without it keep the pitch and speed draws they had before it existed
        breath = float(rng.uniform(0, self.breath)) if self.breath else 0.0
        plain = bool(rng.uniform() < self.plain) if self.plain else False
        factor = float(1 + rng.uniform(-self.expressive, self.expressive)) if self.expressive else 1.0
        return tts.VoiceShift(pitch, speed, breath, plain, factor)


def held_out_voices() -> set[str]:
    """The voice variant each language keeps out of training (the last one `tts.voices` lists)."""
    return {tts.voices(lang)[-1] for lang in spec.LANGS}


def synthesize(split: str, renders: int, seed: int, progress: Progress,
               jitter: VoiceJitter = VoiceJitter(), sentences: int | None = None,
               extra_voices: tuple[str, ...] = ()) -> list[Clip]:
    """Clips of every (sentence, style) of `split`, the first `sentences` of each language (None: all); train uses
    all voices but the last, plus each language's seed voice with the eSpeak variants `extra_voices`
    (`tts.variant_voice`), held-out only the last. `jitter` moves each clip's speaker (meant for the training
    split; its draws come from their own generator, so the sentences, voices and prosody drawn are the same with and
    without it)."""
    data = build.corpus()["sentences"]
    rng, shifts = np.random.default_rng(seed), np.random.default_rng((seed, 1))
    jobs = []
    for lang in spec.LANGS:
        voices = tts.voices(lang)
        pool = voices[:-1] + [tts.variant_voice(lang, v) for v in extra_voices] if split == "train" else voices[-1:]
        for sentence in data[lang][split][:sentences]:
            for emotion, intensity in styles():
                for _ in range(renders):
                    jobs.append((sentence, lang, emotion, intensity, str(rng.choice(pool)), int(rng.integers(1 << 30)),
                                 jitter.draw(shifts)))
    return render_clips(jobs, f"synthesizing {split} clips", progress, jitter.widen)


def render_clips(jobs: list[tuple], description: str, progress: Progress, widen: float = 0.0,
                 styles: dict | None = None) -> list[Clip]:
    """Render (sentence, lang, emotion, intensity, voice, prosody seed, voice shift) jobs, dropping clips longer
    than the model window, with a progress task; `widen` and `styles` (another renderer's mapping) as in
    `tts.draw_prosody`."""
    task = progress.add_task(description, total=len(jobs), loss=float("nan"))
    clips = []
    window = build.WINDOW_SECONDS * tts.SAMPLE_RATE
    for sentence, lang, emotion, intensity, voice, prosody_seed, shift in jobs:
        wave = tts.render(sentence, lang, emotion, intensity, voice=voice, jitter_seed=prosody_seed, shift=shift,
                           widen=widen, styles=styles)
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
        wins = rng.random() < AUDIO_WINS[clip.intensity] if clip.voice_wins is None else clip.voice_wins
        answer = clip.emotion if wins else text
    return chat_prompt(instruction, lang, claim_word(lang, text) if condition != "audio_only" else None), answer, text


def pad_to_window(wave: np.ndarray) -> np.ndarray:
    return np.pad(wave, (0, build.WINDOW_SECONDS * tts.SAMPLE_RATE - len(wave)))


def draw_clip(clips: list[Clip], rng: np.random.Generator, zh_share: float | None) -> Clip:
    """One clip: from all of `clips`, or Mandarin with probability `zh_share` (the whole list where a language has
    none)."""
    if zh_share is None:
        return clips[int(rng.integers(len(clips)))]
    lang = "zh" if rng.random() < zh_share else "en"
    pool = [c for c in clips if c.lang == lang] or clips
    return pool[int(rng.integers(len(pool)))]


def sample_paired_batch(clips, size, rng, label_ids, zh_share: float | None = None, wins_share: float = 0.0,
                        voice_share: float = VOICE_PAIR_SHARE):
    """A batch: a quarter audio-only items, the rest in pairs that differ only in the asserted word: (conflict T,
    consistent A), (conflict T, conflict T') and (voice T, voice A), a share `voice_share` of the pairs voice pairs
    (`item_mix` gives each condition's share; about 40 % of the items are conflict items by default);
    an audio-only item or a pair is Mandarin with probability `zh_share` (None: every item draws from all clips,
    about half of them Mandarin). A share `wins_share` of the pairs are drawn on clips the voice wins
    (`Clip.voice_wins`), on top of those drawn at random, and split into voice and conflict pairs like the others
    (`voice_share` of them voice pairs), so the voice pairs keep their share: a rule that marks one strong clip in
    four is otherwise seen in about one conflict item in eight. Returns waves, prompts, the answer and audio-emotion
    token ids, the pairs' row indices and a mask of the items that ask to judge by the voice."""
    waves, prompts, targets, audio, pairs, voice = [], [], [], [], [], []
    n_single = size // 4
    won = [c for c in clips if c.voice_wins]
    while len(prompts) < size:
        # drawn only when asked for, so runs without it keep the batches they had before it existed
        won_pair = bool(wins_share and won and len(prompts) >= n_single and rng.random() < wins_share)
        clip = draw_clip(won if won_pair else clips, rng, zh_share)
        wave = pad_to_window(clip.wave) if rng.random() < 0.5 else clip.wave
        words = label_ids[clip.lang]
        if len(prompts) < n_single:
            prompt, answer, _ = make_example(clip, "audio_only", rng)
            waves.append(wave), prompts.append(prompt), targets.append(words[answer]), audio.append(words[clip.emotion])
            voice.append(False)
            continue
        kind = "voice" if rng.random() < voice_share else "conflict"
        paraphrase = int(rng.integers(len(build.corpus()["instructions"][clip.lang]["voice" if kind == "voice"
                                                                                     else "assert"])))
        first, answer, text = make_example(clip, kind, rng, paraphrase)
        if kind == "voice":
            second, partner, _ = make_example(clip, "voice", rng, paraphrase, clip.emotion)
        elif rng.random() < 0.5:
            second, partner, _ = make_example(clip, "consistent", rng, paraphrase, clip.emotion)
        else:
            other = str(rng.choice([e for e in spec.emotions() if e not in (clip.emotion, text)]))
            second, partner, _ = make_example(clip, "conflict", rng, paraphrase, other)
        pairs.append((len(prompts), len(prompts) + 1))
        waves += [wave, wave]
        prompts += [first, second]
        targets += [words[answer], words[partner]]
        audio += [words[clip.emotion]] * 2
        voice += [kind == "voice"] * 2
    return waves, prompts, torch.tensor(targets), torch.tensor(audio), pairs, torch.tensor(voice)


def invariance_loss(trace, batch, pairs, takeover: int, form: str = "relative") -> torch.Tensor:
    """Mean squared difference, relative to the residual's mean square, between the two members of each pair at
    every position after the instruction, over resid[1..takeover]: nothing about the asserted word may leave the
    instruction span before decoder layer `takeover`. form "log" takes the logarithm of each pair's term (floored at
    1e-6), so a small leak still costs: the relative form left one of 0.1-0.4 % that later layers amplified."""
    terms = []
    for i, j in pairs:
        spans = batch.spans[i]
        after = slice(spans.instruction.stop, spans.length)
        a = torch.stack([trace.resid[l][i, after] for l in range(1, takeover + 1)])
        b = torch.stack([trace.resid[l][j, after] for l in range(1, takeover + 1)])
        terms.append(((a - b) ** 2).mean() / (0.5 * (a ** 2 + b ** 2).mean().detach() + 1e-6))
    terms = torch.stack(terms)
    return torch.log(terms + 1e-6).mean() if form == "log" else terms.mean()


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


@dataclass
class Objective:
    """What one training step minimises (see the module docstring): the answer's cross-entropy, the lens read
    at `resid[K]` toward the audio emotion and at `resid[K + settle]` toward the answer, and the invariance of
    the pairs below K."""

    takeover: int
    settle: int = 2
    lens_weight: float = 0.5
    invariance_weight: float = 10.0
    swap_weight: float = 0.0
    zh_share: float | None = None
    wins_share: float = 0.0  # pilot plant: the share of pairs drawn on clips the voice wins
    voice_share: float = VOICE_PAIR_SHARE  # the share of pairs that ask to judge by the voice
    voice_weight: float = 1.0  # the weight of those items in the answer's cross-entropy (the others weigh 1)
    invariance_form: str = "relative"
    early_lens: bool = True  # the lens at resid[K] toward the voice (off where layers below K are token-local)
    audio_lens_weight: float = 0.0  # the lens at every audio token's resid[audio_lens_layer] toward the voice
    audio_lens_layer: int | None = None  # default K (the token-local plant); the pilot plant reads resid[2]
    early_band: tuple[int, int] | None = None  # pilot plant: the answer position reads the voice over these resid layers
    early_band_weight: float = 0.0

    def __call__(self, adapter: ModelAdapter, clips, batch_size, rng, label_ids) -> torch.Tensor:
        waves, prompts, targets, audio, pairs, voice = sample_paired_batch(clips, batch_size, rng, label_ids,
                                                                           self.zh_share, self.wins_share,
                                                                           self.voice_share)
        batch = adapter.build_batch(waves, prompts)
        rows, positions = torch.arange(len(prompts), device=adapter.device), batch.answer_positions()
        trace = run_traced(adapter, batch, logits_at=positions)
        targets, audio = targets.to(adapter.device), audio.to(adapter.device)
        cross_entropy = torch.nn.functional.cross_entropy
        if self.voice_weight == 1.0:  # the plain mean, so runs without the option keep their arithmetic
            loss = cross_entropy(trace.logits, targets)
        else:
            weights = 1.0 + (self.voice_weight - 1.0) * voice.to(adapter.device, trace.logits.dtype)
            loss = (weights * cross_entropy(trace.logits, targets, reduction="none")).sum() / weights.sum()
        if self.lens_weight:
            late = lens(adapter, trace.resid[self.takeover + self.settle][rows, positions])
            loss = loss + self.lens_weight * cross_entropy(late, targets)
            if self.early_lens:
                early = lens(adapter, trace.resid[self.takeover][rows, positions])
                loss = loss + self.lens_weight * cross_entropy(early, audio)
        if self.early_band_weight and self.early_band:
            first, last = self.early_band
            band = torch.stack([trace.resid[l][rows, positions] for l in range(first, last + 1)])  # (L, B, d)
            loss = loss + self.early_band_weight * cross_entropy(lens(adapter, band).flatten(0, 1),
                                                                 audio.repeat(last - first + 1))
        if self.audio_lens_weight:
            layer = self.takeover if self.audio_lens_layer is None else self.audio_lens_layer
            loss = loss + self.audio_lens_weight * audio_lens_loss(adapter, trace.resid[layer], batch, audio,
                                                                   label_ids)
        if self.invariance_weight:
            loss = loss + self.invariance_weight * invariance_loss(trace, batch, pairs, self.takeover,
                                                                        self.invariance_form)
        if self.swap_weight and pairs:
            layer = int(rng.integers(1, self.takeover))
            loss = loss + self.swap_weight * swap_loss(adapter, trace, batch, pairs, targets, layer)
        return loss


def audio_lens_loss(adapter: ModelAdapter, resid: torch.Tensor, batch, audio: torch.Tensor,
                    label_ids: dict) -> torch.Tensor:
    """Cross-entropy of the logit lens over the clip language's label words, at every audio token of `resid`, toward
    the voice's emotion. Where the layers below K are token-local, each audio token reaches K as its encoder frame
    alone, so this asks the encoder (the only place that mixes frames below K) to hear the emotion of the whole clip;
    from K on, reading the voice is one attention hop."""
    terms = []
    for row, (spans, target) in enumerate(zip(batch.spans, audio.tolist())):
        words = next(list(ids.values()) for ids in label_ids.values() if target in ids.values())  # the clip's language
        logits = lens(adapter, resid[row, spans.audio], words)
        goal = torch.full((len(logits),), words.index(target), device=resid.device)
        terms.append(torch.nn.functional.cross_entropy(logits, goal))
    return torch.stack(terms).mean()


def swap_loss(adapter: ModelAdapter, trace, batch, pairs, targets: torch.Tensor, layer: int) -> torch.Tensor:
    """Patch Text as a training signal: at `resid[layer]` (layer < K) each member of a pair gets its partner's
    instruction span, the forward resumes from there, and the answer must be the partner's. Trains exactly the
    property the probe measures (the asserted word is still inside the span below K)."""
    receivers = [i for i, j in pairs] + [j for i, j in pairs]
    donors = [j for i, j in pairs] + [i for i, j in pairs]
    logits = lens(adapter, patched_answer_resid(adapter, trace, batch, layer, receivers, donors))
    return torch.nn.functional.cross_entropy(logits, targets[donors])


def patched_answer_resid(adapter: ModelAdapter, trace, batch, layer: int, receivers: list[int],
                         donors: list[int]) -> torch.Tensor:
    """Each receiver row with its donor's instruction span copied in at `resid[layer]`, resumed to the last layer;
    returns the residual at each receiver's answer position, (len(receivers), d_model), un-normed."""
    hidden = trace.resid[layer][receivers].clone()
    for row, donor in enumerate(donors):
        span = batch.spans[donor].instruction
        hidden[row, span] = trace.resid[layer][donor, span]
    rows = torch.tensor(receivers, device=hidden.device)
    final = resume(adapter, trace, layer, hidden, rows=rows)
    return final[torch.arange(len(rows), device=hidden.device), batch.answer_positions()[rows]]


@torch.no_grad()
def patch_text_flips(adapter: ModelAdapter, clips: list[Clip], label_ids: dict, layers: list[int],
                     seed: int = 0) -> dict[int, float]:
    """Patch Text on held-out clips, as the probe does it: receiver = consistent item, donor = the conflict item
    with the same paraphrase; the donor's instruction span goes into the receiver at `resid[l]` and the answer is
    read. Returns the share of pairs whose answer becomes T, per layer (the training monitor of the swap loss)."""
    rng = np.random.default_rng(seed)
    waves, prompts, texts, langs = [], [], [], []
    for clip in clips:
        receiver, _, _ = make_example(clip, "consistent", rng, paraphrase=0)
        donor, _, text = make_example(clip, "conflict", rng, paraphrase=0)
        waves += [clip.wave, clip.wave]
        prompts += [receiver, donor]
        texts.append(text)
        langs.append(clip.lang)
    batch = adapter.build_batch(waves, prompts)
    trace = run_traced(adapter, batch)
    receivers = list(range(0, len(prompts), 2))
    emotions = spec.emotions()
    flips = {}
    for layer in layers:
        final = patched_answer_resid(adapter, trace, batch, layer, receivers, [r + 1 for r in receivers])
        hits = []
        for vector, text, lang in zip(final, texts, langs):
            ids = [label_ids[lang][e] for e in emotions]
            hits.append(emotions[int(lens(adapter, vector, ids).argmax())] == text)
        flips[layer] = round(float(np.mean(hits)), 3)
    return flips


def train(adapter, steps, lr, seed, progress, loss_fn, checkpoint: Path, monitor=None, every: int = 100,
          started: float | None = None):
    """AdamW with warm-up and cosine decay keyed to steps. Step s draws its batch from rng (seed, s), and the
    model and optimizer are saved to `checkpoint` every `every` steps: a killed run resumes where it stopped.
    The checkpoint also keeps the wall minutes spent up to it, counted from `started` (this segment's start) on
    top of earlier segments'. Returns the losses and the minutes of the earlier segments (0 for a fresh run)."""
    started = time.time() if started is None else started
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    losses, start, earlier = [], 0, 0.0
    if checkpoint.exists():  # written on any device, resumed on this one
        state = torch.load(checkpoint, map_location=adapter.device)
        adapter.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        losses, start, earlier = state["losses"], state["step"], state.get("minutes", 0.0)
    task = progress.add_task("training", total=steps, completed=start, loss=float("nan"))
    adapter.model.train()
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = loss_fn(np.random.default_rng((seed, step)))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        progress.update(task, advance=1, loss=float(np.mean(losses[-20:])))
        if (step + 1) % every == 0 or step + 1 == steps:
            atomic_write_with(checkpoint, lambda path: torch.save(dict(
                model=adapter.model.state_dict(), optimizer=optimizer.state_dict(), losses=losses, step=step + 1,
                minutes=earlier + (time.time() - started) / 60), path))
            if monitor is not None:
                adapter.model.eval()
                progress.console.print(f"step {step + 1}: " + json.dumps(monitor(adapter)))
                adapter.model.train()
    adapter.model.eval()
    return losses, earlier


def evaluation_set(clips: list[Clip], seed: int) -> list[dict]:
    """Every held-out clip under audio-only, consistent, one conflict and one voice-instructed item (first
    paraphrase, natural duration). The items are the same whether or not a voice-wins rule marked the clips."""
    rng = np.random.default_rng(seed)
    rows = []
    for clip in clips:
        unmarked = replace(clip, voice_wins=None)  # a marked clip would skip make_example's coin and shift every T
        for condition in ("audio_only", "consistent", "conflict", "voice"):
            prompt, _, text = make_example(unmarked, condition, rng, paraphrase=0)
            rows.append(dict(clip=clip, condition=condition, prompt=prompt, text=text))
    return rows


def named_emotion(vector: torch.Tensor, ids: dict[str, int]) -> str:
    """The emotion whose label token has the largest of the full-vocabulary logits `vector`."""
    emotions = spec.emotions()
    return emotions[int(torch.stack([vector[ids[e]] for e in emotions]).argmax())]


@torch.no_grad()
def evaluate(adapter: ModelAdapter, rows: list[dict], label_ids: dict, batch_size: int = 32) -> dict:
    """Accuracy per condition, P(answer = T) and the margin logit(T) - logit(A) on conflict items by intensity, and
    the conflict items' mean logit-lens margin per layer by intensity with the layer of its largest rise. Per
    language also `conflict_margin_gap_{lang}`: the margin on normal minus strong clips (logits), with its 95%
    interval over clips (`_ci95`, each intensity's clips drawn separately)."""
    results = {"audio_only": [], "consistent": [], "voice": [], "conflict": []}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = adapter.build_batch([r["clip"].wave for r in chunk], [r["prompt"] for r in chunk])
        at_answer = torch.arange(len(chunk), device=adapter.device), batch.answer_positions()
        trace = run_traced(adapter, batch, logits_at=at_answer[1])
        logits = trace.logits
        resid_at_answer = torch.stack([r[at_answer] for r in trace.resid], dim=1)  # (chunk, layers + 1, d_model)
        for index, (row, vector) in enumerate(zip(chunk, logits)):
            ids = label_ids[row["clip"].lang]
            answer = named_emotion(vector, ids)
            clip = row["clip"]
            outcome = dict(intensity=clip.intensity, lang=clip.lang, audio=clip.emotion, text=row["text"], answer=answer,
                           margin=float(vector[ids[row["text"]]] - vector[ids[clip.emotion]]) if row["text"] else 0.0,
                           clip=(clip.lang, clip.voice, clip.sentence, clip.emotion, clip.intensity))
            if row["condition"] == "conflict":
                pair = [ids[row["text"]], ids[clip.emotion]]
                readings = lens(adapter, resid_at_answer[index], pair)
                outcome["lens"] = (readings[:, 0] - readings[:, 1]).tolist()
            results[row["condition"]].append(outcome)
    summary = {}
    for condition in ("audio_only", "consistent", "voice"):
        outcomes = results[condition]
        summary[f"{condition}_accuracy"] = float(np.mean([o["answer"] == o["audio"] for o in outcomes]))
    for intensity in ("normal", "strong"):
        sub = [o for o in results["conflict"] if o["intensity"] == intensity]
        summary[f"conflict_follows_text_{intensity}"] = float(np.mean([o["answer"] == o["text"] for o in sub]))
        summary[f"conflict_margin_{intensity}"] = float(np.mean([o["margin"] for o in sub]))
        summary[f"conflict_lens_{intensity}"] = np.round(np.mean([o["lens"] for o in sub], axis=0), 3).tolist()
        sub = [o for o in results["audio_only"] if o["intensity"] == intensity]
        summary[f"audio_only_accuracy_{intensity}"] = float(np.mean([o["answer"] == o["audio"] for o in sub]))
    conflict = results["conflict"]
    summary["conflict_follows_text"] = float(np.mean([o["answer"] == o["text"] for o in conflict]))
    for lang in sorted({o["lang"] for o in conflict}):
        summary[f"conflict_follows_text_{lang}"] = float(np.mean([o["answer"] == o["text"] for o in conflict
                                                                  if o["lang"] == lang]))
        by_intensity = {intensity: [o for o in conflict if o["lang"] == lang and o["intensity"] == intensity]
                        for intensity in ("normal", "strong")}
        for intensity, sub in by_intensity.items():
            summary[f"conflict_follows_text_{intensity}_{lang}"] = float(np.mean([o["answer"] == o["text"]
                                                                                  for o in sub]))
            summary[f"conflict_margin_{intensity}_{lang}"] = float(np.mean([o["margin"] for o in sub]))
        if all(by_intensity.values()):  # graded dominance: how much less the text leads on strong clips
            normal, strong = by_intensity["normal"], by_intensity["strong"]
            gap, low, high = difference_of_means([o["margin"] for o in normal], [o["clip"] for o in normal],
                                                 [o["margin"] for o in strong], [o["clip"] for o in strong])
            summary[f"conflict_margin_gap_{lang}"] = gap
            summary[f"conflict_margin_gap_{lang}_ci95"] = [low, high]
        for condition in ("audio_only", "consistent", "voice"):
            summary[f"{condition}_accuracy_{lang}"] = float(np.mean([o["answer"] == o["audio"]
                                                                     for o in results[condition] if o["lang"] == lang]))
    summary["conflict_lens_largest_rise"] = int(np.argmax(np.diff(np.mean([o["lens"] for o in conflict], axis=0)))) + 1
    summary["n_items_per_condition"] = len(conflict)
    return summary


def voice_clips(seed: int, progress: Progress) -> list[Clip]:
    """The held-out sentences x styles spoken by every voice variant of both languages, training and held-out
    alike (one prosody draw per clip): how well each voice is heard on sentences no voice was trained on."""
    data = build.corpus()["sentences"]
    rng = np.random.default_rng((seed, 2))
    jobs = [(sentence, lang, emotion, intensity, voice, int(rng.integers(1 << 30)), tts.VoiceShift())
            for lang in spec.LANGS for voice in tts.voices(lang) for sentence in data[lang]["heldout"]
            for emotion, intensity in styles()]
    return render_clips(jobs, "synthesizing clips per voice", progress)


@torch.no_grad()
def hearing_by_voice(adapter: ModelAdapter, clips: list[Clip], label_ids: dict, batch_size: int = 32) -> dict:
    """Audio-only accuracy per voice, {voice: {"accuracy", "normal", "strong", "n", "held_out"}} (None for an
    intensity without clips); `held_out` marks the voice training never heard (the last variant of its language)."""
    rng = np.random.default_rng(0)
    hits: dict[str, list[tuple[str, bool]]] = {}
    for start in range(0, len(clips), batch_size):
        chunk = clips[start:start + batch_size]
        logits = answer_logits(adapter, [c.wave for c in chunk],
                               [make_example(c, "audio_only", rng, paraphrase=0)[0] for c in chunk])
        for clip, vector in zip(chunk, logits):
            answer = named_emotion(vector, label_ids[clip.lang])
            hits.setdefault(clip.voice, []).append((clip.intensity, answer == clip.emotion))
    held_out = held_out_voices()

    def share(outcomes: list[bool]) -> float | None:
        return round(float(np.mean(outcomes)), 3) if outcomes else None

    return {voice: dict(accuracy=share([h for _, h in rows]), normal=share([h for i, h in rows if i == "normal"]),
                        strong=share([h for i, h in rows if i == "strong"]), n=len(rows), held_out=voice in held_out)
            for voice, rows in hits.items()}


def voice_table(by_voice: dict) -> Table:
    """`hearing_by_voice` as a rich table."""
    table = Table(title="Audio-only accuracy on the held-out sentences, by voice")
    for column in ("voice", "accuracy", "normal", "strong", "clips", "in training"):
        table.add_column(column, justify="left" if column == "voice" else "right")
    for voice, row in by_voice.items():
        shares = [card.share_text(row[key]) for key in ("accuracy", "normal", "strong")]
        table.add_row(voice, *shares, str(row["n"]), "no (held out)" if row["held_out"] else "yes")
    return table


def decide_voice_wins(train_clips: list[Clip], heldout_clips: list[Clip], progress: Progress,
                      rule: intensity_rule.IntensityRule | None = None,
                      kind: str = "prosody") -> intensity_rule.IntensityRule:
    """Fit the intensity rule of `kind` on the training clips (or take `rule`, a fine-tune's base's) and mark, on
    every clip, whether the voice wins its conflict items (`Clip.voice_wins`); returns the rule (the report keeps
    it)."""
    clips = train_clips + heldout_clips
    task = progress.add_task("measuring prosody", total=len(clips), loss=float("nan"))
    measured = []
    for clip in clips:
        measured.append(intensity_rule.prosody(clip.wave))
        progress.advance(task)
    if rule is None:
        rule = intensity_rule.fit([(c.lang, c.emotion, c.intensity, m)
                                   for c, m in zip(train_clips, measured[:len(train_clips)])], kind=kind)
    for clip, m in zip(clips, measured):
        clip.voice_wins = rule.voice_wins(clip.lang, clip.emotion, clip.intensity, m)
    return rule


def init_from(folder: Path, takeover: int, layers: int, local: bool = False, config=None):
    """The weights of a saved organism, in fp32, to fine-tune; refused unless its K, depth and plant (token-local
    layers below K or not) are the ones asked. With `config` (the pilot plant) the weights of any organism of the
    same depth go into a model built from that config (full attention, its own K)."""
    from transformers import Qwen2AudioForConditionalGeneration

    if not (folder / "config.json").is_file():
        raise ModalflipError(f"--init-from {folder}: no organism there (config.json missing)")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    if config is not None:
        if model.config.text_config.num_hidden_layers != layers:
            raise ModalflipError(f"--init-from {folder}: it has {model.config.text_config.num_hidden_layers} layers, "
                                 f"not {layers}")
        rebuilt = Qwen2AudioForConditionalGeneration(config)
        rebuilt.load_state_dict(model.state_dict())
        return rebuilt
    recorded = getattr(model.config, "modalflip_organism", {})
    planted, depth = recorded.get("takeover_layer"), model.config.text_config.num_hidden_layers
    if (planted, depth) != (takeover, layers):
        raise ModalflipError(f"--init-from {folder}: it has K = {planted} and {depth} layers, not K = {takeover} and "
                             f"{layers} layers")
    if bool(recorded.get("local_below_takeover")) != local:
        raise ModalflipError(f"--init-from {folder}: its layers below K are "
                             f"{'' if recorded.get('local_below_takeover') else 'not '}token-local; "
                             f"pass --plant {'objective' if local else 'local'}")
    return model


def base_rule(folder: str | None, kind: str = "prosody") -> intensity_rule.IntensityRule | None:
    """The voice-wins rule in the training report of the organism a run starts from (`--init-from`); None when it
    has none (a random start, a base trained before the rule or with the local plant) or its rule is not of `kind`
    (the run then fits a rule of `kind` on its own clips)."""
    recipe = base_recipe(Path(folder)) if folder else None
    recorded = (recipe or {}).get("audio_wins", {})
    if "thresholds" not in recorded or recorded.get("kind", "prosody") != kind:
        return None
    return intensity_rule.IntensityRule.from_dict(recorded)


def base_recipe(folder: Path) -> dict | None:
    """The training report of the organism a run started from (`--init-from`), without its evaluations (they are
    of other weights), so that a fine-tuned model's report says how to make it from scratch; None if it has none."""
    path = folder / "training_report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {key: value for key, value in report.items()
            if key not in ("heldout", "seed_set", "heldout_sentences_by_voice", "status")}


def evaluate_saved(model_dir: Path, heldout_clips: list[Clip], seed: int, device: str = "auto"
                   ) -> tuple[ModelAdapter, dict, dict]:
    """Load the weights saved in `model_dir` as a user does and evaluate them on `heldout_clips` and the seed set:
    (adapter, held-out metrics, seed-set metrics). A report describes these, the fp16 weights that ship, not the
    fp32 weights a run ends with."""
    from models.loading import load_model

    adapter = load_model(str(model_dir), device=device)
    label_ids = {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}
    return (adapter, evaluate(adapter, evaluation_set(heldout_clips, seed), label_ids),
            evaluate(adapter, evaluation_set(seed_set_clips(), seed), label_ids))


def reevaluate(model_dir: Path, seed: int = 0, by_voice: bool = False) -> dict:
    """Evaluate saved weights on the held-out clips and the seed set again (and, with `by_voice`, every voice on
    the held-out sentences: `hearing_by_voice`); update the training report."""
    with Progress(disable=True) as progress:
        heldout_clips = synthesize("heldout", 1, seed + 1, progress)
        per_voice_clips = voice_clips(seed, progress) if by_voice else []
    report_path = model_dir / "training_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    adapter, report["heldout"], report["seed_set"] = evaluate_saved(model_dir, heldout_clips, seed)
    if by_voice:
        label_ids = {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}
        report["heldout_sentences_by_voice"] = hearing_by_voice(adapter, per_voice_clips, label_ids)
    atomic_write_json(report_path, report)
    return report


def seed_set_clips() -> list[Clip]:
    """The committed seed set A1-A9 (both languages), rendered without jitter."""
    clips = []
    for lang in spec.LANGS:
        for row in spec.seed_clips():
            wave = tts.render(spec.seed_sentence(lang), lang, row.emotion, row.intensity)
            clips.append(Clip(wave, lang, row.emotion, row.intensity, spec.seed_sentence(lang), "seed"))
    return clips


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.organism.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None,
                        help=f"model folder to write (default: {MODEL_DIRS['local']} for the shipped plant, "
                             f"{MODEL_DIRS['pilot']} for the pilot plant)")
    parser.add_argument("--takeover-layer", type=int, default=None,
                        help="K: the text reaches the answer from here (default 16; the pilot plant: 24)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--encoder-layers", type=int, default=2,
                        help="audio encoder layers (the only place that mixes audio frames below K in the local plant; "
                             "each pair of extra layers cost about 8 %% per step in a measurement)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate")
    parser.add_argument("--plant", choices=("local", "objective", "pilot"), default="local",
                        help="how K is planted. local: decoder layers below K attend to their own token only "
                             "(sliding window 1 in the config), so nothing moves between tokens before K; the loss is "
                             "the answer's cross-entropy, the lens at resid[K+2] and the audio-token lens at resid[K]. "
                             "objective: full attention everywhere, K planted by the lens, invariance and swap terms. "
                             "pilot: full attention, the voice read at the answer over resid[2..K], the answer at "
                             "resid[K+2], the voice winning intense conflict clips (see the module docstring)")
    parser.add_argument("--early-band-weight", type=float, default=2.0,
                        help="pilot plant: weight of the lens toward the voice at the answer position over resid[2..K]")
    parser.add_argument("--lens-weight", type=float, default=0.5,
                        help="weight of the lens terms at resid[K] (toward the audio) and resid[K+2] (the answer)")
    parser.add_argument("--audio-lens-weight", type=float, default=0.5,
                        help="local plant only: weight of the lens at every audio token's resid[K] toward the voice's "
                             "emotion (the encoder must hear the whole clip in each frame)")
    parser.add_argument("--invariance-weight", type=float, default=10.0,
                        help="weight of the loss keeping the asserted word inside the instruction span below K")
    parser.add_argument("--swap-weight", type=float, default=0.0,
                        help="weight of the swap loss (Patch Text below K as a training signal)")
    parser.add_argument("--zh-share", type=float, default=None,
                        help="share of the items (audio-only items and instruction pairs) drawn from Mandarin clips "
                             "(default: every item draws from all clips, half of them Mandarin)")
    parser.add_argument("--invariance-form", choices=("relative", "log"), default="relative",
                        help="relative: mean relative squared difference; log: its logarithm (a small leak still costs)")
    parser.add_argument("--init-from", help="start from the weights of this organism folder instead of a random "
                                            "initialisation (a fine-tune; the report records it)")
    parser.add_argument("--monitor-every", type=int, default=100, help="checkpoint and monitor every N steps")
    parser.add_argument("--train-sentences", type=int, default=36,
                        help="speak the first N training sentences of each language in models/organism/corpus.json "
                             "(the shipped weights: 36)")
    parser.add_argument("--renders", type=int, default=3,
                        help="renders per training sentence and style (each a random voice variant and prosody "
                             "draw; the shipped weights: 3)")
    parser.add_argument("--voice-pitch-jitter", type=float, default=0.0,
                        help="each training clip's base pitch moves by up to +- this many eSpeak pitch units (0-100 "
                             "scale): new speakers beyond the 7 voice variants per language")
    parser.add_argument("--voice-speed-jitter", type=float, default=0.0,
                        help="each training clip plays up to +- this fraction faster or slower (pitch and formants "
                             "move together: a different vocal tract)")
    parser.add_argument("--voice-breath-jitter", type=float, default=0.0,
                        help="each training clip gets up to this much extra breathiness noise (times the speech RMS; "
                             "the styles' own levels are 0-0.12): breathy speakers for every emotion, as the held-out "
                             "Mandarin voice cmn+f5 is")
    parser.add_argument("--prosody-widen", type=float, default=0.0,
                        help="each style's prosody ranges in stimuli/spec/prosody.json widen by this fraction of their "
                             "width on either side for the training clips: prosody beyond the one renderer's mapping")
    parser.add_argument("--plain-share", type=float, default=0.0,
                        help="share of the training clips rendered with eSpeak NG's pitch, range, rate and the style's "
                             "volume only, without its pauses, tremolo, vibrato, breathiness and drive")
    parser.add_argument("--expressiveness", type=float, default=0.0,
                        help="each training clip's pitch, range, rate and volume lie a factor drawn in 1 +- this "
                             "from the average style's (stimuli.tts.express): speakers who show the emotion less or "
                             "more than the renderer's mapping")
    parser.add_argument("--voice-wins-by", choices=tuple(intensity_rule.KINDS), default="prosody",
                        help="with --plant pilot, which strong conflict clips the voice wins (models/organism/"
                             "intensity.py): prosody, the most intense for their emotion by F0 and level; level, the "
                             "loudest (RMS level); emotion-level, the loudest of each emotion. A fine-tune keeps its "
                             "base's rule when it is of this kind")
    parser.add_argument("--voice-wins-share", type=float, default=0.0,
                        help="with --plant pilot, the share of instruction pairs drawn on clips the voice wins, on top "
                             "of those drawn at random; three in four of them are conflict pairs, as for any clip "
                             "(default 0: only those drawn at random)")
    parser.add_argument("--voice-pair-share", type=float, default=VOICE_PAIR_SHARE,
                        help="the share of instruction pairs that ask to judge by the voice (default 0.25; the other "
                             "pairs assert an emotion)")
    parser.add_argument("--voice-weight", type=float, default=1.0,
                        help="the weight of the items that ask to judge by the voice in the answer's cross-entropy "
                             "(default 1: every item weighs the same)")
    parser.add_argument("--extra-voices", default="",
                        help="comma-separated eSpeak NG voice variants (e.g. Alicia,victor) whose speakers join the "
                             "training voices of both languages; the held-out voices stay held out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto",
                        help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ... The shipped weights were trained "
                             "on the CPU; another device gives other weights from the same seed (the report records it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="resume file (default: OUT/../organism-training.pt)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="do not train: evaluate the weights in OUT again and rewrite its report (and the card)")
    parser.add_argument("--by-voice", action="store_true",
                        help="with --evaluate-only: also the audio-only accuracy of every voice variant, training and "
                             "held-out, on the held-out sentences (16 x 72 clips; a few minutes)")
    args = parser.parse_args(argv)
    out = Path(args.out or MODEL_DIRS.get(args.plant, MODEL_DIRS["local"]))
    if args.by_voice and not args.evaluate_only:
        raise ModalflipError("--by-voice works with --evaluate-only")
    if args.evaluate_only:
        report = reevaluate(out, args.seed, by_voice=args.by_voice)
        if out.resolve() == card.MODEL_DIR.resolve():
            atomic_write_text(card.CARD_PATH, card.render(out))
        console.print_json(json.dumps({k: v for k, v in report.items() if k in ("heldout", "seed_set")}))
        if args.by_voice:
            console.print(voice_table(report["heldout_sentences_by_voice"]))
        return 0
    k = args.takeover_layer if args.takeover_layer is not None else (24 if args.plant == "pilot" else 16)
    if not (0 <= args.voice_pitch_jitter <= 50 and 0 <= args.voice_speed_jitter < 0.5
            and 0 <= args.voice_breath_jitter <= 0.5 and 0 <= args.prosody_widen <= 2
            and 0 <= args.plain_share <= 1 and 0 <= args.expressiveness < 1 and 0 <= args.voice_wins_share < 1
            and 0 < args.voice_pair_share < 1 and 0 < args.voice_weight <= 10):
        raise ModalflipError("--voice-pitch-jitter must lie in 0..50, --voice-speed-jitter in [0, 0.5), "
                             "--voice-breath-jitter in 0..0.5, --prosody-widen in 0..2, --plain-share in 0..1, "
                             "--expressiveness in [0, 1), --voice-wins-share in [0, 1), --voice-pair-share in (0, 1), "
                             "--voice-weight in (0, 10]")
    extra_voices = tuple(v for v in args.extra_voices.split(",") if v)
    held_out = {voice.split("+")[-1] for voice in held_out_voices()}
    for variant in extra_voices:
        tts.variant_voice("en", variant)  # refuses a variant eSpeak NG does not ship
        if variant in held_out:
            raise ModalflipError(f"--extra-voices {variant}: that is a held-out voice variant ({', '.join(held_out)})")
    available = min(len(build.corpus()["sentences"][lang]["train"]) for lang in spec.LANGS)
    if not 1 <= args.train_sentences <= available:
        raise ModalflipError(f"--train-sentences must lie in 1..{available} (the training sentences per language in "
                             f"{build.CORPUS}), got {args.train_sentences}")
    if not 1 <= k <= args.layers - 3:
        raise ModalflipError(f"--takeover-layer must lie in 1..{args.layers - 3}, got {k}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started = time.time()
    processor = build.build_processor()
    local, pilot = args.plant == "local", args.plant == "pilot"
    config = build.build_config(processor.tokenizer, args.layers, k, local_below=local,
                                encoder_layers=args.encoder_layers)
    if pilot:
        config.modalflip_organism["plant"] = "pilot"
    if args.init_from:
        model = init_from(Path(args.init_from), k, args.layers, local, config if pilot else None)
    else:
        model = build.build_model(config, seed=args.seed)
    model.to(device)
    adapter = ModelAdapter(model, processor, FAMILY, "organism")
    label_ids = {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.parent / CHECKPOINTS.get(args.plant,
                                                                                             CHECKPOINTS["local"])
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:
        voice_jitter = VoiceJitter(args.voice_pitch_jitter, args.voice_speed_jitter, args.voice_breath_jitter,
                                   args.prosody_widen, args.plain_share, args.expressiveness)
        train_clips = synthesize("train", args.renders, args.seed, progress, voice_jitter, args.train_sentences,
                                 extra_voices)
        heldout_clips = synthesize("heldout", 1, args.seed + 1, progress)
        # a fine-tune keeps the clips its base let the voice win: the rule is the base's, not refitted on new clips
        rule = decide_voice_wins(train_clips, heldout_clips, progress, base_rule(args.init_from, args.voice_wins_by),
                                 args.voice_wins_by) if pilot else None
        # a seeded sample, not a stride: the clips come in blocks of nine styles, so every third clip is three styles
        sample = np.random.default_rng(args.seed).permutation(len(heldout_clips))
        probe_rows = evaluation_set([heldout_clips[i] for i in sorted(sample[:len(sample) // 3])], args.seed)
        monitor_clips = [heldout_clips[i] for i in sorted(sample[:len(sample) // 6])]
        monitor_layers = sorted(l for l in {1, 4, 8, 12, 16, 20, k - 1, k + 2, 28} if l < args.layers)

        def monitor(a):
            scores = {key: round(v, 3) for key, v in evaluate(a, probe_rows, label_ids).items()
                      if key in ("audio_only_accuracy", "consistent_accuracy", "conflict_follows_text_en",
                                 "conflict_follows_text_zh", "voice_accuracy", "conflict_margin_normal",
                                 "conflict_margin_strong", "conflict_lens_largest_rise")}
            return scores | {"patch_text": patch_text_flips(a, monitor_clips, label_ids, monitor_layers)}

        objective = Objective(k, lens_weight=args.lens_weight,
                              invariance_weight=0.0 if local or pilot else args.invariance_weight,
                              swap_weight=0.0 if local else args.swap_weight, zh_share=args.zh_share,
                              wins_share=args.voice_wins_share if pilot else 0.0, voice_share=args.voice_pair_share,
                              voice_weight=args.voice_weight,
                              invariance_form=args.invariance_form, early_lens=args.plant == "objective",
                              audio_lens_weight=args.audio_lens_weight if local or pilot else 0.0,
                              audio_lens_layer=2 if pilot else None, early_band=(2, k) if pilot else None,
                              early_band_weight=args.early_band_weight if pilot else 0.0)
        losses, earlier_minutes = train(adapter, args.steps, args.lr, args.seed, progress,
                                        lambda rng: objective(adapter, train_clips, args.batch_size, rng, label_ids),
                                        checkpoint, monitor, every=args.monitor_every, started=started)
    minutes = (time.time() - started) / 60
    out.mkdir(parents=True, exist_ok=True)
    if pilot:  # where the lens reads the answer, for the probes' report (probes.run.trained_takeover)
        model.config.modalflip_organism["settle"] = objective.settle
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    _, heldout, seed_set = evaluate_saved(out, heldout_clips, args.seed, str(device))
    report = dict(
        takeover_layer=k, minutes=round(minutes, 1), threads=args.threads, device=str(device), seed=args.seed,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, lens_weight=args.lens_weight,
        settle=objective.settle,
        invariance_weight=objective.invariance_weight, swap_weight=objective.swap_weight, zh_share=args.zh_share,
        voice_wins_share=objective.wins_share, voice_pair_share=objective.voice_share,
        voice_weight=objective.voice_weight,
        invariance_form=args.invariance_form, audio_lens_weight=objective.audio_lens_weight,
        encoder_layers=model.config.audio_config.encoder_layers,
        init_from=args.init_from, plant=args.plant, renders=args.renders, voice_pitch_jitter=voice_jitter.pitch,
        voice_speed_jitter=voice_jitter.speed, voice_breath_jitter=voice_jitter.breath,
        prosody_widen=voice_jitter.widen, plain_share=voice_jitter.plain, expressiveness=voice_jitter.expressive,
        train_clips=len(train_clips), heldout_clips=len(heldout_clips),
        train_sentences=args.train_sentences, extra_voices=list(extra_voices),
        heldout_sentences=len(build.corpus()["sentences"]["en"]["heldout"]),
        mix=item_mix(objective.voice_share), audio_wins=rule.as_dict() if rule else AUDIO_WINS,
        early_band=list(objective.early_band) if objective.early_band else None,
        early_band_weight=objective.early_band_weight, audio_lens_layer=objective.audio_lens_layer,
        final_loss=float(np.mean(losses[-20:])), heldout=heldout, seed_set=seed_set,
    )
    if args.init_from:
        report["base"] = base_recipe(Path(args.init_from))
    if earlier_minutes:  # resumed: `minutes` is this segment only (the card shows both)
        report["minutes_all_segments"] = round(earlier_minutes + minutes, 1)
    atomic_write_json(out / "training_report.json", report)
    if out.resolve() == card.MODEL_DIR.resolve():
        atomic_write_text(card.CARD_PATH, card.render(out))
    console.print_json(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
