"""Notebooks for real: the %%nn magic in a real IPython shell and in a real kernel driven by
nbclient, and examples/tutorial.ipynb executed from top to bottom. A mistake in a cell reads
as the compiler's `file:line:col: error:` with the line and a caret, never a traceback.

IPython, ipykernel and nbclient are the optional extra `notebook`: without them these tests
skip (bash scripts/notebook_check.sh installs them and runs this file).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

from nncompile.compiler import compile_and_load

from conftest import EXAMPLES, write_nn

TUTORIAL = EXAMPLES / "tutorial.ipynb"
CHECK = bool(os.environ.get("NNCOMPILE_NOTEBOOK_CHECK"))   # scripts/notebook_check.sh: never skip
CIRCUIT_CELL = "%%nn circuit --render\ninput x = -2\ninput y = 5\ninput z = -4\nq = x + y\nf = q * z\noutput f\n"
BAD_CELL = "%%nn bad\ninput x: float[N, 3]\nparam W: [4, 2] = zeros()\nout = x @ W\noutput out\n"
BAD_MESSAGE = ("<cell bad>:4:7: error: cannot multiply [N, 3] @ [4, 2]: inner dims 3 and 4 differ\n"
               "    out = x @ W\n"
               "          ^~~~~")


def needs(module: str):
    if CHECK:
        return __import__(module)
    return pytest.importorskip(module, reason=f"{module} is in the optional extra 'notebook' "
                                              "(bash scripts/notebook_check.sh installs it and runs these tests)")


def svg_texts(svg: str) -> list[str]:
    return ["".join(t.itertext()).strip() for t in ElementTree.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]


# ---- the stored tutorial (no extra needed) -----------------------------------------------


def test_the_tutorial_is_stored_without_outputs_or_execution_counts() -> None:
    notebook = json.loads(TUTORIAL.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4 and notebook["metadata"]["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)


def test_the_tutorial_uses_the_bundled_examples() -> None:
    text = TUTORIAL.read_text(encoding="utf-8")
    named = set(re.findall(r'\\"(\w+\.nn)\\"', text))
    assert {"circuit.nn", "neuron.nn", "two_layer.nn", "digits_mlp.nn"} <= named
    assert all((EXAMPLES / name).is_file() for name in named)


# ---- %%nn in an IPython shell ------------------------------------------------------------


@pytest.fixture
def shell():
    needs("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nncompile")
    yield ip
    for name in ("circuit", "bad", "neuron"):
        ip.user_ns.pop(name, None)


def run(shell, cell: str):
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        result = shell.run_cell(cell)
    return result, captured


def test_nn_binds_the_module_compiled_from_the_cell(shell) -> None:
    result, _ = run(shell, CIRCUIT_CELL.replace(" --render", ""))
    assert result.success
    module = shell.user_ns["circuit"]
    from_file = compile_and_load(EXAMPLES / "circuit.nn")
    assert module.INPUTS == from_file.INPUTS and module.OUTPUTS == from_file.OUTPUTS
    outputs, grads = module.value_and_grad({}, **module.DEFAULTS)
    assert float(outputs["f"]) == -12 and {k: float(v) for k, v in grads.items()} == {"x": -4, "y": -4, "z": 3}
    assert "<code>f</code>" in module._repr_html_()


def test_render_shows_the_diagram_as_svg(shell) -> None:
    result, captured = run(shell, CIRCUIT_CELL)
    assert result.success and result.result is None   # the cell shows the diagram, and returns nothing
    (shown,) = captured.outputs
    assert set(shown.data) == {"image/svg+xml", "text/plain"}
    assert {"q = 3", "f = -12"} <= set(svg_texts(shown.data["image/svg+xml"]))


def test_check_prints_what_nncompile_check_prints_for_the_cell(shell, run_cli, tmp_path: Path) -> None:
    cell = CIRCUIT_CELL.replace("--render", "--check")
    result, captured = run(shell, cell)
    assert result.success
    path = write_nn(tmp_path, "circuit.nn", "\n" + cell.split("\n", 1)[1])
    done = run_cli("check", path)
    assert done.returncode == 0, done
    assert captured.stdout == done.stdout.replace(str(path), "<cell circuit>")
    assert captured.stdout.startswith("<cell circuit>: parsed and shape-checked: 3 inputs, 0 params, 1 output")
    assert "gradient check passed" in captured.stdout


def test_a_mistake_in_the_cell_is_the_compilers_message_at_the_cells_line_without_a_traceback(shell) -> None:
    shell.user_ns.pop("bad", None)
    result, captured = run(shell, BAD_CELL)
    assert not result.success
    assert captured.stdout.strip() == BAD_MESSAGE   # line 4 of the cell as the notebook numbers it
    assert "Traceback" not in captured.stdout + captured.stderr
    assert "bad" not in shell.user_ns   # nothing is bound


def test_a_bad_set_is_reported_at_the_declaration_it_is_for(shell) -> None:
    result, captured = run(shell, CIRCUIT_CELL.replace("--render", "--render --set x=[1,2]"))
    assert not result.success
    assert captured.stdout.splitlines()[:2] == ["nncompile: error: --set x: 'x' has shape [], but the value has "
                                                "shape [2]", "<cell circuit>:2:1: note: 'x' is declared here"]
    assert "Traceback" not in captured.stdout + captured.stderr


@pytest.mark.parametrize("line, message", [
    ("%%nn", "the following arguments are required: NAME"),
    ("%%nn 2net", "%%nn 2net: NAME must be a Python name"),
    ("%%nn class", "%%nn class: NAME must be a Python name"),
    ("%%nn net --bogus", "unrecognized arguments: --bogus"),
    ("%%nn net --rankdir XY", "argument --rankdir: invalid choice: 'XY'"),
])
def test_a_usage_mistake_says_how_to_write_the_magic(shell, line: str, message: str) -> None:
    result, captured = run(shell, line + "\ninput x = 1\noutput x\n")
    assert not result.success
    assert captured.stderr.startswith(f"UsageError: {message}")
    assert "usage: %%nn NAME [--render] [--check]" in captured.stderr and "Traceback" not in captured.stderr


def test_names_in_the_cell_cannot_inject_markup_into_the_diagram(shell) -> None:
    hostile = "</script><img src=x onerror=alert(1)>"
    result, captured = run(shell, f"%%nn circuit --render\ninput x = 2  # {hostile}\nf = x * x\noutput f\n")
    assert result.success
    root = ElementTree.fromstring(captured.outputs[0].data["image/svg+xml"])
    assert not [e for e in root.iter() if e.tag.endswith(("img", "script")) or "onerror" in e.attrib]


# ---- a real kernel -----------------------------------------------------------------------


def execute(notebook, cwd: Path, timeout: int = 120):
    """Run every cell in a fresh python3 kernel, as Jupyter would; errors are kept as outputs
    where a cell is tagged raises-exception."""
    needs("ipykernel")
    nbclient = needs("nbclient")
    nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def kinds(cell) -> list[str]:
    """What a cell showed: 'error', 'stream:stdout', or each rich output's mime types."""
    shown = []
    for out in cell.outputs:
        if out.output_type == "stream":
            shown.append(f"stream:{out.name}")
        elif out.output_type == "error":
            shown.append("error")
        else:
            shown.extend(sorted(out.data))
    return shown


