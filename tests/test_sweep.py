"""nncompile sweep as users run it: the real CLI in subprocesses, workers sharing a real Optuna
storage (a journal file, or sqlite), killed and interrupted mid-trial, and the best trial's
run directory predicting (nncompile/sweep/). Skipped without Optuna: bash scripts/sweep_check.sh."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("sklearn")   # the digits data set

from nncompile.cli import main
from nncompile.errors import NNError
from nncompile.runs import load_run, read_data
from nncompile.sweep.study import BEAT, STALE
from nncompile.sweep.worker import SURPLUS

from conftest import ROOT, as_a_shell_starts_it, cli, write_nn

TINY = """
    # softmax regression on the 8x8 digits, with an L2 penalty to sweep
    const reg = 1e-3
    input X: float[N, 64]
    input y: int[N]
    param W: [64, 10] = normal(std=0.01)
    param b: [10] = zeros()
    scores = X @ W + b
    output scores
    loss = softmax_cross_entropy(scores, y) + reg * sum(W ** 2)
    minimize loss
"""
SPACE = "lr=loguniform(1e-3,1e-1),reg=loguniform(1e-5,1e-2),batch-size=choice(32,128)"
State = optuna.trial.TrialState


def sweep_args(*extra: str, space: str = SPACE, epochs: int = 3) -> list[str]:
    return ["sweep", "tiny.nn", "--out", "s", "--sampler", "random", "--epochs", str(epochs), "--space", space, *extra]


def start(cwd: Path, args: list[str]) -> subprocess.Popen:
    """A worker, as a user starts one: python -m nncompile sweep ..., in its own process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "nncompile", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_a_shell_starts_it)


