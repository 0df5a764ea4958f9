"""Data-parallel training (nncompile/train/distributed.py), run as a user runs it: the real
mpiexec of the MPICH wheel starting real workers on localhost. The oracles are a run in one
process (the same global batches) and, where batch norm and dropout make the workers' shards
matter, the per-shard computation written out here with the module's own value_and_grad.

The tests that start workers need mpi4py and mpiexec (bash scripts/mpi_check.sh installs them)."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, cli, write_nn
from hypothesis import given
from hypothesis import strategies as st

from nncompile.errors import NNError
from nncompile.train.checkpoint import load_checkpoint
from nncompile.train.distributed import World, rank_noise, shard

MPIEXEC = Path(sys.executable).parent / "mpiexec"
BN_DROPOUT = """
    import nn
    const D = 32, H = 16, C = 4
    input X: float[N, D]
    input y: int[N]
    h1 = dense_bn(X, out=H) as fc1
    h2 = dense_dropout(h1, out=H, p=0.25) as fc2
    scores = linear(h2, out=C) as fc3
    output scores
    train {
        loss = softmax_cross_entropy(scores, y)
        minimize loss
    }
"""


@pytest.fixture
def mpi() -> None:
    pytest.importorskip("mpi4py")
    if not MPIEXEC.exists():
        pytest.skip("no mpiexec beside this Python (pip install 'nncompile[mpi]')")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def mpiexec(k: int, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MPIEXEC), "-n", str(k), sys.executable, *map(str, args)], env=env(), text=True,
                          capture_output=True, timeout=timeout)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def params_of(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "checkpoint.npz") as saved:
        return {k: saved[k] for k in saved.files if k.startswith("param/")}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- sharding and the workers' dropout streams ------------------------------------------------

@given(st.integers(0, 2000), st.integers(1, 16))
def test_the_shards_of_a_batch_cover_it_in_order_and_differ_by_at_most_one_example(n: int, k: int) -> None:
    bounds = [shard(n, k, r) for r in range(k)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(hi == lo for (_, hi), (lo, _) in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1


def test_a_workers_dropout_stream_depends_on_the_step_alone_and_differs_between_workers() -> None:
    first, again, other = rank_noise(5, 0), rank_noise(5, 0), rank_noise(5, 1)
    drawn = [first(step).random(3) for step in range(4)]
    first(9).random(1000)   # draws at another step leave the streams of the steps alone
    assert all(np.array_equal(first(step).random(3), drawn[step]) for step in range(4))
    assert np.array_equal(again(2).random(3), drawn[2])
    assert not np.array_equal(other(2).random(3), drawn[2])


# ---- errors without MPI -----------------------------------------------------------------------

def test_workers_without_mpi4py_is_an_error_with_the_pip_command(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['mpi4py'] = None; from nncompile.cli import main; "
            f"sys.exit(main(['train', {str(EXAMPLES / 'digits_mlp.nn')!r}, '--workers', '2', '--out', "
            f"{str(tmp_path / 'run')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], env=env(), text=True, capture_output=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("nncompile: error: --workers needs mpi4py") and "pip install 'nncompile[mpi]'" \
        in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_process_started_by_mpiexec_without_mpi4py_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(NNError, match=r"needs mpi4py .*pip install 'nncompile\[mpi\]'"):
        World.detect()
    monkeypatch.setenv("PMI_SIZE", "1")   # a launcher's single process trains alone, with or without mpi4py
    assert World.detect() is None


def test_outside_mpiexec_there_is_no_world(monkeypatch) -> None:
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert World.detect() is None


def test_the_workers_are_given_the_arguments_that_parse_back_to_the_same_settings() -> None:
    from nncompile.cli import build_parser
    from nncompile.train.cli import _argv

    given_ = ["train", "m.nn", "--workers", "3", "--lr", "0.003", "--map", "X=a", "--map", "y=b", "--grad-check",
              "--no-progress", "--seed", "4", "--worker-timeout", "9.5", "--schedule=step:every=2,gamma=0.5"]
    args = build_parser().parse_args(given_)
    again = build_parser().parse_args(["train", *_argv(args)])
    assert "--workers" not in " ".join(_argv(args))
    assert {k: v for k, v in vars(again).items() if k not in ("workers", "train_parser")} == \
        {k: v for k, v in vars(args).items() if k not in ("workers", "train_parser")}


# ---- two workers on localhost -----------------------------------------------------------------

def test_two_workers_take_the_steps_of_one_process_with_the_same_global_batch(mpi, tmp_path: Path) -> None:
    """float64, a batch of 101 (shards of 51 and 50; the last batch of each epoch 83: 42 and 41)."""
    common = ["train", EXAMPLES / "digits_mlp.nn", "--dtype", "float64", "--epochs", "2", "--batch-size", "101",
              "--val-every", "1", "--no-progress"]
    one = cli(*common, "--out", tmp_path / "one", timeout=120)
    assert one.returncode == 0, one.stderr
    two = mpiexec(2, "-m", "nncompile", *common, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr + two.stdout
    assert two.stdout.count("epoch 2/2") == 1   # rank 0 alone speaks
    alone, together = params_of(tmp_path / "one"), params_of(tmp_path / "two")
    assert alone.keys() == together.keys() and len(alone) == 4
    for name in alone:
        assert relative(together[name], alone[name]) < 1e-12, name
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert a["step"] == b["step"] and a["val_acc"] == b["val_acc"] and a["acc"] == b["acc"]
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-12 * a["val_loss"] and abs(a["loss"] - b["loss"]) < 1e-12
        assert abs(a["val_data_loss"] - b["val_data_loss"]) < 1e-12 * a["val_data_loss"]
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two")]
    assert summaries[0]["test"]["acc"] == summaries[1]["test"]["acc"]


def test_with_batch_norm_and_dropout_each_shard_counts_by_its_size_and_the_workers_stay_identical(
        mpi, tmp_path: Path) -> None:
    """Batch statistics are each worker's own and so are the dropout masks, so the run is not the
    one-process run: it is the sum, weighted by shard size, of each shard's gradient computed with
    its own statistics and masks, with the running statistics averaged the same way."""
    from nncompile.train import Dataset, TrainConfig, Trainer

    model = write_nn(tmp_path, "bn_dropout.nn", BN_DROPOUT)
    generator = np.random.default_rng(3)
    arrays = {"X": generator.normal(size=(90, 32)), "y": generator.integers(0, 4, 90)}
    np.savez(tmp_path / "data.npz", **arrays)
    batch, epochs = 25, 2   # 25, 25, 25, 15 per epoch: shards 13/12 and 8/7
    done = mpiexec(2, ROOT / "tests" / "distributed_worker.py", model, tmp_path / "data.npz", tmp_path, batch, epochs,
                   "adam")
    assert done.returncode == 0, done.stderr + done.stdout
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(np.array_equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), "the workers drifted apart"
    assert (int(ranks[0]["module_buffers"]), int(ranks[0]["copied"])) == (8, 0)   # value_and_grad's own buffer

    trainer = Trainer(model, TrainConfig(dtype="float64", batch_size=batch, epochs=epochs, optimizer="adam", lr=1e-2,
                                         val_split=0.0, seed=7, patience=0))
    module, state = trainer.module, trainer.init_state()
    params, opt, running = state.params, state.opt, state.model_state
    data = trainer.prepare(Dataset.from_arrays(arrays)).arrays
    noise = [rank_noise(7, r) for r in range(2)]
    for _ in range(epochs):
        order = state.rng.permutation(90)
        for start in range(0, 90, batch):
            rows = order[start:start + batch]
            halves = np.array_split(rows, 2)   # the first half takes the odd example
            grads = {k: np.zeros_like(v) for k, v in params.items()}
            averaged = {k: np.zeros_like(v) for k, v in running.items()}
            for r, part in enumerate(halves):
                share = len(part) / len(rows)
                _, g, new = module.value_and_grad(params, running, noise[r](opt["step"]),
                                                  **{k: v[part] for k, v in data.items()})
                for k in grads:
                    grads[k] += share * g[k]
                for k in averaged:
                    averaged[k] += share * new[k]
            module.apply_update(params, grads, opt, 1e-2)
            running = averaged
    assert int(ranks[0]["steps"]) == opt["step"] == 8
    for name, value in {**{f"param/{k}": v for k, v in params.items()},
                        **{f"state/{k}": v for k, v in running.items()}}.items():
        assert relative(ranks[0][name], value) < 1e-12, name


MLP_L2 = """
    import nn
    const D = 32, H = 16, C = 4
    input X: float[N, D]
    input y: int[N]
    h = relu(linear(X, out=H) as fc1)
    scores = linear(h, out=C) as fc2
    output scores
    data_loss = softmax_cross_entropy(scores, y)
    loss = data_loss + 0.01 * sum(fc1.W ** 2)
    output data_loss
    minimize loss
