"""Gradient health (nncompile/health.py): each threshold is tripped by a model built to trip
it, a healthy model trips none, and every figure agrees with the same net written out in
numpy by hand (forward, backward and the optimiser step), not with the compiler's own trace."""
from __future__ import annotations

import json
import math
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

from nncompile import monitor
from nncompile.errors import NNError
from nncompile.evaluate import evaluate_file
from nncompile.health import COLOURS, Thresholds, check
from nncompile.monitor import plain_step
from nncompile.render import to_dot
from nncompile.train import TrainConfig, Trainer

from conftest import write_nn

RELU_NET = """
const D = 8, H = 16, C = 3
input X: float[N, D]
input y: int[N]
layer affine(x: [B, K], out: int) -> [B, out] {
    param W: [K, out] = he()
    param b: [out] = zeros()
    return x @ W + b
}
h = relu(affine(X, out=H) as fc1)
scores = affine(h, out=C) as fc2
output scores
loss = softmax_cross_entropy(scores, y)
minimize loss
"""


def deep_net(activation: str, std: float, depth: int = 6) -> str:
    return f"""
    input X: float[N, 8]
    input y: int[N]
    layer dense(x: [B, K], out: int) -> [B, out] {{
        param W: [K, out] = normal(std={std})
        param b: [out] = zeros()
        return {activation}(x @ W + b)
    }}
    h = repeat {depth} dense(X, out=16)
    layer linear(x: [B, K], out: int) -> [B, out] {{
        param W: [K, out] = normal(std={std})
        param b: [out] = zeros()
        return x @ W + b
    }}
    scores = linear(h, out=3) as out
    loss = softmax_cross_entropy(scores, y)
    minimize loss
    """


def _relu_net(tmp_path: Path, bias: list[float] | None = None):
    path = write_nn(tmp_path, "net.nn", RELU_NET)
    sets = {"N": "64"} if bias is None else {"N": "64", "fc1.b": json.dumps(bias)}
    return path, evaluate_file(path, sets, dtype="float64")


def _by_hand(ev) -> dict[str, np.ndarray]:
    """The relu net's forward and backward in plain numpy."""
    p, X, y = ev.params, ev.inputs["X"], ev.inputs["y"]
    z1 = X @ p["fc1.W"] + p["fc1.b"]
    h = np.maximum(z1, 0)
    s = h @ p["fc2.W"] + p["fc2.b"]
    e = np.exp(s - s.max(axis=1, keepdims=True))
    dS = e / e.sum(axis=1, keepdims=True)
    dS[np.arange(len(y)), y] -= 1
    dS /= len(y)
    dz1 = dS @ p["fc2.W"].T * (z1 > 0)
    return {"h": h, "fc2.W": h.T @ dS, "fc2.b": dS.sum(0), "fc1.W": X.T @ dz1, "fc1.b": dz1.sum(0)}


def _rms(*grads: np.ndarray) -> float:
    return math.sqrt(sum(float(np.sum(g * g)) for g in grads) / sum(g.size for g in grads))


def _figures(report, metric: str) -> dict[str, tuple[float, str]]:
    return {f.name: (f.value, f.level) for f in report.distinct() if f.metric == metric}


def test_a_healthy_net_trips_no_threshold_and_its_figures_match_numpy_by_hand(tmp_path: Path) -> None:
    path, ev = _relu_net(tmp_path)
    report = check(ev, plain_step(path, 1e-3, "adam", dtype="float64"))
    assert report.level == "ok" and report.off() == [] and report.note() == ""
    hand = _by_hand(ev)
    for name in ("fc1.W", "fc1.b", "fc2.W", "fc2.b"):   # the oracle is the same net
        np.testing.assert_allclose(ev.grads[ev.model.params[name]], hand[name], rtol=1e-10, atol=1e-14)
    # Adam's first step from a fresh state moves every weight by lr * g / (|g| + eps)
    for name, (ratio, _) in _figures(report, "update_ratio").items():
        g, w = hand[name], ev.params[name]
        assert ratio == pytest.approx(np.linalg.norm(1e-3 * g / (np.abs(g) + 1e-8)) / np.linalg.norm(w), rel=1e-9)
    assert set(_figures(report, "update_ratio")) == {"fc1.W", "fc2.W"}   # biases start at 0: no ratio
    grads = _figures(report, "grad_ratio")
    assert grads["fc2"] == (1.0, "ok")   # the layer nearest the loss is the reference
    assert grads["fc1"][0] == pytest.approx(_rms(hand["fc1.W"], hand["fc1.b"]) / _rms(hand["fc2.W"], hand["fc2.b"]),
                                            rel=1e-9)
    assert _figures(report, "dead") == {"h": (float(np.mean(np.all(hand["h"] == 0, axis=0))), "ok")}


