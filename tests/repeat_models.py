"""Random models of ``repeat N block`` where the block varies (matmuls, elementwise ops,
residuals, transposes, broadcast biases, reductions, views, outer values and params, a nested
repeat), each with a PyTorch twin built from the same steps, for tests/test_codegen_loops.py.

Decisions come from a fuzzing.Choices (RandomChoices for a seeded sweep, HypothesisChoices to
shrink); torch is imported only by torch_model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuzzing import Choices

torch = None   # imported by torch_model: the steps' functions read it when they run


@dataclass
class Block:
    name: str
    lines: list[str]          # body lines (params and statements)
    steps: list               # (target, fn(env, param)) for torch; param(role) -> the instance's tensor
    ret: str


def make_block(rng: Choices, name: str, K: int, allow_nested: bool, inner_name: str | None,
               nested_out: list) -> Block:
    lines, steps = [], []
    cur = "x"
    locals_ = ["x"]
    nparams = 0
    count = rng.integer(1, 5)

    def param(kind):
        nonlocal nparams
        nparams += 1
        role = f"{kind}{nparams}"
        return role

    for j in range(count):
        t = f"t{j}"
        kind = rng.choice([k for k in ["matmul", "affine", "tanh", "sigmoid", "relu", "exp", "scale", "skip", "outer_c",
                           "outer_mul", "outer_P", "transpose", "center", "norm", "batchmean", "rowbias",
                           "mul_local", "scalar", "roll", "nested", "sum_axis0", "leaky", "act2", "arith", "arith", "view"]
                           if allow_nested or k not in ("outer_c", "outer_mul", "outer_P", "nested")])
        v = cur
        if kind == "nested" and not (allow_nested and inner_name):
            kind = "tanh"
        if kind == "matmul":
            r = param("W"); lines.append(f"param {r}: [K, K] = xavier()")
            lines.append(f"{t} = {v} @ {r}")
            steps.append((t, lambda e, p, v=v, r=r: e[v] @ p(r)))
        elif kind == "affine":
            r = param("W"); b = param("b")
            lines += [f"param {r}: [K, K] = xavier()", f"param {b}: [K] = normal(0.3)"]
            act = rng.choice(["", "tanh"])
            lines.append(f"{t} = {act}({v} @ {r} + {b})" if act else f"{t} = {v} @ {r} + {b}")
            steps.append((t, lambda e, p, v=v, r=r, b=b, act=act:
                          torch.tanh(e[v] @ p(r) + p(b)) if act else e[v] @ p(r) + p(b)))
        elif kind in ("tanh", "sigmoid", "relu"):
            lines.append(f"{t} = {kind}({v})")
            steps.append((t, lambda e, p, v=v, f=kind: getattr(torch, f)(e[v])))
        elif kind == "leaky":
            lines.append(f"{t} = leaky_relu({v}, alpha=0.1)")
            steps.append((t, lambda e, p, v=v: torch.nn.functional.leaky_relu(e[v], 0.1)))
        elif kind == "exp":
            lines.append(f"{t} = exp(tanh({v}))")
            steps.append((t, lambda e, p, v=v: torch.exp(torch.tanh(e[v]))))
        elif kind == "scale":
            r = param("s"); lines.append(f"param {r}: [K] = normal(1.0)")
            lines.append(f"{t} = {v} * {r}")
            steps.append((t, lambda e, p, v=v, r=r: e[v] * p(r)))
        elif kind == "scalar":
            r = param("a"); lines.append(f"param {r} = 0.7")
            lines.append(f"{t} = {v} * {r}")
            steps.append((t, lambda e, p, v=v, r=r: e[v] * p(r)))
        elif kind == "skip":
            lines.append(f"{t} = {v} + x")
            steps.append((t, lambda e, p, v=v: e[v] + e["x"]))
        elif kind == "outer_c":
            lines.append(f"{t} = {v} + c")
            steps.append((t, lambda e, p, v=v: e[v] + e["c"]))
        elif kind == "outer_mul":
            lines.append(f"{t} = tanh({v} * c)")
            steps.append((t, lambda e, p, v=v: torch.tanh(e[v] * e["c"])))
        elif kind == "outer_P":
            lines.append(f"{t} = {v} @ Q")
            steps.append((t, lambda e, p, v=v: e[v] @ e["Q"]))
        elif kind == "transpose":
            r = param("M"); lines.append(f"param {r}: [K, K] = xavier()")
            form = rng.choice(["mt", "tcol"])
            if form == "mt":
                lines.append(f"{t} = ({r} @ {v}.T).T")
                steps.append((t, lambda e, p, v=v, r=r: (p(r) @ e[v].T).T))
            else:
                c = param("col"); lines.append(f"param {c}: [K, 1] = normal(1.0)")
                lines.append(f"{t} = transpose(transpose({v}) * {c})")
                steps.append((t, lambda e, p, v=v, c=c: (e[v].T * p(c)).T))
        elif kind == "center":
            lines.append(f"{t} = {v} - mean({v}, axis=1, keepdims=true)")
            steps.append((t, lambda e, p, v=v: e[v] - e[v].mean(dim=1, keepdim=True)))
        elif kind == "norm":
            lines.append(f"{t} = {v} / (1 + sum({v} * {v}, axis=1, keepdims=true))")
            steps.append((t, lambda e, p, v=v: e[v] / (1 + (e[v] * e[v]).sum(dim=1, keepdim=True))))
        elif kind == "batchmean":
            lines.append(f"{t} = {v} * mean({v}, axis=0)")
            steps.append((t, lambda e, p, v=v: e[v] * e[v].mean(dim=0)))
        elif kind == "sum_axis0":
            lines.append(f"{t} = tanh({v} + sum({v}, axis=0) / B)")
            steps.append((t, lambda e, p, v=v: torch.tanh(e[v] + e[v].sum(dim=0) / e[v].shape[0])))
        elif kind == "rowbias":
            r = param("r"); lines.append(f"param {r}: [1, K] = normal(0.5)")
            lines.append(f"{t} = {v} + {r}")
            steps.append((t, lambda e, p, v=v, r=r: e[v] + p(r)))
        elif kind == "mul_local":
            o = rng.choice(locals_)
            lines.append(f"{t} = tanh({v} * {o})")
            steps.append((t, lambda e, p, v=v, o=o: torch.tanh(e[v] * e[o])))
        elif kind == "roll":
            lines.append(f"{t} = concat({v}[:, 1:], {v}[:, 0:1], axis=1)")
            steps.append((t, lambda e, p, v=v: torch.cat([e[v][:, 1:], e[v][:, 0:1]], dim=1)))
        elif kind == "act2":
            name_, f = rng.choice([
                ("gelu", lambda z: 0.5 * z * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z ** 3)))),
                ("elu", lambda z: torch.nn.functional.elu(z)), ("softplus", lambda z: torch.nn.functional.softplus(z)),
                ("hardtanh", lambda z: torch.clamp(z, -1, 1)), ("silu", lambda z: torch.nn.functional.silu(z)),
                ("hardswish", lambda z: torch.nn.functional.hardswish(z)), ("abs", lambda z: torch.abs(z)),
                ("softmax", lambda z: torch.softmax(z, dim=-1)), ("log_softmax", lambda z: torch.log_softmax(z, dim=-1))])
            lines.append(f"{t} = {name_}({v})")
            steps.append((t, lambda e, p, v=v, f=f: f(e[v])))
        elif kind == "arith":
            form = rng.choice(["div", "pow", "maximum", "minimum", "where", "clip", "sqrt", "log", "maxred", "var", "neg"])
            o = rng.choice(locals_)
            if form == "div":
                lines.append(f"{t} = {v} / (1 + {o} * {o})")
                steps.append((t, lambda e, p, v=v, o=o: e[v] / (1 + e[o] * e[o])))
            elif form == "pow":
                lines.append(f"{t} = tanh({v}) ** 3")
                steps.append((t, lambda e, p, v=v: torch.tanh(e[v]) ** 3))
            elif form == "maximum":
                lines.append(f"{t} = maximum({v}, {o} * 0.5)")
                steps.append((t, lambda e, p, v=v, o=o: torch.maximum(e[v], e[o] * 0.5)))
            elif form == "minimum":
                lines.append(f"{t} = minimum({v}, 0.3)")
                steps.append((t, lambda e, p, v=v: torch.clamp(e[v], max=0.3)))
            elif form == "where":
                lines.append(f"{t} = where({v} > 0, {v}, 0.2 * {o})")
                steps.append((t, lambda e, p, v=v, o=o: torch.where(e[v] > 0, e[v], 0.2 * e[o])))
            elif form == "clip":
                lines.append(f"{t} = clip({v}, -0.8, 0.9)")
                steps.append((t, lambda e, p, v=v: torch.where((e[v] > -0.8) & (e[v] < 0.9), e[v], e[v].detach().clamp(-0.8, 0.9))))
            elif form == "sqrt":
                lines.append(f"{t} = sqrt({v} * {v} + 1)")
                steps.append((t, lambda e, p, v=v: torch.sqrt(e[v] * e[v] + 1)))
            elif form == "log":
                lines.append(f"{t} = log(1 + {v} * {v})")
                steps.append((t, lambda e, p, v=v: torch.log(1 + e[v] * e[v])))
            elif form == "maxred":
                lines.append(f"{t} = {v} - max({v}, axis=1, keepdims=true)")
                steps.append((t, lambda e, p, v=v: e[v] - e[v].amax(dim=1, keepdim=True)))
            elif form == "var":
                lines.append(f"{t} = {v} / sqrt(var({v}, axis=0) + 1)")
                steps.append((t, lambda e, p, v=v: e[v] / torch.sqrt(e[v].var(dim=0, unbiased=False) + 1)))
            else:
                lines.append(f"{t} = -{v}")
                steps.append((t, lambda e, p, v=v: -e[v]))
        elif kind == "view":
            form = rng.choice(["TT", "reshape", "slice"])
            if form == "TT":
                lines.append(f"{t} = {v}.T.T")
                steps.append((t, lambda e, p, v=v: e[v]))
            elif form == "reshape":
                lines.append(f"{t} = reshape(reshape({v}, [B, K, 1]), [B, K])")
                steps.append((t, lambda e, p, v=v: e[v].reshape(-1).reshape(e[v].shape)))
            else:
                lines.append(f"{t} = {v}[:, 0:K]")
                steps.append((t, lambda e, p, v=v: e[v][:, 0:]))
        elif kind == "nested":
            n = rng.choice([1, 2, 3, 4])
            lines.append(f"{t} = repeat {n} {inner_name}({v})")
            nested_out.append((t, n))
            steps.append((t, ("nested", v, n)))
        cur = t
        locals_.append(t)
    ret = cur
    if rng.chance(0.3) and ret != "x":
        lines.append(f"y = {ret} + x")
        steps.append(("y", lambda e, p, r=ret: e[r] + e["x"]))
        ret = "y"
    return Block(name, lines, steps, ret)


@dataclass
class Model:
    text: str
    dtype: str
    K: int
    repeats: list        # (base name, block, count, input name)
    outputs: list        # names
    mids: list           # names of middle outputs
    inner: Block | None
    loss_kind: str


def make_model(rng: Choices) -> Model:
    """A model of one or two repeats of random blocks (a nested repeat in some), its torch twin
    in the Blocks' steps."""
    K = rng.choice([2, 3, 4])
    dtype = rng.choice(["float32", "float64"])
    inner = None
    nested_holder: list = []
    text = [f"dtype {dtype}", f"const K = {K}", "input X: float[N, K]", "input C: float[N, K]",
            "param P: [K, K] = xavier()"]
    if rng.chance(0.3):
        inner_out: list = []
        inner = make_block(rng, "inner", K, False, None, inner_out)
        text.append("layer inner(x: [B, K]) -> [B, K] {")
        text += ["    " + line for line in inner.lines]
        text.append(f"    return {inner.ret}")
        text.append("}")
    nrep = rng.choice([1, 1, 2])
    repeats = []
    src = "X"
    for r in range(nrep):
        nested_out: list = []
        blk = make_block(rng, f"blk{r}", K, True, "inner" if inner else None, nested_out)
        text.append(f"layer blk{r}(x: [B, K], c: [B, K], Q: [K, K]) -> [B, K] {{")
        text += ["    " + line for line in blk.lines]
        text.append(f"    return {blk.ret}")
        text.append("}")
        count = rng.choice([1, 2, 3, 3, 4, 7, 7, 8, 26, 30])
        base = f"h{r}"
        text.append(f"{base} = repeat {count} blk{r}({src}, C, P)")
        repeats.append((base, blk, count, src))
        src = base
    outputs = [src]
    mids = []
    for base, blk, count, _ in repeats:
        if count >= 2 and rng.chance(0.6):
            locs = [t for t, _ in blk.steps]
            if locs:
                k = rng.integer(1, count)
                mids.append(f"{base}.{k}.{rng.choice(locs)}")
        if rng.chance(0.3) and base != src:
            outputs.append(base)
    outputs += mids
    text.append("output " + ", ".join(dict.fromkeys(outputs)))
    loss_kind = rng.choice(["sumsq", "mean", "mids", "midparam"])
    if loss_kind == "sumsq":
        text.append(f"loss = sum({src} * {src})")
    elif loss_kind == "mean":
        text.append(f"loss = mean(tanh({src})) + 0.01 * l2(P)")
    elif loss_kind == "mids":
        extra = " + ".join(f"sum({m})" for m in mids) or "0"
        text.append(f"loss = sum({src} * {src}) / N + {extra}")
    else:
        text.append(f"loss = sum({src} * {src}) + 0.1 * l2(P)")
    text.append("minimize loss")
    return Model("\n".join(text) + "\n", dtype, K, repeats, list(dict.fromkeys(outputs)), mids, inner, loss_kind)


