"""PyTorch implementations of every op a .nn file can reach: the reference that
tests/test_differential.py compares nncompile's values and gradients with.

Each entry takes the operands as tensors and the attributes as keywords, exactly as the .nn
call does. They are written with PyTorch's own ops (its autograd supplies the gradients), not
from nncompile's formulas, so the two can disagree. PyTorch's rules at kinks and ties are the
documented ones: an even split among tied maxima (``amax``), half each for a tie of
``maximum``/``minimum``, relu'(0) = 0, and a zero gradient for ``x ** e`` at x = 0.
"""
from __future__ import annotations

from typing import Any, Callable

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the comparisons skip; the table's coverage is still checked
    torch = F = None

Tensor = Any


def _dims(x: Tensor, axis) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    return tuple(a % x.dim() for a in (axis if isinstance(axis, (list, tuple)) else (axis,)))


def _reduction(name: str) -> Callable:
    """torch.sum, torch.mean or torch.amax (an even split among tied maxima) over ``axis``."""
    def reduce(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
        dims = _dims(x, axis)
        return getattr(torch, name)(x, dim=dims, keepdim=keepdims) if dims else x
    return reduce


def _transpose(x: Tensor, axes=None) -> Tensor:
    return x.permute(*(reversed(range(x.dim())) if axes is None else axes))


def _maxout(x: Tensor, k: int) -> Tensor:
    return torch.amax(x.reshape(*x.shape[:-1], k, x.shape[-1] // k), dim=-2)


def _softmax_cross_entropy(scores: Tensor, targets: Tensor) -> Tensor:
    """Integer labels, or float probability targets: F.cross_entropy takes both."""
    return F.cross_entropy(scores, targets if targets.is_floating_point() else targets.long())


def _svm_loss(scores: Tensor, labels: Tensor, delta: float = 1.0) -> Tensor:
    correct = scores.gather(1, labels.long()[:, None])
    others = 1 - F.one_hot(labels.long(), scores.shape[1]).to(scores.dtype)
    return (torch.relu(scores - correct + delta) * others).sum() / len(labels)


def _dropout(x: Tensor, p: float = 0.5, mask: Tensor | None = None) -> Tensor:
    """Identity in eval mode; in train mode the caller gives the kept units (``mask``)."""
    return x if mask is None else x * mask / (1 - p)


def key_of(key: tuple[str, ...], tensors: list[Tensor]) -> tuple:
    """A subscript key of the ``slice``/``index`` ops ("2", "0:3", ":", "{1}") as a Python index."""
    items: list[Any] = []
    for entry in key:
        if entry.startswith("{"):
            items.append(tensors[int(entry[1:-1])].long())
        elif ":" in entry:
            start, stop = entry.split(":")
            items.append(slice(int(start) if start else None, int(stop) if stop else None))
        else:
            items.append(int(entry))
    return tuple(items)


def _index(x: Tensor, *tensors: Tensor, key: tuple[str, ...] = ()) -> Tensor:
    return x[key_of(key, [x, *tensors])]


def _variance(name: str) -> Callable:
    """torch.var or torch.std over ``axis``, dividing by n - ddof (torch's ``correction``)."""
    def reduce(x: Tensor, axis=None, keepdims: bool = False, ddof=0) -> Tensor:
        return getattr(torch, name)(x, dim=_dims(x, axis), correction=ddof, keepdim=keepdims)
    return reduce


_COMPARISONS = {">": "gt", ">=": "ge", "<": "lt", "<=": "le", "==": "eq", "!=": "ne"}


def _compare(a: Tensor, b: Tensor, cmp: str = ">") -> Tensor:
    """A mask of 0s and 1s in the floats' dtype (int operands compared as they are)."""
    floats = [t for t in (a, b) if torch.is_tensor(t) and t.is_floating_point()]
    return getattr(torch, _COMPARISONS[cmp])(a, b).to(floats[0].dtype if floats else torch.float64)


def _argmax(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    if axis is None:
        flat = torch.argmax(x.reshape(-1))
        return flat.reshape((1,) * x.dim()) if keepdims else flat
    return torch.argmax(x, dim=axis, keepdim=keepdims)


TORCH: dict[str, Callable[..., Tensor]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: torch.pow(a, b),
    "neg": lambda a: -a,
    "matmul": lambda a, b: torch.matmul(a, b),
    "maximum": lambda a, b: torch.maximum(*torch.broadcast_tensors(a, b)),
    "minimum": lambda a, b: torch.minimum(*torch.broadcast_tensors(a, b)),
    "exp": lambda x: torch.exp(x),
    "log": lambda x: torch.log(x),
    "sqrt": lambda x: torch.sqrt(x),
    "abs": lambda x: torch.abs(x),
    "tanh": lambda x: torch.tanh(x),
    "sigmoid": lambda x: torch.sigmoid(x),
    "relu": lambda x: torch.relu(x),
    "leaky_relu": lambda x, alpha=0.01: F.leaky_relu(x, negative_slope=alpha),
    "elu": lambda x, alpha=1.0: F.elu(x, alpha=alpha),
    "softplus": lambda x: F.softplus(x),
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "silu": lambda x: F.silu(x),
    "swish": lambda x: F.silu(x),
    "hardtanh": lambda x, min_val=-1.0, max_val=1.0: F.hardtanh(x, min_val, max_val),
    "hardswish": lambda x: F.hardswish(x),
    "maxout": _maxout,
    "softmax": lambda x, axis=-1: F.softmax(x, dim=axis),
    "log_softmax": lambda x, axis=-1: F.log_softmax(x, dim=axis),
    "sum": _reduction("sum"),
    "mean": _reduction("mean"),
    "max": _reduction("amax"),
    "min": _reduction("amin"),
    "var": _variance("var"),
    "std": _variance("std"),
    "step": _compare,
    "where": lambda cond, a, b: torch.where(cond != 0, a, b),
    "clip": lambda x, lo, hi: torch.clamp(x, lo, hi),
    "argmax": _argmax,
    "one_hot": lambda labels, n: F.one_hot(labels.long(), n).to(torch.float64),
    "reshape": lambda x, shape: x.reshape(*shape),
    "transpose": _transpose,
    "concat": lambda *xs, axis=0: torch.cat(xs, dim=axis),
    "slice": _index,
    "index": _index,
    "arange": lambda n: torch.arange(n),
    "dropout": _dropout,
    "softmax_cross_entropy": _softmax_cross_entropy,
    "softmax_cross_entropy_probs": _softmax_cross_entropy,
    "svm_loss": _svm_loss,
    "sigmoid_cross_entropy": lambda x, t: F.binary_cross_entropy_with_logits(x, t.expand_as(x)),
    "mse": lambda x, t: F.mse_loss(x, t.expand_as(x)),
    "l2": lambda *ws: sum(torch.sum(w * w) for w in ws),
    "l1": lambda *ws: sum(torch.sum(torch.abs(w)) for w in ws),
    "elastic_net": lambda *ws, beta=1.0: sum(torch.sum(beta * w * w + torch.abs(w)) for w in ws),
    "conv2d": lambda x, w, *b, stride=1, padding=0, dilation=1, groups=1: F.conv2d(
        x, w, b[0] if b else None, stride=stride, padding=padding, dilation=dilation, groups=groups),
    "max_pool2d": lambda x, kernel=2, stride=None, padding=0: F.max_pool2d(x, kernel, stride, padding),
    "avg_pool2d": lambda x, kernel=2, stride=None, padding=0: F.avg_pool2d(x, kernel, stride, padding,
                                                                           count_include_pad=True),
    "global_avg_pool2d": lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1),
    "flatten": lambda x: torch.flatten(x, 1),
}
