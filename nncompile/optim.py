"""Optimisers, emitted into the generated module as fused, in-place numpy updates.

``emit_optimizer`` returns Python source that is appended to a compiled module (see
``compile_file(..., optimizer=...)``). It defines::

    OPTIMIZER    the optimiser's name ("adam")
    HYPERPARAMS  the compiled-in defaults of its hyperparameters (and clip_norm)
    TRAINABLE    the params it updates, in PARAMS order
    SLOTS        the names of its per-param state ("m", "v")
    init_opt_state(params) -> opt_state
    apply_update(params, grads, opt_state, lr, /, **hyperparams)   in place; grads are only read
    step(params, opt_state, lr, state=None, rng=None, /, **inputs)
        forward + backward + update in one call; returns the outputs, or (outputs, new_state)
        for a model with state (running statistics), exactly as value_and_grad does

``opt_state`` is ``{"step": t, SLOT: {param name: array}}``, and after the first update on
numpy also ``"_buffers"``, what the one-buffer path found (below). (The model's own ``state``,
running statistics, is a different thing: ``init_state`` / ``STATE`` belong to the model.)

The update rules are the CS231n ones (``p`` a param, ``g`` its gradient, ``lr`` the
learning rate of this step, ``t`` the 1-based step count):

    sgd       p -= lr * g
    momentum  v = mu * v - lr * g;  p += v
    nesterov  v = mu * v - lr * g;  p += mu * v - lr * g      (= -mu * v_old + (1 + mu) * v)
    adagrad   c += g**2;  p -= lr * g / (sqrt(c) + eps)
    rmsprop   c = rho * c + (1 - rho) * g**2;  p -= lr * g / (sqrt(c) + eps)
    adam      m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g**2
              p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)
    adamw     p *= 1 - lr * weight_decay, then the adam step (decoupled weight decay,
              Loshchilov & Hutter; the decay follows the scheduled lr, as in PyTorch)

Gradient clipping by global norm (any optimiser, ``clip_norm``): when
``||g|| = sqrt(sum over params of sum(g**2))`` exceeds ``clip_norm``, every gradient is
scaled by ``clip_norm / ||g||``. The scale is folded into the update's constants, so the
caller's gradients are never written.

Each optimiser is a short, straight-line sequence of ufunc calls with ``out=``: the params
and the state are updated in place and the only temporary is one scratch buffer, shared
by all params and allocated once. On numpy, init_params makes the params views of one
buffer, init_opt_state lays each slot out alike and value_and_grad writes the gradients into
one buffer laid out alike (``flat_grads``), so the sequence runs once over those buffers for
all params together; gradients of their own are copied into one buffer first, and params or
slots that are arrays of their own (loaded from a file, say) are updated one by one, with
the same result bit for bit (elementwise ufuncs round each element alike wherever it lies).
The clipping norm is taken from value_and_grad's buffer where there is one, else param by
param, whatever the layout of the params, so that it too is the same either way. Because of the
shared scratch, the update functions are not thread-safe:
two threads must not step the same compiled module object at the same time.

``step`` owns its gradients (nobody else sees them), so where the kernel reads ``g`` only
before it first writes its scratch (every optimiser but adagrad and rmsprop), step's update
takes the gradient buffer as its scratch: one buffer the size of the params fewer to stream
through memory, about a sixth of Adam's update on mlp_medium and a third of SGD's.
``apply_update`` never writes the caller's gradients.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .backends import BACKENDS, Backend
from .errors import NNError

__all__ = ["OPTIMIZERS", "Optimizer", "OptimizerDef", "emit_optimizer", "optimizer_source"]


@dataclass(frozen=True)
class OptimizerDef:
    """One optimiser: its state slots, hyperparameters, and the fused per-param kernel.

    ``prelude`` computes per-step Python floats from the hyperparameters, ``lr``, the step
    count ``t`` and the clipping factor ``scale``; ``kernel`` updates one param in place
    using them, with ``w`` a scratch array shaped like the param. A kernel that reads ``g``
    only up to its first write of ``w`` can take ``w`` to be ``g`` itself (``_w_may_be_g``):
    ``step`` then spares the scratch.
    """

    name: str
    formula: str
    slots: tuple[str, ...]
    hyper: tuple[tuple[str, float], ...]
    prelude: tuple[str, ...]
    kernel_args: tuple[str, ...]
    kernel: tuple[str, ...]
    cuda: str = ""      # the same update as one CUDA statement list, for the CuPy backend

_PLAIN = "c = lr * scale"

OPTIMIZERS: dict[str, OptimizerDef] = {
    d.name: d for d in (
        OptimizerDef(
            "sgd", "p -= lr * g", (), (),
            (_PLAIN,), ("c",),
            ("np.multiply(g, c, out=w)",
             "np.subtract(p, w, out=p)")),
        OptimizerDef(
            "momentum", "v = momentum * v - lr * g; p += v", ("v",), (("momentum", 0.9),),
            (_PLAIN,), ("momentum", "c"),
            ("np.multiply(v, momentum, out=v)",
             "np.multiply(g, c, out=w)",
             "np.subtract(v, w, out=v)",
             "np.add(p, v, out=p)")),
        OptimizerDef(
            "nesterov", "v = momentum * v - lr * g; p += momentum * v - lr * g", ("v",), (("momentum", 0.9),),
            (_PLAIN,), ("momentum", "c"),
            ("np.multiply(v, momentum, out=v)",
             "np.multiply(g, c, out=w)",
             "np.subtract(v, w, out=v)",
             "np.subtract(p, w, out=p)",
             "np.multiply(v, momentum, out=w)",
             "np.add(p, w, out=p)")),
        OptimizerDef(
            "adagrad", "cache += g**2; p -= lr * g / (sqrt(cache) + eps)", ("cache",), (("eps", 1e-8),),
            (_PLAIN, "s2 = scale * scale"), ("c", "s2", "eps"),
            ("np.multiply(g, g, out=w)",
             "np.multiply(w, s2, out=w)",
             "np.add(cache, w, out=cache)",
             "np.sqrt(cache, out=w)",
             "np.add(w, eps, out=w)",
             "np.divide(g, w, out=w)",
             "np.multiply(w, c, out=w)",
             "np.subtract(p, w, out=p)")),
        OptimizerDef(
            "rmsprop", "cache = decay_rate * cache + (1 - decay_rate) * g**2; p -= lr * g / (sqrt(cache) + eps)",
            ("cache",), (("decay_rate", 0.99), ("eps", 1e-8)),
            (_PLAIN, "a = (1.0 - decay_rate) * scale * scale"), ("decay_rate", "a", "c", "eps"),
            ("np.multiply(cache, decay_rate, out=cache)",
             "np.multiply(g, g, out=w)",
             "np.multiply(w, a, out=w)",
             "np.add(cache, w, out=cache)",
             "np.sqrt(cache, out=w)",
             "np.add(w, eps, out=w)",
             "np.divide(g, w, out=w)",
             "np.multiply(w, c, out=w)",
             "np.subtract(p, w, out=p)")),
    )
}

# lr m_hat / (sqrt(v_hat) + eps) = c1 m / (sqrt(v) + e) with c1 = lr sqrt(1 - beta2**t) / (1 - beta1**t)
# and e = eps sqrt(1 - beta2**t): one pass over the params fewer than dividing v by its correction.
# The kernel squares w = a1 g in place, (1 - beta2) (scale g)**2 = k (a1 g)**2 with k free of scale,
# so that it reads g once, first: w may then be g itself (step's own gradients). And (a1 g)**2 does
# not overflow where g**2 alone would (float32 gradients above 1.8e19).
_ADAM_PRELUDE = (
    "a1 = (1.0 - beta1) * scale",
    "k = (1.0 - beta2) / (1.0 - beta1) ** 2",
    "root = (1.0 - beta2 ** t) ** 0.5",
    "c1 = lr * root / (1.0 - beta1 ** t)",
    "e = eps * root",
)
_ADAM_KERNEL = (
    "np.multiply(g, a1, out=w)",
    "np.multiply(m, beta1, out=m)",
    "np.add(m, w, out=m)",
    "np.multiply(w, w, out=w)",
    "np.multiply(w, k, out=w)",
    "np.multiply(v, beta2, out=v)",
    "np.add(v, w, out=v)",
    "np.sqrt(v, out=w)",
    "np.add(w, e, out=w)",
    "np.divide(m, w, out=w)",
    "np.multiply(w, c1, out=w)",
    "np.subtract(p, w, out=p)",
)
_ADAM_FORMULA = ("m = beta1 * m + (1 - beta1) * g; v = beta2 * v + (1 - beta2) * g**2; "
                 "p -= lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)")
OPTIMIZERS["adam"] = OptimizerDef(
    "adam", _ADAM_FORMULA, ("m", "v"), (("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8)),
    _ADAM_PRELUDE, ("beta1", "a1", "beta2", "k", "c1", "e"), _ADAM_KERNEL)
OPTIMIZERS["adamw"] = OptimizerDef(
    "adamw", "p *= 1 - lr * weight_decay; then " + _ADAM_FORMULA, ("m", "v"),
    (("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("weight_decay", 0.01)),
    (*_ADAM_PRELUDE, "d = 1.0 - lr * weight_decay"), ("beta1", "a1", "beta2", "k", "c1", "e", "d"),
    ("np.multiply(p, d, out=p)", *_ADAM_KERNEL))


# The CuPy backend updates each param with one ElementwiseKernel: the kernels above, as C.
_CUDA = {
    "sgd": "p -= c * g;",
    "momentum": "v = momentum * v - c * g; p += v;",
    "nesterov": "v = momentum * v - c * g; p += momentum * v - c * g;",
    "adagrad": "cache += s2 * g * g; p -= c * g / (sqrt(cache) + eps);",
    "rmsprop": "cache = decay_rate * cache + a * g * g; p -= c * g / (sqrt(cache) + eps);",
    "adam": "m = beta1 * m + a1 * g; v = beta2 * v + k * (a1 * g) * (a1 * g); p -= c1 * m / (sqrt(v) + e);",
    "adamw": "p *= d; m = beta1 * m + a1 * g; v = beta2 * v + k * (a1 * g) * (a1 * g); p -= c1 * m / (sqrt(v) + e);",
}
OPTIMIZERS = {name: replace(d, cuda=_CUDA[name]) for name, d in OPTIMIZERS.items()}


@dataclass(frozen=True)
class Optimizer:
    """An optimiser choice with its hyperparameters, as ``compile_file(optimizer=...)`` takes it.

    Hyperparameters not given keep the defaults of :data:`OPTIMIZERS`; they become the
    compiled module's defaults and can still be overridden per call of ``apply_update``.
    """

    name: str
    hyper: Mapping[str, float] = field(default_factory=dict)
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        check_optimizer(self.name, self.hyper, self.clip_norm)

    @classmethod
    def coerce(cls, value: str | Optimizer) -> Optimizer:
        """Accept a bare name ("adam") where an Optimizer is expected."""
        return value if isinstance(value, Optimizer) else cls(value)


def check_optimizer(name: str, hyper: Mapping[str, float], clip_norm: float | None,
                    spelled: Callable[[str], str] = str) -> None:
    """Reject unknown optimisers, unknown hyperparameters and values outside their domain;
    ``spelled`` writes a hyperparameter's name as the caller gave it (``--beta1`` on the CLI)."""
    if name not in OPTIMIZERS:
        raise NNError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    known = dict(OPTIMIZERS[name].hyper)
    for key, value in hyper.items():
        if key not in known:
            takes = ", ".join(map(spelled, known)) or "no hyperparameters"
            has = [other for other, spec in OPTIMIZERS.items() if key in dict(spec.hyper)]
            hint = f"; {', '.join(has)} {'has' if len(has) == 1 else 'have'} it" if has else ""
            raise NNError(f"the {name} optimizer has no hyperparameter '{spelled(key)}' (it takes {takes}){hint}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise NNError(f"{spelled(key)} must be a finite number, not {value!r}")
        if key in ("momentum", "beta1", "beta2", "decay_rate") and not 0 <= value < 1:
            raise NNError(f"{spelled(key)} must lie in [0, 1), not {value!r}")
        if key == "eps" and value <= 0:
            raise NNError(f"{spelled(key)} must be positive, not {value!r}")
        if key == "weight_decay" and value < 0:
            raise NNError(f"{spelled(key)} must not be negative, not {value!r}")
    if clip_norm is not None and (isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float))
                                  or not math.isfinite(clip_norm) or clip_norm <= 0):
        raise NNError(f"{spelled('clip_norm')} must be a positive number, not {clip_norm!r}")


