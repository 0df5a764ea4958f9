"""The package as a user gets it: the built wheel, installed into a fresh virtual environment,
works from a folder outside the checkout (an editable install would hide a missing subpackage)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import EXAMPLES, ROOT

SOURCES = ("pyproject.toml", "setup.py", "README.md", "grammar", "nncompile")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources, so the build leaves nothing in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                    "-w", str(work / "dist"), str(src)], check=True, capture_output=True, text=True)
    (built,) = (work / "dist").glob("nncompile-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_every_module_of_the_source_tree(wheel: Path) -> None:
    """A new subpackage is shipped without anyone editing the package list."""
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "nncompile").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources - shipped == set()
    assert {"nncompile/grammar/nn.lark", "nncompile/stdlib/nn.nn", "nncompile/page/page.js",
            "nncompile/page/page.css"} <= shipped


@pytest.mark.slow
def test_the_installed_wheel_runs_every_command_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environ["PATH"] = os.pathsep.join([str(bindir), environ.get("PATH", "")])
    # pip too runs without PYTHONPATH: with the checkout on it, pip takes nncompile for
    # installed already and writes no nncompile script into the environment
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                    f"{wheel}[train]"], check=True, capture_output=True, text=True, timeout=600, env=environ)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(EXAMPLES / "digits_mlp.nn", work / "digits_mlp.nn")
    shutil.copy(EXAMPLES / "neuron.nn", work / "neuron.nn")

    def nncompile(*args: str) -> str:
        done = subprocess.run([str(bindir / "nncompile"), *args], cwd=work, env=environ, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stdout, done.stderr)
        return done.stdout

    assert nncompile("--version").strip().startswith("nncompile ")
    where = subprocess.run([str(python), "-c", "import nncompile; print(nncompile.__file__)"], cwd=work,
                           env=environ, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(env_dir), "the test ran the checkout, not the wheel"

    nncompile("compile", "neuron.nn", "-o", "neuron.py")
    assert "def value_and_grad(" in (work / "neuron.py").read_text()
    result = json.loads(nncompile("eval", "neuron.nn", "--json"))
    assert result["values"] and result["grads"]
    nncompile("render", "neuron.nn", "-o", "neuron.dot")
    assert (work / "neuron.dot").read_text().startswith("digraph")
    if shutil.which("dot"):
        nncompile("render", "neuron.nn", "-o", "neuron.svg")
        assert "<svg" in (work / "neuron.svg").read_text()
        nncompile("render", "neuron.nn", "-o", "neuron.html")   # the page's script and style are package data
        assert "function num(" in (work / "neuron.html").read_text()
    assert "gradient check passed" in nncompile("check", "neuron.nn")
    out = nncompile("train", "digits_mlp.nn", "--data", "digits", "--epochs", "1", "--out", "run",
                    "--no-progress")
    assert "expected -log(1/10)" in out
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["test"]["acc"] > 0.5
