"""The clusters of a diagram: which layer instance and ``repeat`` group each scope sits in,
and the tree of DOT lines they nest (render.py draws into it).

A scope is the tuple of instance names a value was computed in (``("h3.2", "fc")``); an
unrolled repeat's instances ``h3.1``, ``h3.2`` ... are grouped under ``h3`` unless a layer
instance is itself called ``h3``.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

_REPEATED = re.compile(r"^(.+)\.(\d+)$")


def group_scope(scope: tuple[str, ...]) -> tuple[str, ...] | None:
    """The scope of the repeat group an unrolled instance would sit in: ``h3.2`` -> ``h3``."""
    m = _REPEATED.match(scope[-1])
    return scope[:-1] + (m.group(1),) if m else None


def instance_number(scope: tuple[str, ...]) -> int:
    """The number of an unrolled instance, which orders a repeat group: ``h3.2`` -> 2."""
    return int(_REPEATED.match(scope[-1]).group(2))


def repeat_groups(layers: dict) -> dict[tuple, list[tuple]]:
    """A repeat group's scope (``h3``) -> its unrolled instances ``h3.1``, ``h3.2``, ...
    (none where a layer instance is itself called ``h3``)."""
    groups: dict[tuple, list[tuple]] = {}
    for scope in layers:
        group = group_scope(scope)
        if group is not None and group not in layers:
            groups.setdefault(group, []).append(scope)
    return groups


def cluster_path(scope: tuple[str, ...], repeats: Mapping[tuple, list]) -> tuple:
    """The chain of clusters a scope sits in, as (kind, scope) keys: each layer instance,
    and a ``repeat`` group (a key of ``repeats``) around unrolled instances."""
    path: list = []
    for i in range(1, len(scope) + 1):
        group = group_scope(scope[:i])
        if group in repeats:
            path.append(("repeat", group))
        path.append(("layer", scope[:i]))
    return tuple(path)


def common_scope(scopes: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The longest scope that all of ``scopes`` start with."""
    common = scopes[0] if scopes else ()
    for scope in scopes[1:]:
        common = common[:next((i for i, (a, b) in enumerate(zip(common, scope)) if a != b), min(len(common), len(scope)))]
    return common


def slug(key: tuple) -> str:
    """A cluster key's scope as a DOT identifier's tail (DOT ids allow only word characters)."""
    return re.sub(r"\W", "_", ".".join(key[1]))[:40]


@dataclass
class Cluster:
    """A cluster's own DOT lines and the clusters nested in it, in the order first placed."""
    lines: list[str] = field(default_factory=list)
    children: dict[tuple, Cluster] = field(default_factory=dict)

    def all_lines(self) -> Iterator[str]:
        """Its lines and those of the clusters inside it."""
        yield from self.lines
        for child in self.children.values():
            yield from child.all_lines()

    def at(self, path: tuple) -> Cluster:
        """The cluster at the end of ``path`` (keys from :func:`cluster_path`), made if new."""
        cluster = self
        for key in path:
            cluster = cluster.children.setdefault(key, Cluster())
        return cluster
