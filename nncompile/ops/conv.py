"""Convolutional nets on NCHW images: conv2d, max and average pooling, the global average
pool and flatten, and the ops their gradient rules emit. Declared like :mod:`.basic`, one
call per op; each op's shape rule, emitter, gradient rule and ONNX lowering sit above it.

The numpy forms, the helpers the emitted code calls, are in :mod:`.conv_helpers`. The ops
are closed under differentiation: conv2d's input and weight gradients are bilinear, and each
one's gradient rule is written with the other two, so second-order gradients need nothing
else.
"""
from __future__ import annotations

import math

import numpy as np

from .. import shapes
from ..ir import Node
from ..shapes import Shape, ShapeError
from .basic import tie_gap
from .registry import EmitContext, Kink, Sample, attr_text, composite, need_float, op
from .onnx_helpers import OnnxContext
from .conv_helpers import (
    WINDOWS,
    COL2IM,
    WIDE_COLUMNS,
    WIDE_COL2IM,
    CONV2D,
    TAPS,
    CHANNELS_LAST_COLUMNS,
    SMALL_CONV2D,
    CONV2D_INPUT_GRAD,
    CONV2D_WEIGHT_GRAD,
    FIRST_OFFSET,
    TILED_MAX_POOL2D,
    MAX_POOL2D,
    MAX_MASKS,
    MAX_POOL2D_GRAD,
    MAX_POOL2D_SELECT,
    AVG_POOL2D,
    AVG_POOL2D_GRAD,
    CHANNEL_SUMS,
)
from .value import Value
from .rewrites import relu_after_max_pool

# ---- attributes: an int or a pair per spatial axis ------------------------------------

def pair(opname: str, attrs: dict, name: str, low: int) -> tuple[int, int]:
    """``stride=2`` or ``stride=[2, 1]`` as (height, width); a ShapeError names a bad value."""
    value = attrs.get(name)
    values = value if isinstance(value, tuple) else (value, value)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
        raise ShapeError(f"{opname}() needs {name} to be a whole number >= {low} or a pair of them "
                         f"[height, width], not {f'[{attr_text(value)}]' if isinstance(value, tuple) else repr(value)}")
    return values[0], values[1]


def _shown(values: tuple[int, int]) -> str:
    """A (height, width) pair as a user would write it: 2, or [2, 3]."""
    return str(values[0]) if values[0] == values[1] else f"[{values[0]}, {values[1]}]"


def _window_attrs(opname: str, attrs: dict, kernel: tuple[int, int]) -> dict:
    """The normalised stride, padding and dilation (a pool's stride defaults to its kernel)."""
    stride = kernel if attrs.get("stride") is None else pair(opname, attrs, "stride", 1)
    return {"stride": stride, "padding": pair(opname, attrs, "padding", 0),
            "dilation": pair(opname, attrs, "dilation", 1) if "dilation" in attrs else (1, 1)}


_AXES = ("height", "width")


def out_size(opname: str, size: int, kernel: int, stride: int, padding: int, dilation: int, axis: int) -> int:
    """floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1, as PyTorch, ONNX and
    JAX count it: where the stride does not divide the rest, the rows past the last window are
    not read (a 3 x 3 conv at stride 2 and padding 1 halves an even size, its last row padding).
    At least one window must fit; the error spells out the arithmetic."""
    extent = dilation * (kernel - 1) + 1
    if size + 2 * padding < extent:
        raise ShapeError(f"{opname}: the {_AXES[axis]} {size} (padded by {padding} on each side) is smaller than the "
                         f"kernel, which spans {extent}", 0)
    return (size + 2 * padding - extent) // stride + 1


def _image(opname: str, node: Node, what: str, arg: int) -> tuple:
    """An operand that must be [N, C, H, W] with fixed C, H and W."""
    if len(node.shape) != 4:
        raise ShapeError(f"{opname} needs {what} of shape [N, C, H, W], not {shapes.show(node.shape)}", arg)
    if not all(isinstance(d, int) for d in node.shape[1:]):
        raise ShapeError(f"{opname} needs fixed channels and image size, but {what} is {shapes.show(node.shape)}; "
                         "only the batch N may be symbolic", arg)
    return node.shape


