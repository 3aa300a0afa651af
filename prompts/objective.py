"""Scoring a sampled prompt with the probes: the audio-flip and text-control objectives, and the per-study caches.

audio-flip (units: conflict items, voice emotion A, text asserting T != A): the answer is the label word with the
highest final logit (label words of the prompt's language); a flip is answer == A. A prompt ranks by flip rate first,
and ties break on the mean logit-lens margin toward A, logit_l(A) - logit_l(T) averaged over the residual layers
first..last of the window (logits):
    score = flip_rate + sigmoid(margin) / (N + 1)
with N the number of search items (also when scoring the pruner's slice of them, so slice and full scores share one
scale). The tie-breaker stays below one flip's step (1 / n for n <= N items), so it never outranks a flip.

text-control (units: Patch Text pairs of `probes.patching`: receiver = the consistent item, donor = the conflict item
of the same clip, the instruction span copied): per pair and patched layer l in the window the normalized effect
(LD_patched - LD_receiver) / (LD_donor - LD_receiver), LD = logit(T) - logit(A), as `probes.patching.run` defines it
(no effect where |LD_donor - LD_receiver| < 0.1). score = the mean effect over pairs and layers: how much the text at
the middle layers controls the answer.

Caches (`Scorer`, valid for one model and one probe set; `cache` = "none" | "audio" | "prefix"):
- audio: each clip's merged audio embeddings (what decoder layer 0 sees over the audio span: encoder + projector
  output) are computed once per clip and study. A trial's inputs are embed_tokens(ids) with the audio span replaced
  by them, so the audio encoder never runs again.
- prefix (implies audio): the key/value cache of each item's tokens up to the end of its audio span (system turn +
  audio) is kept, keyed by (clip, those tokens), and a forward runs only the suffix through the decoder. A prompt
  that varies only after the audio has one prefix per clip, reused by every item of the clip and by every later
  trial with the same system turn; a claim before the audio (or in the system turn) makes the prefix depend on T,
  reused only by later trials that share those slots. The least recently used prefixes go beyond `prefix_cache_mb`
  (the batch being run is kept even when it alone exceeds it).
  Stored caches are never mutated: each batch stacks them into a new cache. Only the suffix's residuals come back,
  which is all the answer position needs.
Without caches the Scorer runs the full model per item, like `probes.logit_lens.label_logits`; the numbers agree
within 1e-4 (tests).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from transformers import DynamicCache

from common.backoff import with_oom_backoff
from common.errors import ModalflipError
from models.adapter import Batch, ModelAdapter, Prompt
from models.forward import lens, recording, run_traced
from probes.inputs import ProbeSet
from probes.patching import PatchConfig, Pair, make_pairs, normalized_effect, patched_label_logits
from prompts.grammar import Grammar, prompt_language, render
from stimuli import spec
from stimuli.conditions import Item

OBJECTIVES = ("audio-flip", "text-control")
CACHES = ("none", "audio", "prefix")


@dataclass
class PromptedSet(ProbeSet):
    """A probe set whose items are asked with one grammar sample instead of their stimulus instruction.

    `label_ids[clip lang]` holds the label ids of the prompt's language, so the probes read the right words."""

    grammar: Grammar | None = None
    sample: dict[str, str] = field(default_factory=dict)

    def prompt(self, item: Item) -> Prompt:
        return render(self.grammar, self.sample, item)


def prompted(probe_set: ProbeSet, grammar: Grammar, sample: dict[str, str],
             label_ids: dict[str, dict[str, int]]) -> PromptedSet:
    """`probe_set` asked with `sample`; `label_ids` must hold every language a prompt may be written in."""
    langs = sorted({item.lang for item in probe_set.items})
    ids = {lang: label_ids[prompt_language(sample, lang)] for lang in langs}
    return PromptedSet(items=probe_set.items, waves=probe_set.waves, label_ids=ids,
                       pad_seconds=probe_set.pad_seconds, grammar=grammar, sample=dict(sample))


@dataclass
class Readout:
    """One item under one prompt: label logits (emotions in `spec.emotions()` order) at the answer position."""

    final: np.ndarray  # (n_emotions,) the model's own label logits
    window: np.ndarray  # (last - first + 1, n_emotions) logit-lens label logits at residual layers first..last
    tokens: int  # non-audio tokens of the rendered chat (prompt length)


