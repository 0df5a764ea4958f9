"""Emission of the loops nncompile/loops.py finds: one ``for`` over the instances of a
``repeat`` (forward up through them, backward down), its params gathered per instance from
the tuple ``_read_params`` returns, the values later code reads kept in lists.

Inside a loop body a value lives in a fresh array when it outlives its iteration (carried
to the next one, kept, or read after the loop), and in a workspace buffer of the loop's own
otherwise: those buffers are reused by every iteration and by nothing else.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import Sources
from ..loops import Loop, Ref, Unstretchable, kept_view_bases, reads_of, safe_name
from ..ops import REGISTRY
from ..schedule import Plan, plan_buffers
from .names import Names, basename, safe_comment
from .readers import read_params_as

if TYPE_CHECKING:
    from .functions import FunctionEmitter, _Context

_ROLE_KINDS = {"param": "", "tangent": "v"}   # operands an instance has of its own -> their variables' prefix


class LoopWriter:
    """The loops of one function as they are written: their buffers, the names of the param
    tuples, index and lists they use, shared by the statements before, in and after them."""

    def __init__(self, em: FunctionEmitter, loops: list[Loop], plan: Plan, names: Names, results: set[int]):
        self.em, self.loops, self.names = em, loops, names
        self.plans: dict[int, tuple[Plan, int]] = {}   # id(loop) -> its body's plan, where its buffers start
        self.own: dict[tuple[int, int], tuple[int, int]] = {}   # (id(loop), position) -> its buffers: first, how many
        self.copied: set[int] = set()   # results the last iteration leaves in the workspace
        for loop in loops:   # each body's buffers go after the function's: no other value shares them
            escaping = kept_view_bases(em.G, loop, set(loop.carried) | loop.kept | loop.read_after)
            body = plan_buffers(em.G, loop.template, {loop.template[p] for p in escaping})
            self.plans[id(loop)] = (body, len(plan.slots))
            plan.slots.extend(body.slots)
            kept = kept_view_bases(em.G, loop, loop.kept)   # a kept view's base: kept as long
            carried = kept_view_bases(em.G, loop, set(loop.carried))
            for p in sorted(escaping):
                count = len(loop.instances) if p in kept else 2 if p in carried else 1
                self.own_buffers(loop, p, body, plan, results, count)
        self.lists: dict[tuple[int, int], str] = {}    # (id(loop), position) -> the list keeping its values
        self.tuples: dict[tuple, tuple[str, int]] = {}   # (repeat, kind, param) -> its tuple, its first instance
        self.role_vars: dict[tuple[str, str, int], str] = {}   # (kind, role, shift) -> the body's variable
        self.index = ""
        self.grad_roles: dict[tuple[int, int], str] = {}   # (id(loop), position) -> the param role whose
        # gradient it is, for its iteration's own instance: written into that gradient's view
        self.grad_outs: dict[tuple[int, int], str] = {}    # (id(loop), position) -> the tuple of those views
        self.grads_written: set[str] = set()   # the params whose gradients the loops write into their views
        self.carried_in: dict[tuple[int, int], str] = {}   # (id(loop), position) -> the value carried
        # into the iteration, where it is read after the iteration computes its own

    def own_buffers(self, loop: Loop, p: int, body: Plan, plan: Plan, results: set[int], count: int) -> None:
        """A value that outlives its iteration, but is not returned, gets buffers of its own in
        the workspace (``count``): one per iteration when it (or a view of it) is kept, two taken
        in turn when it is only carried to the next iteration, one when only the last
        iteration's is read after."""
        G, n = self.em.G, loop.template[p]
        node = G[n]
        if (not REGISTRY[node.op].takes_out or node.shape == () or node.dtype != "float" or n in body.inplace
                or any(body_[p] in results for body_ in loop.bodies[:-1])):
            return   # a fresh array in every iteration
        if loop.bodies[-1][p] in results:
            self.copied.add(loop.bodies[-1][p])   # returned: as a copy of its buffer
        self.own[id(loop), p] = (len(plan.slots), count)
        plan.slots.extend([(node.shape, node.dtype)] * count)

    def read_params(self, needed: set[int], outer: set[int]) -> list[str]:
        """The params, as the tuple ``_read_params`` returns (PARAMS order): by name those
        ``outer`` code reads, and one tuple per param of a repeat's instances (``h_W[i]``);
        in hvp() the directions ``v`` the same way (``v_h_0_W``, ``h_vW[i]``)."""
        params = self.em.model.params
        lines = self.gather("param", "params", params, "", needed, outer) \
            if any(n in needed for n in params.values()) else []   # none: the module has no _read_params
        tangents = self.em.p.tangents
        if any(n in needed for n in tangents.values()):
            lines += self.gather("tangent", "v", tangents, "v", needed, outer)
        self.index = self.names.fresh("i")
        return lines

    def gather(self, kind: str, arg: str, table: dict[str, int], stem: str, needed: set[int],
               outer: set[int]) -> list[str]:
        """The lines reading one argument laid out like the params (``params`` or hvp's ``v``,
        ``table``: param name -> its node) for the loops' roles of ``kind``."""
        names = self.names
        index = {name: i for i, name in enumerate(self.em.model.params)}
        arrays = names.fresh(f"{stem or 'param'}_arrays")
        lines = read_params_as(arg, arrays, "in PARAMS order")
        for name, n in table.items():
            if n in needed and n in outer:
                names.of[n] = names.fresh(f"{stem}_{name}" if stem else name)
                lines.append(f"    {names.of[n]} = {arrays}[{index[name]}]")
        spans: dict[tuple, list[int]] = {}   # (repeat, param) -> the first and last instances its loops go over
        for loop in self.loops:
            for ref in dict.fromkeys(r for row in loop.refs for r in row if r.kind == kind):
                ends = (loop.instances[0] + ref.shift, loop.instances[-1] + ref.shift)   # the instances are consecutive
                spans.setdefault((loop.key, ref.role), []).extend(ends)
        for (key, role), instances in spans.items():
            low, high = min(instances), max(instances)
            loop = next(loop for loop in self.loops if loop.key == key)
            scope = loop.instance_name("")
            where = [index[f"{scope}{k}.{role}"] for k in range(low, high + 1)]
            var = names.fresh(f"{key[-1]}_{stem}{role}".replace(".", "_"))
            self.tuples[key, kind, role] = (var, low)
            gathered = _gathered(arrays, where)
            span = f"  # {loop.instance_name(low)}.{role} ... {loop.instance_name(high)}.{role}"
            lines.append(f"    {var} = {gathered}{'' if gathered.startswith('(') else span}")
        return lines

    def plan_grad_views(self, flat: dict[str, int | None], results: list[int]) -> bool:
        """Plans the gradient views where every param gradient a loop computes is its
        iteration's own instance's, in an op that can write into a view: each iteration then
        writes it into its view of the one gradient buffer (grad_tuples, after
        FunctionEmitter.grad_buffer has made the views), and none is copied there after. Also
        where no loop computes one (only the forward pass a loop): every gradient is then the
        outer code's, into its view. Returns whether it planned them (``grad_roles``)."""
        by_node: dict[int, list[str]] = {}
        for name, n in flat.items():
            if n is not None:
                by_node.setdefault(n, []).append(name)
        roles: dict[tuple[int, int], str] = {}
        covered: set[str] = set()
        counts = Counter(results)
        for loop in self.loops:
            for p in sorted(loop.kept):
                role = _own_grad_role(loop, p, by_node, counts, lambda n: self.em.writes_into_buffer(self.em.G[n]))
                if role is not None:
                    roles[id(loop), p] = role
                    covered.update(f"{loop.instance_name(k)}.{role}" for k in loop.instances)
        in_loops = {name for n, names in by_node.items() if any(loop.where(n) for loop in self.loops)
                    for name in names}
        if not in_loops <= covered or not covered <= flat.keys():
            return False
        self.grad_roles, self.grads_written = roles, covered
        return True

    def grad_tuples(self, ctx: _Context, names: Names) -> list[str]:
        """One tuple per loop and role of the gradient views its iterations write (``d_h_W[i]``)."""
        lines = []
        index = {name: k for k, name in enumerate(ctx.grad_views)}
        for loop in self.loops:
            for p, role in ((p, r) for (key, p), r in self.grad_roles.items() if key == id(loop)):
                low, high = min(loop.instances), max(loop.instances)
                var = names.fresh(f"d_{loop.key[-1]}_{role}".replace(".", "_"))
                self.grad_outs[id(loop), p] = var
                mine = [f"{loop.instance_name(k)}.{role}" for k in range(low, high + 1)]
                gathered = (_gathered(ctx.grad_list, [index[name] for name in mine]) if ctx.grad_list else
                            f"({', '.join(ctx.grad_views[name] for name in mine)},)")
                lines.append(f"    {var} = {gathered}  # the gradients of "
                             f"{loop.instance_name(low)}.{role} ... {loop.instance_name(high)}.{role}")
        return lines

    def loop(self, loop: Loop, buffers: list[str], ctx: _Context) -> list[str]:
        """The loop's lines: its carried values set, its lists made, the body once, in a ``for``."""
        em, names, i = self.em, self.names, self.index
        G, t = em.G, loop.template
        body_plan, base = self.plans[id(loop)]
        count = len(loop.instances)
        lines = [f"    # {_repeat_comment(loop)}",
                 f"    # {loop.instance_name(loop.instances[0])} ... {loop.instance_name(loop.instances[-1])}, "
                 f"{loop.kind}: one iteration per instance, each with its own params"]
        var = {p: _var(G, loop, t[p], names) for p in sorted(loop.carried)}
        for p, init in sorted(loop.carried.items()):
            lines.append(f"    {var[p]} = {em.ref(init, names.of)}")
        listed = [p for p in sorted(loop.kept) if not self.in_views_only(loop, p)]
        for p in listed:
            self.lists[id(loop), p] = names.fresh(_var_stem(G, loop, t[p]) + "s")
            lines.append(f"    {self.lists[id(loop), p]} = [None] * {count}")
        span = f"range({count})"
        lines.append(f"    for {i} in {span if loop.instances[0] == loop.low else f'reversed({span})'}:")
        roles = list(dict.fromkeys((r.kind, r.role, r.shift) for row in loop.refs for r in row
                                   if r.kind in _ROLE_KINDS))
        for role in roles:   # one variable per param name (and per v), shared by the loops of a function
            if role not in self.role_vars:
                self.role_vars[role] = names.fresh(_ROLE_KINDS[role[0]] + role[1].replace(".", "_"))
        if roles:
            targets = ", ".join(self.role_vars[r] for r in roles)
            sources = ", ".join(self.own_param(loop, *r) for r in roles)
            lines.append(f"        {targets} = {sources}")
        for p in sorted({r.pos for row in loop.refs for r in row if r.kind == "carried_in"}):
            # read after this iteration computes its own: under a name of its own
            self.carried_in[id(loop), p] = names.fresh(_var_stem(G, loop, t[p]) + "_in")
            lines.append(f"        {self.carried_in[id(loop), p]} = {var[p]}")
        last_where = None
        for q, n in enumerate(t):
            node = G[n]
            comment, last_where = em.source_comment(node, last_where, "        ")
            lines += comment
            args = [self.operand(loop, ref, var) for ref in loop.refs[q]]
            ctx.literals = em.literal_operands(node)
            if (id(loop), q) in self.grad_outs:   # a param gradient: into its view
                out = _indexed(self.grad_outs[id(loop), q], loop.low, loop, i)
            elif n in body_plan.inplace:
                out = var[t.index(body_plan.inplace[n])]
            elif n in body_plan.slot:
                out = buffers[base + body_plan.slot[n]]
            elif (id(loop), q) in self.own:
                first, size = self.own[id(loop), q]
                out = f"buffers[{first}{f' + {i}' if size > 2 else f' + {i} % 2' if size == 2 else ''}]"
            else:
                out = None
            if q not in var:
                var[q] = _var(G, loop, n, names)
            names.of[n] = var[q]
            lines += ["    " + line for line in em.statement(ctx, node, var[q], args, out)]
        lines += [f"        {self.lists[id(loop), p]}[{i}] = {var[p]}" for p in listed]
        # After the loop: the last iteration's values are in the body's variables, the others in
        # lists, or in their gradient views.
        for it, body in loop.numbered():
            k = loop.instances[it]
            for p, n in enumerate(body):
                if it == count - 1:
                    names.of[n] = var[p]
                elif (id(loop), p) in self.lists:
                    names.of[n] = f"{self.lists[id(loop), p]}[{k - loop.low}]"
                elif p in loop.kept:
                    names.of[n] = ctx.grad_views[f"{loop.instance_name(k)}.{self.grad_roles[id(loop), p]}"]
        return lines

    def in_views_only(self, loop: Loop, p: int) -> bool:
        """Whether position ``p`` is a param gradient the loop writes into its views, which no
        other loop reads: then its views are all that keep it, no list."""
        if (id(loop), p) not in self.grad_outs:
            return False
        me = next(k for k, other in enumerate(self.loops) if other is loop)
        return not any(r.kind == "kept" and r.loop == me and r.pos == p
                       for other in self.loops for row in other.refs for r in row)

    def own_param(self, loop: Loop, kind: str, role: str, shift: int) -> str:
        """``h_W[i + 1]``: this iteration's param ``role`` (or its v) from its tuple."""
        var, low = self.tuples[loop.key, kind, role]
        return _indexed(var, low - shift, loop, self.index)

    def operand(self, loop: Loop, ref: Ref, var: dict[int, str]) -> str:
        if ref.kind in ("carry", "carried_in") and (id(loop), ref.pos) in self.carried_in:
            return self.carried_in[id(loop), ref.pos]   # every read of it, before the update and after
        if ref.kind in ("local", "carry"):
            return var[ref.pos]
        if ref.kind in _ROLE_KINDS:
            return self.role_vars[ref.kind, ref.role, ref.shift]
        if ref.kind == "kept":
            other = self.loops[ref.loop]
            return _indexed(self.lists[id(other), ref.pos], other.low - ref.shift, loop, self.index)
        return self.em.ref(ref.node, self.names.of)

    def grads(self, values: dict[str, int | None], ctx: _Context, seen: set[int], var: str) -> list[str] | None:
        """The statements filling the dict ``var`` with the gradients, in its order, those a
        loop kept by one loop per run of instances (``grads[f"h.{i + 2}.W"] = d_Ws[i]``): the
        entries before a run go in as a dict, those after it by ``update`` (those in views of
        the one gradient buffer as their views, ``ctx.grad_views``). None where no gradient is
        in a loop's list."""
        em = self.em
        where = {body[p]: (loop, it, p) for loop in self.loops for it, body in loop.numbered() for p in loop.kept}
        items = through_gaps(em.model, list(values.items()), where)
        segments: list = []   # dicts of plain entries, and runs: (loop, first instance, count, [(role, position)])
        j = 0
        while j < len(items):
            run = _grad_run(items, j, where, seen)
            if run is None:
                if not segments or not isinstance(segments[-1], dict):
                    segments.append({})
                segments[-1][items[j][0]] = items[j][1]
                j += 1
            else:
                segments.append(run[0])
                j = run[1]
        if not any(isinstance(s, tuple) for s in segments):
            return None
        lines: list[str] = []
        for s in segments:
            if isinstance(s, dict):
                text = em.returned(s, self.names.of, ctx, seen, views=ctx.grad_views)
                lines.append(f"    {var} = {text}" if not lines else f"    {var}.update({text})")
                continue
            if not lines:
                lines.append(f"    {var} = {{}}")
            loop, first, count, roles = s
            i = self.index
            lines.append(f"    for {i} in range({count}):")
            offset = first - loop.low
            for role, p in roles:
                listed = self.lists.get((id(loop), p), self.grad_outs.get((id(loop), p)))   # or its views
                value = f"{listed}[{i}{f' + {offset}' if offset else ''}]"
                if REGISTRY[em.G[loop.template[p]].op].view:
                    value = f"{em.xp}.array({value})"
                key = loop.instance_name(f"{{{i} + {first}}}") + "." + role
                lines.append(f"        {var}[f{key!r}] = {value}")
        return lines


