"""SAE metrics (vs sklearn / NumPy float64) and mode readout."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import r2_score

from jaxequiv import sae
from jaxequiv.sae import metrics as M

D = 6


def _x(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, D)) * rng.random(D) * 3 + rng.normal(size=D)).astype(np.float32)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), noise=st.floats(0.01, 2.0))
def test_explained_variance_definitions_match_references(seed, noise):
    x = _x(seed=seed).astype(np.float64)
    xh = x + noise * np.random.default_rng(seed + 1).normal(size=x.shape)
    np.testing.assert_allclose(float(M.explained_variance(x, xh)), r2_score(x, xh, multioutput="variance_weighted"),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(M.explained_variance_mean(x, xh)), r2_score(x, xh), rtol=1e-5, atol=1e-6)
    codec = 1 - ((x - xh) ** 2).mean() / ((x - x.mean()) ** 2).mean()
    np.testing.assert_allclose(float(M.r2_codec(x, xh)), codec, rtol=1e-5, atol=1e-6)
    c = 0.5 + noise
    np.testing.assert_allclose(float(M.relative_reconstruction_bias(x, c * x)), c, rtol=1e-5)


def test_sparsity_metrics():
    z = np.array([[0, 1, 0], [2, 3, 0]], np.float32)
    assert float(M.l0(z)) == 1.5
    np.testing.assert_allclose(np.asarray(M.density(z)), [0.5, 1.0, 0.0])
    state = {"since_fired": jnp.array([0, 5, 10])}
    np.testing.assert_array_equal(np.asarray(M.dead_latents(state, 5)), [False, True, True])


def test_evaluate_streams_like_full_batch_and_readout(tmp_path):
    x = _x(n=37)
    cfg = sae.STSAE(d_in=D, d_sae=3 * D, theta=0.6)
    p = cfg.init(jax.random.key(0))
    ev = sae.evaluate(cfg, p, x, batch_size=8)
    z = np.asarray(cfg.encode(p, x))
    xh = np.asarray(cfg.decode(p, z))
    np.testing.assert_allclose(ev["r2_codec"], float(M.r2_codec(x, xh)), rtol=1e-4)
    np.testing.assert_allclose(ev["explained_variance"], float(M.explained_variance(x, xh)), rtol=1e-4)
    np.testing.assert_allclose(ev["explained_variance_mean"], float(M.explained_variance_mean(x, xh)), rtol=1e-4)
    np.testing.assert_allclose(ev["mse"], ((x - xh) ** 2).mean(), rtol=1e-4)
    np.testing.assert_allclose(ev["l0"], (z != 0).sum(1).mean(), rtol=1e-6)
    np.testing.assert_allclose(ev["density"], (z != 0).mean(0))
    np.testing.assert_allclose(ev["relative_reconstruction_bias"], float(M.relative_reconstruction_bias(x, xh)),
                               rtol=1e-4)
    out = np.lib.format.open_memmap(tmp_path / "codes.npy", mode="w+", dtype=np.float32, shape=(37, 3 * D))
    modes = sae.readout(cfg, p, x, batch_size=8, out=out)
    np.testing.assert_allclose(np.load(tmp_path / "codes.npy"), z, atol=1e-6)
    np.testing.assert_array_equal(modes.alive, (z != 0).any(0))
    assert ev["n_alive"] == modes.alive.sum() and 0 < modes.alive.sum() < 3 * D
    np.testing.assert_allclose(modes.alive_atoms(), np.asarray(p["W_dec"])[modes.alive])
    assert modes.alive_codes().shape == (37, modes.alive.sum())
    with pytest.raises(ValueError, match="d_in=6"):
        sae.evaluate(cfg, p, x[:, :4])
    with pytest.raises(ValueError, match="out must have shape"):
        sae.readout(cfg, p, x, out=np.zeros((3, 3), np.float32))


def test_degenerate_metrics_are_defined_not_nan():
    """Dead latents and constant data give the documented values (scikit-learn's force_finite for R^2), and
    evaluate's numbers are valid JSON."""
    x = _x(n=30)
    const = np.full((30, D), 2.0, np.float32)
    for f in (M.r2_codec, M.explained_variance):
        assert float(f(const, const)) == r2_score(const, const, multioutput="variance_weighted") == 1.0
        assert float(f(const, x)) == r2_score(const, x, multioutput="variance_weighted") == 0.0
    assert float(M.relative_reconstruction_bias(x, 0 * x)) == 0.0
    cfg = sae.STSAE(d_in=D, d_sae=2 * D, theta=0.9)
    p = cfg.init(jax.random.key(0))
    dead = {**p, "W_enc": p["W_enc"] - 100.0}  # sigmoid codes ~0 < theta: every latent dead, x_hat = 0
    for params, data in ((dead, x), (p, const)):
        ev = sae.evaluate(cfg, params, data)
        scalars = {k: v for k, v in ev.items() if k not in ("density", "alive")}
        json.dumps(scalars, allow_nan=False)
    ev = sae.evaluate(cfg, dead, x)
    assert ev["n_alive"] == 0 and ev["l0"] == 0.0 and ev["relative_reconstruction_bias"] == 0.0
    np.testing.assert_allclose(ev["r2_codec"], float(M.r2_codec(x, 0 * x)), rtol=1e-5)


def test_codec_sweep_grid():
    cfgs, seeds = sae.codec_sweep(d_in=4)
    assert len(cfgs) == 81 and len({c.static_key() for c in cfgs}) == 3 and seeds[:3] == [483, 1001, 2002]
    assert {c.d_sae for c in cfgs} == {4, 12, 20} and {c.theta for c in cfgs} == {0.5, 0.7, 0.9}
