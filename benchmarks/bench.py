#!/usr/bin/env python
"""Benchmark nncompile's generated modules against hand-written numpy, torch and JAX.

One run: compile the models, check the compiled value_and_grad against the numpy
reference, time a training step of each implementation, time the compiler on deep
nets, and measure the peak memory of one step.

    python benchmarks/bench.py [--repeat 200] [--quick] [--markdown] [--threads 1]

Timings are wall clock (``time.perf_counter``) per call after warm-up, with the GC off
during the timed loop; every framework runs on the same ``--threads`` cores (see
``reference.pin_threads``).
"""
from __future__ import annotations

import argparse
import os
import sys


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200, help="timed calls per row (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed calls first (default 20)")
    ap.add_argument("--threads", type=int, default=1,
                    help="cores for BLAS/torch/XLA, identical for all (default 1: stable, fair numbers)")
    ap.add_argument("--quick", action="store_true",
                    help="skip the 1000-layer JAX compile and compile each depth once")
    ap.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    return ap.parse_args(argv)


ARGS = _parse_args()
# OpenBLAS/MKL/OpenMP size their pools when numpy/torch are imported: set these first.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # torch.profiler's C++ logging, noise here

import gc  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import reference as ref  # noqa: E402

MODELS = HERE / "models"
CIRCUIT = REPO / "examples" / "circuit.nn"
DEEP = MODELS / "deep_tanh.nn"
DEEP_DEPTHS = (10, 100, 1000, 3000)
JAX_MAX_DEPTH = 1000   # JAX takes minutes to compile 3000 layers
RTOL = 1e-4
Table = tuple[str, list[str], list[list[str]], str]  # title, headers, rows, "l"/"r" per column


class BenchError(Exception):
    """A failure worth a one-line message rather than a traceback."""


# ------------------------------------------------------------------------- compiling

_module_count = 0


def _nncompile() -> ModuleType:
    try:
        import nncompile
    except ImportError as e:
        raise BenchError(f"cannot import nncompile ({e}); run from a checkout with the compiler") from e
    missing = [f for f in ("compile_file", "load_module") if not hasattr(nncompile, f)]
    if missing:
        raise BenchError(f"nncompile has no {', '.join(missing)} yet: the compiler is not finished")
    return nncompile


def compile_source(path: Path, **options: Any) -> str:
    """Training-style modules: gradients of the params only (the circuit has no params, so
    there the inputs x, y, z are what is differentiated). ``loops=False``: every instance of
    a ``repeat`` written out, as before repeats became loops; ``stretch=False``: a long
    ``repeat`` compiled with all its instances rather than short and stretched."""
    return _nncompile().compile_file(str(path), dtype="float32", input_grads=path == CIRCUIT, **options)


def load(source: str, stem: str) -> ModuleType:
    """Load generated source under a fresh name, so no load is served from a cache."""
    global _module_count
    _module_count += 1
    return _nncompile().load_module(source, f"bench_{stem}_{_module_count}")


def compile_and_load(path: Path, **options: Any) -> tuple[str, ModuleType]:
    try:
        src = compile_source(path, **options)
        return src, load(src, path.stem)
    except BenchError:
        raise
    except Exception as e:  # a compiler bug: say which model, keep the cause
        raise BenchError(f"compiling {path.relative_to(REPO)} failed: {type(e).__name__}: {e}") from e


# -------------------------------------------------------------------------- checking


