"""Row data for SAEs: (N, d) array-likes (NumPy arrays, ``np.memmap``, anything with ``.shape`` and sorted
fancy-row indexing), streamed as shuffled batches without loading the whole matrix."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

__all__ = ["check_rows", "check_finite", "Scaled", "BatchStream", "iter_chunks", "sample_rows", "fingerprint"]


def check_rows(data: Any, what: str = "data") -> tuple[int, int]:
    """Validate an (N, d) array-like; return (N, d). In-memory NumPy arrays are checked for NaN/Inf here;
    memory-mapped/lazy ones are checked chunk by chunk as they are read."""
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{what} must be an (N, d) array-like (NumPy array or np.memmap), got "
                         f"{type(data).__name__} with shape {shape}; reshape it to (rows, features)")
    n, d = int(shape[0]), int(shape[1])
    if n < 1 or d < 1:
        raise ValueError(f"{what} is empty: shape {tuple(shape)}")
    dtype = getattr(data, "dtype", None)
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.number):
        raise TypeError(f"{what} must hold numbers, got dtype {dtype}; convert it with .astype(np.float32)")
    if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
        _check_finite(data, 0, what)
    return n, d


def _check_finite(block: np.ndarray, row0: int | np.ndarray, what: str) -> None:
    ok = np.isfinite(block)
    if not ok.all():
        bad = np.argwhere(~ok)[0]
        row = int(row0[bad[0]]) if isinstance(row0, np.ndarray) else row0 + int(bad[0])
        kind = "NaN" if np.isnan(block[tuple(bad)]) else "Inf"
        raise ValueError(f"{what} contains {kind} at row {row}, column {int(bad[-1])}; clean or drop the "
                         f"non-finite rows first (np.isfinite(x).all(axis=1) selects the good ones)")


def check_finite(data: Any, what: str = "data", rows: int = 8192) -> None:
    """Read ``data`` (N, d) in row blocks and raise ``ValueError`` naming the first NaN/Inf (row, column)."""
    for _ in iter_chunks(data, rows, what):
        pass


def iter_chunks(data: Any, rows: int = 8192, what: str = "data"):
    """Yield (start, float32 block) over consecutive row blocks of ``data``, checking values are finite."""
    n, _ = check_rows(data, what)
    for s in range(0, n, rows):
        block = np.asarray(data[s:min(s + rows, n)], dtype=np.float32)
        _check_finite(block, s, what)
        yield s, block


class Scaled:
    """Lazy view of an (N, d) array-like multiplied by ``factor`` on read (e.g. 1 / global_std)."""

    def __init__(self, data: Any, factor: float):
        check_rows(data)
        if not math.isfinite(factor) or factor == 0:
            raise ValueError(f"Scaled: factor must be finite and non-zero, got {factor}")
        self.data, self.factor = data, float(factor)
        self.shape = tuple(data.shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        return np.asarray(self.data[idx], dtype=np.float32) * np.float32(self.factor)


def sample_rows(data: Any, n_rows: int = 1024) -> np.ndarray:
    """(min(N, n_rows), d) rows of ``data`` evenly spaced from the first to the last, as stored (a cheap, fixed
    sample: a few reads even for a large memory map)."""
    n, _ = check_rows(data)
    idx = np.unique(np.linspace(0, n - 1, min(n, n_rows)).round().astype(np.int64))
    return np.asarray(data[idx])


def fingerprint(data: Any) -> dict[str, Any]:
    """Identity of an (N, d) array-like's content, for resuming: ``{"shape", "dtype", "sha256"}``, the hash of
    :func:`sample_rows` (shape, dtype and bytes), so any change to the shape or dtype, or to one of 1024 rows
    spread over the data, changes it."""
    n, d = check_rows(data)
    rows = np.ascontiguousarray(sample_rows(data))
    h = hashlib.sha256(f"{n},{d},{rows.dtype.str}".encode())
    h.update(rows.tobytes())
    return {"shape": [n, d], "dtype": str(rows.dtype), "sha256": h.hexdigest()}


class BatchStream:
    """Shuffled minibatches of an (N, d) array-like, a pure function of (data_seed, step).

    Epoch e uses the permutation ``default_rng([data_seed, e]).permutation(N)``; step s of epoch e takes rows
    ``perm[(s % E) * B : (s % E + 1) * B]`` (``E = N // B`` steps per epoch, the ragged tail is dropped). Rows are
    read in sorted order (fast on memory maps) and returned as float32.
    """

    def __init__(self, data: Any, batch_size: int, data_seed: int, what: str = "data"):
        n, d = check_rows(data, what)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} rows of {what}; lower batch_size")
        self.data, self.n, self.d, self.batch_size, self.seed, self.what = data, n, d, batch_size, data_seed, what
        self.steps_per_epoch = n // batch_size
        self._epoch, self._perm = None, None

    def indices(self, step: int) -> np.ndarray:
        """(B,) sorted row indices of a step."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return np.sort(self._perm[i * self.batch_size:(i + 1) * self.batch_size])

    def chunk(self, start: int, stop: int, positions: slice = slice(None)) -> np.ndarray:
        """(stop - start, B, d) float32 batches of steps [start, stop); only their rows at ``positions`` (a slice
        of 0..B-1, e.g. this process's share of each batch on a mesh) when given."""
        size = len(range(*positions.indices(self.batch_size)))
        out = np.empty((stop - start, size, self.d), np.float32)
        for j, s in enumerate(range(start, stop)):
            idx = self.indices(s)[positions]
            out[j] = np.asarray(self.data[idx], dtype=np.float32)
            _check_finite(out[j], idx, self.what)
        return out
