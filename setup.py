"""The package list, which pyproject.toml cannot express: every subpackage setuptools finds,
plus the grammar, kept at the top of the checkout (grammar/nn.lark) and shipped as
nncompile/grammar/nn.lark (see [tool.setuptools.package-dir] in pyproject.toml)."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["nncompile", "nncompile.*"]), "nncompile.grammar"])