def through_gaps(model, items: list[tuple[str, int | None]], where: dict) -> list[tuple[str, object]]:
    """A short compile's gradients (or hvp's products) as stretch.py fills the table: after the
    entries of the instance before a gap, those of each instance left out there, in order, of
    the same nodes. Each of those is put in its own iteration of the loop that keeps the node
    (under a key of ``where`` of its own)."""
    items = list(items)
    for key, (head, left_out) in model.gaps.items():
        prefix = ".".join((*key[:-1], f"{key[-1]}.{head}."))
        mine = [j for j, (name, _) in enumerate(items) if name.startswith(prefix)]
        if not mine:
            continue
        first, roles = mine[-1] + 1, len(mine)
        for j in range(first, first + roles * left_out):
            n = items[j][1]
            if n is None:
                continue
            k = head + 1 + (j - first) // roles
            if n not in where or where[n][0].instances[where[n][1]] != head:
                raise Unstretchable("a gradient next to a gap is not kept by a loop that spans it")
            loop, it, p = where[n]
            items[j] = (items[j][0], ("left out", k, n))
            where[items[j][1]] = (loop, it + (k - head if loop.instances[-1] > loop.instances[0] else head - k), p)
    return items


def loop_reads(G, loops: list[Loop]) -> set[int]:
    """Every value from outside the loops that one of them reads: live until the function ends."""
    return set().union(*(reads_of(G, loop) for loop in loops)) if loops else set()


