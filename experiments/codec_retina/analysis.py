"""CODEC's retina read-out (spec ``papers/codec.md`` §6, Figure 8) and the yardsticks it is measured with.

* :func:`usage`: each cell's use of each mode, the Pearson correlation of the mode's loading time series with the
  cell's predicted rate (cells x modes; constant series give 0).
* :func:`cluster`: k-means of the cells on their standardised usage columns; :func:`choose_k` picks k in 2..8 by
  silhouette, as the paper does.
* :func:`adjusted_rand`: the adjusted Rand index (Hubert and Arabie), vectorised over many labelings so that
  :func:`ari_test` gets its permutation p-value against the true types (chance ARI is 0) from one product.
* :func:`sta_temporal`: the classical cell typing a physiologist would use, each cell's spike-triggered average
  temporal filter under white noise (signed by its receptive-field centre), as an upper reference.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

__all__ = ["usage", "standardise_columns", "cluster", "choose_k", "adjusted_rand", "ari_test", "sta_temporal",
           "confusion"]


def _zscore(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` centred and scaled to unit std along ``axis`` (0 where the std is 0)."""
    x = np.asarray(x, np.float64)
    d = x - x.mean(axis=axis, keepdims=True)
    s = d.std(axis=axis, keepdims=True)
    return np.divide(d, s, out=np.zeros_like(d), where=s > 0)


def usage(loadings: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """``[n_cells, K]`` Pearson correlation of every mode's loadings ``[N, K]`` with every cell's rate
    ``[N, n_cells]`` over the N time bins; a mode or cell that never varies correlates 0."""
    if loadings.ndim != 2 or rates.ndim != 2 or len(loadings) != len(rates):
        raise ValueError(f"usage needs loadings [N, K] and rates [N, n_cells] over the same N bins, got shapes "
                         f"{np.shape(loadings)} and {np.shape(rates)}")
    return _zscore(rates, 0).T @ _zscore(loadings, 0) / len(rates)


def standardise_columns(features: np.ndarray) -> np.ndarray:
    """``[n_cells, F]`` with every column z-scored across cells (constant columns become 0)."""
    return _zscore(features, 0)


def cluster(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``[n_cells]`` k-means labels (50 restarts) of the cells' standardised feature rows."""
    km = KMeans(n_clusters=k, n_init=50, random_state=seed)
    with threadpool_limits(1):  # on a few rows, thread start-up costs 30x the work
        return km.fit_predict(standardise_columns(features))


def choose_k(features: np.ndarray, seed: int, ks=range(2, 9)) -> tuple[int, np.ndarray]:
    """``(k, labels)`` of the k in ``ks`` (below the number of cells) with the highest silhouette."""
    x = standardise_columns(features)
    best = None
    for k in ks:
        if k >= len(x):
            break
        labels = cluster(features, k, seed)
        if len(set(labels)) < 2:
            continue
        with threadpool_limits(1):
            s = silhouette_score(x, labels)
        if best is None or s > best[0]:
            best = (s, k, labels)
    if best is None:
        raise ValueError(f"no k in {list(ks)} gives two or more clusters of these {len(x)} cells")
    return best[1], best[2]


def adjusted_rand(truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Adjusted Rand index of ``labels [n]`` against each row of ``truth [n]`` or ``[R, n]`` (integer labels):
    ``(sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2 - E)``, ``E = sum_i C(a_i, 2) sum_j
    C(b_j, 2) / C(n, 2)``; 1 where the denominator is 0 (both labelings trivial), as scikit-learn. Shape ``[]`` or
    ``[R]``."""
    truth, labels = np.asarray(truth), np.asarray(labels)
    if truth.shape[-1:] != labels.shape or labels.ndim != 1:
        raise ValueError(f"adjusted_rand needs labels [n] and truth [n] or [R, n], got {labels.shape} and "
                         f"{truth.shape}")
    a = np.eye(truth.max() + 1)[truth]  # [(R,) n, T]
    b = np.eye(labels.max() + 1)[labels]  # [n, K]
    nij = np.einsum("...nt,nk->...tk", a, b)

    def pairs(x):
        return x * (x - 1) / 2

    index = pairs(nij).sum((-2, -1))
    sa, sb = pairs(nij.sum(-1)).sum(-1), pairs(nij.sum(-2)).sum(-1)
    expected = sa * sb / pairs(len(labels))
    top = (sa + sb) / 2 - expected
    return np.where(top == 0, 1.0, (index - expected) / np.where(top == 0, 1.0, top))


def ari_test(truth: np.ndarray, labels: np.ndarray, rounds: int, seed: int) -> tuple[float, float]:
    """``(ARI, p)``: the adjusted Rand index of ``labels`` against ``truth`` and the one-sided permutation p-value
    ``(1 + #{ARI(shuffled truth) >= ARI}) / (1 + rounds)``."""
    ari = float(adjusted_rand(truth, labels))
    rng = np.random.default_rng(seed)
    null = adjusted_rand(rng.permuted(np.tile(truth, (rounds, 1)), axis=1), labels)
    return ari, float((1 + np.sum(null >= ari - 1e-12)) / (1 + rounds))


def sta_temporal(windows: np.ndarray, counts: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``[n_cells, L]`` spike-triggered average temporal filters, lag 0 first.

    ``windows [N, H, W, L]`` stimulus histories (oldest frame first) and ``counts [N, n_cells]``: the STA
    ``sum_t counts[t] windows[t] / sum_t counts[t]`` is taken at each cell's pixel of largest STA variance over
    lags, so an ON cell's filter is positive at short lags and an OFF cell's negative.
    """
    n, h, w, lags = windows.shape
    sta = np.zeros((counts.shape[1], h * w * lags))
    for lo in range(0, n, chunk):
        x = np.asarray(windows[lo:lo + chunk], np.float64).reshape(-1, h * w * lags)
        sta += counts[lo:lo + chunk].T.astype(np.float64) @ x
    sta = sta.reshape(-1, h * w, lags) / np.maximum(counts.sum(0), 1)[:, None, None]
    peak = np.argmax(sta.var(axis=2), axis=1)
    return sta[np.arange(len(sta)), peak, ::-1]


def confusion(truth: np.ndarray, labels: np.ndarray, n_types: int) -> np.ndarray:
    """``[n_types, n_clusters]`` counts of cells of each type in each cluster."""
    out = np.zeros((n_types, int(labels.max()) + 1), int)
    np.add.at(out, (truth, labels), 1)
    return out
