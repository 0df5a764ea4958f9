"""Loops: runs of ``repeat`` instances whose statements are the same up to their params,
found in a function's scheduled graph, so that codegen writes one ``for`` loop over the
instances instead of N copies (JAX's ``scan``, PyTensor's ``Scan``, but found after
optimisation rather than built by the user).

The graph stays unrolled: every instance keeps its own nodes and names (``h.3.W``), for the
renderer, the evaluator and the trace. What this module adds is a reading of that graph:

- each node of a function belongs to at most one *body*: the forward statements of one
  instance (its scope says which), or its backward statements (a node computed from the
  adjoints belongs to the instance of the latest adjoint of an instance's value upstream of
  it, so the backward body of ``h.3`` turns the gradient of ``h.3`` into those of ``h.2``
  and of ``h.3.W``); helpers such as ``W.T`` join the body all their users are in;
- a *run* is a sequence of consecutive instances whose bodies are isomorphic: the same ops,
  attributes, shapes and constants, each operand reached the same way (a value of the same
  iteration, the value carried from the previous one, the instance's own param (or, in
  hvp(), the direction ``v`` given for that param), a value an
  earlier loop kept, or one value from outside shared by all iterations);
- the forward run goes up through the instances, the backward run down (hvp's reverse over
  reverse adds two passes: the reverse of the backward, up, and a second backward, down;
  each pass is its own body, so each loop goes one way). An instance that
  differs (the first one, which sees the model's input; the last one, whose adjoint comes
  from the loss) stays outside the loop, as ordinary statements.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import Loc
from .ir import Graph, Model
from .ops import REGISTRY
from .schedule import Cycle, draw_operands, post_order

MIN_RUN = 3   # fewer instances read better unrolled
_INSTANCE = re.compile(r"(.*)\.(\d+)$")
_SAFE_NAME = re.compile(r"[\w.]+$")   # names that can go into an f-string as they are

Member = tuple[tuple, int]   # ((repeat key, its pass: one of _PHASES), instance number)


@dataclass(frozen=True)
class Ref:
    """How one operand of a loop statement is reached, the same in every iteration."""

    kind: str                 # "local", "carry", "carried_in", "param", "tangent", "kept" or "outer"
    # carry: the value the last iteration left at ``pos``, read before this one computes its
    # own; carried_in: read after (the body binds it to a name of its own first)
    pos: int = -1             # local, carry(_in), kept: the position in the (other) loop's body
    loop: int = -1            # kept: the index of the loop whose list holds the value
    shift: int = 0            # kept, param, tangent: that value's instance, minus this iteration's
    role: str = ""            # param, tangent: the param's name inside the instance (``W`` of ``h.3.W``)
    node: int = -1            # outer: the value itself


@dataclass
class Loop:
    """One run of isomorphic instances of a ``repeat``, written as a ``for`` loop."""

    key: tuple[str, ...]              # the repeat: its enclosing scope and base name, ("h",)
    kind: str                         # "forward" or "backward"
    loc: Loc | None
    instances: list[int]              # instance numbers, in iteration order
    bodies: list[list[int]]           # per iteration, its nodes in schedule order
    refs: list[tuple[Ref, ...]]       # per body position, per operand
    carried: dict[int, int] = field(default_factory=dict)    # position -> its value before the loop
    params: dict[str, list[int]] = field(default_factory=dict)   # role -> per iteration, the param it reads
    tangents: dict[str, list[int]] = field(default_factory=dict)   # role -> per iteration, its param's v
    kept: set[int] = field(default_factory=set)    # positions kept in a list (read after their iteration)
    read_after: set[int] = field(default_factory=set)   # positions read outside the loop, in any iteration
    iterations: list[int] = field(default_factory=list)   # per body, its iteration (all of them but in a
    # short compile, whose loop also goes over the instances left out at a gap: they have no body)

    @property
    def template(self) -> list[int]:
        """The nodes written as the loop's body: those of its second iteration (the first may
        read its carried values from anywhere)."""
        return self.bodies[1]

    def instance_name(self, k: int | str) -> str:
        """``h.3``: the scope name of instance ``k`` (a number, or the text of an expression)."""
        return ".".join((*self.key[:-1], f"{self.key[-1]}.{k}"))

    def where(self, n: int) -> tuple[int, int] | None:
        """(iteration, position) of a node of this loop."""
        return self._where.get(n)

    def numbered(self) -> zip:
        """(iteration, body) for each body."""
        return zip(self.iterations, self.bodies)

    @property
    def stretched(self) -> bool:
        """Whether the loop goes over instances a short compile left out (stretch.py)."""
        return len(self.bodies) < len(self.instances)

    def __post_init__(self) -> None:
        self.low = min(self.instances)   # the first instance: lists and param tuples start there
        self.iterations = self.iterations or list(range(len(self.bodies)))
        self._where = {n: (i, p) for i, body in self.numbered() for p, n in enumerate(body)}


class Unstretchable(Exception):
    """A short compile's module cannot be stretched to the full count of a repeat's instances
    (stretch.py): the caller compiles every instance instead."""


def instance_of(model: Model, scope: tuple[str, ...]) -> tuple[tuple[str, ...], int] | None:
    """The outermost repeat instance a scope lies in: (repeat key, instance number)."""
    for depth, part in enumerate(scope):
        m = _INSTANCE.match(part)
        if m and (*scope[:depth], m[1]) in model.repeats:
            return (*scope[:depth], m[1]), int(m[2])
    return None


class _Instances(dict):
    """instance_of for one model, remembered per scope: the scopes recur for every node."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def __missing__(self, scope: tuple[str, ...]) -> tuple[tuple[str, ...], int] | None:
        """In a short compile an instance is numbered by its place among those elaborated (the
        first after a gap follows the last before it): runs go through the gap."""
        found = instance_of(self.model, scope) if scope else None
        if found is not None and found[0] in self.model.gaps:
            head, left_out = self.model.gaps[found[0]]
            if found[1] > head:
                found = (found[0], found[1] - left_out)
        self[scope] = found
        return found


