"""Shared tolerance for parity tests against PyTorch: max |got - want| / max |want| per tensor."""

import numpy as np

RTOL = 1e-4


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / (np.abs(want).max() + 1e-30))