def named_reads(loops: list[Loop]) -> set[int]:
    """The values from outside the loops that they read by name (not as an instance's param)."""
    return {r.node for loop in loops for row in loop.refs for r in row if r.kind == "outer"} | \
        {n for loop in loops for n in loop.carried.values()}


def local_name(loop: Loop, name: str) -> str:
    """A name inside the loop body: the instance's part of it (``h.7.W`` is ``W``, ``h.7`` is ``h``)."""
    stem = re.escape(".".join(loop.key))
    m = re.match(stem + r"\.\d+(?:\.(.*))?$", name)
    if m is None:
        return name
    return m[1] if m[1] else loop.key[-1]


def _own_grad_role(loop: Loop, p: int, by_node: dict[int, list[str]], counts: Counter,
                   writable: Callable[[int], bool]) -> str | None:
    """The role R where position ``p`` of every iteration computes the gradient of its own
    instance's param R (``h.7.W``), and of no other param outside the loop's instances, in an op
    that can write into a view (``writable``), returned only as that gradient (``counts``: how
    often each node is a result); else None."""
    it, body = next(loop.numbered())
    prefix = loop.instance_name(loop.instances[it]) + "."
    found = [name[len(prefix):] for name in by_node.get(body[p], ()) if name.startswith(prefix)]
    if len(found) != 1:
        return None
    role = found[0]
    stem = loop.instance_name("")
    instances = {f"{stem}{k}.{role}" for k in loop.instances}
    for it, body in loop.numbered():
        n, mine = body[p], f"{loop.instance_name(loop.instances[it])}.{role}"
        names = by_node.get(n, [])
        only_mine = mine in names and set(names) <= instances   # this instance's, and no other's outside the loop
        if not only_mine or counts[n] != len(names) or not writable(n):   # or also an output, or a view
            return None
    return role


