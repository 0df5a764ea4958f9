"""The package's shape, checked: modules import one another in one direction (an import
inside a function counts: it hides a cycle, it does not remove it), and what is known about
a particular op is said in nncompile/ops/ and nowhere else.

These read the source (with :mod:`ast`), so they hold for code paths no other test runs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import nncompile
from nncompile.ir import LEAVES
from nncompile.ops import REGISTRY

PACKAGE = Path(nncompile.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports, at its top or inside a function alike:
    an import hidden in a function still makes the two modules depend on each other."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:   # `from . import codegen` names a module, `from .ir import Graph` does not
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != module}


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:`` (read by type
    checkers only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def module_imports() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    for module, path in modules.items():
        graph.add_node(module)
        graph.add_edges_from((module, dep) for dep in _imports(module, path, modules))
    return graph


def test_no_module_imports_itself_back_through_others():
    cycles = sorted(" -> ".join([*cycle, cycle[0]]) for cycle in nx.simple_cycles(module_imports()))
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_code_generator_needs_neither_the_package_nor_the_compiler():
    reached = nx.descendants(module_imports(), "nncompile.codegen")
    assert "nncompile" not in reached and "nncompile.compiler" not in reached
    assert "nncompile.version" in reached


def test_the_graph_is_built_without_knowing_any_op():
    """The IR is the bottom of the pipeline: ops describe themselves in terms of it."""
    assert nx.descendants(module_imports(), "nncompile.ir") <= {"nncompile.errors", "nncompile.shapes"}


def _op_names_compared(path: Path) -> list[str]:
    """Where a module tests a node's ``.op`` against a particular op's name."""
    ops = set(REGISTRY) - LEAVES
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if not any(isinstance(side, ast.Attribute) and side.attr == "op" for side in sides):
            continue   # a comparison of something else that happens to share a name (an lr schedule's "step")
        for side in sides:
            items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            for item in items:
                if isinstance(item, ast.Constant) and item.value in ops:
                    hits.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {item.value!r}")
    return hits


# The front end reads the language, whose operators (`@`, `**`) are named like the ops they
# become; it compares syntax, not graph nodes.
FRONT_END = ("nncompile.parser", "nncompile.syntax", "nncompile.elaborate")


def test_no_stage_outside_ops_singles_out_an_op_by_name():
    """No stage branches on what a node's op is called: what it needs to know of an op is a
    field of the op's entry. (Building a node by name, as autodiff adds ``add`` to sum fan-out
    gradients and the fusion pass makes ``fused`` nodes, is using an op, not knowing one.)"""
    hits = [hit for module, path in _modules().items() if not module.startswith(("nncompile.ops", *FRONT_END))
            for hit in _op_names_compared(path)]
    assert hits == [], "op knowledge outside nncompile/ops/:\n" + "\n".join(hits)
