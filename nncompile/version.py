"""The package version, in a module of its own: the generated module's docstring names it,
and the code generator must not import the package (whose ``__init__`` imports the compiler,
which imports the code generator). pyproject.toml reads it from here too."""
__version__ = "0.1.0"