def _gathered(var: str, where: list[int]) -> str:
    """The entries of sequence ``var`` at ``where`` as a tuple: a slice where the indices are
    evenly spaced (``param_arrays[0:1999:2]``), else a tuple display."""
    step = where[1] - where[0] if len(where) > 1 else 0
    if step > 0 and where == list(range(where[0], where[-1] + 1, step)):
        return f"{var}[{where[0]}:{where[-1] + 1}{f':{step}' if step != 1 else ''}]"
    return f"({', '.join(f'{var}[{k}]' for k in where)},)"


def _indexed(var: str, low: int, loop: Loop, i: str) -> str:
    """``var[i + shift]``: the entry of a per-instance list for this iteration's instance."""
    shift = loop.low - low
    return f"{var}[{i}{f' + {shift}' if shift > 0 else f' - {-shift}' if shift else ''}]"


def _var_stem(G, loop: Loop, n: int) -> str:
    node = G[n]
    if node.grad_of is not None and G.nx.has_node(node.grad_of) and G[node.grad_of].name:
        return "d_" + local_name(loop, G[node.grad_of].name)
    if node.grad_of is None and node.name:
        return local_name(loop, node.name)
    return "t"


def _var(G, loop: Loop, n: int, names: Names) -> str:
    stem = _var_stem(G, loop, n)
    return names.temp() if stem == "t" else names.fresh(stem)


