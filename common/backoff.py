"""Out-of-memory back-off: run a batched job, and on a CUDA out-of-memory error rerun it with half the batch.

A 7B model on one GPU leaves little room for activations; a batch size that fits one clip length can fail on the
next. Instead of dying after minutes of model loading, the job is retried with half the batch (and the user is
told so) until it fits or a batch of one still does not.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

from common.errors import ModalflipError

T = TypeVar("T")


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's out-of-memory errors on any device (CUDA raises `torch.OutOfMemoryError`)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def with_oom_backoff(job: Callable[[int], T], batch_size: int, what: str,
                     say: Callable[[str], None] = print) -> tuple[T, int]:
    """`job(batch_size)`, retried with half the batch after each out-of-memory error; returns (result, the batch
    size that worked). `what` names the batch in messages ("patching pairs per forward"). A batch of one that
    still runs out of memory is a `ModalflipError` saying what to try. `job` must be restartable from scratch
    (or resume from its own checkpoint): a failed attempt's partial results are discarded."""
    if batch_size < 1:
        raise ModalflipError(f"{what}: batch size {batch_size} must be at least 1")
    size = batch_size
    while True:
        try:
            return job(size), size
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are handled; others re-raise
            if not is_out_of_memory(error):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size == 1:
                raise ModalflipError(f"out of memory with one {what.rstrip('s')} per batch: use a smaller model "
                                     "dtype (bf16), shorter clips, or a GPU with more memory") from None
            size = max(1, size // 2)
            say(f"out of memory at {what} = {size * 2}; retrying with {size}")