"""


def workers_and_one_process(tmp_path: Path, examples: int, batch: int, epochs: int, val: int = 0):
    """Two workers (tests/distributed_worker.py) and one process training the same run: their
    saved files, and the one process's trainer and state."""
    from nncompile.train import Dataset, TrainConfig, Trainer

    model = write_nn(tmp_path, "mlp_l2.nn", MLP_L2)
    generator = np.random.default_rng(5)
    arrays = {"X": generator.normal(size=(examples + val, 32)), "y": generator.integers(0, 4, examples + val)}
    np.savez(tmp_path / "data.npz", **arrays)
    done = mpiexec(2, ROOT / "tests" / "distributed_worker.py", model, tmp_path / "data.npz", tmp_path, batch, epochs,
                   "adam", val)
    assert done.returncode == 0, done.stderr + done.stdout
    trainer = Trainer(model, TrainConfig(dtype="float64", batch_size=batch, epochs=epochs, optimizer="adam", lr=1e-2,
                                         val_split=0.0, seed=7, patience=0, val_every=1))
    part = lambda rows: trainer.prepare(Dataset.from_arrays({k: v[rows] for k, v in arrays.items()}))  # noqa: E731
    state = trainer.train(part(slice(0, examples)), part(slice(examples, None)) if val else None)
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)], state