def test_in_a_kernel_the_magic_shows_svg_the_module_a_table_and_an_error_without_a_traceback(tmp_path) -> None:
    nbformat = needs("nbformat")
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [new_code_cell("%load_ext nncompile"), new_code_cell(CIRCUIT_CELL), new_code_cell("circuit"),
             new_code_cell(BAD_CELL, metadata={"tags": ["raises-exception"]}), new_code_cell("print('after')"),
             new_code_cell("import nncompile\nnncompile.render('nope.nn')", metadata={"tags": ["raises-exception"]})]
    notebook = execute(new_notebook(cells=cells), tmp_path)
    nbformat.validate(notebook)
    assert kinds(notebook.cells[1]) == ["image/svg+xml", "text/plain"]
    assert kinds(notebook.cells[2]) == ["text/html", "text/plain"]
    (error,) = notebook.cells[3].outputs
    assert error.output_type == "error" and error.ename == "CellError"
    assert "\n".join(error.traceback) == BAD_MESSAGE
    assert "Traceback" not in json.dumps(notebook)
    assert notebook.cells[4].outputs[0].text == "after\n"
    (error,) = notebook.cells[5].outputs   # the Python API's errors too
    assert error.ename == "NNError" and error.traceback == ["nncompile: error: nope.nn: no such file"], error


def test_the_tutorial_runs_in_a_kernel_and_shows_diagrams_tables_and_curves() -> None:
    """Every diagram is SVG, the modules are tables, the curves a PNG; the one error is the
    compile error it shows on purpose, without a traceback."""
    needs("sklearn")
    needs("matplotlib")
    nbformat = needs("nbformat")
    notebook = execute(nbformat.read(TUTORIAL, as_version=4), EXAMPLES, timeout=300)
    errors = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        source, shown = cell.source, kinds(cell)
        assert cell.execution_count is not None
        if "raises-exception" in cell.metadata.get("tags", []):
            errors.append(cell)
            assert shown == ["error"] and cell.outputs[0].traceback[0].startswith("<cell broken>:4:")
            continue
        assert "error" not in shown and "stream:stderr" not in shown, (source, cell.outputs)
        if "render(" in source or "--render" in source or source.startswith("evaluate_file("):
            assert "image/svg+xml" in shown, source
        if source.strip() in ("neuron", "net") or source.endswith("\nnet"):
            assert "text/html" in shown, source
        if "plt.show()" in source:
            assert "image/png" in shown, source
        if "--check" in source:
            assert "gradient check passed" in "".join(o.text for o in cell.outputs if o.output_type == "stream")
    assert len(errors) == 1
    assert "Traceback" not in json.dumps(notebook)
    history = [c for c in notebook.cells if "trainer.fit(" in c.source][0]
    last = eval(history.outputs[0].data["text/plain"])   # noqa: S307 - the record the notebook printed
    assert last["epoch"] == 20 and last["val_acc"] > 0.9 and np.isfinite(last["loss"])


def test_the_magic_of_docs_rendering_md_runs_and_its_error_is_the_one_shown(shell) -> None:
    text = (EXAMPLES.parent / "docs" / "rendering.md").read_text(encoding="utf-8")
    section = re.split(r"\n## ", text.split("\n## In a notebook\n", 1)[1])[0]
    magic, error = [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S) if not lang][:2]
    result, captured = run(shell, magic)
    assert result.success and "gradient check passed" in captured.stdout
    assert captured.outputs[0].data["image/svg+xml"]
    assert error.strip() == BAD_MESSAGE
