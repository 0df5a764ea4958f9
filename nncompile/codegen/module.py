"""The module: its docstring and imports, the tables, the readers and helpers, init_params,
and the functions, put together in a fixed order."""
from __future__ import annotations

from pathlib import Path

from ..backends import BACKENDS, Backend
from ..initializers import INITIALIZERS
from ..ir import Graph
from ..ops import REGISTRY
from ..version import __version__
from . import runtime
from .functions import Definitions, FunctionEmitter
from .hvp import HvpEmitter, missing_second_derivatives, second_derivatives
from .names import Verbatim, docstring_text, source
from .param_runs import Run, param_runs, seed_of, seeds_table
from .program import Program
from .readers import read_inputs, read_table

NUMPY_DTYPES = {"float": None, "int": "int64", "bool": "bool"}


def emit_module(program: Program, *, trace: bool = False, backend: str = "numpy", loops: bool = True) -> str:
    """The module's source. ``backend="cupy"`` keeps arrays on an NVIDIA GPU: the same code
    with ``cp`` for ``np``, and each fused elementwise group one ``cp.ElementwiseKernel``.
    ``loops=False`` writes every instance of a ``repeat`` out, rather than one loop over them."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    if trace and not BACKENDS[backend].traces:
        raise ValueError(f"the {backend} backend has no trace functions (they are numpy-only)")
    return _Module(program, BACKENDS[backend], loops).write(trace)


class _Module:
    def __init__(self, program: Program, backend: Backend, loops: bool = True):
        self.p = program
        self.backend = backend
        self.G = program.graph
        self.model = program.model
        self.dtype = self.model.dtype
        self.dim_names = program.dim_names
        # Module-level definitions are shared by the functions of both modes' programs.
        self.definitions = Definitions(backend)
        self.loops = loops
        self.functions = FunctionEmitter(program, self.definitions, loops=loops)
        self.evaluation = (self.functions if program.eval_program is None
                           else FunctionEmitter(program.eval_program, self.definitions, loops=loops))
        self.prediction = (None if program.predict_program is None
                           else FunctionEmitter(program.predict_program, self.definitions, "predict", loops=loops))
        self.hvp = None if program.hvp_program is None else HvpEmitter(program.hvp_program, self.definitions, loops)
        self.found_runs: dict = {}   # same -> runs(same)

    def write(self, trace: bool) -> str:
        model, retarget = self.model, self.backend.retarget
        parts = [
            self.header(),
            self.tables(),
            read_inputs(self.p, self.backend),
            retarget(runtime.CONVERT_INPUTS),
            *([read_inputs(self.prediction.p, self.backend, "predict"), retarget(runtime.PREDICT_CONVERT_INPUTS)]
              if self.prediction else []),
            *([read_table(self.p, self.backend, "params", len(model.params) > 64 and self.runs(self.shape_of) is not None)]
              if model.params else []),
            *([read_table(self.p, self.backend, "state")] if model.state else []),
            *([retarget(runtime.CONVERT)] if model.params or model.state else []),
            *([retarget(runtime.FLAT)] if model.params else []),
            *([runtime.GRADS] if model.params and not self.backend.fuses else []),
            *self.helpers(self.evaluation.G, *([self.prediction.G] if self.prediction else []),
                          *([self.hvp.G] if self.hvp else [])),
            self.init_params(),
            *([self.init_params("state")] if model.state else []),
            self.evaluation.function("forward", self.evaluation.p.outputs, None,
                                     "Every declared output, for the given params and inputs"
                                     + (", in eval mode." if model.mode_dependent else ".")),
        ]
        if model.target is not None:
            doc = ("The outputs, and the gradient of the loss with respect to every param and float input"
                   + (", in train mode." if model.mode_dependent else ".")
                   + ("\n\n    With state, also the new state (running statistics after this step)."
                      if model.state else ""))
            parts.append(self.functions.function("value_and_grad", self.p.outputs, self.p.grads, doc))
        if self.hvp:
            parts += second_derivatives(self.hvp, retarget)
        elif self.p.hvp_missing is not None:
            parts.append(missing_second_derivatives(self.p.hvp_missing))
        if trace:
            parts.append(self.functions.trace_function())
        if self.prediction:
            parts.append(self.prediction.function(
                "predict", self.prediction.p.outputs, None,
                "The predictions (PREDICT_OUTPUTS) from the data inputs alone (PREDICT_INPUTS), in eval mode:\n"
                "    no labels are needed and no loss is computed."))
        definitions = self.definitions
        if definitions.kernels:  # defined once at import; CuPy compiles each on first use and caches it
            parts.insert(3, "\n".join(definitions.kernel_definitions()))
        if definitions.caches:  # workspaces, one per function and set of dims, made on first use
            parts.insert(3, "\n".join(f"{cache} = {{}}" for cache in definitions.caches) + "\n\n\n"
                         + retarget(runtime.EMPTY))
        return "\n\n\n".join(parts).rstrip() + "\n"

    def header(self) -> str:
        """The module's docstring and imports."""
        return (f'"""{docstring_text(Path(self.model.file).name)}, compiled by nncompile {__version__}: '
                f'forward and backward passes in {self.backend.name}.\n\n'
                "Generated code: edit the .nn file and compile again rather than editing this.\n"
                'INPUTS, PARAMS and OUTPUTS map names to (shape, dtype); symbolic dims are strings.\n"""\n\n'
                + "\n".join(self.backend.imports))

    def tables(self) -> str:
        """OUTPUTS describes what forward() returns (eval mode), TRAIN_OUTPUTS what
        value_and_grad() returns (train mode: a train block's loss, say, exists only there)."""
        m = self.model
        evaluation = self.p.eval_program or self.p

        def entry(G: Graph, n: int) -> str:
            node = G[n]
            dtype = NUMPY_DTYPES[node.dtype] or self.dtype
            return f"({tuple(node.shape)!r}, {dtype!r})"

        lines = [f"DTYPE = np.{self.dtype}"]
        tables = [("INPUTS", m.inputs, self.G), ("PARAMS", m.params, self.G),
                  ("OUTPUTS", evaluation.outputs, evaluation.graph)]
        if m.target is not None:
            tables.append(("TRAIN_OUTPUTS", self.p.outputs, self.G))
        if m.state:
            tables.append(("STATE", m.state, self.G))
        for title, table, G in tables:
            lines.append(f"{title} = {{")
            runs = self.runs(self.shape_of) if title == "PARAMS" else None
            for item in runs or table:
                if isinstance(item, Run):   # a repeat's instances: one entry per param of the layer
                    spec = {role: entry(G, table[item.name(item.first, role)]) for role in item.roles}
                    lines += [f"    {item.comprehension('spec')} for role, spec in (",
                              *(f"        ({role!r}, {value})," for role, value in spec.items()), "    )},"]
                else:
                    lines.append(f"    {item!r}: {entry(G, table[item])},")
            lines.append("}")
        loss = next((name for name, n in m.outputs.items() if n == m.target), None)
        lines.append(f"LOSS = {loss!r}")
        lines.append(f"DEFAULTS = {source(m.defaults)}")
        lines.append(f"BOUNDS = {m.int_bounds!r}")
        lines.append(f"DIM_BOUNDS = {m.dim_bounds!r}")
        lines.append(f"MIN_DIMS = {m.min_dims!r}")
        lines.append(f"DIMS = {tuple(self.dim_names)!r}")
        if self.prediction:
            prediction = self.prediction.p
            for title, table in (("PREDICT_INPUTS", prediction.model.inputs), ("PREDICT_OUTPUTS", prediction.outputs)):
                lines.append(f"{title} = {{")
                lines += [f"    {name!r}: {entry(prediction.graph, n)}," for name, n in table.items()]
                lines.append("}")
            lines.append(f"PREDICT_DIMS = {tuple(prediction.dim_names)!r}")
        return "\n".join(lines)

    def runs(self, same) -> list | None:
        """PARAMS in runs of alike repeat instances (param_runs.py), or None where it has none
        (or loops are off): then every table lists each param."""
        if not self.loops or not self.model.repeats:
            return None
        if same not in self.found_runs:   # each table asks: a deep model's params are many
            items = param_runs(self.model, same)
            self.found_runs[same] = items if any(isinstance(item, Run) for item in items) else None
        return self.found_runs[same]

    def shape_of(self, a: str, b: str) -> bool:
        return self.G[self.model.params[a]].shape == self.G[self.model.params[b]].shape

    def draw(self, name: str, rng: str) -> str:
        """The expression init_params draws a param (or state) with."""
        spec = self.model.param_inits[name]
        n = self.model.params.get(name, self.model.state.get(name))
        shape = repr(tuple(self.G[n].shape))
        args = {k: Verbatim(source(v)) for k, v in spec.args}
        if spec.init == "constant" and isinstance(dict(spec.args)["value"], list):
            expr = f"np.array({args['value']})"
        else:
            expr = INITIALIZERS[spec.init].draw(rng, shape, spec.fan_in, spec.fan_out, args)
        return self.backend.to_device.format(f"np.asarray({expr}, dtype=DTYPE)")

    def helpers(self, *others: Graph) -> list[str]:
        texts: list[str] = []
        ops = dict.fromkeys(G[n].op for G in (self.G, *others) for n in G.nodes())   # in order of first use
        for op in ops:
            for helper in REGISTRY[op].helpers:
                if self.backend.retarget(helper) not in texts:
                    texts.append(self.backend.retarget(helper))
        if any(REGISTRY[op].random for op in ops):   # the functions that draw read their rng with it
            texts.insert(0, self.backend.retarget(runtime.GENERATOR))
        return texts

    def init_params(self, kind: str = "params") -> str:
        """``init_params``, its params as views into one buffer (``_flat``), or ``init_state``."""
        flat = kind == "params" and bool(self.model.params)
        if kind == "params":
            lines = ["def init_params(seed=0):",
                     '    """Fresh params drawn as the .nn file says: the same seed always gives the same params.',
                     "",
                     "    Each param has its own random stream, keyed by its name, so adding a param to the",
                     "    model does not change the others." + (" They are views into one buffer (see _flat)." if flat
                                                             else "") + '"""']
        else:
            lines = ["def init_state(seed=0):",
                     '    """The state a model starts from (running statistics before any training)."""']
        lines.append("    return _flat({" if flat else "    return {")
        runs = self.runs(self.drawn_alike) if kind == "params" else None
        tables = []
        for item in runs or (self.model.params if kind == "params" else self.model.state):
            if isinstance(item, Run):   # each instance draws from its own stream, keyed as data
                seeds = {}
                for role in [r for r in item.roles if "RNG" in self.draw(item.name(item.first, r), "RNG")]:
                    var = f"_SEEDS_{'_'.join(item.key)}_{role}".replace(".", "_")
                    while var in (t[0] for t in tables):
                        var += "_"
                    seeds[role] = var
                    tables.append((var, [seed_of(item.name(k, role)) for k in range(item.first, item.first + item.count)]))
                lines.append(f"        {item.comprehension('value')} for role, value in (")
                for role in item.roles:
                    rng = f"np.random.default_rng((seed, {seeds.get(role)}[k - {item.first}]))"
                    lines.append(f"            ({role!r}, {self.draw(item.name(item.first, role), rng)}),")
                lines.append("        )},")
            else:
                rng = f"np.random.default_rng((seed, {seed_of(item)}))"
                lines.append(f"        {item!r}: {self.draw(item, rng)},")
        lines.append("    })" if flat else "    }")
        return "".join(seeds_table(var, values) + "\n\n\n" for var, values in tables) + "\n".join(lines)

    def drawn_alike(self, a: str, b: str) -> bool:
        """Whether two params are drawn by one expression, but for their random stream (as
        they are where their initialisers are the same: the expression is written from it)."""
        if not self.shape_of(a, b):
            return False
        inits = self.model.param_inits
        return inits[a] == inits[b] or self.draw(a, "RNG") == self.draw(b, "RNG")
