"""Prompt-search studies: trials store what rebuilds their prompt, `--trials` is the study's exact total, a killed run
resumes, and two worker processes share one study on a journal file and on a real PostgreSQL server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from common.errors import ModalflipError
from conftest import ROOT, tiny_qwen2_audio
from probes.inputs import load_probe_set
from prompts import study as studies
from prompts.grammar import load_grammar, render
from prompts.search import SearchConfig, run
from stimuli import spec
from stimuli.conditions import seed_items

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER_ARGS = ["--lang", "en", "--layers", "1-3", "--device", "cpu", "--startup-trials", "3", "--slice", "4",
               "--batch-size", "20"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_qwen2_audio(n_layers=4)


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    """The tiny model saved as a checkpoint folder, for worker processes (`--model <folder>`)."""
    folder = tmp_path_factory.mktemp("tiny-qwen2-audio")
    tiny.model.save_pretrained(folder)
    tiny.processor.save_pretrained(folder)
    return folder


def _config(storage: str, trials: int, **extra) -> SearchConfig:
    return SearchConfig(study_name="test", storage=storage, trials=trials, layers=(1, 3), slice_size=4,
                        startup_trials=3, prune_after=2, batch_size=20, **extra)


def test_trials_store_their_prompt_and_rerunning_adds_only_the_missing_ones(tiny, tmp_path):
    probe_set = load_probe_set(tiny, seed_items(["en"], ("conflict",)))
    storage = str(tmp_path / "study.log")
    first = run(tiny, probe_set, _config(storage, 5))
    assert (first.finished, first.ran) == (5, 5)
    again = run(tiny, probe_set, _config(storage, 5))
    assert (again.finished, again.ran) == (5, 0)
    more = run(tiny, probe_set, _config(storage, 7))
    assert (more.finished, more.ran) == (7, 2)
    grammar = load_grammar()
    study = optuna.load_study(study_name="test", storage=studies.open_storage(storage))
    trials = study.get_trials(states=COUNTED)
    assert trials[0].params == grammar.seed_prompt  # the stimulus set's own prompt is trial 0
    item = probe_set.items[0]
    for trial in trials:
        shown = trial.user_attrs["prompt"]["en"]
        rebuilt = render(grammar, trial.params, item)
        word = spec.label_words(shown["prompt_lang"])[item.text_emotion]
        assert rebuilt.messages[0]["content"] == shown["system"].replace("{T}", word)
        assert rebuilt.instruction == shown["user"].replace("{T}", word).split("<audio>\n")[1]
        assert trial.user_attrs["score"]["n_units"] in (4, 20)
        assert trial.user_attrs["worker"].startswith(studies.HOST)


def test_nsga2_searches_score_and_prompt_length_and_text_control_runs(tiny, tmp_path):
    probe_set = load_probe_set(tiny, seed_items(["en"], ("conflict", "consistent")))
    pareto = run(tiny, probe_set, _config(str(tmp_path / "nsga2.log"), 4, multi_objective=True))
    assert pareto.finished == 4
    study = optuna.load_study(study_name="test", storage=studies.open_storage(str(tmp_path / "nsga2.log")))
    assert all(len(t.values) == 2 for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert {row["number"] for row in pareto.best} == {t.number for t in study.best_trials}
    control = run(tiny, probe_set, SearchConfig(study_name="control", storage=str(tmp_path / "control.log"),
                                                trials=2, objective="text-control", layers=(1, 3), slice_size=0))
    assert control.finished == 2 and control.best[0]["effect"] is not None


def test_a_study_refuses_to_resume_with_other_settings(tiny, tmp_path):
    probe_set = load_probe_set(tiny, seed_items(["en"], ("conflict",)))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run(tiny, probe_set, _config(storage, 1))
    with pytest.raises(ModalflipError, match="layers differ.*--study-name"):
        run(tiny, probe_set, SearchConfig(study_name="test", storage=storage, trials=2, layers=(2, 3)))


def test_rerunning_a_finished_study_adds_no_trials_and_no_second_record(tiny_dir, tmp_path):
    from prompts.run import main

    argv = ["--model", str(tiny_dir), "--out", str(tmp_path / "run"), "--runs-dir", str(tmp_path / "runs"),
            "--trials", "3", *WORKER_ARGS]
    for _ in range(2):
        assert main(argv) == 0
    report = json.loads((tmp_path / "run" / "best_prompts.json").read_text())
    assert report["this_run"]["trials"] == 0 and report["finished_trials"] == 3
    assert len(list((tmp_path / "runs" / "records").glob("*.json"))) == 1
    for name in ("trials.csv", "score_over_trials.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_a_trial_beyond_the_target_is_a_surplus_and_not_counted():
    study = optuna.create_study()
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    running = study.ask()  # another worker's trial, still running
    late = study.ask()
    with pytest.raises(studies.Surplus):
        studies.claim_slot(study, late, target=3)
    studies.claim_slot(study, running, target=3)  # its own slot: 2 finished below it
    assert late.user_attrs["surplus"] is True


def test_running_trials_of_dead_workers_are_failed_live_ones_kept(monkeypatch):
    study = optuna.create_study()
    live = study.ask()
    live.set_user_attr("worker", studies.worker_id())
    dead = study.ask()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead.set_user_attr("worker", f"{studies.HOST}/{child.pid}/1")
    unclaimed = study.ask()  # no worker recorded yet: alive for UNCLAIMED_SECONDS, then dead
    assert studies.fail_dead_trials(study) == [dead.number]
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING]
    assert studies.unclaimed(study) == 1
    monkeypatch.setattr(studies, "UNCLAIMED_SECONDS", -1)
    assert studies.fail_dead_trials(study) == [unclaimed.number]


def _worker(tiny_dir, out, trials: int, seed: int, storage: str | None = None, name: str = "shared",
            extra: tuple = ()) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "run_prompt_search.py"), "--model", str(tiny_dir), "--out", str(out),
               "--runs-dir", str(out.parent / "runs"), "--trials", str(trials), "--seed", str(seed), *WORKER_ARGS,
               *extra]
    if storage:
        command += ["--storage", storage, "--study-name", name]
    env = dict(os.environ, OMP_NUM_THREADS="1", MODALFLIP_TEST_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-3000:]
    return output


def _claimed(storage: str, name: str, pid: int) -> bool:
    """Whether the worker process `pid` holds or has finished a trial of the study `name`."""
    try:
        trials = optuna.load_study(study_name=name, storage=studies.open_storage(storage)).get_trials()
    except Exception:  # the study or its tables are not there yet: not claimed
        return False
    return any(t.user_attrs.get("worker", "").split("/")[1:2] == [str(pid)] for t in trials)


def _throttled_until(proc: subprocess.Popen, condition, timeout: float = 120) -> None:
    """Run `proc` at about 1 % of its speed (SIGSTOP 1 s, SIGCONT 0.01 s) until `condition()` holds: a worker
    stalled by a busy machine (a tiny model's trial takes well under a second, so anything faster lets it finish
    the study alone). Each pause is short, so a lock it holds (the journal file's, a database row's) is released
    within a cycle or two and the other worker never waits for long."""
    deadline = time.time() + timeout
    try:
        while not condition():
            assert time.time() < deadline, "timed out"
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(1.0)
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def _two_workers(tiny_dir, tmp_path, storage: str, trials: int, name: str = "shared", report: bool = True) -> list:
    """Two workers on one study, made to overlap whatever the machine's speed: once the first holds a trial it runs
    throttled until the second holds one too; both then run to the study's total."""
    extra = [] if report else ["--worker"]
    first = _worker(tiny_dir, tmp_path / "worker0", trials, seed=0, storage=storage, name=name, extra=extra)
    deadline = time.time() + 120
    while not (_claimed(storage, name, first.pid) or first.poll() is not None):
        assert time.time() < deadline, "the first worker never took a trial"
        time.sleep(0.05)
    second = _worker(tiny_dir, tmp_path / "worker1", trials, seed=1, storage=storage, name=name, extra=extra)
    _throttled_until(first, lambda: _claimed(storage, name, second.pid) or second.poll() is not None)
    workers = [first, second]
    for proc in workers:
        _finish(proc)
    study = optuna.load_study(study_name=name, storage=studies.open_storage(storage))
    trials_ = study.get_trials()
    numbers = [t.number for t in trials_]
    assert len(numbers) == len(set(numbers))
    assert len([t for t in trials_ if t.state in COUNTED]) == trials
    assert not [t for t in trials_ if t.state == TrialState.RUNNING]
    workers = {t.user_attrs["worker"] for t in trials_ if t.state in COUNTED}
    assert len(workers) == 2, ("one worker ran every trial: the two did not overlap "
                               f"{[(t.number, t.state.name, t.user_attrs.get('worker')) for t in trials_]} "
                               f"pids {first.pid} {second.pid}")
    for k in range(2):
        path = tmp_path / f"worker{k}" / "best_prompts.json"
        assert path.exists() == report
        if report:
            assert json.loads(path.read_text())["heldout"]["n_items"] == 16
    return trials_


