"""fit_stacked: vmapped training of many parameter sets equals independent float64 NumPy SGD loops."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.stacked import fit_stacked


def _loss(p, x, y):
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def _numpy_sgd(w, b, x, y, lr, batches):
    """Reference: plain float64 SGD on the mean squared error, one member."""
    w, b = w.astype(np.float64), float(b)
    for idx in batches:
        xb, yb = x[idx].astype(np.float64), y[idx].astype(np.float64)
        r = xb @ w + b - yb
        w, b = w - lr * 2 * xb.T @ r / len(idx), b - lr * 2 * r.mean()
    return w, b


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    S, N, D = 3, 40, 4
    params = {"w": rng.normal(size=(S, D)).astype(np.float32), "b": rng.normal(size=S).astype(np.float32)}
    x = rng.normal(size=(S, N, D)).astype(np.float32)
    y = (x @ rng.normal(size=D) + 0.1 * rng.normal(size=(S, N))).astype(np.float32)
    return params, x, y


def test_full_batch_matches_independent_numpy_loops(problem):
    params, x, y = problem
    out, losses = fit_stacked(params, _loss, (x[0], y[0]), steps=7, batch_size=100, optimizer=optax.sgd(0.05), chunk=3)
    assert losses.shape == (7, 3) and np.isfinite(losses).all()
    for m in range(3):  # shared data, different starting points
        w, b = _numpy_sgd(params["w"][m], params["b"][m], x[0], y[0], 0.05, [np.arange(40)] * 7)
        np.testing.assert_allclose(np.asarray(out["w"][m]), w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(out["b"][m]), b, rtol=1e-4, atol=1e-5)
    assert (losses[-1] < losses[0]).all()


def test_minibatches_per_member_data_match_documented_draws(problem):
    params, x, y = problem
    out, _ = fit_stacked(params, _loss, (x, y), steps=5, batch_size=8, optimizer=optax.sgd(0.05), seed=3,
                         stacked_arrays=True, chunk=5)
    key = jax.random.key(3)
    idx = [np.asarray(jax.random.randint(jax.random.fold_in(key, t), (8,), 0, 40)) for t in range(5)]
    for m in range(3):
        w, b = _numpy_sgd(params["w"][m], params["b"][m], x[m], y[m], 0.05, idx)
        np.testing.assert_allclose(np.asarray(out["w"][m]), w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(out["b"][m]), b, rtol=1e-4, atol=1e-5)
    other, _ = fit_stacked(params, _loss, (x, y), steps=5, batch_size=8, optimizer=optax.sgd(0.05), seed=4,
                           stacked_arrays=True)
    assert not np.allclose(np.asarray(other["w"]), np.asarray(out["w"]))


def test_nan_and_bad_input(problem):
    params, x, y = problem
    bad_y = y.copy()
    bad_y[1, 5] = np.nan
    with pytest.raises(FloatingPointError, match="member 1 .* step 0"):
        fit_stacked(params, _loss, (x, bad_y), steps=2, batch_size=100, stacked_arrays=True)
    with pytest.raises(ValueError, match="leading stack axis"):
        fit_stacked({"w": params["w"], "b": np.float32(0)}, _loss, (x[0], y[0]), steps=1, batch_size=4)
    with pytest.raises(ValueError, match="same stack size"):
        fit_stacked({"w": params["w"], "b": params["b"][:2]}, _loss, (x[0], y[0]), steps=1, batch_size=4)
    with pytest.raises(ValueError, match="share their row count"):
        fit_stacked(params, _loss, (x[0], y[0, :10]), steps=1, batch_size=4)
    with pytest.raises(ValueError, match=r"\[S=3, N, ...\]"):
        fit_stacked(params, _loss, (x[:2], y[:2]), steps=1, batch_size=4, stacked_arrays=True)
    with pytest.raises(ValueError, match="positive"):
        fit_stacked(params, _loss, (x[0], y[0]), steps=0, batch_size=4)