def test_a_worker_left_without_examples_adds_nothing_and_the_run_is_one_process_bit_for_bit(mpi, tmp_path) -> None:
    """A batch of one: worker 1 has no shard, so the workers all-reduce copies, not the module's buffer."""
    ranks, state = workers_and_one_process(tmp_path, examples=30, batch=1, epochs=1)
    for rank in ranks:
        assert (int(rank["steps"]), int(rank["module_buffers"]), int(rank["copied"])) == (30, 0, 30)
        for name, value in state.params.items():
            assert np.array_equal(rank[f"param/{name}"], value), name


def test_the_workers_validate_their_shards_of_the_split_and_get_the_one_process_figures(mpi, tmp_path) -> None:
    """41 validation examples: 21 for worker 0 and 20 for worker 1, each epoch; the figures summed."""
    ranks, state = workers_and_one_process(tmp_path, examples=90, batch=25, epochs=2, val=41)
    assert [int(rank["validated"]) for rank in ranks] == [2 * 21, 2 * 20]
    for rank in ranks:
        assert (int(rank["module_buffers"]), int(rank["copied"])) == (8, 0)
        assert np.array_equal(rank["val/acc"], [r["val_acc"] for r in state.history])
        for figure in ("loss", "data_loss"):
            alone = np.array([r[f"val_{figure}"] for r in state.history])
            assert relative(rank[f"val/{figure}"], alone) < 1e-12, figure
        assert np.all(rank["val/loss"] > rank["val/data_loss"])   # the penalty is left out of the data loss


def worker_pids(ancestor: int) -> dict[int, int]:
    """The MPI rank -> pid of the workers descended from process ``ancestor`` (Linux /proc)."""
    parents, ranks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = [item for item in environ if item.startswith(b"PMI_RANK=")]
        if rank:
            ranks[int(entry.name)] = int(rank[0].split(b"=")[1])
    found = {}
    for pid, rank in ranks.items():
        up = pid
        while up in parents and up not in (0, 1, ancestor):
            up = parents[up]
        if up == ancestor:
            found[rank] = pid
    return found


def start_workers(tmp_path: Path, *more: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nncompile", "train", str(EXAMPLES / "digits_mlp.nn"), "--workers",
                             "2", "--epochs", "100000", "--patience", "0", "--checkpoint-every", "1", "--no-progress",
                             "--out", str(tmp_path / "run"), *more], env=env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_for_epochs(process: subprocess.Popen[str], run_dir: Path, epochs: int) -> dict[int, int]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        written = (run_dir / "metrics.jsonl").read_text().count("\n") if (run_dir / "metrics.jsonl").exists() else 0
        pids = worker_pids(process.pid)
        if written >= epochs and len(pids) == 2:
            return pids
        time.sleep(0.1)
    process.kill()
    raise AssertionError("the workers did not train")


