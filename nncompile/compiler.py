"""The pipeline, end to end: .nn file -> elaborated graph -> gradients -> passes -> module text."""
from __future__ import annotations

import gc
import types
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

import networkx as nx

from .autodiff import differentiate as reverse_mode
from .autodiff import hessian_vector
from .backends import BACKENDS
from .codegen import Program, emit_module
from .display import show_as_table
from .elaborate import elaborate_file
from .errors import NNError, NoSecondDerivative
from .ir import Model
from .optim import Optimizer, optimizer_source
from .passes import Roots, eliminate_dead_code, fuse_elementwise, optimize
from .predictions import Roles, prediction_outputs, prediction_roles
from .stretch import fill_gaps, stretched

DTYPES = ("float32", "float64")


def build(model: Model, *, optimized: bool = True, trace: bool = False, input_grads: bool = True,
          fuse: bool = False, differentiate: bool = True) -> Program:
    """Differentiate and optimise an elaborated model (mutating its graph) into a Program.

    ``input_grads=False`` differentiates with respect to the params only, as training
    needs: the gradient of a data input is never used there and can cost a whole matmul.
    ``fuse`` merges elementwise groups into single kernels (for the GPU backend).
    """
    G = model.graph
    roots: dict = {("out", name): n for name, n in model.outputs.items()}
    roots.update({("state", name): n for name, n in model.updates.items()})
    grads: dict[str, int | None] = {}
    adjoints: dict[int, int] = {}
    forward_nodes = list(G.nodes())
    target = model.target if differentiate else None
    if target is not None:
        candidates = {**model.params, **(model.inputs if input_grads else {})}
        wrt = {name: n for name, n in candidates.items() if G[n].dtype == "float"}
        branches: dict[tuple[int, int], int] = {}
        adjoints = reverse_mode(G, target, wrt.values(), branches if trace else None)
        roots.update({("branch", use): part for use, part in branches.items()})
        for name, n in wrt.items():
            grads[name] = adjoints.get(n)
            if n in adjoints:
                roots[("grad", name)] = adjoints[n]
    if trace:
        roots.update({("value", n): n for n in forward_nodes})
        roots.update({("adjoint", n): a for n, a in adjoints.items()})
    if optimized:
        roots = Roots(roots)
        optimize(G, roots)
        if fuse:
            fuse_elementwise(G, roots)
    else:
        eliminate_dead_code(G, roots)
    program = Program(model, G, {k[1]: v for k, v in roots.items() if k[0] == "out"},
                      {name: roots.get(("grad", name)) for name in grads},
                      {k[1]: v for k, v in roots.items() if k[0] == "state"})
    # The passes replaced nodes: point the model's names at the survivors.
    loss_name = next((name for name, n in model.outputs.items() if n == model.loss), None)
    model.outputs = dict(program.outputs)
    model.loss = model.outputs[loss_name] if loss_name is not None else None
    if trace:
        program.trace_values = {k[1]: v for k, v in roots.items() if k[0] == "value" and G[v].op != "const"}
        program.trace_grads = {k[1]: v for k, v in roots.items() if k[0] in ("adjoint", "branch")}
    return program


def compile_file(path: str | Path, *, dtype: str | None = None, optimized: bool = True,
                 trace: bool = False, input_grads: bool = True, backend: str = "numpy",
                 optimizer: str | Optimizer | None = None, hvp: bool = True, loops: bool = True,
                 stretch: bool = True) -> str:
    """Compile a .nn file to the source text of a standalone numpy module.

    ``hvp`` gives the module ``hvp`` and ``hessian`` (second derivatives of the loss).
    ``loops=False`` writes each instance of a ``repeat`` out instead of one loop over them.
    ``stretch=False`` has a long ``repeat`` compiled with all its instances, rather than a few
    and the module stretched to all (nncompile/stretch.py): the same module, only slower.

    With ``optimizer`` (a name such as "adam", or an :class:`nncompile.optim.Optimizer`), the
    module also gets ``init_opt_state``, ``apply_update`` and ``step`` (see nncompile/optim.py).

    One compile at a time per process: a compile pauses the cycle collector and a stretched
    one records its warnings, and both are process-wide state (run compiles in processes).
    """
    if dtype is not None and dtype not in DTYPES:
        raise NNError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    with _collector_paused():
        options = (dtype, optimized, trace, input_grads, backend, optimizer, hvp, loops)
        if stretch and loops and not trace:
            source = stretched(lambda short: _compile(path, *options, short))
            if source is not None:
                return source
        return _compile(path, *options)[0]