def emit_optimizer(name: str, param_names: Iterable[str], *, clip_norm: float | None = None,
                   model_state: bool = False, backend: str = "numpy", **hyper: float) -> str:
    """Python source for optimiser ``name`` over ``param_names``, to append to a compiled module.

    ``model_state`` says whether the model has state, so value_and_grad returns a third item
    that ``step`` passes on. The source relies on the module's ``np``, ``DTYPE`` and
    ``value_and_grad`` (on numpy, on its gradient buffer too: runtime.GRADS); it is a pure
    function of its arguments, so the module stays byte-for-byte deterministic. With
    ``backend="cupy"`` each param's update is one ElementwiseKernel call, defined once at import.
    """
    check_optimizer(name, hyper, clip_norm)
    d = OPTIMIZERS[name]
    values = {k: float(hyper.get(k, v)) for k, v in d.hyper}
    params = list(param_names)
    hyper_table = {**values, "clip_norm": clip_norm}

    target = BACKENDS[backend]
    xp = target.xp
    flat = not target.fuses and bool(params)   # value_and_grad makes one gradient buffer (runtime.GRADS)
    out = [
        f"# ---- optimiser: {name} (emitted by nncompile.optim) ".ljust(88, "-"),
        "",
        f"OPTIMIZER = {name!r}",
        f"HYPERPARAMS = {hyper_table!r}",
        "TRAINABLE = (" + "".join(f"\n    {p!r}," for p in params) + ("\n)" if params else ")"),
        f"SLOTS = {d.slots!r}",
        *(() if target.fuses else _SCRATCH),
        "",
        "",
        "def _opt_clip_scale(grads, flat, clip_norm):",
        '    """clip_norm / ||g|| if the global gradient norm exceeds clip_norm, else 1: from the one',
        "    buffer holding every gradient where value_and_grad made one (flat, see flat_grads), so the",
        '    norm does not depend on how the params are laid out."""',
        "    total = 0.0",
        "    for g in map(grads.__getitem__, TRAINABLE) if flat is None else (flat,):",
        f"        total += float({xp}.vdot(g, g))",
        "    norm = total ** 0.5",
        "    return clip_norm / norm if norm > clip_norm else 1.0",
        "",
        "",
        *_init_opt_state(d, target, params),
        *_update_function(d, target),
        *_apply_update(d, params, values, clip_norm, target),
        "",
        "",
        *_step(name, model_state, flat, flat and _w_may_be_g(d.kernel)),
    ]
    return "\n".join(out) + "\n"


