"""Optuna storage and the rules that let many workers share one study without losing or duplicating trials.

Storage (`--storage`): an SQLAlchemy URL (`sqlite:///runs/x/study.db`, `postgresql+psycopg://user:pw@host/db`,
`mysql+pymysql://...`) opens an RDB storage with a heartbeat, so the trials of a worker that died on another machine
are failed after `GRACE_SECONDS`; anything else is a journal file path (`study.log`), fine on one machine, risky on
NFS (file locks).

Counting (`--trials N` is the study's total of finished trials, complete or pruned, over all workers and runs):
- A trial records its worker (host, pid, process start time) as its first act. Before each trial a worker fails the
  trials of dead workers it can see: RUNNING trials started by a process of this host that no longer exists (a
  SIGKILLed run), and RUNNING trials that recorded no worker within `UNCLAIMED_SECONDS` (a kill in the few
  milliseconds between the storage creating a trial and the trial recording its worker).
- A worker stops when N trials are finished, or when the missing ones are all running in live workers; it waits
  while some of them have not recorded their worker yet.
- Trial numbers come from the storage, which assigns them atomically. A new trial counts the finished and running
  trials numbered below it; if N of them are there already, it lost the race for the last slot to another worker and
  is failed at once as a surplus (user attr `surplus`, no parameters sampled, not counted).
"""
from __future__ import annotations

import os
import re
import socket
import time

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from common.errors import ModalflipError

HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 90
SCHEMA_RACE = re.compile(r"already exists|alembic_version")  # errors of two processes creating one schema
UNCLAIMED_SECONDS = 30
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def _host() -> str:
    """This machine: its host name and boot id (containers that share a host name rarely share a kernel too)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return f"{socket.gethostname()}:{handle.read().strip()[:8]}"
    except OSError:
        return socket.gethostname()


HOST = _host()


class Surplus(Exception):
    """A trial beyond the study's target: another worker took the last slot first."""


def is_url(storage: str) -> bool:
    return "://" in storage


def redact(storage: str) -> str:
    """The storage spec with any password in a URL replaced by ***, for logs and records."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", storage)


def _rdb_storage(storage: str, engine_kwargs: dict, attempts: int = 5) -> RDBStorage:
    """RDBStorage(storage), tried again while another process is creating the same schema: two workers (or a
    worker and a reader) starting on a new database race in SQLAlchemy's check-then-create and in Optuna's insert of
    the schema version, and the loser fails ("table ... already exists", "UNIQUE constraint failed:
    alembic_version...", or PostgreSQL's 'relation ... already exists') although nothing is wrong. Measured: four
    threads opening one new SQLite file failed so in 10 of 10 rounds without the retry."""
    def make() -> RDBStorage:
        return RDBStorage(storage, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                          grace_period=GRACE_SECONDS)

    for attempt in range(attempts - 1):
        try:
            return make()
        except Exception as err:
            if not SCHEMA_RACE.search(str(err)):
                raise
            time.sleep(0.2 * (attempt + 1))
    return make()


def open_storage(storage: str) -> BaseStorage:
    """An RDB storage with a heartbeat for a URL, a journal-file storage for a path (see module docstring)."""
    if is_url(storage):
        kwargs = {}
        if storage.startswith("sqlite"):
            kwargs = {"connect_args": {"timeout": 60}}  # two local workers wait for the file lock, not fail
        try:
            return _rdb_storage(storage, kwargs)
        except ImportError as err:
            raise ModalflipError(f"the database driver for {redact(storage)} is missing ({err}); for PostgreSQL "
                                 "install modalflip[postgres] (psycopg) and use postgresql+psycopg://...") from None
        except Exception as err:  # SQLAlchemy's connection errors have many types; the message says which
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModalflipError(f"cannot open Optuna storage {redact(storage)}: {first}") from None
    path = os.path.abspath(storage)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


def worker_id() -> str:
    """host/pid/start time of this process: tells a dead worker from a live one with a reused pid."""
    return f"{HOST}/{os.getpid()}/{_start_ticks(os.getpid())}"


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' where /proc is not there."""
    return _stat(pid)[19] if _stat(pid) else ""


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (state first), [] where there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _alive(worker: str) -> bool:
    """Whether the worker process still runs (a zombie, killed but not yet reaped, does not)."""
    host, pid, ticks = worker.split("/")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _stat(int(pid))
    if not stat:
        return ticks == ""
    return stat[0] not in ("Z", "X") and stat[19] == ticks


def _age(trial: FrozenTrial) -> float:
    return time.time() - (trial.datetime_start.timestamp() if trial.datetime_start else time.time())


def _dead(trial: FrozenTrial) -> bool:
    worker = trial.user_attrs.get("worker")
    if worker is None:
        return _age(trial) > UNCLAIMED_SECONDS
    return worker.split("/")[0] == HOST and not _alive(worker)


def unclaimed(study: optuna.Study) -> int:
    """RUNNING trials that have not recorded their worker yet (and are not old enough to be called dead)."""
    return sum("worker" not in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials left by dead workers of this host (and very old ones without a worker); their numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _dead(trial):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)  # another worker may be first
            failed.append(trial.number)
    return failed


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished trials that count, running trials) of the study."""
    trials = study.get_trials(deepcopy=False, states=COUNTED + (TrialState.RUNNING,))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def claim_slot(study: optuna.Study, trial: optuna.Trial, target: int) -> None:
    """Raise `Surplus` when `target` finished or running trials are numbered below `trial` already."""
    ahead = sum(t.number < trial.number
                for t in study.get_trials(deepcopy=False, states=COUNTED + (TrialState.RUNNING,)))
    if ahead >= target:
        trial.set_user_attr("surplus", True)
        raise Surplus(f"trial {trial.number} is beyond the study's target of {target} finished trials "
                      "(another worker took the last slot); it is not counted")