def actual(model: Model, key: tuple[str, ...], k: int) -> int:
    """The instance number of the ``k``-th instance elaborated (they differ after a gap)."""
    head, left_out = model.gaps.get(key, (k, 0))
    return k if k <= head else k + left_out


def find_loops(G: Graph, model: Model, order: list[int], results: list[int],
               tangents: dict[str, int] | None = None) -> list[Loop]:
    """The loops of the function that computes ``order`` (a topological schedule): forward
    runs first, then the backward runs, which may read what the forward ones kept.

    ``tangents`` (hvp's): param name -> the input holding its v, a role of the param's instance."""
    if not model.repeats:
        return []
    instances = _Instances(model)
    member = _members(G, instances, order)
    bodies: dict[tuple, dict[int, list[int]]] = {}
    for n in order:
        if n in member:
            group, k = member[n]
            bodies.setdefault(group, {}).setdefault(k, []).append(n)
    for group, by_instance in bodies.items():
        if _PHASES.index(group[1]) >= 2:
            for k, body in by_instance.items():
                by_instance[k] = _as_soon_as_possible(G, body)
    position = {n: p for group in bodies.values() for body in group.values() for p, n in enumerate(body)}
    loops: list[Loop] = []
    run_of: dict[Member, tuple[int, int]] = {}   # member -> (loop index, iteration)
    tables = {"param": model.params, "tangent": tangents or {}}
    roles = _roles(G, model, instances, tables)
    for kind in _PHASES:
        for group in sorted((g for g in bodies if g[1] == kind), key=lambda g: bodies[g][min(bodies[g])][0]):
            for loop in _runs(G, model, group, bodies[group], member, position, run_of, roles, tables):
                for i, body in loop.numbered():   # by instance as numbered in the graph (see _Instances)
                    run_of[member[body[0]]] = (len(loops), i)
                loops.append(loop)
    _mark_kept(G, loops, order, results)
    if model.gaps:
        _check_gaps(model, loops, member)
    return loops