def _init_opt_state(d: OptimizerDef, backend: Backend, params: list[str]) -> list[str]:
    """``init_opt_state``. On numpy each slot is laid out like the params of init_params (one
    buffer, see ``_flat``), and ``_flat_buffers`` finds the buffers behind params and slots."""
    if backend.fuses or not params:   # CuPy: one kernel call per param (the one-buffer path has not run on a GPU)
        zeros = (f"        {slot!r}: {{name: {backend.xp}.zeros_like(params[name]) for name in TRAINABLE}},"
                 for slot in d.slots)
        doc = f'    """Fresh {d.name} state: the step count, and a zeroed array per param for each of SLOTS."""'
        return ["def init_opt_state(params):", doc, "    return {", "        'step': 0,", *zeros, "    }", "", ""]
    ids = "".join(f",\n           *map(id, map(opt_state[{slot!r}].__getitem__, TRAINABLE))" for slot in d.slots)
    return [
        "def init_opt_state(params):",
        f'    """Fresh {d.name} state: the step count, and for each of SLOTS a zeroed array per param,',
        '    views into one buffer laid out like the params (see _flat)."""',
        "    return {",
        "        'step': 0,",
        *(f"        {slot!r}: _flat({{name: np.zeros_like(params[name]) for name in TRAINABLE}})," for slot in d.slots),
        "    }",
        "",
        "",
        "class _Buffers(tuple):",
        '    """What _flat_buffers found, kept in opt_state: (the arrays it was found behind, kept alive',
        "    so that their ids stay theirs; those ids; the buffers). A copy of opt_state (deepcopy,",
        "    pickle) drops it: its copies of the arrays would no longer be views of its buffers.\"\"\"",
        "",
        "    def __deepcopy__(self, memo):",
        "        return None",
        "",
        "    def __reduce__(self):",
        "        return type(None), ()",
        "",
        "",
        "def _flat_buffers(params, opt_state):",
        '    """(P, G, W, slot buffers..., gradient views) when the params and the slots are views of',
        "    buffers laid out by _flat (as init_params and init_opt_state make them), so that one chain",
        "    of ufunc calls updates every param; else None, and each param is updated on its own, with",
        '    the same result bit for bit."""',
        f"    ids = [*map(id, map(params.__getitem__, TRAINABLE)){ids}]",
        "    known = opt_state.get('_buffers')",
        "    if known is None or known[1] != ids:",
        "        groups = [params] + [opt_state[slot] for slot in SLOTS]",
        "        buffers = [_buffer_of(group) for group in groups]",
        "        found = None",
        "        if all(b is not None for b in buffers):",
        "            G = np.zeros_like(buffers[0])",
        "            starts, _ = _starts(params[name].size for name in TRAINABLE)",
        "            views = tuple(G[s:s + params[name].size].reshape(params[name].shape)",
        "                          for name, s in zip(TRAINABLE, starts))",
        "            found = (buffers[0], G, np.empty_like(G), *buffers[1:], views)",
        "        arrays = [group[name] for group in groups for name in TRAINABLE]",
        "        known = opt_state['_buffers'] = _Buffers((arrays, ids, found))",
        "    return known[2]",
        "",
        "",
        "_BLOCK = (1 << 17) // np.dtype(DTYPE).itemsize   # 128 KiB of each buffer: a block of all of them fits in a 1 MiB L2",
        "",
        "",
        "def _in_blocks(update, buffers, args):",
        '    """update(*buffers, *args), a block of every buffer at a time: each of the update\'s passes',
        "    after the first then reads the block from the L2 cache rather than from memory. The last",
        "    block done is the first, whose params the next forward pass reads first. The result is the",
        '    same bit for bit."""',
        "    size = buffers[0].size",
        "    if size <= _BLOCK:",
        "        update(*buffers, *args)",
        "        return",
        "    for start in reversed(range(0, size, _BLOCK)):",
        "        part = slice(start, start + _BLOCK)",
        "        update(*[buffer[part] for buffer in buffers], *args)",
        "",
        "",
        "def _buffer_of(arrays):",
        '    """The buffer the TRAINABLE arrays are views of, in the layout _flat gives them, or None."""',
        "    views = [arrays[name] for name in TRAINABLE]",
        "    base = views[0].base if views else None",
        "    starts, size = _starts(view.size for view in views)",
        "    if type(base) is not np.ndarray or base.shape != (size,) or base.dtype != DTYPE or \\",
        "            not base.flags.c_contiguous:",
        "        return None",
        "    origin = base.__array_interface__['data'][0]",
        "    for view, start in zip(views, starts):",
        "        if view.base is not base or view.dtype != DTYPE or not view.flags.c_contiguous or \\",
        "                view.__array_interface__['data'][0] != origin + start * base.itemsize:",
        "            return None",
        "    return base",
        "", ""]