def test_a_killed_worker_ends_the_run_with_an_error_leaving_a_checkpoint_that_resumes(mpi, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_workers(tmp_path)
    try:
        pids = wait_for_epochs(process, run_dir, 3)
        os.kill(pids[1], signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1, err
    assert "nncompile: error: a worker ended abnormally" in err and \
        f"nncompile train --resume --out {run_dir} --workers 2" in err and "Traceback" not in err
    from nncompile.compiler import load_module

    slots = load_module((run_dir / "model.py").read_text(), "saved").SLOTS
    state, _ = load_checkpoint(run_dir / "checkpoint.npz", slots)
    assert state.epoch >= 3 and len(metrics(run_dir)) == state.epoch
    resumed = cli("train", "--resume", "--out", run_dir, "--epochs", str(state.epoch + 2), "--workers", "2",
                  timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} after epoch {state.epoch}" in resumed.stdout
    assert f"epoch {state.epoch + 2}/{state.epoch + 2}" in resumed.stdout
    after, _ = load_checkpoint(run_dir / "checkpoint.npz", slots)
    assert after.epoch == state.epoch + 2 and after.step > state.step
    straight = cli("train", EXAMPLES / "digits_mlp.nn", "--workers", "2", "--epochs", str(state.epoch + 2),
                   "--patience", "0", "--out", tmp_path / "straight", timeout=120)
    assert straight.returncode == 0, straight.stderr
    assert all(np.array_equal(v, params_of(tmp_path / "straight")[k]) for k, v in params_of(run_dir).items()), \
        "the resumed run is not the run never interrupted"


def test_ctrl_c_stops_every_worker_after_the_same_step_and_rank_0_checkpoints_it(mpi, tmp_path: Path) -> None:
    process = start_workers(tmp_path)
    try:
        wait_for_epochs(process, tmp_path / "run", 2)
        process.send_signal(signal.SIGINT)   # as a terminal's Ctrl-C: the launcher passes it on to mpiexec
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert err.count(f"continue it with nncompile train --resume --out {tmp_path / 'run'}") == 1, err
    assert "Traceback" not in err and "BAD TERMINATION" not in out + err
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoint.npz", ("m", "v"))
    assert state.epoch >= 2 and len(state.step_losses) == state.step


def test_a_hung_worker_ends_the_run_after_the_worker_timeout(mpi, tmp_path: Path) -> None:
    process = start_workers(tmp_path, "--worker-timeout", "2")
    try:
        pids = wait_for_epochs(process, tmp_path / "run", 1)
        os.kill(pids[1], signal.SIGSTOP)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        for pid in worker_pids(process.pid).values():
            os.kill(pid, signal.SIGKILL)
    assert process.returncode == 1, err
    assert "nncompile: error: worker 0 of 2 waited 2s for the others" in err and "Traceback" not in err
    load_checkpoint(tmp_path / "run" / "checkpoint.npz", ("m", "v"))


def test_an_error_every_worker_meets_is_reported_once_by_rank_0(mpi, tmp_path: Path) -> None:
    done = mpiexec(2, "-m", "nncompile", "train", EXAMPLES / "digits_mlp.nn", "--data", tmp_path / "missing.npz",
                   "--out", tmp_path / "run", timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("nncompile: error:") == 1 and "missing.npz" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Abort" not in done.stderr


def test_every_train_command_of_docs_distributed_md_parses() -> None:
    """The commands of *Data-parallel training*, with mpiexec's own options cut off."""
    import shlex

    from nncompile.cli import build_parser

    text = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    section = text[text.index("## Data-parallel training"):]
    commands = [line.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)
                for line in block.splitlines() if "nncompile train" in line]
    assert len(commands) >= 5 and any("--workers" in c for c in commands) and any("mpiexec -f" in c for c in commands)
    for command in commands:
        words = shlex.split(command, comments=True)
        args = build_parser().parse_args(words[words.index("nncompile") + 1:])
        assert args.run.__name__ == "run_train", command
