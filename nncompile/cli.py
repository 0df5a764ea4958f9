"""The command line: ``nncompile compile | eval | render | check | train | predict | export | diagnose | lsp | sweep``.

Every mistake a user can make ends as ``FILE:LINE:COL: error: ...`` (or, with no place in
a file, ``nncompile: error: ...``) on stderr and exit code 1; output files are written whole
(to a temporary name, then renamed) or not at all, and never over the model itself.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .version import __version__
from .backends import BACKENDS
from .compiler import DTYPES
from .errors import NNError, NNWarning
from .files import write_atomic
from .runs import MODE_NOTES, trained_options


def _check_output(args: argparse.Namespace) -> None:
    """Refuse ``-o`` naming the model file itself: the model would be replaced by the output."""
    try:
        same = os.path.samefile(args.output, args.model)
    except OSError:   # one of them does not exist (yet): they cannot be the same file
        return
    if same:
        raise NNError(f"-o {args.output}: that is the model file; writing the output there would destroy it. "
                      "Choose another output file")


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile_file

    _check_output(args)
    source = compile_file(args.model, dtype=args.dtype, backend=args.backend)
    write_atomic(args.output, source)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_file, parse_sets, to_json

    trained, where = _trained_arguments(args)
    ev = evaluate_file(args.model, parse_sets(args.set), seed=args.seed, dtype=args.dtype, **trained)
    dtype = ev.model.dtype
    values = ev.named_values()
    grads = ev.input_and_param_grads()
    if args.json:
        print(json.dumps({"values": {k: to_json(v, dtype) for k, v in values.items()},
                          "grads": {k: to_json(v, dtype) for k, v in grads.items()}}))
        print(where, file=sys.stderr)   # stdout stays the one JSON object {values, grads} of the contract
        return 0
    print(where)
    width = max((len(k) for k in [*values, *grads]), default=1)
    print("values:")
    for name, value in values.items():   # a matrix's later rows line up under its first
        print(f"  {name:<{width}} = " + _show(value).replace("\n", "\n" + " " * (width + 5)))
    target = ev.model.target
    if grads:
        print(f"gradients of {ev.program.graph[target].name if target is not None else 'the loss'}:")
        for name, grad in grads.items():
            print(f"  d/d{name:<{width}} = " + _show(grad).replace("\n", "\n" + " " * (width + 8)))
    return 0


def _show(value: np.ndarray) -> str:
    array = np.asarray(value)
    if array.size <= 8:
        return np.array2string(array, precision=6, suppress_small=True, separator=", ") if array.ndim \
            else f"{array.item():.6g}"
    if array.dtype.kind in "iu":
        return f"int{list(array.shape)} min {array.min()} max {array.max()}"
    return (f"{list(array.shape)} mean {array.mean():.4g} std {array.std():.4g} "
            f"min {array.min():.4g} max {array.max():.4g}")


def cmd_render(args: argparse.Namespace) -> int:
    from .diagnose import health_lines, render_health
    from .evaluate import evaluate_file, parse_sets
    from .page import write_page
    from .render import render_file

    _check_output(args)
    trained, where = _trained_arguments(args)
    ev = evaluate_file(args.model, parse_sets(args.set), seed=args.seed, dtype=args.dtype, **trained)
    health = render_health(args, ev)
    if Path(args.output).suffix.lower() == ".html":   # the interactive page
        written = write_page(ev, args.output, rankdir=args.rankdir, branch_grads=args.branch_grads, health=health,
                             note=where)
    else:
        written = render_file(ev, args.output, rankdir=args.rankdir, branch_grads=args.branch_grads, health=health)
    print(f"wrote {written}; {where}", file=sys.stderr)
    if health is not None:
        print(health_lines(health), file=sys.stderr)
    return 0


def add_trained_options(p: argparse.ArgumentParser) -> None:
    """eval's and render's view of a trained model: its params, examples of a data set, a mode."""
    g = p.add_argument_group("a trained model")
    g.add_argument("--params", metavar="FILE.npz|RUN_DIR",
                   help="the params of a .npz file, or of a run directory (with its state and normalisation)")
    g.add_argument("--data", metavar="digits|FILE", help="inputs from a data set, read as nncompile train reads it")
    g.add_argument("--map", action="append", metavar="INPUT=ARRAY[,...]", help="feed an input from a named array")
    pick = g.add_mutually_exclusive_group()
    pick.add_argument("--batch", type=int, metavar="K", help="the first K examples of --data (default: 4)")
    pick.add_argument("--index", type=int, metavar="I", help="example I of --data alone")
    g.add_argument("--mode", choices=tuple(MODE_NOTES), default="train",
                   help=f"train ({MODE_NOTES['train']}; the default) or eval ({MODE_NOTES['eval']})")


def _trained_arguments(args: argparse.Namespace) -> tuple[dict, str]:
    """What --params, --data, --batch/--index, --map and --mode ask of evaluate_file (runs.trained_options)."""
    return trained_options(args.model, params=args.params, data=args.data, mapping=args.map, batch=args.batch,
                           index=args.index, mode=args.mode, seed=args.seed, dtype=args.dtype)


def cmd_check(args: argparse.Namespace) -> int:
    from .compiler import compile_and_load
    from .elaborate import elaborate_file
    from .evaluate import concrete_values, parse_sets
    from .gradcheck import Kinks, check_gradients, summarize

    # Compiled as `compile` compiles it (eval mode and predict too), so that check fails where
    # compile would: an eval { } block can hold a shape error that train mode never meets.
    module = compile_and_load(args.model, dtype="float64", hvp=False)
    model = elaborate_file(args.model, "float64")
    counts = ", ".join(_counted(len(group), noun) for group, noun in
                       ((model.inputs, "input"), (model.params, "param"), (model.outputs, "output")))
    print(f"{args.model}: parsed and shape-checked: {counts}")
    if model.target is None:
        print("nothing to differentiate (no 'minimize' and no single scalar output): gradient check skipped")
        return 0
    params, inputs = concrete_values(model, module, parse_sets(args.set), args.seed)
    results = summarize(check_gradients(module, params, inputs, seed=args.seed,
                                        kinks=Kinks.of_file(args.model, args.seed)))
    status = _verdict(results, "gradient of", "gradient check", "float64, extrapolated central differences")
    return _check_hessian(args, params, inputs) if args.hessian and not status else status


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _verdict(results: dict, what: str, check: str, method: str) -> int:
    """Print a check's line per name and its verdict; 1 when it failed."""
    from .gradcheck import report

    lines, failed, tally = report(results, what)
    for line in lines:
        print(line)
    if failed:
        print(f"{check} FAILED for {', '.join(failed)}" + (f" ({tally})" if tally else ""), file=sys.stderr)
        return 1
    print(f"{check} passed ({method}): {tally}")
    return 0