def _apply_update(d: OptimizerDef, params: list[str], values: dict[str, float], clip_norm: float | None,
                  backend: Backend) -> list[str]:
    """``apply_update``: the step's constants, then one update call for all params or one per param.

    Where the kernel can take the gradients as its scratch (numpy, one buffer), the body is
    ``_apply_update`` with a flag ``own``: ``step`` sets it, as the gradients are its own to
    discard, and ``apply_update`` does not, as they are the caller's."""
    kw = ", ".join(f"{k}={v!r}" for k, v in values.items())
    kw = f"{kw}, clip_norm={clip_norm!r}" if kw else f"clip_norm={clip_norm!r}"
    uses_t = any(re.search(r"\bt\b", line) for line in d.prelude)   # the bias corrections of adam
    name = d.name
    flat = not backend.fuses and bool(params)
    own = flat and _w_may_be_g(d.kernel)
    doc = [f'    """One {name} step (see _{name}_update), in place on params and opt_state.',
           "",
           "    lr is this step's learning rate; grads are read, never written. With clip_norm set, the",
           '    gradients count as scaled to a global norm of at most clip_norm."""']
    out = [f"def apply_update(params, grads, opt_state, lr, /, *, {kw}):", *doc]
    if own:
        out += [f"    _apply_update(params, grads, opt_state, lr, False, {', '.join([*values, 'clip_norm'])})",
                "", "",
                f"def _apply_update(params, grads, opt_state, lr, own, {kw}):",
                '    """apply_update; with own set, the gradients are the caller\'s to discard (step\'s), and their',
                '    buffer is the scratch of the update: one buffer fewer to stream through memory."""']
    out += [
        "    lr = float(lr)",
        "    t = opt_state['step'] = opt_state['step'] + 1" if uses_t else "    opt_state['step'] += 1",
    ]
    if flat:
        out.append("    gradients = flat_grads(grads)   # value_and_grad's one buffer, or None")
    out += [
        f"    scale = 1.0 if clip_norm is None else _opt_clip_scale(grads, {'gradients' if flat else 'None'}, clip_norm)",
        *(f"    {line}" for line in d.prelude),
    ]
    args = ", ".join(d.kernel_args)
    if flat:
        slots = "".join(s.upper() + ", " for s in d.slots)
        gathered = "gradients = W = G" if _w_may_be_g(d.kernel) else "gradients = G"
        out += [
            "    flat = _flat_buffers(params, opt_state)",
            "    if flat is not None:   # every param at once",
            f"        P, G, W, {slots}views = flat",
            "        if gradients is None:   # arrays of their own: gathered into one buffer first",
            "            for view, name in zip(views, TRAINABLE):",
            "                np.copyto(view, grads[name])",
            f"            {gathered}",
            *(["        elif own:   # step's gradients: written over as the scratch",
               "            W = gradients"] if own else []),
            f"        _in_blocks(_{name}_update, (P, gradients, {slots}W), ({args}{',' * (len(d.kernel_args) == 1)}))",
            "        return",
        ]
    out += [f"    {slot} = opt_state[{slot!r}]" for slot in d.slots]
    for p in params:
        if backend.fuses:
            slots = "".join(f", {slot}[{p!r}]" for slot in d.slots)
            out.append(f"    _{name}_kernel(grads[{p!r}], {args}, params[{p!r}]{slots})")
        else:
            slots = "".join(f"{slot}[{p!r}], " for slot in d.slots)
            out.append(f"    _{name}_update(params[{p!r}], grads[{p!r}], {slots}_opt_scratch(params[{p!r}]), {args})")
    return out