def test_a_huge_learning_rate_is_too_fast_and_a_tiny_one_too_slow(tmp_path: Path) -> None:
    path, ev = _relu_net(tmp_path)
    hand = _by_hand(ev)
    for lr, words in ((5.0, "too fast"), (1e-7, "too slow")):
        report = check(ev, plain_step(path, lr, "sgd", dtype="float64"))
        ratios = _figures(report, "update_ratio")
        for name in ("fc1.W", "fc2.W"):   # plain SGD: lr * ||g|| / ||w||
            expected = lr * np.linalg.norm(hand[name]) / np.linalg.norm(ev.params[name])
            assert ratios[name] == (pytest.approx(expected, rel=1e-9), "bad")
        assert all(words in f.message for f in report.off())
        assert report.level == "bad" and "Δ/w" in report.note()


def test_the_update_band_between_warn_and_bad_is_a_warning(tmp_path: Path) -> None:
    path, ev = _relu_net(tmp_path)
    report = check(ev, plain_step(path, 5.0, "sgd", dtype="float64"),
                   Thresholds.parse("update_warn_above=1e-2,update_bad_above=1e6"))
    assert {level for _, level in _figures(report, "update_ratio").values()} == {"warn"}


def test_a_relu_layer_with_a_large_negative_bias_has_dead_units(tmp_path: Path) -> None:
    for negative, share, level in ((8, 0.5, "bad"), (3, 3 / 16, "warn")):
        _, ev = _relu_net(tmp_path, [-10.0] * negative + [0.0] * (16 - negative))
        h = _by_hand(ev)["h"]
        assert float(np.mean(np.all(h == 0, axis=0))) == share   # by hand: units zero for all 64 examples
        report = check(ev)
        assert _figures(report, "dead") == {"h": (share, level)}
        relu = next(n for n, entry in report.items() if entry["metric"] == "dead")
        assert ev.program.graph[relu].name == "h" and report[relu]["level"] == level
    relaxed = check(ev, thresholds=Thresholds.parse("dead_warn=0.25, dead_bad=0.5"))
    assert _figures(relaxed, "dead") == {"h": (3 / 16, "ok")}   # the thresholds are the user's to move


def _deep_by_hand(ev, activation, depth: int) -> tuple[list[np.ndarray], dict[str, float]]:
    """The deep net's activations and each layer's gradient RMS over the output layer's, in numpy."""
    p, X, y = ev.params, ev.inputs["X"], ev.inputs["y"]
    hs = [X]
    for i in range(1, depth + 1):
        hs.append(activation(hs[-1] @ p[f"h.{i}.W"] + p[f"h.{i}.b"]))
    s = hs[-1] @ p["out.W"] + p["out.b"]
    e = np.exp(s - s.max(axis=1, keepdims=True))
    d = e / e.sum(axis=1, keepdims=True)
    d[np.arange(len(y)), y] -= 1
    d /= len(y)
    rms = {"out": _rms(hs[-1].T @ d, d.sum(0))}
    d = d @ p["out.W"].T
    for i in range(depth, 0, -1):
        a = hs[i]
        dz = d * (a * (1 - a) if activation is _sigmoid else 1 - a * a)
        rms[f"h.{i}"] = _rms(hs[i - 1].T @ dz, dz.sum(0))
        d = dz @ p[f"h.{i}.W"].T
    return hs[1:], {layer: value / rms["out"] for layer, value in rms.items()}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("name, activation, outside", [("sigmoid", _sigmoid, lambda a: (a <= 0.03) | (a >= 0.97)),
                                                       ("tanh", np.tanh, lambda a: np.abs(a) >= 0.97)])