def _check_hessian(args: argparse.Namespace, params: dict, inputs: dict) -> int:
    """``check --hessian``: hvp() against central differences of the compiled gradient (both
    from the module a user compiles, in float64)."""
    from .compiler import compile_and_load
    from .gradcheck import Kinks, check_hessian, missing_hvp, summarize

    module = compile_and_load(args.model, dtype="float64")
    if hasattr(module, "HVP_MISSING"):   # an op without a second derivative
        raise missing_hvp(args.model)
    if not module.PARAMS:
        print("no params: Hessian check skipped (hvp() is over the params)")
        return 0
    results = summarize(check_hessian(module, params, inputs, seed=args.seed,
                                      kinks=Kinks.of_file(args.model, args.seed)))
    return _verdict(results, "Hessian-vector product of", "Hessian check",
                    "float64, hvp against extrapolated central differences of the gradient")


def cmd_lsp(args: argparse.Namespace) -> int:
    """The language server (nncompile/editor/server.py), serving one editor over stdio."""
    try:
        from .editor.server import main as serve
    except ModuleNotFoundError as exc:
        if exc.name not in ("pygls", "lsprotocol", "cattrs", "attrs"):
            raise
        raise NNError(f"the language server needs pygls, and {exc.name} is not installed: "
                      "pip install 'nncompile[editor]'") from None
    return serve()


