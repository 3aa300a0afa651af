"""The prompt grammar: every sample renders to a chat the adapter can batch, slots do what they say, the seed's
conflict prompt is a point of the grammar, and a broken grammar file is refused with a message."""
from __future__ import annotations

import json

import optuna
import pytest

from common.errors import ModalflipError
from prompts.grammar import describe, load_grammar, parts, render, suggest
from prompts.search import split_items
from stimuli import spec
from stimuli.conditions import seed_items

GRAMMAR = load_grammar()


@pytest.fixture(scope="module")
def items():
    return seed_items(["en", "zh"], ("conflict", "consistent"))


def _samples(n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    samples = []
    for _ in range(n):
        trial = study.ask()
        samples.append(suggest(trial, GRAMMAR))
        study.tell(trial, 0.0)
    return samples


def test_seed_prompt_renders_the_stimulus_conflict_prompt(items):
    for item in items:
        prompt = render(GRAMMAR, GRAMMAR.seed_prompt, item)
        assert prompt.instruction == item.instruction
        assert prompt.messages[0]["content"] == spec.system_prompt(item.lang)
        assert prompt.claim == spec.label_words(item.lang)[item.text_emotion]


def test_every_sample_renders_to_a_batch_with_spans(tiny_adapter, items):
    """80 random samples x items of both languages: the adapter finds audio, instruction and claim spans."""
    conflict = [i for i in items if i.condition == "conflict"][::9]
    wave = [0.01 * (i % 7) for i in range(16000)]
    for sample in _samples(80):
        prompts = [render(GRAMMAR, sample, item) for item in conflict]
        batch = tiny_adapter.build_batch([wave] * len(prompts), prompts)
        for row, (prompt, spans) in enumerate(zip(prompts, batch.spans)):
            assert spans.audio.stop > spans.audio.start
            assert (spans.claim is not None) == (sample["claim_position"] in ("after_audio", "repeated"))
            if spans.claim is not None:
                claim_ids = batch.inputs["input_ids"][row, spans.claim]
                assert tiny_adapter.tokenizer.decode(claim_ids).replace(" ", "") == prompt.claim


def test_suggest_asks_conditional_slots_only_where_they_apply():
    for sample in _samples(60, seed=1):
        assert ("persona" in sample) == (sample["family"] == "role_play")
        assert ("emphasis" in sample) == (sample["cue"] != "none")
        assert f"claim/{sample['family']}" in sample
        assert [k for k in sample if k.startswith("claim/")] == [f"claim/{sample['family']}"]


def test_claim_position_puts_the_claim_where_it_says(items):
    item = next(i for i in items if i.condition == "conflict" and i.lang == "en")
    word = spec.label_words("en")[item.text_emotion]
    where = {}
    for position in ("after_audio", "before_audio", "system", "repeated"):
        prompt = render(GRAMMAR, dict(GRAMMAR.seed_prompt, claim_position=position), item)
        system, user = prompt.messages[0]["content"], prompt.messages[1]["content"]
        audio_at = [part["type"] for part in user].index("audio")
        before = " ".join(p["text"] for p in user[:audio_at])
        after = " ".join(p["text"] for p in user[audio_at + 1:])
        where[position] = (word in system, word in before, word in after.split(":")[0])
    assert where == {"after_audio": (False, False, True), "before_audio": (False, True, False),
                     "system": (True, False, False), "repeated": (True, False, True)}


def test_other_prompt_language_swaps_words_and_labels(items):
    item = next(i for i in items if i.condition == "conflict" and i.lang == "en")
    prompt = render(GRAMMAR, dict(GRAMMAR.seed_prompt, prompt_lang="other", answer="one_word"), item)
    assert prompt.claim == spec.label_words("zh")[item.text_emotion]
    assert spec.label_list("zh") in prompt.instruction


def test_rubric_numbers_the_steps_and_role_play_sets_a_persona():
    sample = dict(GRAMMAR.seed_prompt, family="rubric", cue="tone", emphasis="important")
    sample["claim/rubric"], sample["cue/tone"] = "text_says", "judge_tone"
    text = parts(GRAMMAR, sample, "en", "happy")["after_audio"]
    assert text.startswith("Follow this rubric. Step 1: The text says the emotion is happy. Step 2: Important:")
    assert "Step 3: Answer with one emotion word." in text
    sample = dict(GRAMMAR.seed_prompt, family="role_play", persona="detective")
    sample["claim/role_play"] = "client"
    system = parts(GRAMMAR, sample, "zh", "{T}")["system"]
    assert "不相信书面陈述的侦探" in system


def test_describe_keeps_placeholders_per_clip_language():
    shown = describe(GRAMMAR, dict(GRAMMAR.seed_prompt, prompt_lang="other"), ["en", "zh"])
    assert shown["en"]["prompt_lang"] == "zh" and shown["zh"]["prompt_lang"] == "en"
    assert "{T}" in shown["en"]["user"] and "<audio>" in shown["en"]["user"]


def test_split_holds_out_whole_clips_of_every_emotion_but_neutral(items):
    search, held = split_items(items)
    held_clips = {i.clip_id for i in held}
    assert held_clips == {f"{c}-{lang}" for c in ("A2", "A5", "A6", "A9") for lang in ("en", "zh")}
    assert not held_clips & {i.clip_id for i in search}
    assert split_items(list(reversed(items)))[1] == list(reversed(held))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["phrases"]["claim"]["ask"].append({"id": "x", "en": "Is it?", "zh": "是吗？"}), "{T}"),
    (lambda d: d["phrases"]["system"].append({"id": "helpful", "en": "a", "zh": "b"}), "unique"),
    (lambda d: d["slots"]["cue"].append("smell"), "unknown option"),
    (lambda d: d["phrases"]["persona"][0].pop("zh"), "no zh text"),
])
def test_a_broken_grammar_is_refused_with_what_to_fix(tmp_path, edit, message):
    data = json.loads(GRAMMAR.path.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "grammar.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModalflipError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_grammar(path)


def test_an_extended_phrase_list_is_sampled(tmp_path):
    data = json.loads(GRAMMAR.path.read_text(encoding="utf-8"))
    data["phrases"]["cue"]["voice"].append({"id": "mine", "en": "Hear the voice.", "zh": "听声音。"})
    path = tmp_path / "grammar.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    grammar = load_grammar(path)
    assert grammar.hash != GRAMMAR.hash
    assert "mine" in grammar.phrase_ids("cue", "voice")
    sample = dict(grammar.seed_prompt, cue="voice", emphasis="none")
    sample["cue/voice"] = "mine"
    assert "Hear the voice." in parts(grammar, sample, "en", "sad")["after_audio"]
