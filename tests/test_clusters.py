"""The clusters of a diagram (nncompile/clusters.py): which repeat group an unrolled instance
sits in, the chain of clusters of a scope, and the tree of DOT lines they nest."""
from __future__ import annotations

from nncompile.clusters import Cluster, cluster_path, common_scope, group_scope, instance_number, repeat_groups, slug


def test_an_unrolled_instance_sits_in_the_group_named_before_its_number():
    assert group_scope(("h3.2",)) == ("h3",)
    assert group_scope(("net", "block.10")) == ("net", "block")
    assert group_scope(("fc1",)) is None
    assert instance_number(("net", "block.10")) == 10


def test_instances_are_grouped_unless_a_layer_instance_has_the_group_name():
    layers = {("h.1",): 0, ("h.2",): 0, ("g.1",): 0, ("g",): 0, ("fc",): 0}
    assert repeat_groups(layers) == {("h",): [("h.1",), ("h.2",)]}


def test_a_scope_sits_in_its_repeat_group_and_in_each_instance_around_it():
    repeats = {("h",): [("h.1",), ("h.2",)]}
    assert cluster_path(("h.2", "fc"), repeats) == (("repeat", ("h",)), ("layer", ("h.2",)),
                                                    ("layer", ("h.2", "fc")))
    assert cluster_path(("g.1",), repeats) == (("layer", ("g.1",)),)
    assert cluster_path((), repeats) == ()


def test_the_common_scope_is_the_longest_shared_start():
    assert common_scope([("a", "b", "c"), ("a", "b"), ("a", "b", "d")]) == ("a", "b")
    assert common_scope([("a",), ("b",)]) == ()
    assert common_scope([]) == ()


def test_a_slug_keeps_word_characters_only_and_at_most_40():
    assert slug(("layer", ("h.2", "fc-1 <x>"))) == "h_2_fc_1__x_"
    assert len(slug(("layer", ("x" * 50,)))) == 40


def test_clusters_nest_by_path_and_list_their_lines_in_the_order_placed():
    root = Cluster()
    root.at((("layer", ("a",)),)).lines.append("a1")
    root.at((("layer", ("a",)), ("layer", ("a", "b")))).lines.append("ab1")
    root.at((("layer", ("c",)),)).lines.append("c1")
    root.at((("layer", ("a",)),)).lines.append("a2")
    root.lines.append("top")
    assert list(root.all_lines()) == ["top", "a1", "a2", "ab1", "c1"]
    assert list(root.children) == [("layer", ("a",)), ("layer", ("c",))]