def _repeat_comment(loop: Loop) -> str:
    loc = loop.loc
    if loc is None:
        return f"repeat {'.'.join(loop.key)}"
    text = Sources.line(loc.file, loc.line)
    return safe_comment(f"{basename(loc.file)}:{loc.line}" + (f": {text.strip()}" if text else ""))


def _grad_run(items: list, j: int, where: dict, seen: set[int]):
    """A run of gradients from ``items[j]`` on: each instance's params in one order, each kept
    by one loop at one position; ((loop, first instance, count, roles), next j) or None."""
    name, n = items[j]
    if n is None or n not in where or n in seen:
        return None
    loop, it, _ = where[n]
    k = loop.instances[it]
    prefix = loop.instance_name(k) + "."
    roles = []
    while j + len(roles) < len(items) and items[j + len(roles)][0].startswith(prefix):
        rname, rn = items[j + len(roles)]
        if rn is None or rn not in where or where[rn][0] is not loop or where[rn][1] != it:
            return None
        roles.append((rname[len(prefix):], where[rn][2]))
    if not roles or not all(safe_name(role) for role, _ in roles):
        return None
    count, pos = 0, j
    stem = loop.instance_name("")
    while True:
        kk = k + count
        names_ = [f"{stem}{kk}.{role}" for role, _ in roles]
        chunk = items[pos:pos + len(roles)]
        if len(chunk) != len(roles) or [c[0] for c in chunk] != names_:
            break
        ok = True
        for (role, p), (_, cn) in zip(roles, chunk):
            w = where.get(cn)
            if cn is None or cn in seen or w is None or w[0] is not loop or w[2] != p \
                    or loop.instances[w[1]] != kk:
                ok = False
                break
        if not ok:
            break
        count += 1
        pos += len(roles)
    if count < 2:
        return None
    for _, cn in items[j:pos]:
        seen.add(cn)
    return (loop, k, count, roles), pos
