"""SAE quality metrics and mode readout, streamed over (N, d) array-likes in batches.

Two families of "explained variance" with distinct names:

* :func:`r2_codec`: CODEC's R^2 = 1 - MSE / mean((x - m)^2) with m the *global scalar* mean of x;
* :func:`explained_variance`: 1 - sum (x - x_hat)^2 / sum (x - mean_feature(x))^2 (pooled over features,
  sklearn's ``r2_score(..., multioutput="variance_weighted")``) and :func:`explained_variance_mean`, the
  average of per-feature R^2 (sklearn's ``"uniform_average"``).

Degenerate cases have defined values, never NaN: an R^2 of constant data is 1.0 for a perfect reconstruction and
0.0 otherwise (scikit-learn's ``force_finite``), and the relative reconstruction bias of an all-zero
reconstruction (every latent dead, no decoder bias) is 0.0, the limit of its definition.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv.sae.data import check_rows, iter_chunks

__all__ = ["r2_codec", "explained_variance", "explained_variance_mean", "relative_reconstruction_bias",
           "l0", "density", "dead_latents", "evaluate", "readout", "Modes"]


def _r2(residual, total, xp=jnp):
    """1 - residual / total, with constant data (total 0) scored 1.0 if residual is 0 else 0.0; ``xp`` is jnp
    (float32 arrays) or np (float64 sums)."""
    safe = xp.where(total > 0, total, 1.0)
    return xp.where(total > 0, 1.0 - residual / safe, xp.where(residual == 0, 1.0, 0.0))


def r2_codec(x, x_hat) -> jax.Array:
    """CODEC's R^2 of (N, d) ``x_hat`` against ``x``: 1 - MSE / mean squared deviation from x's scalar mean."""
    x, x_hat = jnp.asarray(x), jnp.asarray(x_hat)
    return _r2(jnp.mean(jnp.square(x - x_hat)), jnp.mean(jnp.square(x - jnp.mean(x))))


def explained_variance(x, x_hat) -> jax.Array:
    """Pooled explained variance: 1 - sum residual^2 / sum (x - per-feature mean)^2 over (N, d)."""
    x, x_hat = jnp.asarray(x), jnp.asarray(x_hat)
    return _r2(jnp.sum(jnp.square(x - x_hat)), jnp.sum(jnp.square(x - jnp.mean(x, axis=0))))


def explained_variance_mean(x, x_hat) -> jax.Array:
    """Mean over features of the per-feature R^2 (features with zero variance are skipped)."""
    x, x_hat = jnp.asarray(x), jnp.asarray(x_hat)
    ss_tot = jnp.sum(jnp.square(x - jnp.mean(x, axis=0)), axis=0)
    r2 = 1.0 - jnp.sum(jnp.square(x - x_hat), axis=0) / jnp.where(ss_tot > 0, ss_tot, 1.0)
    return jnp.sum(jnp.where(ss_tot > 0, r2, 0.0)) / jnp.maximum(jnp.sum(ss_tot > 0), 1)


def relative_reconstruction_bias(x, x_hat) -> jax.Array:
    """gamma = E||x_hat||^2 / E<x_hat, x> (Rajamanoharan et al. 2024): 1 is unbiased, < 1 is shrinkage.
    0.0 for an all-zero ``x_hat`` (the limit as x_hat -> 0); inf where x_hat != 0 is orthogonal to x."""
    x, x_hat = jnp.asarray(x), jnp.asarray(x_hat)
    sq = jnp.sum(jnp.square(x_hat))
    return jnp.where(sq == 0, 0.0, sq / jnp.sum(x_hat * x))


def l0(z) -> jax.Array:
    """Mean number of non-zero codes per row of (N, K) ``z``."""
    return jnp.mean(jnp.sum(jnp.asarray(z) != 0, axis=-1))


def density(z) -> jax.Array:
    """(K,) fraction of rows in which each latent is non-zero."""
    return jnp.mean(jnp.asarray(z) != 0, axis=0)


def dead_latents(state: dict, window: int) -> jax.Array:
    """(K,) bool: latents not active during the last ``window`` training steps (from the training state)."""
    return state["since_fired"] >= window


def _batches(data, batch_size):
    check_rows(data)
    return iter_chunks(data, batch_size)


@jax.jit
def _encode(cfg, params, state, x):
    return cfg.encode(params, x, state)


@jax.jit
def _sums(cfg, params, state, x):
    z = cfg.encode(params, x, state)
    xh = cfg.decode(params, z)
    r = x - xh
    return {"sse": jnp.sum(jnp.square(r), axis=0), "sx": jnp.sum(x, axis=0), "sxx": jnp.sum(jnp.square(x), axis=0),
            "nz": jnp.sum(z != 0, axis=0), "xh2": jnp.sum(jnp.square(xh)), "xhx": jnp.sum(xh * x)}


def evaluate(cfg, params, data: Any, state: dict | None = None, batch_size: int = 4096) -> dict[str, Any]:
    """Stream ``data`` (N, d) through the SAE in inference mode and return its metrics.

    Returns a dict with floats ``r2_codec``, ``explained_variance``, ``explained_variance_mean``, ``mse``,
    ``l0``, ``relative_reconstruction_bias``, ``n_alive`` and (K,) arrays ``density`` and ``alive``
    (non-zero on at least one row). Sums are accumulated in float64. No value is NaN: the degenerate cases
    take the values in the module docstring; ``explained_variance_mean`` averages the features that vary (0.0
    when none does), and ``relative_reconstruction_bias`` is None in the one case it is infinite (a non-zero
    reconstruction orthogonal to the data).
    """
    n, d = check_rows(data)
    if d != cfg.d_in:
        raise ValueError(f"data has d={d} features but the SAE expects d_in={cfg.d_in}")
    acc: dict[str, np.ndarray] = {}
    for _, x in _batches(data, batch_size):
        for k, v in _sums(cfg, params, state, jnp.asarray(x)).items():
            acc[k] = acc.get(k, 0) + np.asarray(v, np.float64)
    sse, sx, sxx = acc["sse"], acc["sx"], acc["sxx"]
    ss_feat = sxx - sx * sx / n  # per-feature sum of squared deviations
    ss_glob = sxx.sum() - sx.sum() ** 2 / (n * d)
    var_ok = ss_feat > 0
    dens = acc["nz"] / n
    xh2, xhx = float(acc["xh2"]), float(acc["xhx"])
    return {
        "mse": float(sse.sum() / (n * d)),
        "r2_codec": float(_r2(sse.sum(), ss_glob, np)),
        "explained_variance": float(_r2(sse.sum(), ss_feat.sum(), np)),
        "explained_variance_mean": float(np.mean(1 - sse[var_ok] / ss_feat[var_ok])) if var_ok.any() else 0.0,
        "l0": float(acc["nz"].sum() / n),
        "relative_reconstruction_bias": 0.0 if xh2 == 0 else (xh2 / xhx if xhx != 0 else None),
        "density": dens,
        "alive": dens > 0,
        "n_alive": int((dens > 0).sum()),
    }


class Modes(NamedTuple):
    """An SAE's modes on a data set, from :func:`readout` to the CODEC analyses (:mod:`jaxequiv.codec`).

    Attributes:
      codes: (N, K) codes of every latent on every row (may be an np.memmap).
      alive: (K,) bool, latent non-zero on at least one row.
      atoms: (K, d) dictionary rows as used by the decoder.
    """

    codes: np.ndarray
    alive: np.ndarray
    atoms: np.ndarray

    def alive_codes(self) -> np.ndarray:
        """(N, K_alive) loadings of the alive modes (a copy): CODEC's mode loadings."""
        return np.asarray(self.codes)[:, self.alive]

    def alive_atoms(self) -> np.ndarray:
        """(K_alive, d) atoms of the alive modes."""
        return self.atoms[self.alive]


def readout(cfg, params, data: Any, state: dict | None = None, batch_size: int = 4096,
            out: np.ndarray | None = None) -> Modes:
    """Codes of every row of ``data`` (N, d) in inference mode, written into ``out`` (an (N, K) float32 array or
    np.memmap, allocated when None); alive = non-zero on at least one row; atoms as used by the decoder."""
    n, d = check_rows(data)
    if d != cfg.d_in:
        raise ValueError(f"data has d={d} features but the SAE expects d_in={cfg.d_in}")
    if out is None:
        out = np.empty((n, cfg.d_sae), np.float32)
    elif tuple(out.shape) != (n, cfg.d_sae):
        raise ValueError(f"out must have shape (N, K) = {(n, cfg.d_sae)}, got {tuple(out.shape)}")
    alive = np.zeros(cfg.d_sae, bool)
    for s, x in _batches(data, batch_size):
        z = np.asarray(_encode(cfg, params, state, jnp.asarray(x)))
        out[s:s + len(z)] = z
        alive |= (z != 0).any(axis=0)
    return Modes(out, alive, np.asarray(cfg.atoms(params)))
