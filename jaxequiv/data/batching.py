"""Minibatches of aligned arrays."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["batches"]


def batches(*arrays, batch_size: int, seed: int | None = None, drop_last: bool = False) -> Iterator[tuple]:
    """Yield tuples ``(a[idx], b[idx], ...)`` of consecutive minibatches of arrays sharing their first axis.

    Args:
      arrays: one or more arrays (NumPy or JAX) with the same leading length ``N``.
      batch_size: examples per batch; the last batch is smaller unless ``drop_last``.
      seed: ``None`` keeps the order; an integer shuffles with ``np.random.default_rng(seed)``.
      drop_last: skip a final incomplete batch.
    """
    if not arrays:
        raise ValueError("batches needs at least one array")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"all arrays must have the same first dimension, got lengths {lengths}")
    n = lengths[0]
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield tuple(a[idx] for a in arrays)
