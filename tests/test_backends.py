"""The backends: what each target needs written differently, said once, as data."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import nncompile
from nncompile.backends import BACKENDS, CUPY, NUMPY
from nncompile.compiler import load_module

HELPER = '''def _scale(x, out=None):
    """Faster than np.where: see np.multiply."""
    if type(x) is not np.ndarray:  # np.asarray would copy
        x = np.asarray(x, dtype=np.int64)
    return np.multiply(x, "np.x", out=out)'''


def test_numpy_runs_helper_source_exactly_as_written() -> None:
    assert NUMPY.retarget(HELPER) == HELPER


def test_cupy_renames_the_array_module_in_code_and_leaves_prose_and_host_names() -> None:
    retargeted = CUPY.retarget(HELPER)
    assert retargeted == (HELPER.replace("np.asarray(x", "cp.asarray(x")
                          .replace("return np.multiply", "return cp.multiply"))
    calls = {ast.unparse(node.func) for node in ast.walk(ast.parse(retargeted)) if isinstance(node, ast.Call)}
    assert calls == {"type", "cp.asarray", "cp.multiply"}


def test_each_backend_reduces_with_its_own_functions() -> None:
    assert NUMPY.reduction("add") == "np.add.reduce" and NUMPY.reduction("maximum") == "np.maximum.reduce"
    assert CUPY.reduction("add") == "cp.sum" and CUPY.reduction("maximum") == "cp.max"


def test_only_a_fusing_backend_defines_kernels() -> None:
    assert CUPY.elementwise_kernel("T x0", "T y", "y = x0", "k") == "cp.ElementwiseKernel('T x0', 'T y', 'y = x0', 'k')"
    with pytest.raises(ValueError, match="no elementwise kernels"):
        NUMPY.elementwise_kernel("T x0", "T y", "y = x0", "k")


def test_every_command_with_a_backend_offers_exactly_the_backends() -> None:
    from nncompile.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    offered = {name: action.choices for name, command in commands.items() for action in command._actions
               if "--backend" in action.option_strings}
    assert set(offered) == {"compile", "train", "sweep"}   # sweep takes train's flags
    assert all(tuple(choices) == ("numpy", "cupy") == tuple(BACKENDS) for choices in offered.values())


def test_an_input_named_like_an_array_module_does_not_hide_it(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "names.nn"
    path.write_text("input cp: float[N, 3]\ninput np: float[N, 3]\nloss = sum(cp * np)\nminimize loss\n")
    sys.path.insert(0, str(Path(__file__).parent))
    import fake_cupy
    sys.path.pop(0)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    a, b = np.ones((2, 3)), np.full((2, 3), 2.0)
    for backend in BACKENDS:
        module = load_module(nncompile.compile_file(path, dtype="float64", backend=backend), f"names_{backend}")
        outputs, grads = module.value_and_grad({}, cp=a, np=b)
        np.testing.assert_allclose(outputs["loss"], 12.0)
        np.testing.assert_allclose(grads["cp"], b)


class _ToCupy(ast.NodeTransformer):
    def visit_Attribute(self, node: ast.Attribute) -> ast.Attribute:
        self.generic_visit(node)
        if isinstance(node.value, ast.Name) and node.value.id == "np" and node.attr not in CUPY.host_names:
            node.value = ast.Name("cp", node.value.ctx)
        return node


def test_every_helper_a_module_can_hold_is_retargeted_in_its_code_alone() -> None:
    from nncompile.codegen import runtime
    from nncompile.ops import REGISTRY

    helpers = {h for op in REGISTRY.values() for h in op.helpers} | {runtime.CONVERT, runtime.CONVERT_INPUTS,
                                                                    runtime.EMPTY}
    for helper in helpers:
        want = ast.dump(_ToCupy().visit(ast.parse(helper)))
        assert ast.dump(ast.parse(CUPY.retarget(helper))) == want
        assert NUMPY.retarget(helper) == helper