@contextmanager
def _collector_paused():
    """Python's cycle collector off while a compile builds its graphs: a deep model makes
    hundreds of thousands of objects, which every full collection would walk again (a fifth
    of a 1000-layer compile). What the compile leaves behind is collected as usual after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _compile(path: str | Path, dtype: str | None, optimized: bool, trace: bool, input_grads: bool, backend: str,
             optimizer: str | Optimizer | None, hvp: bool, loops: bool,
             shorten: tuple[int, int] | None = None) -> tuple[str, Model, int]:
    """The module's source, the model it was built from and its size as elaborated, in graph
    nodes (``shorten``: see stretch.py)."""
    model = elaborate_file(path, dtype, shorten=shorten)
    elaborated = len(model.graph)
    roles = prediction_roles(model)   # before build() optimises the graph the analysis reads
    if backend not in BACKENDS:
        raise NNError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    # predict() runs eval mode; where the modes do not differ, their graphs are the same one.
    unbuilt = None if model.mode_dependent else _unbuilt_copy(model, "eval")
    second = _unbuilt_copy(model, model.mode) if hvp and model.target is not None else None
    program = build(model, optimized=optimized, trace=trace, input_grads=input_grads, fuse=BACKENDS[backend].fuses)
    if model.mode_dependent:  # forward() runs eval mode: dropout off, running statistics used
        evaluation = elaborate_file(path, dtype, mode="eval", shorten=shorten)
        _check_inputs_for_both(model, evaluation)
        unbuilt = _unbuilt_copy(evaluation, "eval")
        program.eval_program = build(evaluation, optimized=optimized, fuse=BACKENDS[backend].fuses, differentiate=False)
    program.predict_program = predict_program(unbuilt, roles, optimized=optimized, fuse=BACKENDS[backend].fuses)
    if hvp and model.target is not None:
        try:
            program.hvp_program = hvp_program(second, optimized=optimized, fuse=BACKENDS[backend].fuses)
        except NoSecondDerivative as missing:   # an op without a second derivative: hvp() and hessian() raise this
            program.hvp_missing = missing
    if model.gaps:
        fill_gaps(program)
    source = emit_module(program, trace=trace, backend=backend, loops=loops)
    return (source if optimizer is None else source + optimizer_source(model, optimizer, backend)), model, elaborated


def _unbuilt_copy(model: Model, mode: str) -> Model:
    """The elaborated model as it is now, for another build (predict's or hvp's), which mutates it."""
    tables = {f.name: dict(getattr(model, f.name)) for f in fields(model) if isinstance(getattr(model, f.name), dict)}
    return replace(model, graph=model.graph.copy(), mode=mode, **tables)


def predict_program(evaluation: Model, roles: Roles, *, optimized: bool = True,
                    fuse: bool = False) -> Program | None:
    """predict()'s program, built from the eval-mode model (as elaborated, not yet built): the
    eval-mode outputs that reach neither a label nor the loss, computed from the data inputs
    alone, so no label is asked for and no loss is worked out (None when no output is left)."""
    G = evaluation.graph
    outputs = prediction_outputs(evaluation, roles)
    if not outputs:
        return None
    evaluation.outputs, evaluation.loss = outputs, None
    program = build(evaluation, optimized=optimized, fuse=fuse, differentiate=False)
    used: set[int] = set()
    for n in program.outputs.values():
        used |= {n} | nx.ancestors(program.graph.nx, n)
    inputs = {name: n for name, n in evaluation.inputs.items() if n in used and name not in roles.labels}
    dims = {d for n in inputs.values() for d in G[n].shape if isinstance(d, str)}
    program.model = replace(evaluation, inputs=inputs,
                            min_dims={d: k for d, k in evaluation.min_dims.items() if d in dims},
                            dim_bounds={name: tuple(d for d in ds if d in dims)
                                        for name, ds in evaluation.dim_bounds.items()})
    return program


def hvp_program(model: Model, *, optimized: bool = True, fuse: bool = False) -> Program:
    """hvp()'s program, built from the model as elaborated (not yet built): the loss's Hessian
    (over the params) times a direction v shaped like the params, reverse over reverse in the
    graph, so the passes optimise it like the rest."""
    G = model.graph
    wrt = {name: n for name, n in model.params.items() if G[n].dtype == "float"}
    tangents = {name: G.add("input", (), {"name": f"v.{name}", "shape": G[n].shape, "dtype": "float"},
                            name=f"v.{name}") for name, n in wrt.items()}
    products = hessian_vector(G, model.target, wrt, tangents)
    roots = Roots({("hv", name): n for name, n in products.items() if n is not None})
    eliminate_dead_code(G, roots)   # first: the outputs' own nodes would only slow the passes down
    if optimized:
        optimize(G, roots)
        if fuse:
            fuse_elementwise(G, roots)
    hv = {name: roots.get(("hv", name)) for name in products}
    return Program(model, G, {}, hv, tangents=tangents)


def _check_inputs_for_both(model: Model, evaluation: Model) -> None:
    """The module checks its inputs once for both modes: against the bounds either mode implies."""
    for name, bound in evaluation.int_bounds.items():
        model.int_bounds[name] = min(model.int_bounds.get(name, bound), bound)
    for name, dims in evaluation.dim_bounds.items():
        model.dim_bounds[name] = tuple(dict.fromkeys((*model.dim_bounds.get(name, ()), *dims)))
    for dim, least in evaluation.min_dims.items():
        model.min_dims[dim] = max(model.min_dims.get(dim, 0), least)


def load_module(source: str, name: str = "nncompiled") -> types.ModuleType:
    """Import generated source as a module object, without writing it anywhere; in a notebook
    it shows as a table of its inputs, params and outputs (the source itself is untouched)."""
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    code = compile(source, module.__file__, "exec")
    exec(code, module.__dict__)  # noqa: S102 - our own generated code
    return show_as_table(module)


def compile_and_load(path: str | Path, **options) -> types.ModuleType:
    return load_module(compile_file(path, **options), Path(path).stem)