def _close(got: Any, want: Any) -> bool:
    """allclose with rtol 1e-4 and an atol scaled to the array (float32 near-zero grads)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return False
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return bool(np.allclose(got, want, rtol=RTOL, atol=1e-5 * max(scale, 1e-30)))


def check(label: str, got: ref.Result, want: ref.Result) -> None:
    """Compiled (outputs, grads) must match the reference on every key they share.

    Every reference grad must be present; outputs are compared where both have them
    (the compiled module may or may not expose the loss as an output).
    """
    (go, gg), (wo, wg) = got, want
    missing = sorted(set(wg) - set(gg))
    if missing:
        raise BenchError(f"{label}: compiled grads lack {missing} (have {sorted(gg)})")
    bad = [f"grad {k} (rel err {ref.rel_err(gg[k], wg[k]):.1e})" for k in wg if not _close(gg[k], wg[k])]
    shared = [k for k in wo if k in go]
    bad += [f"output {k} (rel err {ref.rel_err(go[k], wo[k]):.1e})" for k in shared if not _close(go[k], wo[k])]
    if bad:
        raise BenchError(f"{label}: compiled value_and_grad disagrees with numpy: {', '.join(bad)}")
    print(f"  ok  {label}: {len(wg)} grads, outputs {shared} match numpy (rtol {RTOL:g})")


def compiled_params(mod: ModuleType, perturb_biases: bool = True) -> dict[str, np.ndarray]:
    """The module's own init, with biases made non-zero so the check can see them."""
    params = {k: np.ascontiguousarray(v, np.float32) for k, v in mod.init_params(seed=0).items()}
    if set(params) != set(mod.PARAMS):
        raise BenchError(f"init_params keys {sorted(params)} != PARAMS {sorted(mod.PARAMS)}")
    if perturb_biases:
        rng = np.random.default_rng(7)
        for k, v in params.items():
            if k.endswith(".b"):
                params[k] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
    return params


# --------------------------------------------------------------------------- timing


class Stats:
    """min/median/max of per-call microseconds."""

    def __init__(self, times: list[float]):
        self.min, self.median, self.max = min(times), statistics.median(times), max(times)


def gemm_step(params: Mapping[str, np.ndarray], X: np.ndarray, with_dx: bool) -> Callable[[], None]:
    """The medium MLP's matmuls alone, into preallocated buffers: a floor for any numpy step.

    3 forward (X@W1, h1@W2, h2@W3) and 5 backward (h2.T@g3, g3@W3.T, h1.T@g2, g2@W2.T,
    X.T@g1); a 6th backward one (g1@W1.T) when the compiled module also returns dX.
    Transposed operands are views, as in a good numpy step.
    """
    W1, W2, W3 = params["fc1.W"], params["fc2.W"], params["fc3.W"]
    n = X.shape[0]
    rng = np.random.default_rng(0)
    h1 = np.maximum(rng.standard_normal((n, W1.shape[1])), 0).astype(np.float32)
    h2 = np.maximum(rng.standard_normal((n, W2.shape[1])), 0).astype(np.float32)
    g3 = rng.standard_normal((n, W3.shape[1])).astype(np.float32)
    a1, a2, s = np.empty_like(h1), np.empty_like(h2), np.empty_like(g3)
    g2, g1, dX = np.empty_like(h2), np.empty_like(h1), np.empty_like(X)
    dW1, dW2, dW3 = np.empty_like(W1), np.empty_like(W2), np.empty_like(W3)
    mm = np.matmul

    def step() -> None:
        mm(X, W1, a1)
        mm(h1, W2, a2)
        mm(h2, W3, s)
        mm(h2.T, g3, dW3)
        mm(g3, W3.T, g2)
        mm(h1.T, g2, dW2)
        mm(g2, W2.T, g1)
        mm(X.T, g1, dW1)
        if with_dx:
            mm(g1, W1.T, dX)

    return step


def bench_mlp(name: str, batch: int, repeat: int, warmup: int, rows: dict[str, dict[str, Stats]],
              gemms: bool = False) -> None:
    src, mod = compile_and_load(MODELS / f"{name}.nn")
    params = compiled_params(mod)
    W1 = params["fc1.W"]
    C = params[f"fc{ref.mlp_layers(params)}.W"].shape[1]
    X, y = ref.mlp_data(batch, W1.shape[0], C, dtype=np.float32)
    label = f"{name} (N={batch})"

    def compiled() -> Any:
        return mod.value_and_grad(params, X=X, y=y)

    outs, grads = compiled()
    with_dx = "X" in grads
    runners = ref.mlp_runners(params, X, y, input_grad=with_dx)
    check(label, (outs, grads), runners[0].result())
    for r in runners[1:]:  # the baselines must agree too, or their timings mean nothing
        err = ref.rel_err(r.result()[1]["fc1.W"], runners[0].result()[1]["fc1.W"])
        if err > 1e-4:
            raise BenchError(f"{label}: {r.name} reference disagrees with numpy (rel err {err:.1e})")
    fns = {"compiled": compiled, **{r.name: r.step for r in runners}}
    if gemms:
        fns[f"GEMMs ({9 if with_dx else 8})"] = gemm_step(params, X, with_dx)
    rows[label] = {name: Stats(times) for name, times in ref.time_us_interleaved(fns, repeat, warmup).items()}