def cmd_export(args: argparse.Namespace) -> int:
    """Write the eval-mode graph as an ONNX model, and say what it takes and gives."""
    from .export import export_onnx

    args.output = args.file
    if Path(args.file).suffix.lower() != ".onnx":
        raise NNError(f"-o {args.file}: write the ONNX model to a .onnx file")
    _check_output(args)
    exported = export_onnx(args.model, args.file, params=args.params, state=args.state, outputs=args.outputs,
                           opset=args.opset, seed=args.seed, dtype=args.dtype, normalization=args.normalization)
    proto = exported.model
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    weights = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    print(f"wrote {args.file} (ONNX opset {opset}, IR version {proto.ir_version}): {len(proto.graph.node)} nodes "
          f"({', '.join(f'{op} {k}' for op, k in sorted(counts.items()))}), {weights:,} weights", file=sys.stderr)
    for kind, values in (("input ", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            print(f"  {kind} {value.name}: {_onnx_type(value)}", file=sys.stderr)
    if exported.float32_only:
        print(f"nncompile: warning: ONNX Runtime runs {', '.join(exported.float32_only)} in float32 only, so it "
              "will not load this float64 file (other ONNX runtimes may); for ONNX Runtime export with "
              "--dtype float32", file=sys.stderr)
    why = "not chosen" if args.outputs else "labels or loss"
    left = [f"{', '.join(exported.dropped)} ({why})"] if exported.dropped else []
    left += [f"input{'s' if len(exported.unused) > 1 else ''} {', '.join(exported.unused)}"] if exported.unused else []
    if left:
        print(f"  left out: {', '.join(left)}", file=sys.stderr)
    return 0


def _onnx_type(value) -> str:
    """``float32[N, 64]``: a graph input's or output's element type and shape."""
    from onnx.helper import tensor_dtype_to_np_dtype

    tensor = value.type.tensor_type
    dims = ", ".join(d.dim_param or str(d.dim_value) for d in tensor.shape.dim)
    return f"{tensor_dtype_to_np_dtype(tensor.elem_type)}[{dims}]"


def cmd_predict(args: argparse.Namespace) -> int:
    from .runs import load_run, read_data
    from .train.data import parse_mapping

    suffix = Path(args.output).suffix.lower() if args.output is not None else None
    if suffix not in (None, ".csv", ".npz"):
        raise NNError(f"-o {args.output}: write predictions to a .csv or .npz file")
    run = load_run(args.run_dir)
    data = read_data(run, args.data, parse_mapping(args.map) if args.map else None, args.split)
    inputs = {name: data.arrays[name] for name in run.inputs if name in data.arrays}
    outputs = run.outputs(**inputs)
    predicted = run.predict(**inputs)
    columns = _prediction_columns(run, predicted, outputs, inputs)
    accuracy = run.accuracy(predicted, data)
    summary = (f"{len(data)} example{'s' * (len(data) != 1)} from {data.source}"
               + (f" ({args.split} split)" if args.split != "all" else ""))
    loss = run.loss(data)
    measured = ([f"accuracy {100 * accuracy:.2f}%"] if accuracy is not None else []) + \
        ([f"loss {loss:.4f}"] if loss is not None else [])   # as training prints them
    if measured:
        summary += ": " + ", ".join(measured)
    if args.output is None:
        for row in zip(*columns.values()):
            print(",".join(_cell(v) for v in row))
        print(summary, file=sys.stderr)
        return 0
    if suffix == ".npz":
        arrays = {**{k: np.asarray(v) for k, v in outputs.items()}, "prediction": np.asarray(predicted)}
        if run.kind in ("classes", "binary") and run.scores in outputs:
            arrays["probabilities"] = run.predict_proba(**inputs)
        write_atomic(args.output, lambda handle: np.savez(handle, **arrays), durable=True)
    else:
        lines = [",".join(columns)] + [",".join(_cell(v) for v in row) for row in zip(*columns.values())]
        write_atomic(args.output, "\n".join(lines) + "\n", durable=True)
    print(f"wrote {args.output}: {summary}")
    return 0


def _prediction_columns(run, predicted, outputs, inputs) -> dict[str, np.ndarray]:
    """The table of predictions: a classifier's labels and class probabilities, else each
    output's values, flattened per example."""
    if run.kind in ("classes", "binary") and run.scores in outputs:
        columns = {"prediction": np.asarray(predicted)}
        probabilities = run.predict_proba(**inputs)
        if probabilities.ndim == 1:
            columns["probability"] = probabilities
        else:
            columns.update({f"probability_{c}": probabilities[:, c] for c in range(probabilities.shape[1])})
        return columns
    columns = {}
    for name, value in outputs.items():
        value = np.asarray(value)
        flat = value.reshape(len(value), -1) if value.ndim else value.reshape(1, 1)
        if flat.shape[1] == 1:
            columns[name] = flat[:, 0]
        else:
            columns.update({f"{name}_{k}": flat[:, k] for k in range(flat.shape[1])})
    return columns


def _cell(value) -> str:
    return str(int(value)) if np.asarray(value).dtype.kind in "iub" else f"{float(value):.8g}"


def add_predict_parser(sub) -> None:
    """``nncompile predict RUN_DIR``: the trained run's predictions for a data file."""
    p = sub.add_parser("predict", help="predict with a trained run (a directory nncompile train wrote)",
                       description="Predict with the model trained in RUN_DIR, its inputs normalised as in "
                                   "training; prints the accuracy and the loss where the data has labels or targets.",
                       epilog="example: nncompile predict runs/digits_mlp --data digits --split test -o preds.csv")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", default=None, metavar="digits|FILE",
                   help="'digits', or a .npz or .csv file, read as nncompile train reads it (default: the run's data)")
    p.add_argument("--map", action="append", metavar="INPUT=ARRAY[,...]",
                   help="feed an input from a named array or column (default: the run's own --map)")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="the run's own train, validation or test split of its data (default: all the examples)")
    p.add_argument("-o", "--output", metavar="OUT.(csv|npz)",
                   help="write the predictions there (default: print them as CSV rows)")
    p.set_defaults(run=cmd_predict)


