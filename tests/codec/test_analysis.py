"""Store-level CODEC analyses and the report: values against per-site NumPy references, errors, files."""

import os

import numpy as np
import pytest

from jaxequiv.codec import analysis as A
from jaxequiv.codec import report as R
from jaxequiv.codec.interventions import InterventionResult


class FakeStore:
    """The read API of jaxequiv.contributions.store.Store over in-memory arrays."""

    def __init__(self, arrays, labels):
        self.root = "memory"
        self.arrays = arrays
        self.sites = list(arrays)
        self.variants = ["positive", "negative", "sum", "activations"]
        self.labels = np.asarray(labels)
        self.n = len(labels)
        self.predictions = self.labels

    def array(self, site, variant):
        return self.arrays[site][variant]


def make_store(seed=0, n=60, widths=(6, 6, 10)):
    r = np.random.default_rng(seed)
    y = np.arange(n) % 4
    arrays = {}
    for i, c in enumerate(widths):
        pos = np.abs(r.standard_normal((n, c))) * (1 + (y[:, None] == np.arange(c) % 4))
        neg = -np.abs(r.standard_normal((n, c))) * r.random((n, c)) ** (i + 1)
        act = np.abs(r.standard_normal((n, c))) + 1
        arrays[f"layer{i + 1}.0"] = {"positive": pos.astype(np.float32), "negative": neg.astype(np.float32),
                                     "sum": (pos + neg).astype(np.float32), "activations": act.astype(np.float32)}
    return FakeStore(arrays, y)


def test_layer_statistics_matches_per_site_reference():
    from sklearn.decomposition import PCA

    store = make_store()
    sites = ["layer3.0", "layer1.0", "layer2.0"]
    st = A.layer_statistics(store, sites)
    assert st.sites == sites and st.channels == [10, 6, 6]
    y = store.labels
    for i, s in enumerate(sites):
        a = {k: v.astype(np.float64) for k, v in store.arrays[s].items()}
        d = a["sum"].shape[1]
        hoyer = (np.sqrt(d) - np.abs(a["sum"]).sum(1) / (np.linalg.norm(a["sum"], axis=1) + 1e-6)) / (np.sqrt(d) - 1)
        np.testing.assert_allclose(st.hoyer_contrib[i], hoyer, rtol=1e-4)
        dec = [-np.corrcoef(a["negative"][j], a["positive"][j])[0, 1] for j in range(store.n)]
        np.testing.assert_allclose(st.decorrelation[i], dec, rtol=1e-4, atol=1e-5)
        cm = np.stack([a["activations"][y == c].mean(0) for c in range(4)])
        ratio = np.cumsum(PCA().fit(cm).explained_variance_ratio_)
        assert st.dim_act[i] == int(np.argmax(ratio >= 0.95 - 1e-6) + 1)


def test_store_checks():
    store = make_store()
    with pytest.raises(ValueError, match=r"not in the store.*layer1.0"):
        A.layer_statistics(store, ["layer9.0"])
    with pytest.raises(ValueError, match="holds 60 examples"):
        A.layer_statistics(store, ["layer1.0"], labels=np.zeros(59, int))
    with pytest.raises(ValueError, match="disagree"):
        A.layer_statistics(store, ["layer1.0"], labels=(store.labels + 1) % 4)
    store.variants = ["positive", "activations"]
    with pytest.raises(ValueError, match="variants"):
        A.layer_statistics(store, ["layer1.0"])
    unlabelled = make_store()
    unlabelled.labels = np.full(60, -1)
    with pytest.raises(ValueError, match="no labels"):
        A.check_store(unlabelled, ["layer1.0"])
    np.testing.assert_array_equal(A.check_store(unlabelled, ["layer1.0"], np.arange(60) % 4), np.arange(60) % 4)