def _members(G: Graph, instances: _Instances, order: list[int]) -> dict[int, Member]:
    """Which body each node of ``order`` belongs to (nodes outside any body are absent)."""
    member: dict[int, Member] = {}
    index = {n: i for i, n in enumerate(order)}
    anchor: dict[int, int] = {}   # node -> the latest adjoint of an instance value upstream of it
    phase = _phases(G, order)
    for n in order:
        node = G[n]
        if node.is_leaf:
            continue
        if node.grad_of is None and (inst := instances[node.scope]):
            member[n] = ((inst[0], "forward"), inst[1])
            continue
        best = None
        for a in node.args:
            for c in (a if a in index and G[a].grad_of is not None and instances[G[a].scope] else None,
                      anchor.get(a)):
                if c is not None and (best is None or index[c] > index[best]):
                    best = c
        if best is not None:
            anchor[n] = best
            key, k = instances[G[best].scope]
            member[n] = ((key, _PHASES[phase[n]]), k)
    for n in reversed(order):   # a helper (W.T, 1 - h*h) joins the body all its users are in
        if n in member or G[n].is_leaf:
            continue
        users = sorted((u for u in G.nx.successors(n) if u in index), key=index.__getitem__)
        homes = {member.get(u) for u in users}
        if len(homes) == 1 and None not in homes:
            member[n] = homes.pop()
        elif None not in homes and _across_passes(homes):
            # hvp's: read by several backward passes, in the first pass to run that reads it
            member[n] = min((member[u] for u in users), key=lambda home: _PHASES.index(home[0][1]))
    return member


_PHASES = ("forward", "backward", "backward of the backward", "second backward")


def _phases(G: Graph, order: list[int]) -> dict[int, int]:
    """Which pass each node is computed in, an index into _PHASES: hvp's program runs the
    forward pass up through the instances, the backward down, then (reverse over reverse) the
    reverse of the backward up and a second backward down; one loop goes one way only. An
    adjoint's pass is the first one after its operands' that runs against its target's."""
    phase: dict[int, int] = {}
    for n in order:
        node = G[n]
        p = max((phase.get(a, 0) for a in node.args), default=0)
        if node.grad_of is not None:
            t = node.grad_of
            against = phase[t] % 2 if t in phase else int(G.nx.has_node(t) and G[t].grad_of is not None)
            p = max(p, 1)
            if p % 2 == against:
                p += 1
        phase[n] = min(p, len(_PHASES) - 1)
    return phase


def _as_soon_as_possible(G: Graph, body: list[int]) -> list[int]:
    """A body of hvp's reverse over reverse passes, each statement as early as its operands in
    the body allow: one that reads what the neighbouring iteration left then does so before
    this iteration overwrites it (a topological order still: operands come earlier)."""
    depth: dict[int, int] = {}
    for n in body:
        depth[n] = 1 + max((depth[a] for a in G[n].args if a in depth), default=-1)
    return sorted(body, key=depth.__getitem__)


def _across_passes(homes: set[Member]) -> bool:
    """Whether the bodies are of one repeat and of several backward passes (hvp's; a helper
    of value_and_grad read by several bodies of its one backward pass stays outside them)."""
    passes = {_PHASES.index(kind) for (_, kind), _ in homes}
    return len(passes) > 1 and min(passes) >= 1 and len({key for (key, _), _ in homes}) == 1


