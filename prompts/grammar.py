"""The prompt grammar (`prompts/grammar.json`): sampled from an Optuna trial define-by-run, rendered to chat messages.

Slots (options in the data file; what each does is fixed here):
- family: how the text asserts the emotion T. `assert` and `ask` state or question it; `role_play` adds "Play the
  role of <persona>" to the system turn; `rubric` numbers the sentences after the audio as steps. Each family has
  its own list of claim phrases (`claim/<family>`).
- claim_position: `after_audio` (user turn, after the clip), `before_audio` (user turn, before the clip), `system`
  (end of the system turn) or `repeated` (system turn and after the clip).
- cue: the modality the model is told to judge by: `voice`, `tone`, `words` or `none`; a cue has a phrase
  (`cue/<cue>`) and an `emphasis` (none, "Important: ...", said twice).
- system, persona: free-text phrases for the system turn and the role-play persona.
- answer: the answer-format sentence (with or without the label list).
- prompt_lang: `clip` (the clip's language) or `other` (en <-> zh); the answer is read on the label words of the
  prompt's language.
A sample is a dict of Optuna parameter names to option ids (`slots`); with the grammar it rebuilds the prompt of any
item. `seed_prompt` in the data file is the stimulus set's own conflict prompt as a sample.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from common.errors import ModalflipError
from models.adapter import Prompt
from stimuli import spec
from stimuli.conditions import Item

GRAMMAR_PATH = Path(__file__).parent / "grammar.json"
SLOTS = ("family", "claim_position", "cue", "emphasis", "answer", "prompt_lang")
KNOWN_OPTIONS = {
    "family": {"assert", "ask", "role_play", "rubric"},
    "claim_position": {"after_audio", "before_audio", "system", "repeated"},
    "cue": {"none", "voice", "tone", "words"},
    "emphasis": {"none", "important", "repeat"},
    "prompt_lang": {"clip", "other"},
}
OTHER_LANG = {"en": "zh", "zh": "en"}


@dataclass(frozen=True)
class Grammar:
    """The parsed grammar file and its hash (a study refuses to resume with a different grammar)."""

    data: dict
    hash: str
    path: Path

    def options(self, slot: str) -> list[str]:
        return list(self.data["slots"][slot])

    def phrase_ids(self, kind: str, group: str | None = None) -> list[str]:
        return [p["id"] for p in self._phrases(kind, group)]

    def phrase(self, kind: str, phrase_id: str, lang: str, group: str | None = None) -> str:
        for entry in self._phrases(kind, group):
            if entry["id"] == phrase_id:
                return entry[lang]
        where = f"{kind}/{group}" if group else kind
        raise ModalflipError(f"the grammar has no {where} phrase {phrase_id!r}; it has: "
                             f"{', '.join(self.phrase_ids(kind, group))}")

    def templates(self, lang: str) -> dict:
        return self.data["templates"][lang]

    @property
    def seed_prompt(self) -> dict[str, str]:
        return dict(self.data["seed_prompt"])

    def _phrases(self, kind: str, group: str | None) -> list[dict]:
        entries = self.data["phrases"][kind]
        return entries[group] if group is not None else entries


def load_grammar(path: str | Path | None = None) -> Grammar:
    """Read and check a grammar file (default: `prompts/grammar.json`); a `ModalflipError` says what to fix."""
    path = Path(path) if path else GRAMMAR_PATH
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except OSError as err:
        raise ModalflipError(f"cannot read the prompt grammar {path}: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModalflipError(f"the prompt grammar {path} is not valid JSON: {err}") from None
    grammar = Grammar(data=data, hash=hashlib.sha256(raw).hexdigest()[:16], path=path)
    problem = _problem(grammar)
    if problem:
        raise ModalflipError(f"prompt grammar {path}: {problem}")
    return grammar


def _problem(grammar: Grammar) -> str | None:
    data = grammar.data
    for key in ("slots", "phrases", "templates", "seed_prompt"):
        if key not in data:
            return f"missing the {key!r} section"
    for slot in SLOTS:
        options = data["slots"].get(slot)
        if not options:
            return f"slot {slot!r} has no options"
        unknown = set(options) - KNOWN_OPTIONS.get(slot, set(options))
        if unknown:
            return f"slot {slot!r} has unknown option(s) {sorted(unknown)}; known: {sorted(KNOWN_OPTIONS[slot])}"
        if slot == "answer":
            for lang in spec.LANGS:
                missing = set(options) - set(data["templates"].get(lang, {}).get("answer", {}))
                if missing:
                    return f"answer option(s) {sorted(missing)} have no {lang} template"
    groups = [("system", None), ("persona", None)]
    groups += [("claim", family) for family in data["slots"]["family"]]
    groups += [("cue", cue) for cue in data["slots"]["cue"] if cue != "none"]
    for kind, group in groups:
        entries = data["phrases"].get(kind, {} if group else [])
        entries = entries.get(group) if group else entries
        where = f"{kind}/{group}" if group else kind
        if not entries:
            return f"no {where} phrases"
        ids = [entry.get("id") for entry in entries]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and i for i in ids):
            return f"{where} phrases need unique, non-empty ids (got {ids})"
        for entry in entries:
            for lang in spec.LANGS:
                if not isinstance(entry.get(lang), str) or not entry[lang].strip():
                    return f"{where} phrase {entry['id']!r} has no {lang} text"
                if kind == "claim" and "{T}" not in entry[lang]:
                    return f"claim phrase {entry['id']!r} ({lang}) lacks the {{T}} placeholder"
    for lang in spec.LANGS:
        templates = data["templates"].get(lang)
        needed = ("join", "persona", "emphasis", "answer", "rubric_header", "rubric_step")
        if not templates or any(k not in templates for k in needed):
            return f"templates.{lang} needs {', '.join(needed)}"
        missing = set(data["slots"]["emphasis"]) - set(templates["emphasis"])
        if missing:
            return f"emphasis option(s) {sorted(missing)} have no {lang} template"
    try:
        for lang in spec.LANGS:
            parts(grammar, grammar.seed_prompt, lang, "{T}")
    except (KeyError, ModalflipError) as err:
        return f"seed_prompt does not render: {err}"
    return None


def suggest(trial, grammar: Grammar) -> dict[str, str]:
    """Sample a prompt from an Optuna trial, define-by-run: conditional slots are asked only where they apply.
    Returns the sample (parameter name -> option id), the same dict as `trial.params`."""
    family = trial.suggest_categorical("family", grammar.options("family"))
    trial.suggest_categorical(f"claim/{family}", grammar.phrase_ids("claim", family))
    trial.suggest_categorical("claim_position", grammar.options("claim_position"))
    trial.suggest_categorical("system", grammar.phrase_ids("system"))
    if family == "role_play":
        trial.suggest_categorical("persona", grammar.phrase_ids("persona"))
    cue = trial.suggest_categorical("cue", grammar.options("cue"))
    if cue != "none":
        trial.suggest_categorical(f"cue/{cue}", grammar.phrase_ids("cue", cue))
        trial.suggest_categorical("emphasis", grammar.options("emphasis"))
    trial.suggest_categorical("answer", grammar.options("answer"))
    trial.suggest_categorical("prompt_lang", grammar.options("prompt_lang"))
    return dict(trial.params)


def prompt_language(sample: dict[str, str], clip_lang: str) -> str:
    """The language the prompt is written (and answered) in for a clip in `clip_lang`."""
    return OTHER_LANG[clip_lang] if sample.get("prompt_lang") == "other" else clip_lang


def parts(grammar: Grammar, sample: dict[str, str], lang: str, word: str) -> dict[str, str]:
    """The prompt's text in `lang` asserting `word`: {"system", "before_audio", "after_audio"} (empty when unused)."""
    t = grammar.templates(lang)
    family = sample["family"]
    claim = grammar.phrase("claim", sample[f"claim/{family}"], lang, family).format(T=word)
    position = sample["claim_position"]
    system = [grammar.phrase("system", sample["system"], lang)]
    if family == "role_play":
        system.append(t["persona"].format(persona=grammar.phrase("persona", sample["persona"], lang)))
    if position in ("system", "repeated"):
        system.append(claim)
    after = [claim] if position in ("after_audio", "repeated") else []
    cue = sample["cue"]
    if cue != "none":
        phrase = grammar.phrase("cue", sample[f"cue/{cue}"], lang, cue)
        after.append(t["emphasis"][sample["emphasis"]].format(cue=phrase))
    after.append(t["answer"][sample["answer"]].format(labels=spec.label_list(lang)))
    if family == "rubric":
        after = [t["rubric_header"]] + [t["rubric_step"].format(n=n, text=text) for n, text in enumerate(after, 1)]
    join = t["join"]
    return {"system": join.join(system), "before_audio": claim if position == "before_audio" else "",
            "after_audio": join.join(after)}


