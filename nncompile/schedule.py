"""Scheduling and buffer planning: in what order a function computes its values, and
where each value lives.

The schedule is a depth-first post-order from the function's results, so every value is
computed just before its first use: masks and transposes needed only by the backward pass
are not made (and kept alive) during the forward pass.

Temporaries go into a workspace of preallocated buffers, reused once their value is dead
(liveness over the schedule); elementwise ops overwrite an operand that dies at them, so
a fused chain (``x @ W + b`` then ``relu``) runs in one buffer. Values the function
returns are never in the workspace: they are fresh arrays each call, so a caller's
results are never overwritten by the next call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

from .ir import Graph
from .ops import REGISTRY
from .shapes import Shape

_NEVER = float("inf")
T = TypeVar("T")


@dataclass
class Plan:
    order: list[int]
    slot: dict[int, int] = field(default_factory=dict)       # node -> workspace buffer holding its value
    inplace: dict[int, int] = field(default_factory=dict)    # node -> operand whose buffer it overwrites
    slots: list[tuple[Shape, str]] = field(default_factory=list)   # each buffer's shape and dtype


def schedule(G: Graph, results: list[int]) -> list[int]:
    """A deterministic topological order of everything ``results`` need (iterative DFS),
    its random draws in source order (:func:`draw_operands`)."""
    return post_order(results, draw_operands(G, results))


def draw_operands(G: Graph, results: list[int]) -> Callable[[int], tuple[int, ...]]:
    """A node's operands, and for a random draw (a dropout mask) also the draw before it in
    source order, which is node order: every function that draws (value_and_grad, step, hvp,
    trace), given generators in one state, then draws the same masks, in whatever order its
    own dependencies would have reached them."""
    draws = sorted(n for n in post_order(results, lambda n: G[n].args) if REGISTRY[G[n].op].random)
    before = dict(zip(draws[1:], draws[:-1]))
    return lambda n: (*G[n].args, before[n]) if n in before else G[n].args


class Cycle(ValueError):
    """What post_order raises where a value needs itself (no order exists)."""


def post_order(roots: Iterable[T], operands: Callable[[T], Iterable[T]]) -> list[T]:
    """Everything ``roots`` need, each after its operands: a depth-first post-order, iterative
    (a 1000-layer graph is deeper than Python's recursion limit). A cycle raises Cycle: a
    graph of nodes has none, one of loops and nodes (loop_schedule's) may."""
    order: list[T] = []
    done: set[T] = set()
    open_: set[T] = set()   # being expanded: their operands are on the stack above them
    for root in roots:
        stack = [(root, False)]
        while stack:
            n, expanded = stack.pop()
            if n in done:
                continue
            if expanded:
                open_.discard(n)
                done.add(n)
                order.append(n)
                continue
            if n in open_:   # reached again from its own operands
                raise Cycle(n)
            open_.add(n)
            stack.append((n, True))
            stack.extend((a, False) for a in reversed(tuple(operands(n))) if a not in done)
    return order


def _owns_storage(G: Graph, n: int) -> bool:
    node = G[n]
    return not node.is_leaf and not REGISTRY[node.op].view and node.shape != ()


def plan_buffers(G: Graph, order: list[int], returned: set[int], kept: set[int] = frozenset()) -> Plan:
    """Assign buffers to the nodes of ``order`` (a topological schedule).

    Operands from outside ``order`` (a loop's values, read by the code after it, or the
    values a loop body reads) are never overwritten; ``kept`` values live to the end."""
    last_use: dict[int, float] = {n: (_NEVER if n in returned or n in kept else -1) for n in order}
    for i, n in enumerate(order):
        for a in G[n].args:
            if a in last_use:
                last_use[a] = max(last_use[a], i)
    for n in reversed(order):  # a view keeps its base alive
        if REGISTRY[G[n].op].view and G[n].args[0] in last_use:
            base = G[n].args[0]
            last_use[base] = max(last_use[base], last_use[n])

    plan = Plan(order)
    fresh: set[int] = set()              # values in arrays allocated by numpy this call
    owner: dict[int, int] = {}           # slot -> the node whose value it holds
    free: dict[tuple[Shape, str], list[int]] = {}
    for i, n in enumerate(order):
        node = G[n]
        opdef = REGISTRY[node.op]
        if node.is_leaf or REGISTRY[node.op].view:
            continue
        is_returned = n in returned
        target = None
        if opdef.may_overwrite(dict(node.attrs)) and node.shape != ():
            for a in dict.fromkeys(node.args):
                if (_owns_storage(G, a) and last_use.get(a) == i and G[a].shape == node.shape
                        and G[a].dtype == node.dtype and (a in fresh or not is_returned)
                        and (a in plan.slot or a in fresh)):
                    target = a
                    break
        if target is not None:
            plan.inplace[n] = target
            if target in plan.slot:
                plan.slot[n] = plan.slot[target]
                owner[plan.slot[n]] = n
            else:
                fresh.add(n)
        elif opdef.takes_out and not is_returned and node.shape != () and node.dtype == "float":
            key = (node.shape, node.dtype)
            if free.get(key):
                k = free[key].pop()
            else:
                k = len(plan.slots)
                plan.slots.append(key)
            plan.slot[n] = k
            owner[k] = n
        else:
            fresh.add(n)
        for a in dict.fromkeys([*node.args, *_view_bases(G, node.args)]):
            k = plan.slot.get(a)
            if k is not None and last_use[a] == i and owner.get(k) == a:   # its value dies here
                owner[k] = -1
                free.setdefault(plan.slots[k], []).append(k)
    return plan


def may_be_transposed(G: Graph, n: int, memo: dict[int, bool]) -> bool:
    """Whether ``n``'s array may be in another order than C's, as numpy would make it: a
    transpose's is, and so are its views' and what numpy makes from it in its layout (order='K').
    What an op writes into an ``out=`` (a workspace buffer is C-ordered) or a ufunc chain makes
    is not: the emitter asks a fresh one of those for C order where an operand may be transposed,
    so that a value sums the same whether the code after it is a loop's or written out."""
    def follows_operand(m: int) -> bool:
        node, opdef = G[m], REGISTRY[G[m].op]
        return not node.is_leaf and len(node.shape) >= 2 and not opdef.reorders and (
            opdef.view or opdef.chain is None and not opdef.takes_out)

    for m in post_order([n], lambda m: [a for a in G[m].args if a not in memo] if follows_operand(m) else ()):
        reorders = REGISTRY[G[m].op].reorders and len(G[m].shape) >= 2
        memo[m] = reorders or follows_operand(m) and any(memo[a] for a in G[m].args)
    return memo[n]


def _view_bases(G: Graph, args) -> list[int]:
    """The storage owners behind view operands (their liveness ends with the view's)."""
    bases = []
    for a in args:
        while REGISTRY[G[a].op].view:
            a = G[a].args[0]
            bases.append(a)
    return bases