def _signature(G: Graph, roles: dict, group: tuple, k: int, body: list[int], member: dict[int, Member],
               position: dict[int, int], run_of: dict[Member, tuple[int, int]]) -> tuple:
    """What a loop body must have in common with the other iterations': per statement its op,
    attributes, shape and dtype, and how each operand is reached (``near`` marks a value of
    the neighbouring instance: carried, when the two are in one run)."""
    sig = []
    me = (group, k)
    for n in body:
        node = G[n]
        operands, kinds = [], []
        for a in node.args:
            home, arg = member.get(a), G[a]
            kinds.append((arg.shape, arg.dtype))   # emit rules may look at their operands' shapes
            if home is None:
                if a in roles and roles[a][0][0] == group[0] and roles[a][0][1] - k in _role_shifts(group):
                    operands.append((*roles[a][1:], roles[a][0][1] - k))   # ("param" or "tangent", role, shift)
                elif arg.op == "const":
                    operands.append(("const", arg.attr("value"), arg.shape, arg.dtype))
                else:
                    operands.append(("outer", a))
            elif home == me:
                operands.append(("local", position[a]))
            elif home[0] == group and abs(home[1] - k) == 1:
                operands.append(("near", home[1] - k, position[a]))
            elif home in run_of and home[0][0] == group[0]:
                operands.append(("kept", run_of[home][0], position[a], home[1] - k))
            else:
                operands.append(("outer", a))
        sig.append((node.op, _attrs(node), node.shape, node.dtype, tuple(kinds), tuple(operands)))
    return tuple(sig)


def _role_shifts(group: tuple) -> tuple[int, ...]:
    """Whose params an instance's body may read as its own: the reverse over reverse passes
    of hvp() meet those of a neighbour's (the v of ``h.5.W`` where the backward computed the
    gradient of ``h.4``)."""
    return (0,) if _PHASES.index(group[1]) < 2 else (-1, 0, 1)


def _attrs(node) -> tuple:
    """The attributes a statement is written from: a random op's ``id`` only keeps two draws
    from being merged into one (dropout's masks), and each iteration draws anew."""
    if REGISTRY[node.op].random:
        return tuple(kv for kv in node.attrs if kv[0] != "id")
    return node.attrs


def _prefix(key: tuple[str, ...], k: int) -> str:
    return ".".join((*key[:-1], f"{key[-1]}.{k}")) + "."


def _roles(G: Graph, model: Model, instances: _Instances,
           tables: dict[str, dict[str, int]]) -> dict[int, tuple[tuple[tuple[str, ...], int], str, str]]:
    """Each param of a repeat instance, and each v given for one: (the param's instance,
    "param" or "tangent", the param's name inside the instance)."""
    roles = {}
    for kind, table in tables.items():
        for name, n in table.items():
            if n in roles:   # a name a stretch added (stretch.py), after its instance's own: the same node
                continue
            inst = instances[G[model.params[name]].scope]
            if inst is not None:
                roles[n] = (inst, kind, name[len(_prefix(inst[0], actual(model, *inst))):])
    return roles


def _runs(G: Graph, model: Model, group: tuple, bodies: dict[int, list[int]], member: dict[int, Member],
          position: dict[int, int], run_of: dict[Member, tuple[int, int]], roles: dict,
          tables: dict[str, dict[str, int]]) -> list[Loop]:
    """The maximal runs of at least MIN_RUN consecutive instances with one signature."""
    sigs = {k: _signature(G, roles, group, k, body, member, position, run_of) for k, body in bodies.items()}
    shifts = {op[1] for sig in sigs.values() for st in sig for op in st[5] if op[0] == "near"}
    if len(shifts) > 1:
        return []
    step = -shifts.pop() if shifts else 1   # +1: each instance reads the one before; -1: the one after
    seq = sorted(bodies, reverse=step < 0)
    loops, i = [], 0
    while i < len(seq):
        j = i + 1
        if j < len(seq) and seq[j] == seq[i] + step and _carries_into(sigs[seq[i]], sigs[seq[j]]):
            while j + 1 < len(seq) and seq[j + 1] == seq[j] + step and sigs[seq[j + 1]] == sigs[seq[i + 1]]:
                j += 1
            if j - i + 1 >= MIN_RUN:
                loop = _loop(G, model, group, seq[i:j + 1], bodies, sigs[seq[i + 1]], tables)
                if loop is not None:
                    loops.append(loop)
                    i = j + 1
                    continue
        i += 1
    return loops


def _carries_into(first: tuple, second: tuple) -> bool:
    """Whether a run can start at ``first`` and go on with ``second``: the same statements, where
    ``second`` reads a carried value ``first`` may read anything from outside its own body."""
    if len(first) != len(second):
        return False
    for a, b in zip(first, second):
        if a[:5] != b[:5]:
            return False
        for x, y in zip(a[5], b[5]):
            if x != y and not (y[0] == "near" and x[0] != "local"):
                return False
    return True


