"""The generated module's own helpers, written once, for numpy (``Backend.retarget`` moves
them to another array module): the converters behind the readers' fast paths, and the
workspace allocator."""
import re

CONVERT = '''def _convert(values, table, kind, kinds):
    """Check and convert the caller's params or state (init_params() and init_state() make right
    ones): returns them in the table's order."""
    if not hasattr(values, "keys"):
        raise TypeError(f"{kinds} must be a dict of arrays, as init_{kinds}() returns, not {type(values).__name__}")
    missing = [name for name in table if name not in values]
    unknown = sorted(values.keys() - table.keys())
    if missing or unknown:
        wrong = [f"{what} {kind}(s) {names}" for what, names in (("missing", missing), ("unknown", unknown)) if names]
        raise TypeError(f"{'; '.join(wrong)}: this model's {kinds} are {list(table)}")
    arrays = []
    for name, (shape, dtype) in table.items():
        array = np.asarray(values[name])
        if array.dtype.kind not in "fiub":
            raise TypeError(f"{kind} {name!r} must be numeric, not {array.dtype}")
        if array.shape != shape:
            raise ValueError(f"{kind} {name!r} must have shape {list(shape)}, not {list(array.shape)}")
        arrays.append(array.astype(dtype, copy=False))
    return tuple(arrays)'''


FLAT = '''def _starts(sizes):
    """Where each array of these sizes starts in a flat buffer holding them in order, each on
    a 64-byte boundary, and the buffer's size."""
    align = max(1, 64 // DTYPE(0).itemsize)
    starts, size = [], 0
    for count in sizes:
        starts.append(size)
        size += -(-count // align) * align
    return starts, size


def _flat(arrays):
    """The arrays, copied into one contiguous buffer (zeros between them) as views of it, by
    name: an optimiser can then update all of them with one chain of ufunc calls."""
    starts, size = _starts(array.size for array in arrays.values())
    buffer = np.zeros(size, dtype=DTYPE)
    views = {}
    for (name, array), start in zip(arrays.items(), starts):
        view = views[name] = buffer[start:start + array.size].reshape(array.shape)
        view[...] = array
    return views'''


GRADS = '''def _layout(table):
    """(slice, shape) of each entry of table in the flat buffer _flat would make (shape None
    where the slice has it already), the slices between them, and the buffer's size."""
    shapes = [shape for shape, _ in table.values()]
    sizes = [int(np.prod(shape)) for shape in shapes]
    starts, size = _starts(sizes)
    ends = [start + count for start, count in zip(starts, sizes)]
    gaps = [slice(end, start) for end, start in zip(ends, [*starts[1:], size]) if end < start]
    entries = [(slice(start, end), None if len(shape) == 1 else shape)
               for start, end, shape in zip(starts, ends, shapes)]
    return entries, gaps, size


_GRAD_LAYOUT, _GRAD_GAPS, _GRAD_SIZE = _layout(PARAMS)
_LATEST_GRADS = [()]   # the gradient views the latest value_and_grad call returned
_STEP_GRADS = [(), False]   # step's own gradient views, and whether step is calling value_and_grad


def _new_grads():
    """value_and_grad's param gradients, in PARAMS order: views into one fresh buffer laid out
    as init_params lays out the params, zeros between them (see flat_grads). Inside step, the
    buffer is step's own, made once: step returns no gradients, so no caller holds them."""
    views, in_step = _STEP_GRADS
    _STEP_GRADS[1] = False
    if in_step and views:
        buffer = views[0].base
    else:
        buffer = np.empty(_GRAD_SIZE, dtype=DTYPE)
        views = [buffer[where] if shape is None else buffer[where].reshape(shape) for where, shape in _GRAD_LAYOUT]
        if in_step:
            _STEP_GRADS[0] = views
    for gap in _GRAD_GAPS:   # the update uses the buffer as its scratch: zeros again
        buffer[gap] = 0
    _LATEST_GRADS[0] = views
    return views


def _into_one_buffer(grads):
    """grads with the param gradients copied into one fresh buffer's views, as _new_grads
    lays them out: for the gradients a loop over a repeat's instances kept in lists where an
    op of the loop could not write them into their views (a transpose's, say)."""
    views = dict(zip(PARAMS, _new_grads()))
    for name, view in views.items():
        np.copyto(view, grads[name])
    return {name: views.get(name, g) for name, g in grads.items()}


def flat_grads(grads):
    """The one 1-d array holding the param gradients of the latest value_and_grad call, given
    the grads it returned (None for any other dict): the gradients laid out as init_params lays
    out the params, zeros between them. Data-parallel training all-reduces it in place and then
    calls apply_update with the same grads, which reads this array as it is. A later call of
    value_and_grad allocates a new one: this one stays the caller's."""
    views = _LATEST_GRADS[0]
    if not views:
        return None
    for name, view in zip(PARAMS, views):
        if grads.get(name) is not view:
            return None
    return views[0].base'''