def _w_may_be_g(kernel: tuple[str, ...]) -> bool:
    """Whether the kernel reads g only up to the call that first writes w (and reads no w
    before it), so that it computes the same with w being g itself."""
    first = next(i for i, line in enumerate(kernel) if "out=w)" in line)
    return (all(not re.search(r"\bg\b", line) for line in kernel[first + 1:])
            and all(not re.search(r"\bw\b", line) for line in kernel[:first]))


def _step(name: str, model_state: bool, flat: bool, own: bool) -> list[str]:
    """``step``: value_and_grad and apply_update in one call, returning what value_and_grad does
    but the gradients (with state, the new state too). Where value_and_grad makes one gradient
    buffer (``flat``), step lends it one of its own, made once: nobody else sees it. With ``own``
    the update may also write over the gradients, as its scratch."""
    returns, results, kept = (("(outputs, new_state)", "outputs, grads, new_state", "outputs, new_state")
                              if model_state else ("the outputs", "outputs, grads", "outputs"))
    call = f"{results} = value_and_grad(params, state, rng, **inputs)"
    update = ("    _apply_update(params, grads, opt_state, lr, True)   # grads are step's own: the update's scratch"
              if own else "    apply_update(params, grads, opt_state, lr)")
    lent = ["    _STEP_GRADS[1] = True   # value_and_grad writes into step's own gradient buffer, made once",
            "    try:", f"        {call}", "    finally:", "        _STEP_GRADS[1] = False"]
    return [
        "def step(params, opt_state, lr, state=None, rng=None, /, **inputs):",
        f'    """Forward, backward and one {name} update in a single call; returns {returns}."""',
        *(lent if flat else [f"    {call}"]),
        update,
        f"    return {kept}",
    ]