def finish(worker: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = worker.communicate(timeout=timeout)
    return worker.returncode, out, err


def study(folder: Path, storage: str | None = None):
    """The study as Optuna itself reads it back, in a fresh storage object."""
    if storage is None:
        journal = optuna.storages.journal.JournalFileBackend(str(folder / "journal.log"))
        storage = optuna.storages.JournalStorage(journal)
    return optuna.load_study(study_name="tiny", storage=storage)


def reported(folder: Path) -> bool:
    """Whether a trial of the study in ``folder`` has reported a validated epoch."""
    try:
        return (folder / "journal.log").exists() and any(t.intermediate_values for t in study(folder).get_trials())
    except KeyError:   # the journal holds no study yet
        return False


def finished(trials) -> list:
    return [t for t in trials if t.state in (State.COMPLETE, State.PRUNED)]


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_nn(tmp_path, "tiny.nn", TINY)
    return tmp_path


def test_two_workers_sharing_one_journal_run_n_trials_between_them_each_recorded_once(folder: Path) -> None:
    workers = [start(folder, sweep_args("--trials", "6")) for _ in range(2)]
    results = [finish(w) for w in workers]
    assert all(code == 0 for code, _, _ in results), results
    trials = study(folder / "s").get_trials()
    assert len(finished(trials)) == 6, [t.state for t in trials]
    # Only two workers asking for the last trial at the same instant leave one more, failed unrun.
    assert all(SURPLUS in t.system_attrs for t in trials if t.state == State.FAIL) and len(trials) <= 7
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t.user_attrs.get("worker") for t in finished(trials)}) == 2   # both took trials
    with open(folder / "s" / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(r["number"]) for r in rows) == list(range(len(trials)))
    for row, t in zip(sorted(rows, key=lambda r: int(r["number"])), sorted(trials, key=lambda t: t.number)):
        assert row["state"] == t.state.name
        if t.state == State.FAIL:
            continue
        assert Path(row["run_dir"]) == folder / "s" / f"trial-{t.number:04d}"
        assert float(row["lr"]) == t.params["lr"] and int(row["batch-size"]) == t.params["batch-size"]
        if t.state == State.COMPLETE:
            assert float(row["value"]) == t.value
    assert (folder / "s" / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_best_trials_run_directory_loads_and_predicts_with_the_trials_own_constant(folder: Path) -> None:
    result = cli(*sweep_args("--trials", "3", "--no-prune"), cwd=folder)
    assert result.returncode == 0, result
    best = study(folder / "s").best_trial
    run = load_run(best.user_attrs["run_dir"])
    data = read_data(run, "digits", part="val")
    predicted = run.predict(**{name: data.arrays[name] for name in run.inputs})
    assert run.accuracy(predicted, data) > 0.8
    assert f"const reg = {best.params['reg']!r}" in (Path(best.user_attrs["run_dir"]) / "model.nn").read_text()
    assert f"best: trial {best.number}, validation data loss {best.value:.4f}" in result.stdout


def kill_holding_the_journal_lock(worker: subprocess.Popen, folder: Path) -> None:
    """SIGKILL ``worker`` at a moment it holds the journal's lock: stopped and looked at, again
    and again, until it is caught appending (its heartbeat appends every few tenths of a second)."""
    lock = folder / "journal.log.lock"
    deadline = time.monotonic() + 60
    while True:
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            holder = os.readlink(lock)
        except OSError:
            holder = ""
        if f" {worker.pid} " in holder:
            worker.kill()
            worker.wait()
            return
        os.kill(worker.pid, signal.SIGCONT)
        assert time.monotonic() < deadline, "never caught the worker holding the lock"
        time.sleep(0.002)


def test_a_killed_workers_trial_is_failed_and_retried_and_the_study_goes_on(folder: Path) -> None:
    """Killed while it appends to the journal, the worker leaves its lock behind: the next worker
    takes it over at once (Optuna's lock stayed held for good, the journal's path being relative)."""
    args = sweep_args("--trials", "2", "--stale-after", "2", "--no-prune", "--patience", "0", epochs=20)
    victim = start(folder, args)
    wait_for(lambda: reported(folder / "s"))
    kill_holding_the_journal_lock(victim, folder / "s")
    (killed,) = study(folder / "s").get_trials()
    assert killed.state == State.RUNNING and killed.system_attrs.get(BEAT)   # as the dead worker left it
    code, out, err = finish(start(folder, args))
    assert code == 0, (out, err)
    assert f"note: s/journal.log.lock was held by process {victim.pid} of {os.uname().nodename}, which has ended: " \
        "taken over" in err, err
    trials = {t.number: t for t in study(folder / "s").get_trials()}
    assert trials[0].state == State.FAIL and trials[0].system_attrs[STALE] == "no heartbeat for 2s"
    (retried,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == 0]
    assert retried.state == State.COMPLETE and retried.params == trials[0].params
    assert len(finished(trials.values())) == 2
    assert main(["sweep", "--show", "--out", str(folder / "s")]) == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_worker_requeues_its_trial_and_a_restart_continues_the_study(folder: Path, signum) -> None:
    args = sweep_args("--trials", "2", "--no-prune", "--patience", "0", epochs=100)
    worker = start(folder, args)
    wait_for(lambda: reported(folder / "s"))   # into the epochs
    worker.send_signal(signum)   # once: the worker takes it as a request, which no import can lose
    code, out, err = finish(worker)
    assert code == 130 and "run the same command to continue" in err, (out, err)
    assert "nncompile: error" not in err and "Traceback" not in err
    trials = study(folder / "s").get_trials()
    assert [t.state for t in trials] == [State.FAIL, State.WAITING]
    code, out, err = finish(start(folder, args))
    assert code == 0, (out, err)
    trials = study(folder / "s").get_trials()
    assert [t.state for t in trials] == [State.FAIL, State.COMPLETE, State.COMPLETE]
    assert trials[1].params == trials[0].params


@pytest.fixture
def ctrl_c_raises():
    """SIGINT in this process as in a terminal's Python: KeyboardInterrupt, and not blocked (a
    suite started in the background has it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    signal.signal(signal.SIGINT, previous)


def ctrl_c_in_a_weakref_callback() -> None:
    """A Ctrl-C that comes while a weakref callback runs (an import lock's, say): a
    KeyboardInterrupt raised there is printed as "Exception ignored" and lost."""
    class Dying:
        pass

    dying = Dying()
    ref = weakref.ref(dying, lambda _: signal.raise_signal(signal.SIGINT))
    del dying
    assert ref() is None


def test_a_ctrl_c_that_python_would_lose_still_stops_the_worker_before_its_next_trial(
        folder: Path, monkeypatch, ctrl_c_raises) -> None:
    import nncompile.sweep.worker as worker

    written = worker.write_outputs

    def after_each_trial(*args, **kwargs):
        ctrl_c_in_a_weakref_callback()
        return written(*args, **kwargs)

    monkeypatch.setattr(worker, "write_outputs", after_each_trial)
    monkeypatch.chdir(folder)
    assert main(sweep_args("--trials", "3", "--no-prune")) == 130
    assert [t.state for t in study(folder / "s").get_trials()] == [State.COMPLETE]


@pytest.mark.parametrize("error", [NNError("the data cannot be read"), RuntimeError("a bug")])
def test_a_trial_that_fails_after_a_ctrl_c_is_requeued_as_an_interrupted_one(
        folder: Path, monkeypatch, ctrl_c_raises, error) -> None:
    """Ctrl-C during a long compile or data load: the trial may then end in an error, not at a step."""
    import nncompile.train.command as command

    def interrupted_then_failing(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)   # taken as a request: no KeyboardInterrupt here
        raise error

    monkeypatch.setattr(command, "run", interrupted_then_failing)
    monkeypatch.chdir(folder)
    assert main(sweep_args("--trials", "3", "--no-prune")) == 130
    trials = study(folder / "s").get_trials()
    assert [t.state for t in trials] == [State.FAIL, State.WAITING]
    assert trials[1].params == trials[0].params


def test_median_pruning_stops_the_trials_of_a_hopeless_learning_rate(folder: Path) -> None:
    result = cli(*sweep_args("--trials", "8", "--startup-trials", "2", space="lr=choice(1e-7,0.05)", epochs=4),
                 cwd=folder)
    assert result.returncode == 0, result
    trials = study(folder / "s").get_trials()
    pruned = [t for t in trials if t.state == State.PRUNED]
    assert pruned and all(t.params["lr"] == 1e-7 for t in pruned), [(t.state, t.params) for t in trials]
    assert all(max(t.intermediate_values) < 4 for t in pruned)   # stopped before the last epoch
    assert "worse than the median of the trials so far" in result.stdout


def test_a_sweep_on_an_sqlite_database_shares_its_study_the_same_way(folder: Path) -> None:
    url = f"sqlite:///{folder / 'sweep.db'}"
    workers = [start(folder, sweep_args("--trials", "3", "--storage", url)) for _ in range(2)]
    assert all(finish(w)[0] == 0 for w in workers)
    assert len(finished(study(folder, url).get_trials())) == 3
    shown = cli("sweep", "--show", "--storage", url, cwd=folder)
    assert shown.returncode == 0 and "study tiny in sqlite:///" in shown.stdout and "best: trial" in shown.stdout


def test_the_show_summary_gives_counts_by_state_and_the_best_trial(folder: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    assert main(sweep_args("--trials", "2", "--no-prune")) == 0
    capsys.readouterr()
    assert main(["sweep", "--show", "--out", "s", "--study", "tiny"]) == 0
    shown = capsys.readouterr().out
    best = study(folder / "s").best_trial
    assert shown.startswith("study tiny in s/journal.log: 2 trials (2 complete)\n")
    assert f"best: trial {best.number}, validation data loss {best.value:.4f}" in shown
    assert f"  reg        = {best.params['reg']:.6g}" in shown and best.user_attrs["run_dir"] in shown


def test_a_worker_with_another_space_is_refused_by_the_study(folder: Path) -> None:
    assert cli(*sweep_args("--trials", "1"), cwd=folder).returncode == 0
    other = cli(*sweep_args("--trials", "1", space="lr=loguniform(1e-4,1e-1)"), cwd=folder)
    assert other.returncode == 1 and "nncompile: error: study tiny was started with another space" in other.stderr


def test_user_mistakes_are_errors_not_tracebacks(folder: Path) -> None:
    for args, says in [(["sweep", "tiny.nn"], "give the space to search with --space"),
                       (["sweep", "tiny.nn", "--space", "rg=uniform(0,1)"], "the ones that exist: batch-size"),
                       (["sweep", "tiny.nn", "--space", "lr=uniform(0.1,1)", "--val-split", "0"],
                        "--val-split must be above 0"),
                       (["sweep", "tiny.nn", "--space", "momentum=uniform(0.5,0.9)"],   # adam's, the default
                        "the adam optimizer has no hyperparameter '--momentum'"),
                       (["sweep", "--show", "--out", "nowhere"], "no study here: nowhere/journal.log does not exist"),
                       (["sweep", "tiny.nn", "--space", "lr=uniform(0.1,1)", "--storage", "mysql://x@127.0.0.1:1/db"],
                        "--storage mysql://")]:
        result = cli(*args, cwd=folder)
        assert result.returncode == 1 and f"nncompile: error: " in result.stderr and says in result.stderr, result
        assert "Traceback" not in result.stderr
    assert not (folder / "nowhere").exists()


def test_a_space_whose_trials_all_fail_stops_after_a_run_of_failures_not_never(folder: Path) -> None:
    """A trial that fails is recorded and the sweep goes on; but where the last FAILURES_IN_A_ROW
    all failed (here every width but the data's 64), the worker stops rather than draw forever."""
    from nncompile.sweep.worker import FAILURES_IN_A_ROW

    write_nn(folder, "wide.nn", TINY.replace("const reg = 1e-3", "const reg = 1e-3\nconst D = 64")
             .replace("float[N, 64]", "float[N, D]").replace("[64, 10]", "[D, 10]"))
    done = cli("sweep", "wide.nn", "--out", "s", "--sampler", "random", "--epochs", "1", "--trials", "2",
               "--space", "D=int(16,32)", cwd=folder, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done
    assert f"nncompile: error: the last {FAILURES_IN_A_ROW} trials all failed, the last one with: " in done.stderr
    with open(folder / "s" / "trials.csv") as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == FAILURES_IN_A_ROW and {row["state"] for row in rows} == {"FAIL"}, rows


def test_without_optuna_the_sweep_says_how_to_install_it(folder: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["sweep", str(folder / "tiny.nn"), "--space", "lr=uniform(0.1,1)"]) == 1
    assert "nncompile: error: nncompile sweep needs Optuna, which is not installed: pip install 'nncompile[sweep]'" \
        in capsys.readouterr().err


def test_trials_are_ranked_by_the_validation_data_loss_without_the_penalty_the_models_loss_adds(folder: Path) -> None:
    """The oracle: the cross-entropy of the kept params' class probabilities on the validation
    split, computed here; the model's own loss adds reg * sum(W ** 2) to it."""
    result = cli(*sweep_args("--trials", "2", "--no-prune", space="reg=loguniform(1e-3,1e-1)"), cwd=folder)
    assert result.returncode == 0, result
    for trial in study(folder / "s").get_trials():
        run = load_run(trial.user_attrs["run_dir"])
        data = read_data(run, "digits", part="val")
        probabilities = np.asarray(run.predict_proba(X=data.arrays["X"]), dtype=np.float64)
        cross_entropy = -np.mean(np.log(probabilities[np.arange(len(data)), data.arrays["y"]]))
        assert trial.value == pytest.approx(cross_entropy, rel=1e-5)
        W = np.load(Path(trial.user_attrs["run_dir"]) / "params.npz")["W"].astype(np.float64)
        assert trial.params["reg"] * np.sum(W ** 2) > 1e-3 * cross_entropy   # a penalty that would show
        records = [json.loads(line) for line in (Path(trial.user_attrs["run_dir"]) / "metrics.jsonl").open()]
        assert trial.intermediate_values == {r["epoch"]: r["val_data_loss"] for r in records}
        assert all(r["val_loss"] > r["val_data_loss"] for r in records)


def test_the_loss_objective_ranks_by_the_models_loss_with_its_penalty(folder: Path) -> None:
    result = cli(*sweep_args("--trials", "1", "--no-prune", "--objective", "loss"), cwd=folder)
    assert result.returncode == 0, result
    (trial,) = study(folder / "s").get_trials()
    records = [json.loads(line) for line in (Path(trial.user_attrs["run_dir"]) / "metrics.jsonl").open()]
    assert trial.intermediate_values == {r["epoch"]: r["val_loss"] for r in records}
    assert f"validation loss {trial.value:.4f}" in result.stdout


def test_the_error_objective_ranks_trials_by_one_minus_their_validation_accuracy(folder: Path) -> None:
    result = cli(*sweep_args("--trials", "2", "--no-prune", "--objective", "error"), cwd=folder)
    assert result.returncode == 0, result
    trials = study(folder / "s").get_trials()
    assert [t.state for t in trials] == [State.COMPLETE] * 2
    assert all(t.value == 1 - t.user_attrs["val_acc"] for t in trials)
    best = min(trials, key=lambda t: t.value)
    assert f"best: trial {best.number}, validation error {best.value:.4f}" in result.stdout


def test_a_model_without_a_data_loss_is_ranked_by_its_loss_and_said_so(folder: Path) -> None:
    """No data_loss output and no loss op the trainer knows: data-loss, the default, cannot rank."""
    write_nn(folder, "tiny.nn", """
        input X: float[N, 64]
        input y: int[N]
        param W: [64, 4] = normal(std=0.01)
        h = tanh(X @ W)
        output h
        loss = sum(h ** 2)
        minimize loss
    """)
    result = cli(*sweep_args("--trials", "2", space="lr=loguniform(1e-3,1e-1)"), cwd=folder)
    assert result.returncode == 0, result
    assert "tiny.nn has no data_loss output and no loss op the trainer knows: trials are ranked by its loss" \
        in result.stderr
    loaded = study(folder / "s")
    assert loaded.user_attrs["nncompile:objective"] == "loss"
    for trial in loaded.get_trials():
        assert trial.state == State.COMPLETE
        records = [json.loads(line) for line in (Path(trial.user_attrs["run_dir"]) / "metrics.jsonl").open()]
        assert trial.intermediate_values == {r["epoch"]: r["val_loss"] for r in records}


def test_a_study_goes_on_with_its_own_objective_unless_another_is_asked_for(folder: Path) -> None:
    """A study ranked by loss (as one made before data-loss was the default is) continues with it."""
    assert cli(*sweep_args("--trials", "1", "--no-prune", "--objective", "loss"), cwd=folder).returncode == 0
    again = cli(*sweep_args("--trials", "2", "--no-prune"), cwd=folder)
    assert again.returncode == 0, again
    trials = study(folder / "s").get_trials()
    assert [t.state for t in trials] == [State.COMPLETE] * 2
    records = [json.loads(line) for line in (Path(trials[1].user_attrs["run_dir"]) / "metrics.jsonl").open()]
    assert trials[1].intermediate_values == {r["epoch"]: r["val_loss"] for r in records}
    other = cli(*sweep_args("--trials", "3", "--objective", "data-loss"), cwd=folder)
    assert other.returncode == 1 and "nncompile: error: study tiny was started with another objective" in other.stderr