def test_a_deep_saturating_net_with_big_weights_saturates(tmp_path: Path, name, activation, outside) -> None:
    path = write_nn(tmp_path, f"deep_{name}.nn", deep_net(name, 4.0))
    ev = evaluate_file(path, {"N": "64"}, dtype="float64")
    report = check(ev)
    hs, ratios = _deep_by_hand(ev, activation, 6)
    saturated = _figures(report, "saturated")
    assert len(saturated) == 6
    for (value, level), a in zip(saturated.values(), hs):
        assert value == pytest.approx(float(np.mean(outside(a))), abs=1e-12) and value > 0.25
        assert level == "bad"
    grads = _figures(report, "grad_ratio")
    assert {layer: value for layer, (value, _) in grads.items()} == pytest.approx(ratios, rel=1e-6)
    if name == "tanh":   # big weights times tanh' grow the gradient on the way down
        assert grads["h.1"] == (pytest.approx(ratios["h.1"]), "warn") and ratios["h.1"] > 1e2


def test_a_deep_sigmoid_net_loses_its_gradient_on_the_way_down(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "deep.nn", deep_net("sigmoid", 0.5, depth=10))
    ev = evaluate_file(path, {"N": "64"}, dtype="float64")
    report = check(ev)
    _, ratios = _deep_by_hand(ev, _sigmoid, 10)
    grads = _figures(report, "grad_ratio")
    assert {layer: value for layer, (value, _) in grads.items()} == pytest.approx(ratios, rel=1e-6)
    assert grads["h.1"][1] == "bad" and ratios["h.1"] < 1e-3 and grads["h.10"][1] == "ok"
    assert "vanishing" in next(f.message for f in report.distinct() if f.name == "h.1" and f.metric == "grad_ratio")
    assert _figures(report, "saturated")["h.5"] == (0.0, "ok")   # small weights: vanishing without saturation


def test_a_gentle_deep_tanh_net_neither_saturates_nor_vanishes(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "gentle.nn", deep_net("tanh", 0.3))
    report = check(evaluate_file(path, {"N": "64"}, dtype="float64"))
    assert report.level == "ok", report.table()


def test_a_non_finite_gradient_is_always_bad(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "sqrt.nn", """
        input x: float[N, 2]
        param w: [2] = ones()
        loss = sum(sqrt(x * w))
        minimize loss
    """)
    report = check(evaluate_file(path, {"x": "[[0, 1], [1, 1]]"}))
    bad = [f for f in report.off() if f.metric == "nonfinite"]
    assert bad and all(f.level == "bad" for f in bad)
    assert report[report.findings[0].node]["level"] == "bad"


def test_health_is_the_pages_mapping_of_node_ids_to_level_metric_value_and_message(tmp_path: Path) -> None:
    path, ev = _relu_net(tmp_path, [-10.0] * 8 + [0.0] * 8)
    report = check(ev, plain_step(path, 1e-3, "adam", dtype="float64"))
    mapping = report.by_node()
    assert dict(report) == mapping and set(mapping) <= set(ev.program.graph.nx.nodes)
    assert all(set(entry) == {"level", "metric", "value", "message"} for entry in mapping.values())
    assert {ev.model.params["fc1.W"], ev.model.params["fc2.W"]} <= set(mapping)
    record = report.record()   # metrics.jsonl: flat numbers only
    assert record["health/dead/h"] == 0.5 and record["health_bad"] == 1
    assert all(v is None or isinstance(v, (int, float)) for v in record.values())