class _Parser(argparse.ArgumentParser):
    """A usage mistake exits 1 with ``nncompile: error:``, like every other error a user can
    make (argparse's own convention is exit 2 and ``PROG: error:``)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(1, f"nncompile: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .diagnose import add_diagnose_parser, add_render_health_options
    from .sweep.cli import add_sweep_parser
    from .train.cli import add_train_parser, seed

    parser = _Parser(prog="nncompile", description="Compile .nn neural-network models to numpy.")
    parser.add_argument("--version", action="version", version=f"nncompile {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, values: bool = True) -> None:
        p.add_argument("model", metavar="MODEL.nn")
        p.add_argument("--dtype", choices=DTYPES, default=None,
                       help="float precision (default: the file's 'dtype' statement, else float32)")
        if values:
            p.add_argument("--set", action="append", metavar="NAME=VALUE",
                           help="value of an input or param (a number or JSON list), or of a dim (N=8)")
            p.add_argument("--seed", type=seed, default=0, help="seed for params and random inputs")

    p = sub.add_parser("compile", help="write the model as a standalone Python module")
    common(p, values=False)
    p.add_argument("-o", "--output", required=True, metavar="OUT.py")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="numpy",
                   help="numpy (CPU) or cupy (NVIDIA GPU; the module then needs CuPy to run)")
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("eval", help="run forward and backward and print every value and gradient")
    common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object {values, grads} (the mode line goes to stderr)")
    add_trained_options(p)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("render", help="draw the graph with values (green) and gradients (red)")
    common(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.(svg|png|pdf|dot|html)",
                   help="the format is the extension; .html is the interactive page")
    p.add_argument("--rankdir", choices=("auto", "LR", "TB"), default="auto",
                   help="layout direction: left to right, top to bottom, or (the default) whichever fits a screen")
    p.add_argument("--branch-grads", action="store_true",
                   help="where a value feeds several ops, label each branch with its own part of the gradient")
    add_trained_options(p)
    add_render_health_options(p)
    p.set_defaults(run=cmd_render)

    p = sub.add_parser("check", help="parse, shape-check and gradient-check the model")
    common(p)
    p.add_argument("--hessian", action="store_true",
                   help="also check hvp(), the Hessian-vector product, against differences of the gradient")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("export", help="write the eval-mode graph as an ONNX model (needs nncompile[export])")
    common(p, values=False)
    p.add_argument("-o", dest="file", required=True, metavar="OUT.onnx")
    p.add_argument("--params", metavar="FILE.npz|RUN_DIR",
                   help="the trained params, or a run directory, which also brings its running statistics and input "
                        "normalisation (default: the initialisers with --seed)")
    p.add_argument("--state", metavar="FILE.npz", help="the running statistics, a run's state.npz (default: initial)")
    p.add_argument("--normalization", metavar="FILE.npz",
                   help="a run's normalization.npz, folded in: the model then takes raw inputs")
    p.add_argument("--output", dest="outputs", action="extend", nargs="+", metavar="NAME",
                   help="the outputs to export (default: the predictions; labels and losses drop out)")
    p.add_argument("--opset", type=int, default=20, help="the ONNX opset (default: 20)")
    p.add_argument("--seed", type=seed, default=0, help="seed for the initial params when --params is not given")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("lsp", help="the language server for editors: diagnostics, hover, go to definition "
                                   "(needs nncompile[editor])")
    p.add_argument("--stdio", action="store_true",
                   help="talk over stdin and stdout (the only way; accepted because editors pass it)")
    p.set_defaults(run=cmd_lsp)

    add_train_parser(sub)
    add_predict_parser(sub)
    add_diagnose_parser(sub)
    add_sweep_parser(sub)
    return parser


class _WarningPrinter:
    """Prints a warning about the user's model like an error (place, source line, caret), and
    each one once: a command that elaborates the model twice (both modes, a gradient check's
    trace) would otherwise say it twice."""

    def __init__(self) -> None:
        self.shown: set[str] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = f"{message}\n" if isinstance(message, NNWarning) else \
            warnings.formatwarning(message, category, filename, lineno, line)
        if text not in self.shown:
            self.shown.add(text)
            print(text, file=sys.stderr, end="")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; an unknown option gets the command's closest one as a hint
    (``--bach-size``: did you mean --batch-size?), which argparse does not give."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        options = [o for action in command._actions for o in action.option_strings if o.startswith("--")]
        close = [difflib.get_close_matches(extra.split("=")[0], options, n=1, cutoff=0.75)
                 for extra in extras if extra.startswith("--")]
        hints = [f"{extra.split('=')[0]}: did you mean {found[0]}?"
                 for extra, found in zip([e for e in extras if e.startswith("--")], close) if found]
        command.error(f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(hints)})" if hints else ""))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _WarningPrinter()
            return run(args)
    except NNError as exc:
        print(exc.format(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nncompile eval big.nn | head`: the reader left, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
