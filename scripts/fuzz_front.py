"""Mutation fuzzer for the front end: every outcome must be a clean diagnostic or a module that imports.

Mutates the examples and the standard library (deleted, swapped and repeated tokens, huge and
non-finite numbers, unicode, CRLF, NUL bytes, deep nesting, truncation) and mixes in token
soup, runs ``nncompile compile`` (or ``eval``) in-process on each, and prints the outcomes by
class; the first file of each new problem is written to --keep. The committed, bounded fuzz
suite lives in tests/; this is the long run:

    .venv/bin/python scripts/fuzz_front.py --count 5000 --seed 1 [--mode eval] [--keep DIR]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import io
import random
import re
import signal
import tempfile
import traceback
from pathlib import Path

from nncompile.cli import main as nncompile

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((ROOT / "examples").glob("*.nn")) + [ROOT / "nncompile" / "stdlib" / "nn.nn"]
TOKEN = re.compile(r'[A-Za-z_][A-Za-z0-9_]*|[0-9.]+(?:[eE][+-]?[0-9]+)?|"[^"\n]*"|\*\*|->|\s+|.', re.S)
NUMBER = re.compile(r"[0-9.]+(?:[eE][+-]?[0-9]+)?")
ODD = ["1e400", "9" * 400, "1" * 5000, "2 ** 1000", "10 ** 10 ** 9", "2 ** 63", "9223372036854775807",
       "2147483648", "0", "-1", "1e-400", "(-8) ** 0.5", "1e308 * 10", "1 / 0", "[[1, 2], [3]]",
       "[" * 80 + "1" + "]" * 80, "-" * 700 + "1", " + ".join(["1"] * 700), "N", "true", "[]", "()", "{}",
       "\x00", "é", "🙂", "\r\n", "\r", "\t", "\ufeff", "\u2028", "\x0c", "#", '"', ";", "\\\n"]
SOUP = ["input", "param", "const", "state", "update", "output", "minimize", "return", "layer", "import", "dtype",
        "train", "eval", "repeat", "as", "float", "int", "float32", "true", "x", "y", "N", "W", "f", "nn",
        "dense", "sum", "relu", "max", "concat", "reshape", "he", "zeros", "normal", "1", "0", "2.5", "1e400",
        "(", ")", "[", "]", "{", "}", ",", ":", ";", "=", "+", "-", "*", "/", "@", "**", "->", ".", "\n",
        '"nn.nn"', "#c", "axis", "keepdims", "k"]
CLEAN = ("diagnostic", "compiled")


def mutate(text: str, rng: random.Random) -> str:
    toks = TOKEN.findall(text)
    words = [t for t in toks if t.strip()] or ["x"]
    for _ in range(rng.choice([1, 1, 2, 3, 8])):
        if not toks:
            break
        i = rng.randrange(len(toks))
        kind = rng.randrange(8)
        if kind == 0:
            del toks[i]
        elif kind == 1 and i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        elif kind == 2:
            toks.insert(i, rng.choice(words))
        elif kind == 3 or (kind == 4 and NUMBER.fullmatch(toks[i])):
            toks[i] = rng.choice(ODD)
        elif kind == 5:
            return "".join(toks)[:rng.randrange(len(text) + 1)]
        elif kind == 6:
            depth = rng.choice([50, 101, 600, 3000])
            toks[i] = "(" * depth + toks[i] + ")" * depth if rng.random() < 0.5 else "-" * depth + toks[i]
        else:
            toks.insert(i, rng.choice(ODD))
    out = "".join(toks)
    return out.replace("\n", "\r\n") if rng.random() < 0.05 else out


def soup(rng: random.Random) -> str:
    return " ".join(rng.choice(SOUP) for _ in range(rng.randrange(1, 40)))


def _timeout(*_) -> None:
    raise TimeoutError


def run_one(text: str, work: Path, mode: str) -> tuple[str, str]:
    """(outcome class, detail): diagnostic, compiled, traceback, hang, bad_diagnostic or bad_module."""
    model, out = work / "m.nn", work / "m.py"
    model.write_bytes(text.encode("utf-8", "surrogatepass"))
    args = ["compile", str(model), "-o", str(out)] if mode == "compile" else [mode, str(model)]
    err = io.StringIO()
    signal.alarm(10)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = nncompile(args)
    except TimeoutError:
        return "hang", ""
    except BaseException as exc:  # noqa: BLE001 - what we hunt for
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f"{Path(f.filename).name}:{f.lineno}" for f in frames if "nncompile" in f.filename]
        where = ours[-1] if ours else "?"
        return "traceback", f"{type(exc).__name__}: {str(exc)[:100]} @ {where}"
    finally:
        signal.alarm(0)
    if code != 0:
        first = err.getvalue().split("\n")[0]
        ok = re.match(r"\S.*:\d+:\d+: error: |nncompile: error: ", first)
        return ("diagnostic", "") if ok else ("bad_diagnostic", first[:160])
    if mode != "compile":
        return "compiled", ""
    signal.alarm(10)
    try:
        spec = importlib.util.spec_from_file_location("fuzzed", out)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.init_params(0)
    except BaseException as exc:  # noqa: BLE001
        return "bad_module", f"{type(exc).__name__}: {str(exc)[:100]}"
    finally:
        signal.alarm(0)
    return "compiled", ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=("compile", "eval", "check"), default="compile")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the first file of each problem")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _timeout)
    rng = random.Random(args.seed)
    texts = [p.read_text(encoding="utf-8") for p in SEEDS]
    texts[-1] += "\ninput fx: float[4, 3]\nfy = sum(dense(fx, out=2))\noutput fy\n"   # the stdlib, made a model
    outcomes: collections.Counter[str] = collections.Counter()
    problems: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:   # relative imports of the examples resolve in the work folder
            (Path(tmp) / seed.name).write_text(seed.read_text(encoding="utf-8"), encoding="utf-8")
        for n in range(args.count):
            text = soup(rng) if rng.random() < 0.2 else mutate(rng.choice(texts), rng)
            kind, detail = run_one(text, Path(tmp), args.mode)
            outcomes[kind] += 1
            if kind in CLEAN:
                continue
            key = f"{kind} {detail}"
            problems[key] = problems.get(key, 0) + 1
            if problems[key] == 1:
                print(f"[{n}] {key}", flush=True)
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    (args.keep / f"problem{len(problems)}.nn").write_bytes(text.encode("utf-8", "surrogatepass"))
    print(f"{args.count} programs ({args.mode}): " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for key, count in problems.items():
        print(f"  {count:5d}  {key}")


if __name__ == "__main__":
    main()
