"""The process that speaks for `stimuli.espeak`: `python -m stimuli.espeak_worker` (started by it, not by users).

libespeak-ng keeps state from one utterance to the next (the phase of its pitch flutter, a function-level static that
nothing resets), so in one process the same request gives slightly different audio depending on what was spoken
before: measured, three identical requests gave 75149, 75150 and 75159 samples. This worker loads and initialises
the library once and never speaks itself; it forks a child per request, so every utterance starts from the same
pristine state and a clip depends on its arguments alone. The cost: about 13 ms per clip instead of 3.5 ms. The
child loads its voice itself; loading it in the worker before the fork would halve that, but changes the audio
(measured), so the voice's loading is part of the state that must start pristine.

Protocol over stdin/stdout: on start the worker writes one header (below) whose value is the sample rate, or an
error. Each request is one JSON line {text (SSML), voice, pitch, range, rate}; each answer is a header followed by
`value` int16 samples, or by an error message of `value` UTF-8 bytes. Header: 1 byte (b"+" ok, b"!" error) and a
little-endian uint32. The worker exits when stdin closes.
"""
from __future__ import annotations

import json
import os
import struct
import sys

from common.errors import ModalflipError

HEADER = struct.Struct("<cI")


def answer(fd: int, payload: bytes, ok: bool = True, value: int | None = None) -> None:
    data = HEADER.pack(b"+" if ok else b"!", len(payload) // (2 if ok else 1) if value is None else value) + payload
    while data:
        data = data[os.write(fd, data):]


def speak(fd: int, request: dict) -> None:
    """In the forked child: one utterance from the pristine state, answered on `fd`."""
    from stimuli import espeak

    try:
        samples = espeak.synthesize_here(request["text"], request["voice"], request["pitch"], request["range"],
                                         request["rate"])
        answer(fd, samples.astype("<i2").tobytes())
    except ModalflipError as error:
        answer(fd, str(error).encode(), ok=False)


def serve(stdin, fd: int) -> None:
    from stimuli import espeak

    try:
        rate = espeak.initialise_here()
    except ModalflipError as error:
        answer(fd, str(error).encode(), ok=False)
        return
    answer(fd, b"", value=rate)
    for line in stdin:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            try:
                speak(fd, request)
            finally:
                os._exit(0)
        _, status = os.waitpid(child, 0)
        if status != 0:
            answer(fd, f"the eSpeak NG worker's child died (wait status {status})".encode(), ok=False)


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout.fileno())