def bench_circuit(repeat: int, warmup: int, rows: dict[str, dict[str, Stats]]) -> None:
    _, mod = compile_and_load(CIRCUIT)
    params = mod.init_params(seed=0)
    args = {k: np.asarray(v, np.float32) for k, v in (("x", -2.0), ("y", 5.0), ("z", -4.0))}

    def compiled() -> Any:
        return mod.value_and_grad(params, **args)

    runners = ref.circuit_runners(args["x"], args["y"], args["z"])
    check("circuit", compiled(), runners[0].result())
    fns = {"compiled": compiled, **{r.name: r.step for r in runners}}
    rows["circuit (scalars)"] = {name: Stats(t) for name, t in ref.time_us_interleaved(fns, repeat, warmup).items()}


# ------------------------------------------------------------------- compile time


def deep_source(layers: int) -> str:
    """deep_tanh.nn with its depth replaced: every depth comes from one template."""
    text = DEEP.read_text(encoding="utf-8")
    if text.count("repeat 1000 ") != 1:
        raise BenchError(f"{DEEP.name} must contain exactly one 'repeat 1000 '")
    return text.replace("repeat 1000 ", f"repeat {layers} ")


COMPILES = {   # column -> compile_file options: the default (hvp, stretched), without hvp, each whole, written out
    "nncompile": {}, "hvp=False": {"hvp": False}, "whole": {"stretch": False},
    "whole, hvp=False": {"stretch": False, "hvp": False}, "written out": {"loops": False},
}


def bench_compile(quick: bool) -> tuple[list[list[str]], list[list[str]]]:
    """nncompile (compile_file + load_module) per depth, seconds: with the default options (a
    long repeat compiled short and stretched, flat in depth), without hvp(), each with the
    repeat compiled whole (stretch=False), and written out (loops=False); JAX jit's compile
    time; then one value_and_grad step of the looped and the written-out module."""
    reps = 1 if quick else 3
    out, steps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "deep_tanh_warm.nn"
        warm.write_text(deep_source(3), encoding="utf-8")
        compile_and_load(warm)   # the first compile of a process also imports and builds the parser
        for layers in DEEP_DEPTHS:
            path = DEEP if layers == 1000 else Path(tmp) / f"deep_tanh_{layers}.nn"
            if layers != 1000:
                path.write_text(deep_source(layers), encoding="utf-8")
            times: dict[str, list[float]] = {column: [] for column in COMPILES}
            lines, mods, sources = {}, {}, {}
            for _ in range(reps):   # interleaved: every form sees the same machine
                for column, options in COMPILES.items():
                    gc.collect()
                    t0 = time.perf_counter()
                    src, mods[column] = compile_and_load(path, **options)
                    times[column].append(time.perf_counter() - t0)
                    lines[column], sources[column] = src.count("\n"), src
            if sources["nncompile"] != sources["whole"] or sources["hvp=False"] != sources["whole, hvp=False"]:
                raise BenchError(f"deep_tanh ({layers} layers): the stretched module differs from the whole compile's")
            mods = {True: mods["nncompile"], False: mods["written out"]}
            params = compiled_params(mods[True])
            X = np.random.default_rng(2).standard_normal((32, 32)).astype(np.float32)
            if layers == 10:  # also a correctness check of tanh, repeat, sum and **
                for loops in (True, False):
                    check(f"deep_tanh (10 layers, loops={loops})", mods[loops].value_and_grad(params, X=X),
                          ref.deep_tanh_numpy(params, X, input_grad=False))
            if ref.jax is None:
                jax_s = "n/a (no jax)"
            elif (quick and layers == 1000) or layers > JAX_MAX_DEPTH:
                jax_s = "skipped"
            else:
                jax_s = f"{ref.jax_deep_tanh_compile_s(params, X):.3f}"
            best = {k: f"{min(v):.3f}" + (f" (max {max(v):.3f})" if reps > 1 else "") for k, v in times.items()}
            out.append([str(layers), str(len(params)), *best.values(), str(lines["nncompile"]),
                        str(lines["written out"]), f"{min(times['whole']) / min(times['nncompile']):.1f}", jax_s])
            if layers in (100, 1000):
                steps.append(step_row(layers, mods, params, X, 5 if quick else 100))
            print(f"  compiled {layers} layers")
    return out, steps