def _loop(G: Graph, model: Model, group: tuple, instances: list[int], bodies: dict[int, list[int]],
          sig: tuple, tables: dict[str, dict[str, int]]) -> Loop | None:
    """The loop of one run (None where its instances do not read their params alike, or where
    a view carried on is read after the iteration computes its own)."""
    body_nodes = [bodies[k] for k in instances]
    refs, carried = [], {}
    used: dict[str, dict[str, int]] = {kind: {} for kind in tables}   # kind -> role -> its instance's shift
    first = body_nodes[0]
    for q, (*_, operands) in enumerate(sig):
        row = []
        for j, op in enumerate(operands):
            if op[0] == "near":
                p = op[2]
                init = G[first[q]].args[j]
                if carried.setdefault(p, init) != init:
                    return None
                row.append(Ref("carried_in" if q > p or (q == p and _rereads(G[first[q]])) else "carry", pos=p))
            elif op[0] in tables:
                role = op[1]
                if not safe_name(role):
                    return None
                if used[op[0]].setdefault(role, op[2]) != op[2]:
                    return None   # one role, one instance per iteration
                row.append(Ref(op[0], role=role, shift=op[2]))
            elif op[0] == "kept":
                row.append(Ref("kept", loop=op[1], pos=op[2], shift=op[3]))
            elif op[0] == "local":
                row.append(Ref("local", pos=op[1]))
            else:
                row.append(Ref("outer", node=G[body_nodes[1][q]].args[j]))
        refs.append(tuple(row))
    late = {r.pos for row in refs for r in row if r.kind == "carried_in"}
    if any(REGISTRY[G[body_nodes[1][p]].op].view for p in late):
        return None   # a view may share storage with a value of the iteration before, which this one rewrites
    if not all(safe_name(part) for part in group[0]):
        return None
    order = sorted(range(len(instances)), key=lambda i: instances[i])   # per instance, upwards
    per_role = {kind: {role: [tables[kind][_prefix(group[0], actual(model, group[0], instances[i] + shift)) + role]
                              for i in order]
                       for role, shift in roles.items()} for kind, roles in used.items()}
    numbers, iterations = _through_gap(model, group[0], instances)
    return Loop(group[0], group[1], model.repeats[group[0]], numbers, body_nodes, refs, carried,
                per_role["param"], tangents=per_role["tangent"], iterations=iterations)


def _rereads(node) -> bool:
    """Whether a statement reads an operand again after it first writes its result: a chain
    whose later steps read an operand (leaky_relu's ``max(alpha * x, x)``). Where
    that operand is the value it carries on, the loop body writes both under one name, so the
    statement reads the value carried in under a name of its own (a ``carried_in`` Ref)."""
    return REGISTRY[node.op].chain is not None and not REGISTRY[node.op].may_overwrite(dict(node.attrs))


def _through_gap(model: Model, key: tuple[str, ...], instances: list[int]) -> tuple[list[int], list[int]]:
    """A run's instance numbers in iteration order, and each body's iteration: where the run
    spans a short compile's gap, it goes over the instances left out there too (no bodies)."""
    head, left_out = model.gaps.get(key, (0, 0))
    if head not in instances or head + 1 not in instances:
        return [actual(model, key, k) for k in instances], list(range(len(instances)))
    up = instances[-1] > instances[0]
    numbers = list(range(instances[0], actual(model, key, instances[-1]) + 1) if up else
                   range(actual(model, key, instances[0]), instances[-1] - 1, -1))
    after = instances.index(head + 1 if up else head)   # the first body past the gap
    return numbers, [i + (left_out if i >= after else 0) for i in range(len(instances))]


