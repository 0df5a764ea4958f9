"""The bounds the front end enforces, so that no input can crash or hang a compile.

Each is far beyond what a model needs and small enough that every value the compiler
computes stays cheap: a whole number fits in int64, a tensor fits in memory, an unrolled
graph builds in seconds. docs/language.md lists them; a program past one gets a located
error that names the limit.
"""
from __future__ import annotations

MAX_SOURCE = 2**26             # bytes of one .nn file (64 MiB): not /dev/zero read into memory until it runs out
MAX_INT = 2**63 - 1            # compile-time whole numbers (consts, dims, attributes) are int64
MAX_DIM = 2**31 - 1            # one dimension of a tensor
MAX_ELEMENTS = 2**40           # the elements of one tensor whose dims are all known
MAX_RANK = 32                  # axes of a tensor (numpy's own limit is 32 or 64)
MAX_REPEAT = 10_000            # copies one `repeat` may unroll
MAX_NODES = 200_000            # nodes of the elaborated graph: it still compiles in about a minute
MAX_NESTING = 100              # brackets, calls and operands nested in one another
MAX_LAYER_DEPTH = 32           # layers called inside layers: with MAX_NESTING, about 600 Python frames
