"""Shared test helper: the LAPACK calls in a function's lowered CPU program, to check that none is batched.

jaxlib splits a batched LAPACK call over XLA's CPU thread pool and blocks a pool thread until it is done; enough
of them at once deadlock the pool. Unbatched calls (``num_batch_dims = 0``) run inline.
"""

import re

import jax

_LAPACK = re.compile(r"custom_call @(lapack_\w+)\(.*num_batch_dims = \"(\d+)\"")


def lapack_calls(fn, *args):
    """``[(target, number of batch dimensions)]`` of the LAPACK calls in ``jit(fn)`` lowered for ``args``."""
    return [(t, int(b)) for t, b in _LAPACK.findall(jax.jit(fn).lower(*args).as_text())]


def batched_lapack_calls(fn, *args):
    """The LAPACK calls of ``fn`` that take a batch of matrices."""
    return [(t, b) for t, b in lapack_calls(fn, *args) if b > 0]