def test_thresholds_are_parsed_checked_and_cite_their_sources() -> None:
    assert Thresholds.parse("dead_warn=0.2, update_warn_above=0.05") == Thresholds(dead_warn=0.2,
                                                                                  update_warn_above=0.05)
    assert Thresholds.parse(None) == Thresholds() == Thresholds.parse("")
    for text, words in (("dead=1", "known key"), ("dead_warn=x", "must be a number"),
                        ("dead_warn=0.5", "must not exceed dead_bad"), ("saturated_bad=2", "at most 1"),
                        ("grad_bad_above=-1", "positive")):
        with pytest.raises(NNError, match=words):
            Thresholds.parse(text)
    assert "CS231n" in Thresholds.source("dead_bad") and "Glorot" in Thresholds.source("grad_bad_below")
    assert "1e-3" in Thresholds.source("update_warn_below") and "makemore" in Thresholds.source("saturated_warn")


def test_the_overlay_colours_the_findings_and_explains_them_in_the_legend(tmp_path: Path) -> None:
    path, ev = _relu_net(tmp_path, [-10.0] * 8 + [0.0] * 8)
    plain = to_dot(ev)
    dot = to_dot(ev, health=check(ev, plain_step(path, 1e-3, "adam", dtype="float64")))
    relu = ev.program.graph.nx.nodes
    h = next(n for n in relu if ev.program.graph[n].name == "h" and ev.program.graph[n].grad_of is None)
    node_line = next(line for line in dot.splitlines() if line.strip().startswith(f"n{h} ["))
    assert f'color="{COLOURS["bad"][0]}"' in node_line and "dead" in node_line
    assert "dead 50%" in dot and "<B>health</B>" in dot and "CS231n" in dot and "Glorot" in dot
    assert "health" not in plain and to_dot(ev) == plain   # without --health, the diagram is as it was


def test_render_health_on_the_command_line(run_cli, tmp_path: Path) -> None:
    path = write_nn(tmp_path, "net.nn", RELU_NET)
    bias = json.dumps([-10.0] * 8 + [0.0] * 8)
    done = run_cli("render", path, "--health", "--lr", "0.001", "--optimizer", "adam", "--set", "N=64",
                   "--set", f"fc1.b={bias}", "-o", tmp_path / "net.svg")
    assert done.returncode == 0, done
    assert "health: bad: h dead 50%" in done.stderr
    svg = ElementTree.fromstring((tmp_path / "net.svg").read_bytes())
    assert "dead 50%" in "".join(svg.itertext())
    page = run_cli("render", path, "--health", "--set", "N=64", "--set", f"fc1.b={bias}", "-o", tmp_path / "net.html")
    assert page.returncode == 0, page
    assert "nn-health-bad" in (tmp_path / "net.html").read_text()   # the interactive page shows the overlay too
    wrong = run_cli("render", path, "--lr", "0.1", "-o", tmp_path / "x.svg")
    assert wrong.returncode == 1 and "add --health" in wrong.stderr and "Traceback" not in wrong.stderr
    wrong = run_cli("render", path, "--health", "--health-thresholds", "dead_warn", "-o", tmp_path / "x.svg")
    assert wrong.returncode == 1 and "nncompile: error: --health-thresholds" in wrong.stderr
    assert not (tmp_path / "x.svg").exists()


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2.0, (3, 8))
    y = np.repeat(np.arange(3), 60)
    np.savez(tmp_path / "blobs.npz", X=centres[y] + rng.standard_normal((180, 8)), y=y)
    return tmp_path / "blobs.npz"


def test_diagnose_prints_a_trained_runs_table_and_strict_fails_on_a_bad_figure(run_cli, tmp_path: Path,
                                                                               blobs: Path) -> None:
    path = write_nn(tmp_path, "net.nn", RELU_NET)
    trained = run_cli("train", path, "--data", blobs, "--epochs", "3", "--out", tmp_path / "run")
    assert trained.returncode == 0, trained
    assert "health of the kept params on 162 training examples:" in trained.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "health/dead/h" in summary["health"]
    done = run_cli("diagnose", tmp_path / "run")
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert "the first 162 examples of the run's training split" in lines[0] and "adam step, lr 0.001" in lines[0]
    assert lines[1].split()[:4] == ["figure", "of", "level", "value"]
    assert any(line.startswith("update/weight") and "fc1.W" in line for line in lines)
    assert any(line.startswith("dead units") and " h " in line for line in lines)
    fast = run_cli("diagnose", tmp_path / "run", "--lr", "100", "--strict")
    assert fast.returncode == 1 and "health: bad" in fast.stdout and "too fast" in fast.stdout
    assert run_cli("diagnose", tmp_path / "run", "--lr", "100").returncode == 0   # a report, not a test
    missing = run_cli("diagnose", tmp_path / "nowhere")
    assert missing.returncode == 1 and "no such run directory" in missing.stderr and "Traceback" not in missing.stderr