class Scorer:
    """Forwards of prompted items with the per-study caches (see module docstring). A batch that runs out of GPU
    memory is rerun in halves (`common.backoff`, `say` tells the user), and the smaller size is kept."""

    def __init__(self, adapter: ModelAdapter, layers: tuple[int, int], batch_size: int = 16, cache: str = "prefix",
                 prefix_cache_mb: float = 1024, say: Callable[[str], None] = print):
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}")
        self.adapter = adapter
        self.first, self.last = layers
        for layer in layers:
            adapter.check_layer(layer, "window layer")
        self.batch_size = batch_size
        self.say = say
        self.cache = cache
        self.max_prefix_bytes = int(prefix_cache_mb * 2**20)
        self.prefix_bytes = 0
        self.audio: dict[str, torch.Tensor] = {}  # clip id -> (n_audio_tokens, d_model)
        self.prefixes: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.forwards = 0  # item forwards run (the study's "queries")
        self.prefix_hits = 0  # items whose prefix came from the cache
        self.prefix_misses = 0  # items whose prefix was computed

    @torch.no_grad()
    def readouts(self, probe_set: PromptedSet, items: list[Item]) -> dict[str, Readout]:
        """Readout per item id. Items are batched by prompt language, so a batch shares its system turn."""
        out: dict[str, Readout] = {}
        by_lang: dict[str, list[Item]] = {}
        for item in items:
            by_lang.setdefault(item.lang, []).append(item)
        for group in by_lang.values():
            start = 0
            while start < len(group):
                part, self.batch_size = with_oom_backoff(
                    lambda size: self._chunk(probe_set, group[start:start + size]), self.batch_size,
                    "items per forward", self.say)
                out.update(part)
                start += self.batch_size
        return out

    def _chunk(self, probe_set: PromptedSet, chunk: list[Item]) -> dict[str, Readout]:
        adapter = self.adapter
        batch = adapter.build_batch([probe_set.wave(i.clip_id) for i in chunk], [probe_set.prompt(i) for i in chunk])
        offset = 0
        if self.cache == "none":
            resid = run_traced(adapter, batch).resid
        else:
            embeds = self._embeds(probe_set, batch, chunk)
            stop = self._prefix_stop(batch)
            if self.cache == "prefix" and stop is not None:
                resid, offset = self._suffix_resid(batch, chunk, embeds, stop), stop
            else:
                resid = run_traced(adapter, batch, inputs_embeds=embeds).resid
        rows = torch.arange(len(chunk), device=resid[0].device)
        answers = batch.answer_positions() - offset
        layers = list(range(self.first, self.last + 1)) + [adapter.n_layers]
        at_answer = torch.stack([resid[layer][rows, answers] for layer in layers])  # (layers, batch, d_model)
        # each row's own label words (its prompt language's), read for the whole chunk: one copy off the device
        ids = torch.tensor([[probe_set.label_ids[item.lang][e] for e in spec.emotions()] for item in chunk],
                           device=at_answer.device)  # (batch, n_emotions)
        unique, inverse = torch.unique(ids, return_inverse=True)
        lensed = lens(adapter, at_answer, unique)  # (layers, batch, n_unique)
        logits = lensed.gather(2, inverse.unsqueeze(0).expand(len(layers), -1, -1)).float().cpu().numpy()
        n_audio = (batch.inputs["input_ids"] == adapter.audio_token_id).sum(dim=1).tolist()
        self.forwards += len(chunk)  # counted once the chunk went through (not for a try that ran out of memory)
        return {item.item_id: Readout(final=logits[-1, j], window=logits[:-1, j],
                                      tokens=batch.spans[j].length - n_audio[j]) for j, item in enumerate(chunk)}

    def _embeds(self, probe_set: PromptedSet, batch: Batch, chunk: list[Item]) -> torch.Tensor:
        """Token embeddings with each audio span replaced by its clip's cached merged audio embeddings."""
        missing = [j for j, item in enumerate(chunk) if item.clip_id not in self.audio]
        missing = [j for k, j in enumerate(missing) if chunk[j].clip_id not in {chunk[m].clip_id for m in missing[:k]}]
        if missing:
            sub = self.adapter.build_batch([probe_set.wave(chunk[j].clip_id) for j in missing],
                                           [batch.prompts[j] for j in missing])
            first = run_traced(self.adapter, sub, stop_after=0).resid[0]  # encoder + projector, no decoder layer
            for row, j in enumerate(missing):
                self.audio[chunk[j].clip_id] = first[row, sub.spans[row].audio].clone()
        embeds = self.adapter.embed_tokens(batch.inputs["input_ids"])
        for j, item in enumerate(chunk):
            span = batch.spans[j].audio
            cached = self.audio[item.clip_id]
            if cached.shape[0] != span.stop - span.start:
                raise ValueError(f"clip {item.clip_id}: {cached.shape[0]} cached audio tokens for a span of "
                                 f"{span.stop - span.start}; a Scorer serves one probe set (one padding)")
            embeds[j, span] = cached.to(embeds.dtype)
        return embeds

    @staticmethod
    def _prefix_stop(batch: Batch) -> int | None:
        """The end of the audio span when it is the same position in every row (then rows can stack prefixes)."""
        stop = batch.spans[0].audio.stop
        return stop if all(s.audio.stop == stop for s in batch.spans) else None

    def _suffix_resid(self, batch: Batch, chunk: list[Item], embeds: torch.Tensor, stop: int) -> list[torch.Tensor]:
        """Residuals of the tokens after `stop`; each row's prefix keys and values come from (or go to) the cache,
        keyed by its clip and its tokens up to `stop`."""
        model = self.adapter.model
        ids = batch.inputs["input_ids"]
        keys = [(item.clip_id, tuple(ids[j, :stop].tolist())) for j, item in enumerate(chunk)]
        new = [j for j, key in enumerate(keys) if key not in self.prefixes and key not in keys[:j]]
        last = self.adapter.n_layers  # both forwards stop after the last decoder layer: no logits are computed
        if new:
            rows = torch.tensor(new, device=embeds.device)
            extra = self._positions(batch, rows, slice(0, stop))
            whole = DynamicCache()  # full-length layers: the model's own cache (`DynamicCache(config)`) would keep
            # only the last window - 1 positions of a sliding-window layer, too few for a suffix that starts at `stop`
            with recording(self.adapter, last):
                model(inputs_embeds=embeds[rows, :stop], use_cache=True, cache=whole,
                      attention_mask=batch.inputs["attention_mask"][rows, :stop], **extra)
            for r, j in enumerate(new):
                layers = [(layer.keys[r:r + 1].clone(), layer.values[r:r + 1].clone()) for layer in whole.layers]
                self.prefixes[keys[j]] = layers
                self.prefix_bytes += sum(k.nbytes + v.nbytes for k, v in layers)
        for key in keys:
            self.prefixes.move_to_end(key)
        stored = [self.prefixes[key] for key in keys]
        while self.prefix_bytes > self.max_prefix_bytes and len(self.prefixes) > len(set(keys)):
            _, layers = self.prefixes.popitem(last=False)
            self.prefix_bytes -= sum(k.nbytes + v.nbytes for k, v in layers)
        per_layer = [(torch.cat([s[i][0] for s in stored]), torch.cat([s[i][1] for s in stored]))
                     for i in range(len(stored[0]))]
        cache = DynamicCache(per_layer)  # full-length layers, no config: each layer sees the whole prefix and its
        # own mask (sliding or full) limits what it attends to
        extra = self._positions(batch, None, slice(stop, None))
        with recording(self.adapter, last) as (resid, _, _):
            model(inputs_embeds=embeds[:, stop:], attention_mask=batch.inputs["attention_mask"], cache=cache,
                  use_cache=True, **extra)
        self.prefix_misses += len(new)  # counted once the suffix went through (a retry after running out of
        self.prefix_hits += len(keys) - len(new)  # memory finds the prefixes its failed try computed)
        return resid

    @staticmethod
    def _positions(batch: Batch, rows: torch.Tensor | None, tokens: slice) -> dict:
        """Explicit rope positions (families that have them) for the rows and tokens of a partial forward."""
        if "position_ids" not in batch.inputs:
            return {}
        positions = batch.inputs["position_ids"][..., tokens]
        if rows is not None:
            positions = positions.index_select(-2, rows)
        return {"position_ids": positions}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-max(-60.0, min(60.0, x))))