def step_row(layers: int, mods: dict[bool, ModuleType], params: dict, X: np.ndarray, repeat: int) -> list[str]:
    """Median value_and_grad time of the looped and the written-out module, interleaved."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for loops in (True, False):
        mods[loops].value_and_grad(params, X=X)   # the workspace is made on the first call
    for _ in range(repeat):
        for loops in (True, False):
            t0 = time.perf_counter()
            mods[loops].value_and_grad(params, X=X)
            times[loops].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return [str(layers), f"{med[True] * 1e3:.2f}", f"{med[False] * 1e3:.2f}", f"{med[True] / med[False]:.3f}"]


# --------------------------------------------------------------------------- memory


def tracemalloc_peaks(make_step: Callable[[], Callable[[], Any]]) -> tuple[int, int, int]:
    """(first-call peak, later-call peak, bytes retained between calls) via tracemalloc.

    numpy registers its data buffers with tracemalloc, so this sees every array the
    step allocates. Peaks are above the memory traced just before each call; results
    are kept until the peak is read, so they count (as they do for torch).
    """
    gc.collect()
    tracemalloc.start()
    try:
        step = make_step()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        r = step()
        first = tracemalloc.get_traced_memory()[1] - base
        del r
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        r = step()
        later = tracemalloc.get_traced_memory()[1] - before
        del r
        gc.collect()
        retained = max(0, tracemalloc.get_traced_memory()[0] - base)  # < 0 only from Python-object churn
    finally:
        tracemalloc.stop()
    return first, later, retained


def torch_peak(step: Callable[[], Any]) -> int | None:
    """Peak bytes held by torch's CPU allocator during one call, from the profiler.

    With ``profile_memory=True`` the profiler records every allocation and free of the
    CPU allocator; the running sum of their sizes in time order peaks at the step's
    high-water mark (tracemalloc cannot see torch's allocator). Uses the profiler's
    event tree, which is semi-private: returns None if this torch lacks it.
    """
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        r = step()
        del r
    try:
        sizes: list[tuple[int, int]] = []
        todo = list(prof.profiler.kineto_results.experimental_event_tree())
        while todo:
            ev = todo.pop()
            if ev.tag == _EventType.Allocation:
                sizes.append((ev.start_time_ns, ev.extra_fields.alloc_size))
            todo.extend(ev.children)
    except AttributeError:
        return None
    cur = peak = 0
    for _, size in sorted(sizes):
        cur += size
        peak = max(peak, cur)
    return peak


def bench_memory(batch: int) -> list[list[str]]:
    """Peak memory of one mlp_medium training step: compiled and numpy vs torch."""
    src = compile_source(MODELS / "mlp_medium.nn")
    proto = load(src, "mlp_medium")
    params = compiled_params(proto)
    X, y = ref.mlp_data(batch, params["fc1.W"].shape[0], params["fc3.W"].shape[1], dtype=np.float32)
    with_dx = "X" in proto.value_and_grad(params, X=X, y=y)[1]

    def fresh_compiled() -> Callable[[], Any]:
        mod = load(src, "mlp_medium")  # a new instance: the first call pays for any workspace
        return lambda: mod.value_and_grad(params, X=X, y=y)

    def kib(b: int | None) -> str:
        return "n/a" if b is None else f"{b / 1024:,.0f}"

    rows = []
    for name, make in (("compiled", fresh_compiled),
                       ("numpy", lambda: ref.numpy_mlp_runner(params, X, y, with_dx).step)):
        first, later, retained = tracemalloc_peaks(make)
        rows.append([name, kib(first), kib(later), kib(retained), "tracemalloc"])
    runner = ref.torch_mlp_runner(params, X, y, with_dx)
    if runner is not None:
        t_first, t_later = torch_peak(runner.step), torch_peak(runner.step)
        rows.append(["torch", kib(t_first), kib(t_later), "n/a", "torch.profiler allocations"])
    grads_kib = sum(v.nbytes for v in params.values()) / 1024
    print(f"  memory: param grads alone are {grads_kib:,.0f} KiB; every step returns them")
    return rows


# --------------------------------------------------------------------------- output


def render(table: Table, markdown: bool) -> str:
    title, headers, rows, align = table
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |",
                 "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(r: list[str]) -> str:
        cells = (c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align, strict=True))
        return "  ".join(cells).rstrip()

    return "\n".join([title, fmt(headers), "  ".join("-" * w for w in widths), *map(fmt, rows)]) + "\n"


def time_tables(rows: dict[str, dict[str, Stats]]) -> list[Table]:
    def ratio(num: float | None, den: float | None) -> str:
        return "–" if num is None or den is None else f"{num / den:.2f}"

    detail, ratios = [], []
    for label, impls in rows.items():
        c = impls["compiled"].median
        med = {k: s.median for k, s in impls.items()}
        gemm = next((v for k, v in med.items() if k.startswith("GEMMs")), None)
        for impl, s in impls.items():
            detail.append([label, impl, f"{s.min:.1f}", f"{s.median:.1f}", f"{s.max:.1f}", f"{s.median / c:.2f}"])
        ratios.append([label, ratio(c, med.get("numpy")), ratio(c, gemm),
                       ratio(med.get("torch"), c), ratio(med.get("jax"), c)])
    return [
        ("Training step (value_and_grad), µs per call",
         ["benchmark", "impl", "min", "median", "max", "/compiled"], detail, "llrrrr"),
        ("Ratios of medians (>1 in the last two: compiled is faster)",
         ["benchmark", "compiled/numpy", "compiled/GEMMs", "torch/compiled", "jax/compiled"], ratios, "lrrrr"),
    ]


def environment() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = f"python {platform.python_version()}, numpy {np.__version__}"
    versions += f", torch {ref.torch.__version__}" if ref.torch is not None else ", torch absent"
    versions += f", jax {ref.jax.__version__}" if ref.jax is not None else ", jax absent"
    return f"{cpu}; {versions}; {ref.pin_threads(ARGS.threads)}"


def main() -> int:
    print(environment())
    tables: list[Table] = []
    try:
        _nncompile()
        print("\nchecking and timing training steps (float32)")
        rows: dict[str, dict[str, Stats]] = {}
        bench_mlp("mlp_small", 32, ARGS.repeat, ARGS.warmup, rows)
        bench_mlp("mlp_medium", 128, ARGS.repeat, ARGS.warmup, rows, gemms=True)
        bench_circuit(ARGS.repeat, ARGS.warmup, rows)
        tables += time_tables(rows)
        print("\ncompile time of deep tanh MLPs")
        compile_rows, step_rows = bench_compile(ARGS.quick)
        tables.append(("Compile time, seconds (nncompile: compile_file + load_module, best of runs: the "
                       "default options (hvp on, the repeat compiled short and stretched), hvp=False, each "
                       "compiled whole (stretch=False), written out (loops=False); whole/stretched: the ratio "
                       "with hvp; JAX: trace + lower + XLA compile of jit(value_and_grad))",
                       ["layers", "params", *COMPILES, "lines", "lines written out", "whole/stretched",
                        "jax jit"], compile_rows, "rrrrrrrrrrr"))
        tables.append(("deep_tanh value_and_grad (N=32), median ms: repeat as a loop against written out",
                       ["layers", "loop", "written out", "ratio"], step_rows, "rrrr"))
        print("\npeak memory of one step")
        tables.append(("Peak memory of one mlp_medium step (N=128), KiB above the memory held before the call",
                       ["impl", "first call", "later call", "retained between calls", "method"],
                       bench_memory(128), "lrrrl"))
    except BenchError as e:
        print(f"\nbench.py: error: {e}", file=sys.stderr)
        return 1
    print()
    for table in tables:
        print(render(table, markdown=False))
    if ARGS.markdown:
        for table in tables:
            print(render(table, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