def test_training_logs_the_figures_and_leaves_the_run_bit_for_bit_as_it_was(tmp_path: Path, blobs: Path,
                                                                            monkeypatch) -> None:
    path = write_nn(tmp_path, "net.nn", RELU_NET)
    arrays = dict(np.load(blobs))
    lines: list[str] = []
    config = dict(epochs=4, batch_size=32, lr=0.5, optimizer="sgd", log_every="1", patience=0)
    monkeypatch.setattr(monitor, "MONITOR_SHARE", 1e9)   # no budget: measure at every logged epoch
    monkeypatch.setattr(monitor, "MONITOR_GUESS", 0.0)
    watched = Trainer(path, TrainConfig(**config), log=lines.append)
    history = watched.fit(arrays)
    assert {"health/update_ratio/fc1.W", "health/grad_ratio/fc1", "health/dead/h"} <= set(history.columns())
    assert np.isfinite(history["health/update_ratio/fc2.W"]).all() and len(history) == 4
    assert any("| health warn: fc2.W Δ/w" in line for line in lines)   # lr 0.5 is fast
    unwatched = Trainer(path, TrainConfig(**config))
    monkeypatch.setattr(unwatched, "health_monitor", lambda data: None)
    plain = unwatched.fit(arrays)
    np.testing.assert_array_equal(plain.step_loss, history.step_loss)
    for name, value in unwatched.params.items():
        np.testing.assert_array_equal(value, watched.params[name])
    assert not any(c.startswith("health") for c in plain.columns())


def test_a_short_run_spends_nothing_on_health(tmp_path: Path, blobs: Path) -> None:
    path = write_nn(tmp_path, "net.nn", RELU_NET)
    history = Trainer(path, TrainConfig(epochs=2, batch_size=64, log_every="1")).fit(dict(np.load(blobs)))
    assert not any(c.startswith("health") for c in history.columns())   # under MONITOR_GUESS / MONITOR_SHARE s


def test_a_hostile_file_name_cannot_inject_markup_into_the_overlay(run_cli, tmp_path: Path) -> None:
    name = "<img src=x onerror=alert(1)>&#1;.nn"
    path = write_nn(tmp_path, name, RELU_NET)
    done = run_cli("render", path, "--health", "--set", "N=64", "-o", tmp_path / "h.svg")
    assert done.returncode == 0, done
    svg = ElementTree.fromstring((tmp_path / "h.svg").read_bytes())
    assert not any(element.tag.rsplit("}", 1)[-1] == "img" for element in svg.iter())
    assert name in "".join(svg.itertext())


def test_the_render_says_when_there_is_nothing_to_judge_or_the_batch_is_too_small(run_cli, tmp_path: Path) -> None:
    circuit = write_nn(tmp_path, "circuit.nn", """
        input x: float = -2
        input y: float = 5
        f = (x + y) * x
        output f
    """)
    done = run_cli("render", circuit, "--health", "-o", tmp_path / "c.svg")
    assert done.returncode == 0 and "health: nothing to judge" in done.stderr, done
    small = run_cli("render", write_nn(tmp_path, "net.nn", RELU_NET), "--health", "-o", tmp_path / "n.svg")
    assert small.returncode == 0 and "dead units were counted on only 4 examples" in small.stderr, small


