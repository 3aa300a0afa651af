"""Chat prompts for stimulus items: a system turn, then the audio, then the instruction (the seed's layout)."""
from __future__ import annotations

from models.adapter import Prompt
from stimuli import spec


def chat_prompt(instruction: str, lang: str, claim: str | None = None, audio_first: bool = True,
                system: str | None = None) -> Prompt:
    """A one-turn chat: system prompt, user turn with the audio and `instruction` (audio first by default)."""
    user = [{"type": "audio"}, {"type": "text", "text": instruction}]
    if not audio_first:
        user.reverse()
    messages = [{"role": "system", "content": system if system is not None else spec.system_prompt(lang)},
                {"role": "user", "content": user}]
    return Prompt(messages=messages, instruction=instruction, claim=claim)


def claim_word(lang: str, text_emotion: str | None) -> str | None:
    """The label word the instruction asserts, if any."""
    return spec.label_words(lang)[text_emotion] if text_emotion else None
