"""What the model answers, read two ways, and how much of its answer lies on the label words at all.

`label` (the default, what the logit lens and the pilot read): the argmax over the five label tokens of the item's
language at the answer position. `generate`: a few greedily decoded tokens (`models.generate`), parsed to the first
label word they contain (`parse_label`); text that names no label word is an unparseable answer (None). Beside either
readout every item reports `top1_is_label` (the top-1 token of the whole vocabulary is one of its language's label
tokens) and `label_mass` (the softmax probability on those tokens), which say whether the label readout describes
what a real model would say. Shares are clustered on the clip (`common.stats`): the items of one clip share its audio.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.stats import UNIT_CLIP, RateInterval, cluster_bootstrap_mean, clustered_rate
from models.adapter import ModelAdapter
from models.generate import DEFAULT_NEW_TOKENS, greedy_texts
from probes.inputs import ProbeSet
from stimuli import spec
from stimuli.conditions import Item

READOUTS = ("label", "generate")


@dataclass
class Answers:
    """The answer of every item under one readout."""

    readout: str  # "label" | "generate"
    answer: dict[str, str | None]  # item id -> the emotion the readout names; None: generated text names none
    label_answer: dict[str, str]  # item id -> argmax over the label logits (always read)
    text: dict[str, str]  # item id -> generated text (readout "generate" only)
    max_new_tokens: int | None = None  # readout "generate" only

    def settings(self) -> dict:
        """The readout as it is recorded in the summary and in leaderboard settings."""
        out: dict = {"readout": self.readout}
        if self.readout == "generate":
            out["max_new_tokens"] = self.max_new_tokens
        return out


def parse_label(text: str, lang: str) -> str | None:
    """The emotion whose label word (`stimuli/spec/labels.json`) occurs first in `text`, case-insensitively, or None.
    A word written in ASCII letters (English) counts only as a whole word ("sad" is not read in "saddle"); a word
    in a script written without spaces (Mandarin) counts wherever it occurs."""
    best: tuple[int, str] | None = None
    for emotion, word in spec.label_words(lang).items():
        word = word.strip()
        pattern = rf"(?<!\w){re.escape(word)}(?!\w)" if word.isascii() else re.escape(word)
        found = re.search(pattern, text, flags=re.IGNORECASE)
        if found and (best is None or found.start() < best[0]):
            best = (found.start(), emotion)
    return None if best is None else best[1]


def label_answers(final_logits: dict[str, np.ndarray]) -> dict[str, str]:
    """item id -> the emotion whose label token has the largest logit at the answer position."""
    emotions = spec.emotions()
    return {item_id: emotions[int(np.argmax(logits))] for item_id, logits in final_logits.items()}


def read_answers(adapter: ModelAdapter, probe_set: ProbeSet, final_logits: dict[str, np.ndarray], readout: str,
                 max_new_tokens: int = DEFAULT_NEW_TOKENS, batch_size: int = 16,
                 tick: Callable[[int], None] | None = None) -> Answers:
    """Every item's answer under `readout` ("label": from `final_logits`, no forward pass; "generate": greedy
    decoding of `max_new_tokens` tokens, `batch_size` prompts per call, `tick(n)` after each)."""
    labels = label_answers(final_logits)
    if readout == "label":
        return Answers("label", dict(labels), labels, {})
    items = probe_set.items
    texts = greedy_texts(adapter, [probe_set.wave(i.clip_id) for i in items], [probe_set.prompt(i) for i in items],
                         max_new_tokens=max_new_tokens, batch_size=batch_size, tick=tick)
    text = {i.item_id: t for i, t in zip(items, texts)}
    answer = {i.item_id: parse_label(t, i.lang) for i, t in zip(items, texts)}
    return Answers("generate", answer, labels, text, max_new_tokens)


def item_rows(items: list[Item], answers: Answers, top1_is_label: dict[str, bool],
              label_mass: dict[str, float]) -> list[dict]:
    """One row per item for items.jsonl: ids, A, T, the readout's answer, the label readout beside it, the generated
    text (readout "generate"), `top1_is_label` and `label_mass`."""
    rows = []
    for item in items:
        row = dict(item_id=item.item_id, clip_id=item.clip_id, lang=item.lang, condition=item.condition,
                   audio_emotion=item.audio_emotion, text_emotion=item.text_emotion, intensity=item.intensity,
                   readout=answers.readout, answer=answers.answer[item.item_id],
                   label_answer=answers.label_answer[item.item_id])
        if answers.readout == "generate":
            row["generated"] = answers.text[item.item_id]
        row.update(top1_is_label=top1_is_label[item.item_id], label_mass=round(label_mass[item.item_id], 5))
        rows.append(row)
    return rows


def summarize(rows: list[dict], conditions: tuple[str, ...], n_boot: int = 1000, seed: int = 0) -> dict:
    """Per language and condition: the share of answers naming A (and, where the text asserts T != A, naming T),
    the number of unparseable answers, the share whose top-1 token is a label token (all with 95% cluster-bootstrap
    intervals over clips) and the mean label mass with its cluster-bootstrap interval."""
    summary: dict = {}
    for lang in sorted({r["lang"] for r in rows}):
        summary[lang] = {}
        for condition in conditions:
            sub = [r for r in rows if r["lang"] == lang and r["condition"] == condition]
            if not sub:
                continue
            clips = [r["clip_id"] for r in sub]
            entry = dict(n_items=len(sub), n_clips=len(set(clips)), unit=UNIT_CLIP,
                         answers_A=clustered_rate([r["answer"] == r["audio_emotion"] for r in sub], clips,
                                                  n_boot=n_boot, seed=seed).as_dict())
            if condition in ("conflict", "voice"):
                entry["answers_T"] = clustered_rate([r["answer"] == r["text_emotion"] for r in sub], clips,
                                                    n_boot=n_boot, seed=seed).as_dict()
            entry["unparseable"] = sum(r["answer"] is None for r in sub)
            entry["top1_is_label"] = clustered_rate([r["top1_is_label"] for r in sub], clips, n_boot=n_boot,
                                                    seed=seed).as_dict()
            mean, low, high = cluster_bootstrap_mean(np.array([r["label_mass"] for r in sub]), clips, n_boot=n_boot,
                                                     seed=seed)
            entry["label_mass"] = dict(mean=round(float(mean), 4), ci95=[round(float(low), 4), round(float(high), 4)])
            summary[lang][condition] = entry
    return summary


def share_text(share: dict) -> str:
    """`RateInterval.text()` of a share stored with `as_dict()`: '8/9 = 89% [67%, 100%] (9 clips)'."""
    low, high = share["ci95"]
    return RateInterval(share["k"], share["n"], share["rate"], low, high, share["unit"], share["n_units"],
                        share["interval"]).text()