def _conv_geometry(opname: str, image: Shape, weights: Shape, attrs: dict) -> tuple[Shape, dict]:
    """The output shape of a conv2d of an image [N, C, H, W] with weights [F, C/groups, KH, KW]."""
    n, c, h, w = image
    if len(weights) != 4 or not all(isinstance(d, int) for d in weights):
        raise ShapeError(f"{opname} needs weights of shape [F, C/groups, KH, KW], not {shapes.show(weights)}", 1)
    f, cg, kh, kw = weights
    groups = attrs.get("groups", 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ShapeError(f"{opname}() needs groups to be a whole number >= 1, not {groups!r}")
    if c % groups or f % groups:
        raise ShapeError(f"{opname}: groups={groups} must divide the {c} input channels and the {f} filters", 1)
    if cg * groups != c:
        raise ShapeError(f"{opname}: the weights {shapes.show(weights)} take {cg} channel(s) per group, but the "
                         f"input has {c} channel(s) in {groups} group(s), {c // groups} each; expected "
                         f"{shapes.show((f, c // groups, kh, kw))}", 1)
    geometry = _window_attrs(opname, {"dilation": 1, **attrs}, (1, 1))
    size = tuple(out_size(opname, (h, w)[a], (kh, kw)[a], geometry["stride"][a], geometry["padding"][a],
                          geometry["dilation"][a], a) for a in range(2))
    return (n, f, *size), {**geometry, "groups": groups}


def _conv2d_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    if len(ins) not in (2, 3):
        raise ShapeError(f"conv2d() takes an image, weights and optionally a bias, not {len(ins)} tensor(s)")
    need_float(ins, "conv2d")
    out, _ = _conv_geometry("conv2d", _image("conv2d", ins[0], "an image", 0), ins[1].shape, attrs)
    if len(ins) == 3 and ins[2].shape != (out[1],):
        raise ShapeError(f"conv2d: the bias {shapes.show(ins[2].shape)} must have one entry per filter, "
                         f"{shapes.show((out[1],))}", 2)
    return out, "float"


def _conv2d_input_grad_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    g, weights = ins
    f, cg, kh, kw = weights.shape
    groups = attrs.get("groups", 1)
    image = (g.shape[0], cg * groups, *attrs["size"])
    out, _ = _conv_geometry("conv2d_input_grad", image, weights.shape, attrs)
    if tuple(g.shape) != out:
        raise ShapeError(f"conv2d_input_grad: the gradient {shapes.show(g.shape)} is not the conv's output "
                         f"{shapes.show(out)}", 0)
    return image, "float"


def _conv2d_weight_grad_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    x, g = ins
    groups = attrs.get("groups", 1)
    weights = (g.shape[1], x.shape[1] // groups, *attrs["kernel"])
    out, _ = _conv_geometry("conv2d_weight_grad", x.shape, weights, attrs)
    if tuple(g.shape) != out:
        raise ShapeError(f"conv2d_weight_grad: the gradient {shapes.show(g.shape)} is not the conv's output "
                         f"{shapes.show(out)}", 1)
    return weights, "float"


def _pool_geometry(opname: str, x: Node, attrs: dict, size: tuple[int, int] | None = None) -> tuple[Shape, dict]:
    """A pool's output shape and its normalised kernel, stride and padding."""
    n, c, h, w = (x.shape[0], x.shape[1], *size) if size else _image(opname, x, "an image", 0)
    kernel = pair(opname, attrs, "kernel", 1)
    geometry = _window_attrs(opname, attrs, kernel)
    if any(p > k // 2 for p, k in zip(geometry["padding"], kernel)):
        raise ShapeError(f"{opname}: padding {_shown(geometry['padding'])} is more than half the kernel "
                         f"{_shown(kernel)}, so a window could hold padding only")
    out = tuple(out_size(opname, (h, w)[a], kernel[a], geometry["stride"][a], geometry["padding"][a], 1, a)
                for a in range(2))
    return (n, c, *out), {"kernel": kernel, "stride": geometry["stride"], "padding": geometry["padding"]}


def _pool_rule(opname: str):
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        need_float(ins, opname)
        return _pool_geometry(opname, ins[-1], attrs)[0], "float"
    return infer


def _pool_grad_rule(opname: str):
    """A pool's gradient: shaped like the pooled image (the last operand, or ``size``)."""
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        g = ins[0]
        image = ins[-1].shape if len(ins) > 1 else (g.shape[0], g.shape[1], *attrs["size"])
        out, _ = _pool_geometry(opname, ins[-1], attrs, None if len(ins) > 1 else attrs["size"])
        if tuple(g.shape) != out:
            raise ShapeError(f"{opname}: the gradient {shapes.show(g.shape)} is not the pool's output "
                             f"{shapes.show(out)}", 0)
        return tuple(image), "float"
    return infer


# ---- emitters -------------------------------------------------------------------------

_DEFAULTS = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}


def _keywords(geometry: dict) -> list[str]:
    """The geometry as keyword arguments, the defaults left out: stride=(2, 2), padding=(1, 1)."""
    return [f"{k}={v!r}" for k, v in geometry.items() if _DEFAULTS.get(k) != v]


def _call(helper: str, geometry, *fixed: str):
    """Emit ``helper(operands, fixed..., geometry keywords, out=buffer)``."""
    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        words = _keywords(geometry(attrs, ctx))
        return f"{helper}({', '.join([*args, *(f.format(**attrs) for f in fixed), *words, *([f'out={out}'] if out else [])])})"
    return emit


def _conv_attrs(attrs: dict, ctx=None) -> dict:
    geometry = _window_attrs("conv2d", {"dilation": 1, **attrs}, (1, 1))
    return {**geometry, "groups": attrs.get("groups", 1)}


def _pool_attrs(attrs: dict, ctx=None) -> dict:
    kernel = pair("pool", attrs, "kernel", 1)
    geometry = _window_attrs("pool", attrs, kernel)
    return {"kernel": kernel, "stride": geometry["stride"], "padding": geometry["padding"]}


def _pool_call(helper: str):
    """A pool's helper takes its kernel and stride positionally: they are always needed."""
    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        g = _pool_attrs(attrs)
        size = [repr(tuple(attrs["size"]))] if "size" in attrs else []
        extra = [*size, repr(g["kernel"]), repr(g["stride"]), *([f"padding={g['padding']!r}"] if any(g["padding"]) else [])]
        return f"{helper}({', '.join([*args, *extra, *([f'out={out}'] if out else [])])})"
    return emit


# ---- gradient rules -------------------------------------------------------------------

def _geometry_of(out: Value) -> dict:
    return {k: out.attr(k) for k in ("stride", "padding", "dilation", "groups")}


def _vjp_conv2d(g: Value, out: Value, x: Value, w: Value, *bias: Value):
    # out = x * w (+ b): d/dx is the transposed conv of g, d/dw the correlation of x with g,
    # d/db the sum of g over the batch and the pixels.
    geometry = _geometry_of(out)
    gx = g.node("conv2d_input_grad", w, size=tuple(x.shape[2:]), **geometry)
    gw = x.node("conv2d_weight_grad", g, kernel=tuple(w.shape[2:]), **geometry)
    return (gx, gw, *(g.sum((0, 2, 3)) for _ in bias))


def _vjp_conv2d_input_grad(u: Value, out: Value, g: Value, w: Value):
    # <u, T(g, w)> = <g, conv2d(u, w)>: bilinear, so each operand's gradient is the other op.
    geometry = _geometry_of(out)
    return u.node("conv2d", w, **geometry), u.node("conv2d_weight_grad", g, kernel=tuple(w.shape[2:]), **geometry)


def _vjp_conv2d_weight_grad(u: Value, out: Value, x: Value, g: Value):
    # <u, G(x, g)> = <g, conv2d(x, u)>
    geometry = _geometry_of(out)
    return g.node("conv2d_input_grad", u, size=tuple(x.shape[2:]), **geometry), x.node("conv2d", u, **geometry)


def _pool_geometry_of(out: Value) -> dict:
    return {k: out.attr(k) for k in ("kernel", "stride", "padding")}


# ---- what the gradient check reads --------------------------------------------------------

def _window_gap(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    """Each window's entries minus the largest other entry of the window (tie_gap): positive
    only at its max, so the sign flips where the max moves to another entry (a gap that is
    never negative, the max minus the runner-up, dips to 0 and back without a sign change)."""
    g = _pool_attrs(attrs)
    x = operands[-1]
    (kh, kw), (sh, sw), (ph, pw) = g["kernel"], g["stride"], g["padding"]
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    gap = tie_gap(windows, (-2, -1))   # -inf at padding, +inf at a max beside only padding: neither ties
    big = np.finfo(gap.dtype).max
    return np.nan_to_num(gap, nan=big, posinf=big, neginf=-big)


# ---- ONNX lowerings ------------------------------------------------------------------------

def _pads(padding: tuple[int, int]) -> list[int]:
    return [padding[0], padding[1], padding[0], padding[1]]


def _onnx_conv2d(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    g = _conv_attrs(attrs)
    kernel = list(ctx.operand(1).shape[2:])
    return ctx.node("Conv", list(args), kernel_shape=kernel, strides=list(g["stride"]), pads=_pads(g["padding"]),
                    dilations=list(g["dilation"]), group=g["groups"])


def _onnx_pool(op_type: str, **extra):
    def lower(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
        g = _pool_attrs(attrs)
        return ctx.node(op_type, list(args), kernel_shape=list(g["kernel"]), strides=list(g["stride"]),
                        pads=_pads(g["padding"]), **extra)
    return lower


# ---- the registry ---------------------------------------------------------------------

_GEOMETRY = (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))
_GROUPED = {"stride": (1, 2), "padding": (1, 0), "dilation": 2, "groups": 2}
_CONV_HELPERS = (WINDOWS, WIDE_COLUMNS)


def _kernel_note(shapes_: list[Shape], attrs: dict) -> str:
    """``3×3 conv 1→16``, with the stride, dilation and groups where they are not 1."""
    f, cg, kh, kw = shapes_[1]
    g = _conv_attrs(attrs)
    words = [f"{k} {_shown(g[k])}" for k in ("stride", "dilation") if g[k] != (1, 1)]
    words += [f"groups {g['groups']}"] if g["groups"] != 1 else []
    return f"{kh}×{kw} conv {cg * g['groups']}→{f}" + (f" ({', '.join(words)})" if words else "")


def _conv_label(attrs: dict) -> str:
    """``conv2d(stride=2, padding=1)``: the geometry that is not the default."""
    g = _conv_attrs(attrs)
    words = [f"{k}={_shown(v) if isinstance(v, tuple) else v}" for k, v in g.items() if _DEFAULTS[k] != v]
    return f"conv2d({', '.join(words)})" if words else "conv2d"


op("conv2d", -1, _conv2d_rule, _call("_conv2d", _conv_attrs), vjp=_vjp_conv2d, attrs=_GEOMETRY, takes_out=True,
   helpers=(*_CONV_HELPERS, CONV2D, CHANNELS_LAST_COLUMNS, SMALL_CONV2D),
   samples=(Sample(((2, 3, 5, 5), (4, 3, 3, 3))),
            Sample(((2, 3, 5, 5), (4, 3, 3, 3), (4,)), {"stride": 2, "padding": 1}),
            Sample(((2, 3, 6, 7), (4, 3, 3, 3), (4,)), {"stride": 2, "padding": 1}),   # floored: a row, a column unread
            Sample(((2, 3, 6, 6), (4, 3, 1, 1)), {"stride": 2}),                       # a 1 x 1 shortcut's
            Sample(((1, 4, 6, 7), (6, 2, 2, 2), (6,)), _GROUPED)),
   doc="the 2-D cross-correlation of x [N, C, H, W] with filters W [F, C/groups, KH, KW], plus an optional bias "
       "b [F]: out[n, f, i, j] = b[f] + sum_{c, p, q} x[n, c, i*s + p*d - pad, j*s + q*d - pad] W[f, c, p, q], "
       "of shape [N, F, floor((H + 2 pad - d (KH - 1) - 1) / s) + 1, ...]; stride, padding and dilation are a "
       "number or [height, width], by keyword",
   example="maps = conv2d(images, filters, stride=1, padding=1)",
   label=_conv_label, cluster_note=_kernel_note,
   onnx=_onnx_conv2d)
op("conv2d_input_grad", 2, _conv2d_input_grad_rule, _call("_conv2d_input_grad", _conv_attrs, "{size!r}"),
   vjp=_vjp_conv2d_input_grad, attrs=(("size", ()), *_GEOMETRY), public=False, takes_out=True,
   helpers=(*_CONV_HELPERS, CONV2D, CHANNELS_LAST_COLUMNS, SMALL_CONV2D, TAPS, COL2IM, WIDE_COL2IM, CONV2D_INPUT_GRAD),
   samples=(Sample(((2, 4, 3, 3), (4, 3, 3, 3)), {"size": (5, 5), "stride": 2, "padding": 1}),
            Sample(((2, 4, 3, 4), (4, 3, 3, 3)), {"size": (6, 7), "stride": 2, "padding": 1}),   # floored
            Sample(((1, 6, 6, 3), (6, 2, 2, 2)), {"size": (6, 7), **_GROUPED}),
            Sample(((2, 4, 3, 4), (4, 3, 3, 3)), {"size": (3, 4), "padding": 1}),      # small, but the matrix would be larger
            Sample(((8, 2, 3, 4), (2, 3, 3, 3)), {"size": (3, 4), "padding": 1}),      # small: the unrolled matrix
            Sample(((2, 3, 3, 1), (3, 2, 2, 3)), {"size": (3, 3), "stride": (1, 2), "padding": (1, 0),
                                                  "dilation": (2, 1)}),
            Sample(((2, 4, 5, 5), (4, 3, 3, 3)), {"size": (5, 5), "padding": 1}),      # fewer channels: wide col2im
            Sample(((1, 4, 6, 4), (4, 1, 2, 2)), {"size": (6, 5), "padding": (1, 0), "dilation": (2, 1), "groups": 2})),
   doc="d loss / d x of conv2d: the transposed convolution of g with W, back onto an image of the given size")
op("conv2d_weight_grad", 2, _conv2d_weight_grad_rule, _call("_conv2d_weight_grad", _conv_attrs, "{kernel!r}"),
   vjp=_vjp_conv2d_weight_grad, attrs=(("kernel", ()), *_GEOMETRY), public=False, takes_out=True,
   helpers=(*_CONV_HELPERS, CHANNELS_LAST_COLUMNS, CONV2D_WEIGHT_GRAD),
   samples=(Sample(((2, 3, 5, 5), (2, 4, 3, 3)), {"kernel": (3, 3), "stride": 2, "padding": 1}),
            Sample(((2, 3, 6, 7), (2, 4, 3, 4)), {"kernel": (3, 3), "stride": 2, "padding": 1}),   # floored
            Sample(((1, 4, 6, 7), (1, 6, 6, 3)), {"kernel": (2, 2), **_GROUPED}),
            Sample(((2, 3, 3, 4), (2, 4, 3, 4)), {"kernel": (3, 3), "padding": 1}),   # small: channels-last columns
            Sample(((2, 2, 3, 3), (2, 3, 3, 1)), {"kernel": (2, 3), "stride": (1, 2), "padding": (1, 0),
                                                  "dilation": (2, 1)})),
   doc="d loss / d W of conv2d: the correlation of x with g, summed over the batch")

_POOL = (("kernel", 2), ("stride", None), ("padding", 0))
_POOL_SAMPLES = (Sample(((2, 3, 4, 4),)), Sample(((2, 2, 5, 5),), {"kernel": 3, "stride": 2, "padding": 1}),
                 Sample(((1, 2, 4, 6),), {"kernel": (2, 3), "stride": (2, 3)}),
                 Sample(((2, 2, 6, 5),), {"kernel": 3, "stride": 2, "padding": 1}),   # floored: ResNet's stem pool
                 Sample(((1, 2, 5, 7),), {"kernel": 2}))                              # floored: a row, a column unread


def _pool_label(name: str):
    def label(attrs: dict) -> str:
        g = _pool_attrs(attrs)
        words = [f"{'×'.join(map(str, g['kernel']))}"]
        words += [f"stride={_shown(g['stride'])}"] if g["stride"] != g["kernel"] else []
        words += [f"padding={_shown(g['padding'])}"] if any(g["padding"]) else []
        return f"{name}({', '.join(words)})"
    return label


op("max_pool2d", 1, _pool_rule("max_pool2d"), _pool_call("_max_pool2d"), attrs=_POOL, takes_out=True,
   vjp=lambda g, out, x: g.node("max_pool2d_grad", x, **_pool_geometry_of(out)),
   helpers=(WINDOWS, FIRST_OFFSET, TILED_MAX_POOL2D, MAX_POOL2D), samples=_POOL_SAMPLES, domain="separated",
   doc="the max of each KH x KW window of x [N, C, H, W] (kernel is a number or [KH, KW]; stride defaults to the "
       "kernel; padding counts as -inf); the gradient goes to each window's max (the first of a tie)",
   example="p = max_pool2d(images, 2)",
   label=_pool_label("max_pool2d"), kink=Kink(_window_gap, "has a tie for a window's maximum"),
   rewrites=(relu_after_max_pool,),
   onnx=_onnx_pool("MaxPool"))
op("max_pool2d_grad", 2, _pool_grad_rule("max_pool2d_grad"), _pool_call("_max_pool2d_grad"), attrs=_POOL,
   public=False, takes_out=True, domain="separated", helpers=(WINDOWS, COL2IM, MAX_MASKS, MAX_POOL2D_GRAD),
   vjp=lambda u, out, g, x: (u.node("max_pool2d_select", x, **_pool_geometry_of(out)), None),
   samples=(Sample(((2, 3, 2, 2), (2, 3, 4, 4))), Sample(((2, 2, 3, 3), (2, 2, 5, 5)),
                                                       {"kernel": 3, "stride": 2, "padding": 1}),
            Sample(((1, 2, 2, 3), (1, 2, 5, 7)), {"kernel": 2})),   # floored
   doc="d loss / d x of max_pool2d: g routed to each window's max of x")
op("max_pool2d_select", 2, _pool_rule("max_pool2d_select"), _pool_call("_max_pool2d_select"), attrs=_POOL,
   public=False, domain="separated", helpers=(WINDOWS, MAX_MASKS, MAX_POOL2D_SELECT),
   vjp=lambda g, out, u, x: (g.node("max_pool2d_grad", x, **_pool_geometry_of(out)), None),
   samples=(Sample(((2, 3, 4, 4), (2, 3, 4, 4))), Sample(((2, 2, 5, 5), (2, 2, 5, 5)),
                                                       {"kernel": 3, "stride": 2, "padding": 1}),
            Sample(((1, 2, 5, 7), (1, 2, 5, 7)), {"kernel": 2})),   # floored
   doc="u at each window's max of x: the transpose of max_pool2d_grad (its gradient rule)")
op("avg_pool2d", 1, _pool_rule("avg_pool2d"), _pool_call("_avg_pool2d"), attrs=_POOL, takes_out=True,
   vjp=lambda g, out, x: g.node("avg_pool2d_grad", size=tuple(x.shape[2:]), **_pool_geometry_of(out)),
   helpers=(WINDOWS, FIRST_OFFSET, AVG_POOL2D), samples=_POOL_SAMPLES,
   doc="the mean of each KH x KW window of x [N, C, H, W], padding counted as zeros (PyTorch's default)",
   example="p = avg_pool2d(images, 2)",
   label=_pool_label("avg_pool2d"),
   onnx=_onnx_pool("AveragePool", count_include_pad=1))
op("avg_pool2d_grad", 1, _pool_grad_rule("avg_pool2d_grad"), _pool_call("_avg_pool2d_grad"),
   attrs=(("size", ()), *_POOL), public=False, takes_out=True, helpers=(WINDOWS, COL2IM, AVG_POOL2D_GRAD),
   vjp=lambda u, out, g: u.node("avg_pool2d", **_pool_geometry_of(out)),
   samples=(Sample(((2, 3, 2, 2),), {"size": (4, 4)}),
            Sample(((2, 2, 3, 3),), {"size": (5, 5), "kernel": 3, "stride": 2, "padding": 1}),
            Sample(((1, 2, 2, 3),), {"size": (5, 7), "kernel": 2})),   # floored
   doc="d loss / d x of avg_pool2d: g / (KH KW) spread over each window")


# ---- per-channel sums: batch norm's statistics and their gradients (ops/rewrites.py) ----------

def _channel_sum_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    need_float(ins, "channel_sum")
    x, shape = ins[0], tuple(attrs["shape"])
    if len(x.shape) != 4 or math.prod(shape) != x.shape[1] or not isinstance(x.shape[1], int):
        raise ShapeError(f"channel_sum needs an image batch [N, C, H, W] and a shape of C entries, not "
                         f"{shapes.show(x.shape)} and {shapes.show(shape)}", 0)
    return shape, "float"


def _emit_channel_sum(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    flags = [f"{k}=True" for k in ("mean", "negate") if attrs.get(k)]
    words = [args[0], *flags, *([f"out={out}"] if out else [])]
    text = f"_channel_sums({', '.join(words)})"
    return text if out or len(attrs["shape"]) == 1 else f"{text}.reshape({ctx.shape(tuple(attrs['shape']))})"


def _vjp_channel_sum(g: Value, out: Value, x: Value):
    per_channel = g if len(g.shape) == 1 else g.reshape((x.shape[1],))
    if out.attr("mean"):
        per_channel = per_channel.per_element(x.shape, (0, 2, 3))
    if out.attr("negate"):
        per_channel = -per_channel
    return (per_channel.broadcast(x.shape, (0, 2, 3)),)


def _onnx_channel_sum(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    reduced = ctx.node("ReduceMean" if attrs.get("mean") else "ReduceSum", [args[0], ctx.ints([0, 2, 3])],
                       keepdims=1)
    shaped = ctx.node("Reshape", [reduced, ctx.shape(tuple(attrs["shape"]))])
    return ctx.node("Neg", [shaped]) if attrs.get("negate") else shaped


op("channel_sum", 1, _channel_sum_rule, _emit_channel_sum, vjp=_vjp_channel_sum, public=False, takes_out=True,
   attrs=(("mean", False), ("negate", False), ("shape", ())), helpers=(CHANNEL_SUMS,),
   samples=(Sample(((2, 3, 4, 5),), {"shape": (3,)}), Sample(((2, 3, 4, 5),), {"shape": (3, 1, 1), "mean": True}),
            Sample(((2, 3, 4, 5),), {"shape": (3,), "negate": True}),
            Sample(((3, 2, 1, 4),), {"shape": (1, 2, 1, 1)})),
   doc="the sum (mean=true: the mean; negate=true: negated) of each channel of x [N, C, H, W] over the batch and "
       "the pixels, shaped shape: what a sum, mean or sum_to (of a negation) over the axes 0, 2 and 3 becomes "
       "(ops/rewrites.py)",
   onnx=_onnx_channel_sum)

def _global_avg_pool2d(x: Value) -> Value:
    if len(x.shape) != 4:
        raise ShapeError(f"global_avg_pool2d needs x of shape [N, C, H, W], not {shapes.show(x.shape)}", 0)
    return x.node("mean", axis=(2, 3), keepdims=False)


def _flatten(x: Value) -> Value:
    if len(x.shape) < 2:
        raise ShapeError(f"flatten needs a batch and at least one more axis, not {shapes.show(x.shape)}", 0)
    rest = x.shape[1:]
    if not all(isinstance(d, int) for d in rest):
        raise ShapeError(f"flatten needs fixed sizes after the batch axis, not {shapes.show(x.shape)}", 0)
    return x.reshape((x.shape[0], math.prod(rest)))


composite("global_avg_pool2d", 1, _global_avg_pool2d, samples=(Sample(((2, 3, 4, 5),)),),
          doc="the mean of each channel of x [N, C, H, W] over its pixels: [N, C]",
          example="features = global_avg_pool2d(images)")
composite("flatten", 1, _flatten, samples=(Sample(((2, 3, 4, 5),)), Sample(((3, 4),))),
          doc="x [N, ...] as [N, the product of the rest]: a conv net's feature maps as rows for a linear layer",
          example="rows = flatten(images)")
