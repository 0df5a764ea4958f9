"""Diagrams of a model that calls grad(): each call's gradient sub-graph is a cluster of its own."""
from __future__ import annotations

import re
from pathlib import Path

from nncompile.evaluate import evaluate_file
from nncompile.render import to_dot

from conftest import ROOT, write_nn


def _clusters(dot: str) -> dict[str, str]:
    """Each top-level cluster's label -> its text (up to the next top-level cluster)."""
    parts = re.split(r"\n  subgraph ", dot)
    found = {}
    for part in parts[1:]:
        label = re.search(r"label=<<B>(.*?)</B>>", part)
        if label:
            found[label[1]] = part
    return found


def test_the_gradient_penalty_example_draws_its_grad_call_as_a_cluster() -> None:
    dot = to_dot(evaluate_file(ROOT / "examples" / "gradient_penalty.nn"))
    clusters = _clusters(dot)
    assert list(clusters) == ["grad(data_loss, X): gradient sub-graph"]
    inside = clusters["grad(data_loss, X): gradient sub-graph"]
    assert "softmax_cross_entropy_grad" in inside          # the backward of the loss it differentiates
    assert ">tanh<" not in inside and "tanh" in dot         # the forward pass stays outside
    assert "output <B>saliency</B>" in dot


def test_each_grad_call_is_a_cluster_of_its_own(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", """
        input x: float[3]
        param w: [3] = normal(1.0)
        s = sum(tanh(x * w))
        gx = grad(s, x)
        gw = grad(sum(exp(w)), w)
        both = grad(s, [x, w])
        loss = sum(gx * gx) + sum(gw * gw)
        output both
        minimize loss
    """)
    assert sorted(_clusters(to_dot(evaluate_file(path)))) == [
        "grad(s, [x, w]): gradient sub-graph", "grad(s, x): gradient sub-graph",
        "grad(sum, w): gradient sub-graph"]      # an unnamed target is named by its op


def test_a_model_without_grad_has_no_gradient_cluster() -> None:
    clusters = _clusters(to_dot(evaluate_file(ROOT / "examples" / "mlp.nn")))
    assert clusters and not any("gradient sub-graph" in label for label in clusters)