GENERATOR = '''def _generator(rng):
    """The generator a random op (dropout's masks) draws from: rng itself, or one seeded by it
    (None: fresh draws; a seed: the same draws each time); anything else is refused by name."""
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(rng)
    except TypeError:
        raise TypeError(f"rng must be a numpy random Generator (np.random.default_rng(seed)), an int seed or None, "
                        f"not {type(rng).__name__}") from None'''


EMPTY = '''def _empty(shapes):
    """Workspace buffers: allocated once per set of dims, then reused by every call."""
    return tuple(np.empty(shape, dtype=DTYPE) for shape in shapes)


def _filled(value, shapes):
    """Constant operands, one of each shape: read-only views of one buffer holding value."""
    sizes = [int(np.prod(shape)) for shape in shapes]
    whole = np.full(max(sizes), value, dtype=DTYPE)
    whole.flags.writeable = False   # a constant: a statement writing into it would be a bug
    return tuple(whole[:size].reshape(shape) for size, shape in zip(sizes, shapes))'''


CONVERT_INPUTS = '''def _convert_inputs(inputs):
    """Check and convert the caller's inputs: returns them in INPUTS order, then the DIMS."""
    unknown = inputs.keys() - INPUTS.keys()
    if unknown:
        raise TypeError(f"unknown input(s) {sorted(unknown)}; this model takes {list(INPUTS)}")
    values, dims = [], {}
    for name, (shape, dtype) in INPUTS.items():
        if name in inputs:
            array = np.asarray(inputs[name])
        elif name in DEFAULTS:
            array = np.asarray(DEFAULTS[name])
        else:
            raise TypeError(f"missing input {name!r}: {dtype}{list(shape)}, passed by name ({name}=...)")
        if dtype.startswith("int") and array.dtype.kind not in "iu":
            raise TypeError(f"input {name!r} must hold integers, not {array.dtype}")
        if array.dtype.kind not in "fiub":
            raise TypeError(f"input {name!r} must be numeric, not {array.dtype}")
        array = array.astype(dtype, copy=False)
        if array.ndim != len(shape):
            raise ValueError(f"input {name!r} must have {len(shape)} dims {list(shape)}, not shape {array.shape}")
        for want, got in zip(shape, array.shape):
            if isinstance(want, str):
                if got == 0:   # an empty axis: no mean over it, 1 / N raises, numpy cannot reshape it
                    raise ValueError(f"input {name!r} has {want} = 0: every dim must be at least 1")
                if dims.setdefault(want, got) != got:
                    raise ValueError(f"input {name!r} has {want} = {got}, but an earlier input has {want} = {dims[want]}")
            elif want != got:
                raise ValueError(f"input {name!r} must have shape {list(shape)}, not {array.shape}")
        values.append(array)
    for dim, least in MIN_DIMS.items():
        if dims[dim] < least:
            name = next(name for name, (shape, _) in INPUTS.items() if dim in shape)
            raise ValueError(f"input {name!r} has {dim} = {dims[dim]}, but the model takes a fixed entry "
                             f"of that axis that needs {dim} >= {least}")
    for name, array in zip(INPUTS, values):
        limits = [(BOUNDS[name], str(BOUNDS[name]))] if name in BOUNDS else []
        limits += [(dims[dim], f"{dim}) = [0, {dims[dim]}") for dim in DIM_BOUNDS.get(name, ())]
        if not limits or not array.size:
            continue
        (limit, shown), low, high = min(limits), array.min(), array.max()
        if low < 0 or high >= limit:
            raise ValueError(f"input {name!r} holds {low if low < 0 else high}: its entries are class labels or "
                             f"indices, which must lie in [0, {shown})")
    return (*values, *(dims[d] for d in DIMS))'''


def _for_predict(text: str) -> str:
    """predict()'s converter: the same checks over PREDICT_INPUTS (no labels), where a dim or a
    bound a label alone has is not asked for."""
    text = re.sub(r"\b(INPUTS|DIMS)\b", r"PREDICT_\1", text)
    for old, new in [
        ("def _convert_inputs(", "def _convert_predict_inputs("),
        ("the caller's inputs", "predict()'s inputs (no labels)"),
        ("this model takes", "predict takes"),
        ("if dims[dim] < least:", "if dim in dims and dims[dim] < least:"),
        ("for dim in DIM_BOUNDS.get(name, ())]", "for dim in DIM_BOUNDS.get(name, ()) if dim in dims]"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    return text


PREDICT_CONVERT_INPUTS = _for_predict(CONVERT_INPUTS)
