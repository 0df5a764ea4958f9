"""Data-parallel training over MPI: ``mpiexec -n K nncompile train MODEL.nn ...``.

K processes (workers, the MPI ranks) train one model. Each compiles the model, loads the data
and shuffles it with the run's seed, so all agree on every global batch of ``--batch-size``
examples; each takes its shard of it (:func:`shard`), runs the module's ``value_and_grad`` on
it and scales the gradient by its share of the batch, in the one flat buffer value_and_grad
writes it to (``flat_grads``). An in-place ``Allreduce`` per step sums that buffer over the
workers, and every worker applies the same ``apply_update`` to the same params, which reads
the buffer as it is: they stay identical without ever being sent again. Beside it travel the
running statistics (batch norm: the workers' updates, averaged by the same weights), the
batch's loss and hits and a Ctrl-C flag, in a non-blocking all-reduce under way during the
other (MPICH sums no datatype that spans two buffers), so a step waits for one round of
communication. Validation is shared out alike (:meth:`DataParallel.evaluate`). Rank 0
broadcasts the run's state at the start and alone writes logs, checkpoints and curves; see
docs/distributed.md.

**The seam.** :meth:`DataParallel._local_gradients` is the only code that knows where the
gradients come from. Where the module makes no flat buffer (CuPy; scalar params), or a batch
leaves a worker without examples, the gradients are copied (and weighted) into
:attr:`DataParallel.grads` instead, views laid out exactly as the module's own buffer
(``_starts`` order and alignment) in one buffer with the rest, summed by one ``Allreduce``.

On the CuPy backend the buffer lives on the GPU and is summed by NCCL (through
``cupy.cuda.nccl``); MPI only hands the NCCL id from rank 0 to the others.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import NNError
from .checkpoint import TrainState
from .data import Dataset
from .trainer import Metrics, to_host

if TYPE_CHECKING:
    from .loop import Stop
    from .trainer import Trainer

INSTALL = "pip install 'nncompile[mpi]'   (mpi4py and the MPICH wheel, which brings mpiexec)"
# Set in every process an MPI launcher starts: MPICH's hydra and Intel MPI (PMI), Open MPI, PMIx, Slurm's srun.
LAUNCHED = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
WORKER_TIMEOUT = 300.0   # seconds one all-reduce may wait for the other workers before the run gives up
AGREE_SECONDS = 20.0     # how long a failing worker waits for the others to fail alike before aborting
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def shard(n: int, size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s slice [lo, hi) of a batch of ``n`` examples split over ``size`` workers:
    the first ``n % size`` workers take one example more (a worker may get none)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def rank_noise(seed: int, rank: int) -> Callable[[int], np.random.Generator]:
    """Worker ``rank``'s dropout stream, as a function of the step: a counter-based generator
    (Philox) keyed by (seed, rank) whose counter is set to the step. Every step's masks depend
    on the step alone, so a run resumed from any checkpoint draws what it would have drawn."""
    generator = np.random.Generator(np.random.Philox(key=np.random.SeedSequence([seed, 3, rank]).generate_state(
        2, np.uint64)))
    bits = generator.bit_generator
    saved = bits.state

    def at(step: int) -> np.random.Generator:
        saved["state"]["counter"][:] = (0, step, 0, 0)
        saved["buffer_pos"], saved["has_uint32"] = 4, 0   # nothing left over from the last step
        bits.state = saved
        return generator
    return at


@dataclass
class World:
    """The workers of one run, as MPI (mpi4py) sees them from this process."""

    comm: Any                  # mpi4py.MPI.Intracomm: the run's collectives
    rank: int
    size: int
    local_size: int            # workers on this host
    local_rank: int
    spare: Any = None          # a duplicate communicator, for agreeing on failures only
    finished: bool = False     # training is over: the others no longer wait for this worker
    timeout: float = WORKER_TIMEOUT   # --worker-timeout
    threads: Any = field(default=None, repr=False)   # the BLAS thread limit, kept in force

    @property
    def root(self) -> bool:
        return self.rank == 0

    @classmethod
    def detect(cls) -> World | None:
        """The world this process was started in by mpiexec (None outside MPI, or alone)."""
        expected = max([int(os.environ[name]) for name in SIZES if os.environ.get(name, "").isdigit()], default=0)
        if not any(name in os.environ for name in LAUNCHED) or expected == 1:
            return None
        if expected == 0 and find_spec("mpi4py") is None:
            return None   # a launcher that does not say how many (srun --mpi=pmix, say), and no MPI to ask: alone
        MPI = mpi()
        comm = MPI.COMM_WORLD
        if comm.Get_size() == 1:
            if expected > 1:
                raise NNError(f"mpiexec started {expected} processes, but MPI sees only this one: the mpiexec "
                              f"that launched them does not belong to the MPI library mpi4py loaded "
                              f"({MPI.Get_library_version().splitlines()[0].strip()}); launch with that MPI's "
                              "mpiexec (with the MPICH wheel: the one next to this Python), or with "
                              "nncompile train --workers")
            return None
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        world = cls(comm, comm.Get_rank(), comm.Get_size(), local.Get_size(), local.Get_rank(), comm.Dup())
        local.Free()
        world.threads = limit_threads(world.local_size)
        return world

    def say(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` on rank 0; silence on the others."""
        return log if self.root else (lambda line: None)

    def share(self, state: TrainState | None, error: BaseException | None, trainer: Trainer) -> TrainState:
        """Rank 0's state (or its error, raised on every worker), the same on every worker."""
        state, error = self.comm.bcast((state, error) if self.root else None, root=0)
        if error is not None:
            raise error
        assert state is not None
        if not self.root and trainer.xp is np:   # the module's one-buffer layout, as on rank 0
            state = trainer.laid_out(state, "the state rank 0 sent")   # type: ignore[arg-type]
        return state

    def same(self, params: dict[str, Any]) -> bool:
        """Whether every worker holds exactly these params (a checksum of their bytes)."""
        crc = 0
        for name in sorted(params):
            crc = zlib.crc32(np.ascontiguousarray(to_host(params[name])).tobytes(), crc)
        return len(set(self.comm.allgather(crc))) == 1

    def fail(self, exc: BaseException) -> int:
        """End this worker after ``exc``. If every worker failed at the same point (a bad flag,
        a diverged loss, Ctrl-C), rank 0 re-raises it to be reported as usual and the others
        end quietly; a worker that failed alone says why and aborts the run, since the others
        would wait for it forever."""
        if self.finished and self.root:
            raise exc   # the others are done: nobody waits for rank 0's last files
        if self._agreed():
            if self.root:
                raise exc
            return 130 if isinstance(exc, KeyboardInterrupt) else 1
        what = exc.format() if isinstance(exc, NNError) else f"nncompile: error: {type(exc).__name__}: {exc}"
        sys.stderr.write(f"{what}\n(in worker {self.rank} of {self.size}, alone: stopping the others; the run's "
                         "last checkpoint stands)\n")
        sys.stderr.flush()
        time.sleep(0.2)   # let mpiexec pass the message on before the abort takes the process down
        self.comm.Abort(1)
        return 1   # pragma: no cover  (Abort does not return)

    def _agreed(self) -> bool:
        """Whether every worker reaches this point within AGREE_SECONDS (a non-blocking barrier
        on the spare communicator, which the training's collectives never use)."""
        request = self.spare.Ibarrier()
        deadline = time.monotonic() + AGREE_SECONDS
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def launch(workers: int, argv: list[str], run_dir: Path | None) -> int:
    """``nncompile train --workers K``: run ``mpiexec -n K python -m nncompile train ARGV`` and
    return its exit status, or 1 with an error that says what happened when a worker died."""
    if workers < 1:
        raise NNError(f"--workers must be a positive whole number, not {workers}")
    mpiexec = Path(sys.executable).parent / "mpiexec"   # the MPICH wheel's, beside this Python
    found = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    missing = [name for name, there in (("mpi4py", find_spec("mpi4py")), ("mpiexec", found)) if there is None]
    if missing:
        raise NNError(f"--workers needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                      f"not installed: {INSTALL}")
    process = subprocess.Popen([found, "-n", str(workers), sys.executable, "-m", "nncompile", "train", *argv],
                               stdin=subprocess.DEVNULL, preexec_fn=_detach)
    forward = lambda signum, frame: process.send_signal(signum)   # noqa: E731
    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if status in (0, 1, 130):   # done, or rank 0 has said what went wrong
        return status
    number = status - 128 if status > 128 else -status if status < 0 else status   # a shell's 128 + N, or -N
    how = f", {signal.Signals(number).name}" if number in signal.valid_signals() else ""
    where = run_dir if run_dir is not None else "RUN_DIR"
    raise NNError(f"a worker ended abnormally (mpiexec's status {status}{how}) and mpiexec stopped the others; the "
                  f"last checkpoint in {where} stands: continue with nncompile train --resume --out {where} "
                  f"--workers {workers}")


def _detach() -> None:
    """In mpiexec's process before it starts: its own process group, so that a Ctrl-C reaches it
    once, from ``launch`` (mpiexec passes it on to the workers); and on Linux a SIGTERM when
    ``launch``'s process dies, so that mpiexec stops the workers rather than outlive it."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def mpi() -> Any:
    """mpi4py's MPI module, or an error that says how to install it."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:
        raise NNError(f"training over several workers needs mpi4py and an MPI library ({exc}): {INSTALL}") from None
    return MPI


def limit_threads(workers: int) -> Any:
    """One host's cores shared out among its workers: each worker's BLAS gets cores // workers
    threads, unless the user set a thread count (OMP_NUM_THREADS, ...) or threadpoolctl is absent."""
    if any(name in os.environ for name in THREAD_VARIABLES):
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return threadpool_limits(max(1, cores // workers))


class HostSum:
    """Sums numpy buffers over the workers in place: MPI's Allreduce. Several buffers are summed
    at once (the others' non-blocking all-reduces in flight during the first's): MPICH defines
    MPI_SUM on no datatype that would take two buffers in one call."""

    def __init__(self, comm: Any):
        MPI = mpi()
        self.comm, self.in_place, self.wait = comm, MPI.IN_PLACE, MPI.Request.Waitall

    def __call__(self, buffer: np.ndarray, *more: np.ndarray) -> None:
        requests = [self.comm.Iallreduce(self.in_place, other) for other in more]
        self.comm.Allreduce(self.in_place, buffer)
        self.wait(requests)


class DeviceSum:
    """Sums a CuPy buffer over the workers in place, on the GPUs: NCCL through cupy.cuda.nccl,
    MPI only sending rank 0's NCCL id to the others. (Untested without NVIDIA GPUs.)"""

    def __init__(self, comm: Any, dtype: np.dtype):
        import cupy
        from cupy.cuda import nccl

        kinds = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
                 np.dtype(np.float64): nccl.NCCL_FLOAT64}
        uid = comm.bcast(nccl.get_unique_id() if comm.Get_rank() == 0 else None, root=0)
        self.nccl, self.cupy, self.kind, self.sum = nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank()), \
            cupy, kinds[np.dtype(dtype)], nccl.NCCL_SUM

    def __call__(self, buffer: Any) -> None:
        pointer = buffer.data.ptr
        self.nccl.allReduce(pointer, pointer, buffer.size, self.kind, self.sum, self.cupy.cuda.get_current_stream().ptr)


def use_device(world: World) -> None:
    """Each worker on a host takes its own GPU (NCCL needs one per worker), before CuPy allocates."""
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if world.local_size > count:
        raise NNError(f"{world.local_size} workers on this host, but it has {count} GPU(s): start at most one "
                      "worker per GPU")
    cupy.cuda.Device(world.local_rank).use()


class Watchdog:
    """Aborts the run when one all-reduce waits longer than ``timeout`` seconds: a worker that
    has hung (or a network that has) would otherwise keep the others waiting for ever. A
    worker that dies is noticed sooner, by mpiexec, which then stops the others."""

    def __init__(self, world: World, timeout: float):
        self.world, self.timeout = world, timeout
        self.since: float | None = None
        self.step = 0
        threading.Thread(target=self._watch, name="nncompile-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self.since
            if since is not None and time.monotonic() - since > self.timeout:
                world = self.world
                sys.stderr.write(f"nncompile: error: worker {world.rank} of {world.size} waited {self.timeout:g}s "
                                 f"for the others in the all-reduce of step {self.step}: one of them has hung or "
                                 "lost its connection; stopping the run (its last checkpoint stands: continue it "
                                 "with --resume)\n")
                sys.stderr.flush()
                time.sleep(0.2)
                world.comm.Abort(1)


class DataParallel:
    """The training step of one worker: its shard of the global batch, one all-reduce, the update.

    ``step`` has the signature of the module's ``step`` and is what the epoch loop calls
    (nncompile/train/loop.py asks ``trainer.parallel`` for it); ``hit_counter`` gives the loop
    the hits of the whole batch, summed with the gradients; ``evaluate`` the validation
    figures, each worker measuring its shard of the split.
    """

    def __init__(self, trainer: Trainer, world: World, *, timeout: float = WORKER_TIMEOUT):
        module, xp = trainer.module, trainer.xp
        self.trainer, self.world, self.xp = trainer, world, xp
        self.value_and_grad, self.apply_update = module.value_and_grad, module.apply_update
        self.loss, self.scores, self.labels = trainer.loss, trainer.scores, trainer.labels
        self.counter = trainer.hit_counter()
        self.noise = rank_noise(trainer.config.seed, world.rank)
        self.sum = HostSum(world.comm) if xp is np else DeviceSum(world.comm, module.DTYPE)
        self.host_sum = self.sum if xp is np else HostSum(world.comm)
        self.flat_grads = getattr(module, "flat_grads", None) if xp is np else None   # value_and_grad's own buffer
        self.watchdog = Watchdog(world, timeout)
        self.hits, self.asked = 0, False   # asked: a Ctrl-C has come to this worker
        # The flat buffer: the gradients in the module's own flat layout, the model's state, then 3 numbers.
        names = module.TRAINABLE
        shapes = [module.PARAMS[name][0] for name in names]
        starts, size = module._starts([int(np.prod(shape)) for shape in shapes])
        states = list(getattr(module, "STATE", {}).items()) if trainer.has_state else []
        total = size + sum(int(np.prod(shape)) for _, (shape, _) in states)
        self.flat = xp.zeros(total + 3, dtype=module.DTYPE)
        self.head, self.tail = self.flat[:size], self.flat[size:]   # the gradients; what travels beside them
        self.grads = {name: self.flat[s:s + int(np.prod(shape))].reshape(shape)
                      for name, shape, s in zip(names, shapes, starts)}
        self.state: dict[str, Any] = {}
        for name, (shape, _) in states:
            self.state[name] = self.flat[size:size + int(np.prod(shape))].reshape(shape)
            size += int(np.prod(shape))
        self.at_loss, self.at_hits, self.at_stop = total, total + 1, total + 2

    def hit_counter(self) -> Callable[[Any, Any], int] | None:
        """For the loop: the hits of the last step's whole batch (its arguments, this worker's
        outputs and the batch's labels, are not needed: the count came with the all-reduce)."""
        return None if self.counter is None else (lambda predicted, truth: self.hits)

    def step_function(self, stop: Stop) -> Callable[..., Any]:
        """The step the loop calls, agreeing with the other workers on ``stop`` (Ctrl-C).

        The loop's deferred Ctrl-C sets ``stop.requested`` the moment it comes, which would
        stop this worker a step before or after the others. So a Ctrl-C only marks this worker
        as asked; the flag travels with the step's all-reduce, and ``stop.requested`` becomes
        whether any worker was asked: the same on every worker, after the same step."""
        handler = signal.getsignal(signal.SIGINT)
        if getattr(handler, "__module__", None) == "nncompile.train.loop":   # the loop defers Ctrl-C: take it over
            signal.signal(signal.SIGINT, self._asked)

        def step(params: dict[str, Any], opt: dict[str, Any], lr: float, model_state: dict[str, Any] | None = None,
                 rng: Any = None, /, **batch: Any) -> Any:
            return self.step(stop, params, opt, lr, model_state, **batch)
        return step

    def step(self, stop: Stop, params: dict[str, Any], opt: dict[str, Any], lr: float,
             model_state: dict[str, Any] | None, **batch: Any) -> Any:
        n = len(next(iter(batch.values())))
        lo, hi = shard(n, self.world.size, self.world.rank)
        # Every worker has a shard: each all-reduces the module's own buffer (the same choice on all).
        own = self.flat_grads is not None and n >= self.world.size
        if hi > lo:
            outputs, grads, buffer = self._local_gradients(params, model_state, opt["step"], (hi - lo) / n,
                                                           {k: v[lo:hi] for k, v in batch.items()}, own)
        else:
            outputs, grads, buffer = self._nothing(), self.grads, self.head
        self.flat[self.at_stop] = 1.0 if self.asked else 0.0
        loss, hits, stopping = self._all_reduce(opt["step"], self.sum, (buffer, self.tail) if own else (self.flat,), 3)
        stop.requested = stopping > 0   # every worker stops after the same step
        self.hits = int(round(hits))
        self.apply_update(params, grads, opt, lr)
        outputs[self.loss] = loss
        if self.state:
            return outputs, {name: view.copy() for name, view in self.state.items()}
        return outputs

    def _all_reduce(self, step: int, summed: Callable[..., None], buffers: tuple[Any, ...], last: int) -> list[float]:
        """``summed(*buffers)``, watched (:class:`Watchdog`; a broken link is an NNError), and
        the ``last`` numbers of the last buffer."""
        watchdog = self.watchdog
        watchdog.step, watchdog.since = step, time.monotonic()
        try:
            summed(*buffers)
            return buffers[-1][-last:].tolist()   # on the GPU: waits for NCCL
        except Exception as exc:   # mpi4py's MPI.Exception: a worker died or its link broke
            raise NNError(f"the all-reduce of step {step} failed: {exc}") from None
        finally:
            watchdog.since = None

    def _asked(self, signum: int, frame: Any) -> None:
        if self.asked:   # the second Ctrl-C: now (mpiexec, asked twice, also stops the workers at once)
            raise KeyboardInterrupt
        self.asked = True

    def _local_gradients(self, params: dict[str, Any], model_state: dict[str, Any] | None, step: int,
                         weight: float, shard: dict[str, Any], own: bool) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """This worker's share of the batch's gradient (its own, times its share ``weight`` of
        the examples), its state and loss likewise; its outputs, the gradients to update with
        and the one buffer they are views of, to all-reduce: with ``own``, value_and_grad's,
        scaled in place (``flat_grads``); else copied into :attr:`grads`, views of :attr:`flat`.

        The seam: the only place that knows where the gradients come from."""
        trainer, xp, flat = self.trainer, self.xp, self.flat
        result = self.value_and_grad(params, model_state, trainer.generator(self.noise(step)), **shard)
        outputs, grads = result[0], result[1]
        buffer = self.flat_grads(grads) if own else None   # type: ignore[misc]
        if buffer is not None:
            xp.multiply(buffer, weight, out=buffer)
        else:
            for name, view in self.grads.items():
                xp.multiply(grads[name], weight, out=view)
            grads, buffer = self.grads, self.head
        for name, view in self.state.items():
            xp.multiply(result[2][name], weight, out=view)
        flat[self.at_loss] = outputs[self.loss] * weight
        flat[self.at_hits] = 0 if self.counter is None else self.counter(outputs[self.scores], shard[self.labels])
        return dict(outputs), grads, buffer

    def _nothing(self) -> dict[str, Any]:
        """A worker whose shard is empty (a batch smaller than the workers) adds nothing."""
        self.flat.fill(0)
        return dict.fromkeys([name for name in (self.scores,) if name])

    def evaluate(self, params: dict[str, Any], data: Dataset, model_state: dict[str, Any] | None = None) -> Metrics:
        """``Trainer.evaluate`` of the whole of ``data``, each worker measuring its shard: the
        sums of the shards' losses and hits travel in one all-reduce, and every worker gets the
        same figures (those of one process, up to the rounding of the sums)."""
        n = len(data)
        lo, hi = shard(n, self.world.size, self.world.rank)
        sums = np.zeros(7)
        if hi > lo:
            mine = self.trainer.evaluate(params, data.take(slice(lo, hi)), model_state)
            sums[0] = mine.n
            for at, value in ((1, mine.loss), (3, mine.data_loss), (5, mine.acc)):
                if value is not None:
                    sums[at:at + 2] = (round(value * mine.n) if at == 5 else value * mine.n), 1
        count, loss, has_loss, data_loss, has_data_loss, hits, has_acc = \
            self._all_reduce(self.watchdog.step, self.host_sum, (sums,), len(sums))
        return Metrics(loss / count if has_loss else None, hits / count if has_acc else None, int(count),
                       data_loss / count if has_data_loss else None)