def run_block(blk: Block, env: dict, prm, inner: Block | None, scope: str, prmget):
    for target, fn in blk.steps:
        if isinstance(fn, tuple):
            _, v, n = fn
            h = env[v]
            for k in range(1, n + 1):
                sub = f"{scope}.{target}.{k}"
                e2 = {"x": h}
                run_block(inner, e2, lambda role, s=sub: prmget(f"{s}.{role}"), None, sub, prmget)
                h = e2[inner.ret]
            env[target] = h
        else:
            env[target] = fn(env, prm)
    return env


def torch_model(model: Model, params: dict, inputs: dict):
    """The values the model names and the gradients of its loss (params and inputs), computed
    by PyTorch's autograd in float64 from the same params."""
    global torch
    import torch
    P = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in params.items()}
    I = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in inputs.items()}
    values = {"X": I["X"]}
    src = I["X"]
    for base, blk, count, _ in model.repeats:
        h = src
        for k in range(1, count + 1):
            scope = f"{base}.{k}"
            env = {"x": h, "c": I["C"], "Q": P["P"]}
            run_block(blk, env, lambda role, s=scope: P[f"{s}.{role}"], model.inner, scope, lambda n: P[n])
            for t, v in env.items():
                if t not in ("x", "c", "Q"):
                    values[f"{scope}.{t}"] = v
            h = env[blk.ret]
        values[base] = h
        src = h
    N = src.shape[0]
    if model.loss_kind == "sumsq":
        loss = (src * src).sum()
    elif model.loss_kind == "mean":
        loss = torch.tanh(src).mean() + 0.01 * (P["P"] ** 2).sum()
    elif model.loss_kind == "midparam":
        loss = (src * src).sum() + 0.1 * (P["P"] ** 2).sum()
    else:
        loss = (src * src).sum() / N
        for m in model.mids:
            loss = loss + values[m].sum()
    values["loss"] = loss
    loss.backward()
    grads = {k: v.grad.numpy() if v.grad is not None else np.zeros(v.shape) for k, v in P.items()}
    grads.update({k: v.grad.numpy() if v.grad is not None else np.zeros(v.shape) for k, v in I.items()})
    return {k: v.detach().numpy() for k, v in values.items()}, grads