@dataclass
class Score:
    """An objective's value on a set of units, with what it is made of."""

    value: float
    n_units: int
    flip_rate: float  # audio-flip: answers naming A; text-control: patched answers naming T, over pairs and layers
    margin: float | None = None  # audio-flip: mean lens margin toward A over the window (logits)
    effect: float | None = None  # text-control: mean normalized Patch Text effect over the window
    tokens: float = 0.0  # mean prompt length in tokens (non-audio)


class AudioFlip:
    """How often the answer moves from the text's T to the voice's A (see module docstring)."""

    name = "audio-flip"

    def __init__(self, scorer: Scorer, items: list[Item]):
        self.scorer = scorer
        self.units = [i for i in items if i.condition == "conflict"]

    def evaluate(self, probe_set: PromptedSet, units: list[Item]) -> list[dict]:
        """Per item: flipped (answer == A), answer, margin toward A over the window (logits), tokens."""
        emotions = spec.emotions()
        readouts = self.scorer.readouts(probe_set, units)
        rows = []
        for item in units:
            r = readouts[item.item_id]
            a, t = emotions.index(item.audio_emotion), emotions.index(item.text_emotion)
            answer = emotions[int(np.argmax(r.final))]
            rows.append(dict(unit=item.item_id, flipped=answer == item.audio_emotion, answer=answer,
                             margin=float(np.mean(r.window[:, a] - r.window[:, t])),
                             margin_last=float(r.final[a] - r.final[t]), tokens=r.tokens))
        return rows

    @staticmethod
    def aggregate(rows: list[dict], n_total: int | None = None) -> Score:
        """The score of `rows`, a subset of `n_total` units (default: all of them)."""
        n = len(rows)
        rate = sum(r["flipped"] for r in rows) / n
        margin = float(np.mean([r["margin"] for r in rows]))
        return Score(value=rate + _sigmoid(margin) / (max(n_total or n, n) + 1), n_units=n, flip_rate=rate,
                     margin=margin, tokens=float(np.mean([r["tokens"] for r in rows])))


