"""CODEC metrics against float64 NumPy / sklearn references, hand-made cases and invariances."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxequiv.codec import metrics as M

RTOL = 1e-4


# ---------------------------------------------------------------- float64 references (plain loops)


def ref_hoyer(v):
    v = np.asarray(v, np.float64)
    d = v.shape[-1]
    return (np.sqrt(d) - np.abs(v).sum() / (np.sqrt((v * v).sum()) + 1e-6)) / (np.sqrt(d) - 1)


def ref_pearson(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(a, b)[0, 1]


def ref_gini(x):
    x = np.sort(np.asarray(x, np.float64))
    n = len(x)
    # mean absolute difference over all pairs / (2 * mean)
    return np.abs(x[:, None] - x[None, :]).sum() / (2 * n * n * x.mean())


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- Hoyer


def test_hoyer_hand_cases():
    onehot = np.zeros(50, np.float32)
    onehot[7] = -3.0
    np.testing.assert_allclose(M.hoyer(onehot), 1.0, atol=1e-5)
    np.testing.assert_allclose(M.hoyer(np.full(50, 2.5, np.float32)), 0.0, atol=1e-5)
    np.testing.assert_allclose(M.hoyer(np.array([1.0, -1.0])), 0.0, atol=1e-5)


def test_hoyer_matches_reference_and_batches():
    x = rng(1).standard_normal((3, 40, 17)).astype(np.float32) * rng(2).random((3, 40, 17)) ** 4
    got = np.asarray(M.hoyer(x))
    assert got.shape == (3, 40)
    want = np.array([[ref_hoyer(x[i, j]) for j in range(40)] for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(2, 30), elements=st.floats(-100, 100, width=32)),
    st.floats(0.01, 100),
    st.randoms(use_true_random=False),
)
def test_hoyer_invariances(v, scale, r):
    if np.abs(v).max() < 1e-2:
        v = v + 1.0
    assume(np.linalg.norm(v) * scale >= 0.1)  # CODEC's 1e-6 floor on |v|_2 breaks scale invariance near 0
    perm = np.array(r.sample(range(len(v)), len(v)))
    h = float(M.hoyer(v))
    assert -1e-4 <= h <= 1 + 1e-4
    np.testing.assert_allclose(float(M.hoyer(v[perm] * np.float32(scale))), h, atol=1e-3)
    np.testing.assert_allclose(float(M.hoyer(-v)), h, atol=1e-6)


def test_hoyer_bad_input():
    with pytest.raises(ValueError, match="at least 2 entries"):
        M.hoyer(np.ones((4, 1)))
    with pytest.raises(TypeError, match="real array"):
        M.hoyer(np.ones(4, complex))


# ---------------------------------------------------------------- dimensionality


def test_class_means_reference():
    x = rng(3).standard_normal((30, 5)).astype(np.float32)
    y = np.arange(30) % 3
    want = np.stack([x[y == c].astype(np.float64).mean(0) for c in range(3)])
    np.testing.assert_allclose(M.class_means(x, y), want, rtol=RTOL, atol=1e-6)


def test_dimensionality_matches_sklearn_pca():
    from sklearn.decomposition import PCA

    r = rng(4)
    n_classes, c = 40, 25
    # class means of effective rank ~6 plus small noise
    means = r.standard_normal((n_classes, 6)) @ r.standard_normal((6, c)) * np.linspace(3, 0.5, 6)[:1]
    y = np.repeat(np.arange(n_classes), 5)
    x = (means[y] + 0.05 * r.standard_normal((len(y), c))).astype(np.float32)
    k, curve = M.dimensionality(x, y)
    cm = np.stack([x[y == i].astype(np.float64).mean(0) for i in range(n_classes)])
    ratio = np.cumsum(PCA().fit(cm).explained_variance_ratio_)
    np.testing.assert_allclose(curve, ratio, rtol=1e-4, atol=1e-5)
    assert int(k) == int(np.argmax(ratio >= 0.95) + 1)
    k2, _ = M.dimensionality(np.stack([x, x]), y, threshold=0.5)
    assert k2.shape == (2,) and int(k2[0]) == int(np.argmax(ratio >= 0.5) + 1)


def test_dimensionality_hand_case():
    # class means on a line: one component holds all the variance
    y = np.repeat(np.arange(4), 3)
    x = (np.arange(4)[y, None] * np.array([1.0, 2.0, -1.0])).astype(np.float32)
    k, curve = M.dimensionality(x, y)
    assert int(k) == 1
    np.testing.assert_allclose(curve, [1, 1, 1], atol=1e-5)


def test_dimensionality_bad_input():
    x = np.zeros((6, 3), np.float32)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        M.dimensionality(x, np.zeros(5, int))
    with pytest.raises(ValueError, match="no examples"):
        M.dimensionality(x, np.array([0, 0, 2, 2, 3, 3]))
    with pytest.raises(TypeError, match="integers"):
        M.dimensionality(x, np.zeros(6))
    with pytest.raises(ValueError, match="threshold"):
        M.dimensionality(x, np.arange(6) % 2, threshold=1.5)


# ---------------------------------------------------------------- positive / negative decorrelation


def test_decorrelation_hand_cases():
    p = np.array([1.0, 3.0, 0.5, 2.0], np.float32)
    np.testing.assert_allclose(M.pos_neg_decorrelation(-p, p), 1.0, atol=1e-6)
    np.testing.assert_allclose(M.pos_neg_decorrelation(-2 * p - 1, p), 1.0, atol=1e-6)
    np.testing.assert_allclose(M.pos_neg_decorrelation(p - 9, p), -1.0, atol=1e-6)
    assert np.isnan(M.pos_neg_decorrelation(np.zeros(4), p))


def test_decorrelation_reference():
    r = rng(5)
    pos = np.abs(r.standard_normal((2, 20, 31))).astype(np.float32)
    neg = -np.abs(r.standard_normal((2, 20, 31))).astype(np.float32) + 0.3 * pos
    got = np.asarray(M.pos_neg_decorrelation(neg, pos))
    want = np.array([[-ref_pearson(neg[i, j], pos[i, j]) for j in range(20)] for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-5)
    with pytest.raises(ValueError, match="equal shapes"):
        M.pos_neg_decorrelation(neg[0], pos[1, :3])


# ---------------------------------------------------------------- class correlation / selectivity


def test_class_correlation_reference():
    r = rng(6)
    y = r.integers(0, 7, 90)
    z = np.maximum(r.standard_normal((90, 11)), 0).astype(np.float32)
    z[:, 3] = 0.0  # dead mode -> NaN -> 0
    z[:, 4] = (y == 2) * 5.0  # perfectly selective for class 2
    got = np.asarray(M.class_correlation(z, y, n_classes=8))  # class 7 absent -> 0 column
    assert got.shape == (11, 8)
    want = np.zeros((11, 8))
    for k in range(11):
        for c in range(8):
            v = ref_pearson(z[:, k], (y == c).astype(float))
            want[k, c] = 0.0 if np.isnan(v) else v
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(got[4, 2], 1.0, atol=1e-5)
    stacked = M.class_correlation(np.stack([z, 2 * z]), y, n_classes=8)
    np.testing.assert_allclose(stacked[1], got, atol=1e-5)  # scale invariance, layer axis


def test_class_correlation_bad_labels():
    with pytest.raises(ValueError, match="n_classes"):
        M.class_correlation(np.ones((4, 2)), np.array([0, 1, 2, 5]), n_classes=3)
    with pytest.raises(ValueError, match=">= 0"):
        M.class_correlation(np.ones((4, 2)), np.array([0, -1, 2, 1]))


def test_selectivity_reference():
    corr = rng(7).uniform(-0.3, 0.6, (2, 13, 9)).astype(np.float32)
    s = M.selectivity(corr, threshold=0.2)
    top = corr.max(-1)
    np.testing.assert_allclose(s.top_corr, top)
    np.testing.assert_array_equal(s.top_class, corr.argmax(-1))
    np.testing.assert_array_equal(s.top_mode, corr.argmax(-2))
    np.testing.assert_array_equal(s.n_selective, (top > 0.2).sum(-1))
    np.testing.assert_array_equal(s.classes_covered, (corr > 0.2).any(-2).sum(-1))
    np.testing.assert_allclose(s.median_top_corr, np.median(top, -1), rtol=1e-6)


def test_class_coverage_reference():
    corr = rng(8).uniform(-1, 1, (12, 5)).astype(np.float32)
    per_class, per_mode = M.class_coverage(corr, top=4)
    assert per_class.shape == (4,) and per_mode.shape == (4,)
    want_c = np.mean([np.sort(corr[:, c])[::-1][:4] for c in range(5)], axis=0)
    want_m = np.mean([np.sort(corr[k])[::-1][:4] for k in range(12)], axis=0)
    np.testing.assert_allclose(per_class, want_c, rtol=1e-6)
    np.testing.assert_allclose(per_mode, want_m, rtol=1e-6)
    assert np.all(np.diff(np.asarray(per_class)) <= 0)


def test_specificity_reference_and_hand_cases():
    r = rng(9)
    corr = r.uniform(-0.5, 1, (6, 20)).astype(np.float32)
    corr[0] = 0.0
    corr[0, 3] = 0.8  # one class only
    corr[1] = 0.4  # uniform
    corr[2] = -0.1  # nothing positive -> NaN
    s = M.specificity(corr)
    np.testing.assert_allclose([s.entropy[0], s.top1_share[0], s.top5_share[0]], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose([s.entropy[1], s.gini[1], s.top1_share[1]], [0, 0, 1 / 20], atol=1e-6)
    assert all(np.isnan(f[2]) for f in s)
    for k in range(3, 6):
        c = np.maximum(corr[k].astype(np.float64), 0)
        p = c / c.sum()
        nz = p[p > 0]
        np.testing.assert_allclose(s.entropy[k], 1 + (nz * np.log(nz)).sum() / np.log(20), rtol=RTOL)
        np.testing.assert_allclose(s.gini[k], ref_gini(c), rtol=RTOL)
        np.testing.assert_allclose(s.top1_share[k], p.max(), rtol=RTOL)
        np.testing.assert_allclose(s.top5_share[k], np.sort(p)[-5:].sum(), rtol=RTOL)
    np.testing.assert_allclose(s.gini[0], 1 - 1 / 20, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.1, 10), st.floats(-5, 5), st.floats(0.1, 10))
def test_decorrelation_and_class_correlation_invariances(seed, a, b, c):
    """-corr(n, p) ignores positive affine maps of n and p and a shared channel permutation; class correlation
    ignores positive affine maps of the loadings."""
    r = np.random.default_rng(seed)
    n, p = -np.abs(r.standard_normal((3, 12))), np.abs(r.standard_normal((3, 12)))
    perm = r.permutation(12)
    base = np.asarray(M.pos_neg_decorrelation(n, p))
    moved = np.asarray(M.pos_neg_decorrelation(a * n[:, perm] + b, c * p[:, perm] - b))
    np.testing.assert_allclose(moved, base, atol=2e-4)
    y = r.integers(0, 3, 30)
    z = r.standard_normal((30, 4))
    np.testing.assert_allclose(M.class_correlation(a * z + b, y, 3), M.class_correlation(z, y, 3), atol=2e-4)