def _mark_kept(G: Graph, loops: list[Loop], order: list[int], results: list[int]) -> None:
    """The positions whose values are read outside their own iteration (by later code, by
    another loop, or as results): kept in a list, one entry per instance. After the loop, the
    last iteration's values are still in the body's variables."""
    inside = {n: (li, *loop.where(n)) for li, loop in enumerate(loops) for body in loop.bodies for n in body}
    read = [a for n in order if n not in inside for a in G[n].args] + list(results)
    for loop in loops:
        read += [ref.node for row in loop.refs for ref in row if ref.kind == "outer"] + list(loop.carried.values())
        for row in loop.refs:
            for ref in row:
                if ref.kind == "kept":
                    loops[ref.loop].kept.add(ref.pos)
                    loops[ref.loop].read_after.add(ref.pos)
    for a in read:
        if a in inside:
            li, i, p = inside[a]
            loops[li].read_after.add(p)
            if i != len(loops[li].instances) - 1:
                loops[li].kept.add(p)


def _check_gaps(model: Model, loops: list[Loop], member: dict[int, Member]) -> None:
    """A short compile's function stretches to the full count only where the statements of the
    two instances either side of each gap are all inside loops that span it (then the instances
    left out are iterations like those), and those loops read only loops that span it too.
    What else could depend on the count (code outside the loops that reads an instance past
    the first few or before the last few), two short compiles of different counts write
    differently: stretch.py compares them."""
    spanning = [loop for loop in loops if loop.stretched]
    inside = {n for loop in spanning for body in loop.bodies for n in body}
    for n, ((key, _), k) in member.items():
        if key in model.gaps and k - model.gaps[key][0] in (0, 1) and n not in inside:
            raise Unstretchable("an instance next to a gap is not in a loop that spans it")
    for loop in spanning:
        if any(r.kind == "kept" and not loops[r.loop].stretched for row in loop.refs for r in row):
            raise Unstretchable("a loop that spans a gap reads one that does not")


def kept_view_bases(G: Graph, loop: Loop, positions: set[int]) -> set[int]:
    """The body positions whose storage the given positions' values live in (themselves, and
    the bases of views among them, of this iteration or carried from the last): all must be
    fresh arrays in every iteration."""
    out, todo = set(), list(positions)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        base = loop.refs[p][0] if REGISTRY[G[loop.template[p]].op].view else None
        if base is not None and base.kind in ("local", "carry", "carried_in"):
            todo.append(base.pos)
    return out


def loop_schedule(G: Graph, results: list[int], loops: list[Loop]) -> list[int | Loop] | None:
    """The function's statements in order, each loop one unit placed after everything it
    reads (a depth-first post-order, as schedule() makes); None where no order exists."""
    unit_of: dict[int, int] = {n: li for li, loop in enumerate(loops) for body in loop.bodies for n in body}
    operands_of = draw_operands(G, results)   # the args, and a random draw's source-order predecessor
    reads: list[list[int]] = [[] for _ in loops]
    for li, loop in enumerate(loops):
        reads[li] = list(dict.fromkeys(a for body in loop.bodies for n in body for a in operands_of(n)
                                       if unit_of.get(a) != li))

    def unit(n: int) -> int | tuple[int]:
        return (unit_of[n],) if n in unit_of else n

    def operands(u) -> list[int]:
        return reads[u[0]] if isinstance(u, tuple) else list(operands_of(u))

    try:   # with a loop, the graph of units may have a cycle: then no order is right
        order = post_order([unit(n) for n in results], lambda u: [unit(a) for a in operands(u)])
    except Cycle:
        if any(loop.stretched for loop in loops):
            raise Unstretchable("a loop that spans a gap cannot be scheduled") from None
        return None
    return [loops[u[0]] if isinstance(u, tuple) else u for u in order]


def reads_of(G: Graph, loop: Loop) -> set[int]:
    """The values from outside a loop that its iterations read."""
    mine = {n for body in loop.bodies for n in body}
    return {a for body in loop.bodies for n in body for a in G[n].args if a not in mine}


def safe_name(name: str) -> bool:
    """Whether a name (or a part of one) can be written into a generated f-string as it is."""
    return _SAFE_NAME.match(name) is not None
