"""Store-level CODEC analyses: values against per-site NumPy references, errors."""

import numpy as np
import pytest

from jaxequiv.codec import analysis as A
from tests.codec.fakes import make_store


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
    with pytest.raises(ValueError, match=r"variants \['negative'\]"):
        A.check_sites(store, ["layer1.0"], ["positive", "negative"])
    A.check_sites(store, ["layer1.0"], ["positive"])
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
