"""The package's modules import one another in one direction: no import cycles."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "nncompile"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def module_imports() -> nx.DiGraph:
    """Module -> the package modules its top-level statements import (``from . import x``
    imports the submodule x, not the package's __init__)."""
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        graph.add_node(module)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{alias.name}" for alias in node.names]
                graph.add_edges_from((module, name) for name in names if _is_module(name))
                if not all(map(_is_module, names)):
                    graph.add_edge(module, target)
            elif isinstance(node, ast.Import):
                graph.add_edges_from((module, a.name) for a in node.names if a.name.split(".")[0] == PACKAGE.name)
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert list(nx.simple_cycles(module_imports())) == []


def test_the_code_generator_needs_neither_the_package_nor_the_compiler() -> None:
    reached = nx.descendants(module_imports(), "nncompile.codegen")
    assert "nncompile" not in reached and "nncompile.compiler" not in reached
    assert "nncompile.version" in reached
