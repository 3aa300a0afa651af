"""A ctypes binding to the libespeak-ng that the `espeakng-loader` wheel ships (no system package needed).

`synthesize(text, voice, pitch, pitch_range, rate, pauses)` returns float32 samples at eSpeak's own rate
(22.05 kHz). The library keeps state from one utterance to the next, so the speaking is done by a worker process
(`stimuli.espeak_worker`) that starts every utterance from the same state: the same arguments give the same samples,
whatever was spoken before. One synthesis at a time, serialised with a lock.
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from common.errors import ModalflipError
from stimuli.espeak_worker import HEADER

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_SSML = 0x10
_POS_CHARACTER = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()
_state: dict = {}


def _loader():
    """The `espeakng_loader` module, which knows where the wheel put the library and its data."""
    try:
        import espeakng_loader
    except ImportError:
        raise ModalflipError(
            "the eSpeak NG backend needs the 'espeakng-loader' package: pip install espeakng-loader"
        ) from None
    return espeakng_loader


def _library() -> tuple[ctypes.CDLL, int]:
    """The library, loaded and initialised in this process (the worker's), and its sample rate."""
    if "lib" not in _state:
        espeakng_loader = _loader()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data_root = espeakng_loader.get_data_path().rsplit("/espeak-ng-data", 1)[0]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_root.encode(), 0)
        if rate <= 0:
            raise ModalflipError("libespeak-ng failed to initialise; reinstall espeakng-loader")
        chunks: list[np.ndarray] = []

        def collect(wav, count, _events):
            if count > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0

        callback = _CALLBACK(collect)
        lib.espeak_SetSynthCallback(callback)
        _state.update(lib=lib, rate=rate, chunks=chunks, callback=callback)
    return _state["lib"], _state["rate"]


def variants() -> list[str]:
    """The names of the voice variants eSpeak NG ships (files in `espeak-ng-data/voices/!v`), for `LANG+NAME`."""
    return sorted(path.name for path in Path(_loader().get_data_path(), "voices", "!v").iterdir()
                  if path.is_file())


def initialise_here() -> int:
    """Load and initialise the library in this process; returns its sample rate (Hz)."""
    return _library()[1]


def synthesize_here(ssml: str, voice: str, pitch: int, pitch_range: int, rate: int) -> np.ndarray:
    """Speak `ssml` in this process (int16 samples). Only the worker's children call this: in a process that
    speaks more than once, the result depends on what it spoke before."""
    lib, _ = _library()
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ModalflipError(f"eSpeak NG has no voice {voice!r}")
    lib.espeak_SetParameter(_RATE, rate, 0)
    lib.espeak_SetParameter(_VOLUME, 100, 0)
    lib.espeak_SetParameter(_PITCH, pitch, 0)
    lib.espeak_SetParameter(_RANGE, pitch_range, 0)
    # the breath noise of the breathy variants (f2, f3, f5: `breath` in their voice files) is drawn from the
    # library's own generator, seeded anew in each process (measured: the same request gave other samples in every
    # new process, the same within one); a fixed seed makes those voices a function of the arguments too
    lib.espeak_ng_SetRandSeed(0)
    data = ssml.encode("utf-8") + b"\0"
    chunks = _state["chunks"]
    chunks.clear()
    lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _SSML, None, None)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    chunks.clear()
    return samples


def _read(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ModalflipError("the eSpeak NG worker stopped answering; see its error output above")
    return data


def _ask(request: dict | None) -> tuple[bool, int, bytes]:
    """Send `request` to the worker (None: only start it) and return (ok, value, payload)."""
    worker = _state.get("worker")
    if worker is None or worker.poll() is not None or _state["owner"] != os.getpid():  # a forked copy starts its own
        worker = subprocess.Popen([sys.executable, "-m", "stimuli.espeak_worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
                                  env=dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"))
        _state.update(worker=worker, owner=os.getpid())
        atexit.register(_stop, worker)
        ok, value = HEADER.unpack(_read(worker.stdout, HEADER.size))
        if ok != b"+":
            raise ModalflipError(_read(worker.stdout, value).decode())
        _state["worker_rate"] = value
    if request is None:
        return True, _state["worker_rate"], b""
    worker.stdin.write(json.dumps(request).encode() + b"\n")
    worker.stdin.flush()
    ok, value = HEADER.unpack(_read(worker.stdout, HEADER.size))
    return ok == b"+", value, _read(worker.stdout, value * 2 if ok == b"+" else value)


def _stop(worker: subprocess.Popen) -> None:
    worker.stdin.close()
    worker.wait(timeout=10)
    worker.stdout.close()


def sample_rate() -> int:
    with _lock:
        return _ask(None)[1]


def synthesize(text: str, voice: str, pitch: float, pitch_range: float, rate: float,
               pause_after: list[int] | None = None, pause_ms: int = 0) -> np.ndarray:
    """Speak `text`; returns float32 samples in [-1, 1] at `sample_rate()`, the same for the same arguments.

    pitch and pitch_range are eSpeak's 0-100 scales, rate is words per minute; `pause_after` lists word
    indices after which a break of `pause_ms` is inserted (hesitation, sobbing).
    """
    ssml = "<speak>" + _with_breaks(text, pause_after or [], pause_ms) + "</speak>"
    request = dict(text=ssml, voice=voice, pitch=int(pitch), range=int(pitch_range), rate=int(rate))
    with _lock:
        ok, _, payload = _ask(request)
    if not ok:
        raise ModalflipError(payload.decode())
    return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0


def _with_breaks(text: str, pause_after: list[int], pause_ms: int) -> str:
    """Escape `text` for SSML and insert `<break>` after the given word indices (characters for CJK text)."""
    spaced = " " in text.strip()
    units = text.split(" ") if spaced else list(text)
    out = []
    for index, unit in enumerate(units):
        out.append(escape(unit))
        if pause_ms > 0 and index in pause_after and index < len(units) - 1:
            out.append(f'<break time="{int(pause_ms)}ms"/>')
    return (" " if spaced else "").join(out)