class TextControl:
    """The Patch Text effect over the window (see module docstring); patched with `probes.patching`."""

    name = "text-control"

    def __init__(self, scorer: Scorer, items: list[Item], batch_pairs: int = 8):
        self.scorer = scorer
        first, last = scorer.first, scorer.last
        if last >= scorer.adapter.n_layers:
            raise ModalflipError(f"text-control patches residual layers; the window must end at or below layer "
                                 f"{scorer.adapter.n_layers - 1} of this model (patching resid[{last}] cannot "
                                 f"reach the answer): use e.g. --layers {first}-{scorer.adapter.n_layers - 1}")
        self.layers = list(range(first, last + 1))
        self.config = PatchConfig(text_mode="instruction", layers=self.layers, batch_pairs=batch_pairs)
        self.units = [p for p in make_pairs(items) if p.kind == "text"]

    def evaluate(self, probe_set: PromptedSet, units: list[Pair]) -> list[dict]:
        """Per pair: the normalized effect per window layer (None where undefined), the LDs it is made of, flips to
        T per layer, tokens."""
        emotions = spec.emotions()
        clean_items = list({i.item_id: i for p in units for i in (p.receiver, p.donor)}.values())
        clean = self.scorer.readouts(probe_set, clean_items)
        patched, size = with_oom_backoff(
            lambda size: patched_label_logits(self.scorer.adapter, probe_set, units, self.layers,
                                              replace(self.config, batch_pairs=size)),
            self.config.batch_pairs, "patched pairs per forward", self.scorer.say)
        self.config = replace(self.config, batch_pairs=size)
        self.scorer.forwards += len(units) * (1 + len(self.layers))
        rows = []
        for pair, per_layer in zip(units, patched):
            t, a = emotions.index(pair.text_emotion), emotions.index(pair.audio_emotion)
            ld_r = float(clean[pair.receiver.item_id].final[t] - clean[pair.receiver.item_id].final[a])
            ld_d = float(clean[pair.donor.item_id].final[t] - clean[pair.donor.item_id].final[a])
            ld_p = per_layer[:, t] - per_layer[:, a]
            effect = normalized_effect(ld_p, ld_r, ld_d)
            effect = None if np.isnan(effect).all() else [float(v) for v in effect]
            rows.append(dict(unit=f"{pair.receiver.item_id}<-{pair.donor.item_id}", effect=effect,
                             ld_receiver=ld_r, ld_donor=ld_d, ld_patched=[float(v) for v in ld_p],
                             flips=[bool(v) for v in per_layer.argmax(axis=1) == t],
                             tokens=clean[pair.donor.item_id].tokens))
        return rows

    @staticmethod
    def aggregate(rows: list[dict], n_total: int | None = None) -> Score:
        """The mean effect of `rows` (`n_total` is not needed: the mean has one scale)."""
        effects = [np.mean(r["effect"]) for r in rows if r["effect"] is not None]
        effect = float(np.mean(effects)) if effects else 0.0
        rate = float(np.mean([np.mean(r["flips"]) for r in rows]))
        return Score(value=effect, n_units=len(rows), flip_rate=rate, effect=effect,
                     tokens=float(np.mean([r["tokens"] for r in rows])))


def make_objective(name: str, scorer: Scorer, items: list[Item]) -> AudioFlip | TextControl:
    if name == "audio-flip":
        return AudioFlip(scorer, items)
    if name == "text-control":
        return TextControl(scorer, items)
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