def test_the_gpu_backend_logs_the_figures_the_numpy_backend_logs(tmp_path: Path, blobs: Path, monkeypatch) -> None:
    """The CuPy module's optimiser steps device arrays; here the CPU stand-in for CuPy."""
    import sys

    import fake_cupy

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(monitor, "MONITOR_SHARE", 1e9)
    monkeypatch.setattr(monitor, "MONITOR_GUESS", 0.0)
    path = write_nn(tmp_path, "net.nn", RELU_NET)
    arrays = dict(np.load(blobs))
    histories = {}
    for backend in ("numpy", "cupy"):
        config = TrainConfig(epochs=2, batch_size=32, dtype="float64", backend=backend, log_every="1", patience=0)
        histories[backend] = Trainer(path, config).fit(arrays)
    columns = [c for c in histories["numpy"].columns() if c.startswith("health/")]
    assert "health/update_ratio/fc1.W" in columns
    for column in columns:
        np.testing.assert_allclose(histories["cupy"][column], histories["numpy"][column], rtol=1e-9, err_msg=column)


def test_diagnose_reads_a_model_that_imports_layers_from_beside_it(run_cli, tmp_path: Path, blobs: Path) -> None:
    write_nn(tmp_path, "lib/layers.nn", RELU_NET[RELU_NET.index("layer affine"):RELU_NET.index("h = relu")])
    path = write_nn(tmp_path, "net.nn", 'import "lib/layers.nn"\n' + RELU_NET.replace(
        RELU_NET[RELU_NET.index("layer affine"):RELU_NET.index("h = relu")], ""))
    assert run_cli("train", path, "--data", blobs, "--epochs", "1", "--out", tmp_path / "run").returncode == 0
    done = run_cli("diagnose", tmp_path / "run", cwd=tmp_path / "lib")   # from anywhere
    assert done.returncode == 0 and "dead units" in done.stdout, done


def test_an_activation_off_the_path_to_the_loss_is_not_judged(tmp_path: Path) -> None:
    """A confident classifier's probabilities saturate, as they should: nothing flows back there."""
    path = write_nn(tmp_path, "probs.nn", """
        input x: float[N, 2]
        input t: float[N]
        param w: [2] = ones()
        z = x @ w
        p = sigmoid(z * 100.0)
        output p
        loss = sigmoid_cross_entropy(z, t)
        minimize loss
    """)
    ev = evaluate_file(path, {"N": "64"})
    assert _figures(check(ev), "saturated") == {}
    assert _figures(check(evaluate_file(write_nn(tmp_path, "fwd.nn", """
        input x: float[N, 2]
        p = sigmoid(x * 100.0)
        output p
    """), {"N": "64"})), "saturated")["p"][1] == "bad"   # no loss: judged where it is


def test_a_runs_step_takes_its_optimiser_state_and_its_own_lr_not_the_schedules(run_cli, tmp_path: Path,
                                                                                blobs: Path) -> None:
    """The step is the next one training would take, at the run's --lr: a schedule annealed to 0
    (cosine's end) would make every trained run's update ratio read as too slow."""
    from nncompile.monitor import run_step
    from nncompile.runs import load_run
    from nncompile.train.checkpoint import load_checkpoint

    path = write_nn(tmp_path, "net.nn", RELU_NET)
    done = run_cli("train", path, "--data", blobs, "--epochs", "4", "--batch-size", "50", "--lr", "0.01",
                   "--schedule", "cosine", "--out", tmp_path / "run")
    assert done.returncode == 0, done
    assert "Δ/w 0.0e+00" not in done.stdout and "too slow" not in done.stdout, done.stdout
    run = load_run(tmp_path / "run")
    step = run_step(run)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.npz", run.module.SLOTS)[0].opt
    assert step.opt_state["step"] == saved["step"] == 16   # 4 epochs of ceil(162 / 50) steps
    np.testing.assert_array_equal(step.opt_state["m"]["fc1.W"], saved["m"]["fc1.W"])
    assert step.lr == 0.01   # cosine's rate at step 16 of 16 is 0
    assert run_step(run, lr=0.5).lr == 0.5 and "adam step, lr 0.01" in step.describe()
    health = json.loads((tmp_path / "run" / "summary.json").read_text())["health"]
    ratios = [value for key, value in health.items() if key.startswith("health/update_ratio/")]
    assert ratios and all(value > 1e-4 for value in ratios), health
