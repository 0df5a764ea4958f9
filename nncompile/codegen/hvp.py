"""The module's second derivatives: ``hvp`` (the loss's Hessian times a direction, written
from its own optimised program like every other function) and ``hessian`` (the dense matrix
of a tiny model, one hvp per column)."""
from __future__ import annotations

from pathlib import Path

from ..errors import NNError
from .functions import FunctionEmitter
from .names import Names
from .readers import read_params_as

HESSIAN_LIMIT = 2048   # param elements: a float64 Hessian of 32 MiB, built from 2048 hvp calls

HVP_DOC = ("The Hessian of the loss (with respect to the params) times v, a dict shaped like the params;\n"
           "    returns the same shapes. Reverse over reverse, in train mode.")

HESSIAN = f'''HESSIAN_LIMIT = {HESSIAN_LIMIT}


def hessian(params, state=None, rng=None, /, **inputs):
    """The dense Hessian of the loss over the params flattened in PARAMS order (entry i, j:
    d2 loss / d p_i d p_j), one hvp() per column: for tiny models (HESSIAN_LIMIT elements)."""
    sizes = []
    for shape, _ in PARAMS.values():   # sizes from shapes in Python: the array module has no say
        size = 1
        for d in shape:
            size *= d
        sizes.append(size)
    total = sum(sizes)
    if total > HESSIAN_LIMIT:
        raise ValueError(f"hessian() is for tiny models: this one has {{total}} param elements, more than "
                         f"HESSIAN_LIMIT = {{HESSIAN_LIMIT}}; use hvp(params, v, ...) for products with the Hessian")
    # Every column draws the dropout masks, so every column must draw the same ones to be of
    # one Hessian: those value_and_grad(params, state, rng) and hvp(...) draw from the same rng.
    # A seed is a fresh generator each time; a Generator is copied as it stands for each column
    # (and left where one hvp() call leaves it); None draws one seed for all the columns.
    if rng is None:
        rng = int(np.random.default_rng().integers(2**62))
    rng = np.random.default_rng(rng)
    start = getattr(rng.bit_generator, "state", None)   # None: an array library's own generator
    seed = int(rng.integers(2**62)) if not isinstance(start, dict) else None
    basis = np.zeros(total, dtype=DTYPE)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    columns = []
    for j in range(total):
        basis[:] = 0
        basis[j] = 1
        v = {{name: basis[start:start + size].reshape(shape)
             for name, (shape, _), start, size in zip(PARAMS, PARAMS.values(), starts, sizes)}}
        if seed is None:
            draws = np.random.Generator(type(rng.bit_generator)())
            draws.bit_generator.state = start
        else:
            draws = np.random.default_rng(seed)
        hv = hvp(params, v, state, draws, **inputs)
        columns.append(np.concatenate([hv[name].reshape(-1) for name in PARAMS]))
    if seed is None and columns:
        rng.bit_generator.state = draws.bit_generator.state
    return np.stack(columns, axis=1) if columns else np.zeros((0, 0), dtype=DTYPE)'''


class HvpEmitter(FunctionEmitter):
    """``hvp(params, v, state=None, rng=None, /, **inputs)``: v is read as the params are
    (in loops, gathered per run of instances as their params are: nncompile/codegen/loops.py)."""

    def __init__(self, program, definitions, loops: bool = True) -> None:
        super().__init__(program, definitions, loops=loops)

    def signature(self, fname: str) -> str:
        return "params, v, state=None, rng=None, /, **inputs"

    def read_params_and_state(self, needed: set[int], names: Names, params: bool = True) -> list[str]:
        lines = super().read_params_and_state(needed, names, params=params)
        tangents = self.p.tangents
        if params and any(n in needed for n in tangents.values()):   # else the loops read them
            for name, n in tangents.items():
                if n in needed:
                    names.of[n] = names.fresh(f"v_{name}")
            targets = [names.of.get(n, "_") for n in tangents.values()]
            lines += read_params_as("v", f"{', '.join(targets)}{',' if len(targets) == 1 else ''}",
                                    "checked as the params are")
        return lines

    def hvp_function(self) -> str:
        products = self.p.grads
        body, names, ctx = self.body("hvp", list(reversed([n for n in products.values() if n is not None])))
        var = self.loop_writer.names.fresh("hv") if self.loop_writer else ""
        filled = self.loop_writer and self.loop_writer.grads(products, ctx, set(), var)
        if filled:   # the products a loop kept go in by a loop, as value_and_grad's gradients do
            body += [*filled, f"    return {var}"]
        else:
            body.append(f"    return {self.returned(products, names, ctx, set())}")
        return "\n".join([f"def hvp({self.signature('hvp')}):", f'    """{HVP_DOC}"""', *body])


def second_derivatives(emitter: HvpEmitter, retarget) -> list[str]:
    """The module's hvp and hessian functions."""
    return [emitter.hvp_function(), retarget(HESSIAN)]


def missing_second_derivatives(error: NNError) -> str:
    """hvp() and hessian() of a model with an op that has no second derivative: the module
    still compiles (its gradient needs none), and these raise, naming the op and its line."""
    where = f"{Path(error.loc.file).name}:{error.loc.line}:{error.loc.col}: " if error.loc else ""
    why = where + error.message
    return f'''HVP_MISSING = {why!r}


def hvp(params, v, state=None, rng=None, /, **inputs):
    """Not for this model: an op in it has no second derivative (HVP_MISSING says which, and where)."""
    raise NotImplementedError("hvp() cannot be computed for this model: " + HVP_MISSING)


def hessian(params, state=None, rng=None, /, **inputs):
    """Not for this model: an op in it has no second derivative (HVP_MISSING says which, and where)."""
    raise NotImplementedError("hessian() cannot be computed for this model: " + HVP_MISSING)'''