def test_mode_selectivity_and_errors():
    store = make_store()
    r = np.random.default_rng(1)
    y = store.labels
    z = np.maximum(r.standard_normal((60, 5)), 0)
    z[:, 0] = (y == 3) * 2.0
    codes = np.concatenate([z, np.zeros((60, 1))], axis=1).astype(np.float32)  # a dead sixth latent
    modes = {"layer1.0": A.Modes(codes, (codes != 0).any(0), r.standard_normal((6, 6)))}
    sel = A.mode_selectivity(modes, store, "positive")["layer1.0"]
    assert sel.corr.shape == (5, 4)
    np.testing.assert_allclose(sel.corr[0, 3], 1.0, atol=1e-5)
    assert int(sel.modes.top_mode[3]) == 0
    assert sel.channels.top_corr.shape == (6,)
    with pytest.raises(ValueError, match="rows"):
        A.mode_selectivity({"layer1.0": A.Modes(codes[:10], (codes[:10] != 0).any(0), np.ones((6, 6)))}, store,
                           "positive")
    with pytest.raises(ValueError, match="no alive modes"):
        A.mode_selectivity({"layer1.0": A.Modes(0 * codes, np.zeros(6, bool), np.ones((6, 6)))}, store, "positive")
    with pytest.raises(ValueError, match="not in the store"):
        A.mode_selectivity({"layer7.0": modes["layer1.0"]}, store, "positive")


def _results(sites, hc, ha, ab_c, ab_a):
    n = len(sites)
    st = A.LayerStats(sites, [4] * n, [np.full(5, v) for v in hc], [np.full(5, v) for v in ha],
                      [np.full(5, 1 - i / n) for i in range(n)], [5] * n, [3] * n,
                      [np.linspace(0.5, 1, 4)] * n, [np.linspace(0.8, 1, 4)] * n)
    pct = np.array([10, 50, 99], np.float32)

    def inter(v):  # ablate ratios: target 1+v, off-target 1 -> summary v; preserve 0
        ratio = np.ones((2, 3, 3, 2, 2), np.float32)
        ratio[0, :, :, 0] = 1 + v
        return InterventionResult(pct, None, None, ratio, None)

    return R.CodecResults(st, {}, {s: {"contribution": inter(c), "activation": inter(a)}
                                   for s, c, a in zip(sites, ab_c, ab_a)}, meta={"note": "synthetic"})


def test_findings_hand_cases():
    sites = [f"b{i}" for i in range(4)]
    good = R.findings(_results(sites, [0.3, 0.4, 0.5, 0.6], [0.1] * 4, [-0.5, -0.8, -0.8, -0.9], [-0.1] * 4))
    assert good["a"]["holds"] and good["b"]["holds"] and good["c"]["holds"] and good["d"]["holds"]
    assert good["f"]["holds"] and "e" not in good
    bad = R.findings(_results(sites, [0.6, 0.5, 0.05, 0.3], [0.1] * 4, [0.1, -0.1, 0.0, -0.2], [-0.5] * 4))
    assert not bad["a"]["holds"] and not bad["b"]["holds"] and not bad["f"]["holds"]
    assert "2/4 blocks" in bad["a"]["evidence"] or "3/4 blocks" in bad["a"]["evidence"]


def test_paper_layer_mapping():
    assert [R.paper_layer(i, 8) for i in range(8)] == [0, 2, 4, 6, 9, 11, 13, 15]
    assert R.paper_layer(0, 1) == 0


def test_write_report_files(tmp_path):
    sites = [f"b{i}" for i in range(3)]
    res = _results(sites, [0.3, 0.4, 0.5], [0.1] * 3, [-0.5, -0.6, -0.7], [-0.1] * 3)
    nan = InterventionResult(np.array([10, 50, 99], np.float32), None, None, np.full((2, 3, 3, 2, 2), np.nan), None)
    res.interventions["b1"] = {"contribution": nan, "activation": nan}  # the plotted block: every trial at 0
    res.pictures = {"images": np.random.default_rng(0).random((2, 8, 8, 1)), "masks": np.ones((2, 8, 8)),
                    "titles": ["a", "b"], "site": "b1"}
    path = R.write_report(str(tmp_path), res, "test report")
    text = open(path).read()
    assert text.startswith("# test report") and "ResNet-50" in text and "(f)" in text
    for f in ("fig3_contributions_vs_activations.png", "fig6_interventions.png", "mode_pictures.png"):
        assert f in text and os.path.getsize(tmp_path / f) > 1000
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