def test_two_worker_processes_share_one_journal_file(tiny_dir, tmp_path):
    _two_workers(tiny_dir, tmp_path, str(tmp_path / "shared.log"), trials=8)


def test_two_worker_processes_share_one_postgresql_study(tiny_dir, tmp_path):
    url = os.environ.get("MODALFLIP_TEST_POSTGRES_URL")
    if not url:
        message = ("MODALFLIP_TEST_POSTGRES_URL is not set: start a server with eval \"$(bash .ci/start-postgres.sh)\" "
                   "(installs Debian's postgresql and prints the URL)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"test-{uuid.uuid4().hex[:12]}"
    try:
        _two_workers(tiny_dir, tmp_path, url, trials=8, name=name, report=False)  # workers as in the README
    finally:
        optuna.delete_study(study_name=name, storage=studies.open_storage(url))


def _poll(storage: str) -> tuple[list, list]:
    """(finished trials, running trials that recorded their worker); empty while the worker creates the study."""
    try:
        study = optuna.load_study(study_name=None, storage=storage)
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if "worker" in t.user_attrs]
        return study.get_trials(states=COUNTED), running
    except Exception:  # tables or study not there yet (any SQLAlchemy or Optuna error): poll again
        return [], []


def test_a_killed_run_loses_at_most_its_running_trial_and_resumes(tiny_dir, tmp_path):
    out, target = tmp_path / "run", 8
    storage = f"sqlite:///{out / 'study.db'}"
    proc = _worker(tiny_dir, out, target, seed=0)
    deadline = time.time() + 180  # generous: the worker imports torch and loads a model on a shared 2-core machine
    finished: list = []
    while time.time() < deadline and proc.poll() is None:
        if (out / "study.db").exists():
            seen, running = _poll(storage)
            finished = seen or finished  # a poll that hit a locked database says nothing
            if finished and running:  # in the middle of a trial
                break
        time.sleep(0.05)
    exited = proc.poll()  # None: still running, so the kill lands mid-run
    proc.send_signal(signal.SIGKILL)
    output, _ = proc.communicate()
    if not finished:  # the worker may have finished trials between the last poll and its exit
        finished, _ = _poll(storage)
    assert finished, f"no trial finished before the deadline (worker exit status {exited}): {output[-2000:]}"
    study = optuna.load_study(study_name=None, storage=storage)
    kept = {t.number: t.values for t in study.get_trials(states=COUNTED)}
    assert 0 < len(kept) < target, "the kill landed after the study had finished"
    _finish(_worker(tiny_dir, out, target, seed=0))
    study = optuna.load_study(study_name=None, storage=storage)
    after = {t.number: t.values for t in study.get_trials(states=COUNTED)}
    assert len(after) == target
    assert all(after[number] == values for number, values in kept.items())
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_workers_opening_a_new_storage_at_once_all_get_it(tmp_path):
    # SQLAlchemy's check-then-create and Optuna's schema-version insert race between processes starting together;
    # without the retry in open_storage four threads failed so in 10 of 10 rounds
    import threading

    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'race-{round_}.db'}"
        opened, errors = [], []

        def open_it():
            try:
                opened.append(studies.open_storage(url))
            except Exception as err:  # noqa: BLE001 - the assertion below shows what failed
                errors.append(str(err))

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors and len(opened) == 4
        optuna.create_study(study_name="shared", storage=opened[0])
        assert [s.study_name for s in optuna.get_all_study_summaries(opened[3])] == ["shared"]
