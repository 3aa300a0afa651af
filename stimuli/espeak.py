"""A ctypes binding to the libespeak-ng that the `espeakng-loader` wheel ships (no system package needed).

`synthesize(text, voice, pitch, pitch_range, rate, pauses)` returns float32 samples at eSpeak's own rate
(22.05 kHz). One synthesis at a time: the library keeps global state, so calls are serialised with a lock.
"""
from __future__ import annotations

import ctypes
import threading
from xml.sax.saxutils import escape

import numpy as np

from common.errors import ModalflipError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_SSML = 0x10
_POS_CHARACTER = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()
_state: dict = {}


def _library() -> tuple[ctypes.CDLL, int]:
    if "lib" not in _state:
        try:
            import espeakng_loader
        except ImportError:
            raise ModalflipError(
                "the eSpeak NG backend needs the 'espeakng-loader' package: pip install espeakng-loader"
            ) from None
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


def sample_rate() -> int:
    return _library()[1]


def synthesize(text: str, voice: str, pitch: float, pitch_range: float, rate: float,
               pause_after: list[int] | None = None, pause_ms: int = 0) -> np.ndarray:
    """Speak `text`; returns float32 samples in [-1, 1] at `sample_rate()`.

    pitch and pitch_range are eSpeak's 0-100 scales, rate is words per minute; `pause_after` lists word
    indices after which a break of `pause_ms` is inserted (hesitation, sobbing).
    """
    lib, _ = _library()
    with _lock:
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ModalflipError(f"eSpeak NG has no voice {voice!r}")
        lib.espeak_SetParameter(_RATE, int(rate), 0)
        lib.espeak_SetParameter(_VOLUME, 100, 0)
        lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        lib.espeak_SetParameter(_RANGE, int(pitch_range), 0)
        ssml = "<speak>" + _with_breaks(text, pause_after or [], pause_ms) + "</speak>"
        data = ssml.encode("utf-8") + b"\0"
        chunks = _state["chunks"]
        chunks.clear()
        lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _SSML, None, None)
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        chunks.clear()
    return samples.astype(np.float32) / 32768.0


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