_SCRATCH = (
    "_OPT_WORK = [np.empty(0, dtype=DTYPE)]",
    "",
    "",
    "def _opt_scratch(like):",
    '    """A scratch array shaped like ``like``: one buffer for every param, grown once."""',
    "    buffer = _OPT_WORK[0]",
    "    if buffer.size < like.size or buffer.dtype != like.dtype:",
    "        buffer = _OPT_WORK[0] = np.empty(max(buffer.size, like.size), dtype=like.dtype)",
    "    return buffer[:like.size].reshape(like.shape)",
)


def _update_function(d: OptimizerDef, backend: Backend) -> list[str]:
    """A function of in-place ufunc calls, or where the backend fuses, one kernel over p, g and the slots."""
    if not backend.fuses:
        return [f"def _{d.name}_update(p, g, {''.join(s + ', ' for s in d.slots)}w, {', '.join(d.kernel_args)}):",
                '    """In place on p and its state (w is scratch' +
                (', and may be g itself):' if _w_may_be_g(d.kernel) else '):'),
                f'    {d.formula}"""',
                *(f"    {line}" for line in d.kernel),
                "", ""]
    inputs = ", ".join(f"T {a}" for a in ("g", *d.kernel_args))
    outputs = ", ".join(f"T {a}" for a in ("p", *d.slots))
    return [f"# {d.formula}",
            f"_{d.name}_kernel = {backend.elementwise_kernel(inputs, outputs, d.cuda, f'nncompile_{d.name}')}",
            "", ""]


def optimizer_source(model: Any, optimizer: str | Optimizer, backend: str = "numpy") -> str:
    """The optimiser section for an elaborated model, checking that it has a loss to minimise."""
    spec = Optimizer.coerce(optimizer)
    if model.target is None:
        raise NNError("this model has nothing to minimise, so it cannot be trained: add a 'minimize LOSS' "
                      "statement", file=model.file)
    return "\n\n" + emit_optimizer(spec.name, list(model.params), clip_norm=spec.clip_norm,
                                   model_state=bool(getattr(model, "state", None)), backend=backend,
                                   **dict(spec.hyper))