def render(grammar: Grammar, sample: dict[str, str], item: Item) -> Prompt:
    """The chat prompt of `sample` for one item whose text asserts `item.text_emotion`.

    The instruction span is the text after the audio; the claim word is marked only where the claim sits in it.
    """
    if item.text_emotion is None:
        raise ModalflipError(f"item {item.item_id} asserts no emotion; prompt search scores conflict and "
                             "consistent items only")
    lang = prompt_language(sample, item.lang)
    word = spec.label_words(lang)[item.text_emotion]
    text = parts(grammar, sample, lang, word)
    user: list[dict] = [{"type": "audio"}, {"type": "text", "text": text["after_audio"]}]
    if text["before_audio"]:
        user.insert(0, {"type": "text", "text": text["before_audio"] + "\n"})
    messages = [{"role": "system", "content": text["system"]}, {"role": "user", "content": user}]
    claim = word if sample["claim_position"] in ("after_audio", "repeated") else None
    return Prompt(messages=messages, instruction=text["after_audio"], claim=claim)


def describe(grammar: Grammar, sample: dict[str, str], langs: list[str]) -> dict[str, dict[str, str]]:
    """The rendered prompt per clip language with {T} and <audio> left as placeholders (stored with every trial)."""
    out = {}
    for clip_lang in langs:
        lang = prompt_language(sample, clip_lang)
        text = parts(grammar, sample, lang, "{T}")
        user = (text["before_audio"] + "\n" if text["before_audio"] else "") + "<audio>\n" + text["after_audio"]
        out[clip_lang] = {"prompt_lang": lang, "system": text["system"], "user": user}
    return out
