"""The retina case study: the simulated cells against independent NumPy computations, the CNN and the read-out
helpers against references, and one shrunk --quick run that must show what the experiment claims."""

import json
import os

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from experiments.codec_retina import analysis as A
from experiments.codec_retina import cells as C
from experiments.codec_retina import run

CONFIG = os.path.join(os.path.dirname(run.__file__), "config.json")

# the --quick preset shrunk (fewer frames, steps and null rounds) so that the test stays short
TINY = {"size": 14, "lags": 12, "per_type": 4, "train_frames": 3000, "segment": 500, "test_frames": 600,
        "kernels": [5, 5], "epochs": 3, "batch_size": 64, "lr": 0.003, "ig_steps": 20, "chunk_size": 300,
        "sae_steps": 600, "sae_batch": 128, "sae_seeds": 1, "null_rounds": 500}


# ---------------------------------------------------------------------------------------------------------
# simulator


def _loop_generator(cells, movie):
    """g[t, i] = sum_lag sum_pixels k_t[i, lag] k_s[i, pixel] s[t - lag, pixel], by explicit loops."""
    t_max, n, lags = len(movie), len(cells.labels), cells.temporal.shape[1]
    out = np.zeros((t_max, n))
    for t in range(t_max):
        for i in range(n):
            for lag in range(min(lags, t + 1)):
                out[t, i] += cells.temporal[i, lag] * np.sum(cells.spatial[i].astype(np.float64) * movie[t - lag])
    return out


def test_generator_and_rates_equal_loops():
    cells = C.make_cells(3, 10, 6, 1, margin=3.0)
    movie = C.white_noise(np.random.default_rng(0), 15, 10)
    g = _loop_generator(cells, movie)
    np.testing.assert_allclose(C.generator(cells, movie), g, rtol=1e-4, atol=1e-5)
    z = cells.gain * g / cells.g_ref + cells.bias
    np.testing.assert_allclose(C.rates(cells, movie), cells.r_max * np.log1p(np.exp(z)), rtol=1e-4)
    # g_ref is the generator's std under unit white noise (the filters are fixed, the stimulus is random)
    long = C.white_noise(np.random.default_rng(1), 20000, 10)
    np.testing.assert_allclose(C.generator(cells, long)[10:].std(0), cells.g_ref, rtol=0.05)


def _spot_step(cells, i, frames, onset, contrast=1.0):
    """A 3x3 light increment at cell i's centre pixel from frame ``onset`` on."""
    movie = np.zeros((frames, cells.spatial.shape[1], cells.spatial.shape[2]), np.float32)
    r, c = np.round(cells.centres[i]).astype(int)
    movie[onset:, r - 1:r + 2, c - 1:c + 2] = contrast
    return movie


def test_on_cells_excited_off_cells_suppressed_by_a_centre_increment():
    cells = C.make_cells(0, 18, 20, 2)
    base = cells.r_max * np.log1p(np.exp(cells.bias))  # the rate at a blank (mean grey) stimulus
    for i, t in enumerate(cells.labels):
        rate = C.rates(cells, _spot_step(cells, i, 40, 10))[:, i]
        assert np.allclose(rate[:10], base, rtol=1e-5)
        early = rate[11:16]  # the first frames after the onset, where every filter has its first lobe
        if C.TYPES[t][1] > 0:
            assert early.max() > 1.5 * base, (i, C.TYPES[t][0])
        else:
            assert early.min() < 0.6 * base, (i, C.TYPES[t][0])


def test_step_responses_sustained_versus_transient():
    """A step's generator is the filter's running sum times the spot's spatial weight (computed here with NumPy);
    a sustained cell keeps its peak response, a transient one decays back toward baseline."""
    cells = C.make_cells(1, 18, 20, 2)
    onset, frames = 5, 45
    for i, t in enumerate(cells.labels):
        movie = _spot_step(cells, i, frames, onset)
        g = C.generator(cells, movie)[:, i]
        weight = float(np.sum(cells.spatial[i] * movie[-1]))
        expect = np.zeros(frames)
        expect[onset:] = weight * np.cumsum(np.r_[cells.temporal[i], np.zeros(frames)])[:frames - onset]
        np.testing.assert_allclose(g, expect, rtol=1e-4, atol=1e-6)
        late = abs(g[-1]) / np.abs(g).max()
        if C.TYPES[t][2] == "sustained":
            assert late > 0.95, (i, late)
        else:
            assert late < 0.3, (i, late)


def test_cells_tile_the_field_deterministically():
    a, b = C.make_cells(7, 18, 20, 5), C.make_cells(7, 18, 20, 5)
    np.testing.assert_array_equal(a.spatial, b.spatial)
    np.testing.assert_array_equal(a.temporal, b.temporal)
    assert np.bincount(a.labels).tolist() == [5] * 4
    assert a.centres.min() >= 4 and a.centres.max() <= 13
    assert not np.array_equal(C.make_cells(8, 18, 20, 5).centres, a.centres)
    with pytest.raises(ValueError, match="per_type"):
        C.make_cells(0, 8, 20, 2)
    with pytest.raises(ValueError, match="kinetics"):
        C.temporal_filter("fast", 10, 1.0)


def test_movies_white_and_pink_spectra():
    rng = np.random.default_rng(0)
    white, pink = C.white_noise(rng, 2048, 16), C.pink_noise(rng, 2048, 16, contrast=0.3)
    assert abs(white.std() - 1) < 0.01 and abs(pink.std() - 0.3) < 1e-3 and abs(pink.mean()) < 0.01

    def band_power(m):  # temporal power at low (<= 0.05) and high (>= 0.25 cycles/frame) frequencies
        p = np.abs(np.fft.rfft(m - m.mean(0), axis=0)) ** 2
        f = np.fft.rfftfreq(len(m))
        return p[(f > 0) & (f <= 0.05)].mean(), p[f >= 0.25].mean()

    lo, hi = band_power(white)
    assert 0.8 < lo / hi < 1.25  # flat
    lo, hi = band_power(pink)
    assert lo / hi > 5  # 1/f: amplitude at least 2x higher at low than at high frequencies
    # spatially correlated: neighbouring pixels of pink noise correlate, of white noise not
    assert np.corrcoef(pink[:, 5, 5], pink[:, 5, 6])[0, 1] > 0.3
    assert abs(np.corrcoef(white[:, 5, 5], white[:, 5, 6])[0, 1]) < 0.1


def test_windows_hold_the_history_oldest_first():
    movie = np.arange(7 * 2 * 2, dtype=np.float32).reshape(7, 2, 2)
    w = C.windows(movie, 3)
    assert w.shape == (5, 2, 2, 3)
    for i in range(5):
        np.testing.assert_array_equal(w[i], np.moveaxis(movie[i:i + 3], 0, -1))


# ---------------------------------------------------------------------------------------------------------
# the CNN


def test_cnn_sites_shapes_and_poisson_loss():
    import jax.numpy as jnp
    from flax import nnx

    from experiments.codec_retina.model import RetinaCNN, poisson_loss
    from jaxequiv.network import Network

    model = RetinaCNN(14, 6, 5, (4, 3), (5, 3), rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((3, 14, 14, 6)).astype(np.float32)
    net = Network.from_module(model, (14, 14, 6))
    sites = net.sites(3)
    assert list(sites) == ["conv1", "conv2", "output"]
    assert sites["conv1"].shape == (3, 10, 10, 4) and sites["conv2"].shape == (3, 8, 8, 3)
    assert sites["conv2"].axes == ("batch", "height", "width", "channel")
    r = np.asarray(model(jnp.asarray(x)))
    assert r.shape == (3, 5) and (r > 0).all()
    counts = np.random.default_rng(1).poisson(1.0, (3, 5)).astype(np.float32)
    loss, metrics = poisson_loss(model, jnp.asarray(x), jnp.asarray(counts))
    np.testing.assert_allclose(float(loss), np.mean(r - counts * np.log(r + 1e-6)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mse"]), np.mean((r - counts) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="stimulus histories"):
        model(jnp.zeros((3, 14, 14, 5)))
    with pytest.raises(ValueError, match="do not fit"):
        RetinaCNN(8, 6, 5, kernels=(5, 5), rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------------------
# read-out helpers


def test_adjusted_rand_equals_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 40))
        t, l = rng.integers(0, rng.integers(1, 6), n), rng.integers(0, rng.integers(1, 6), n)
        assert abs(A.adjusted_rand(t, l) - adjusted_rand_score(t, l)) < 1e-12
    truth = np.repeat(np.arange(4), 6)
    perms = np.stack([rng.permutation(truth) for _ in range(5)])
    np.testing.assert_allclose(A.adjusted_rand(perms, truth), [adjusted_rand_score(p, truth) for p in perms])
    ari, p = A.ari_test(truth, truth[::-1], 999, 0)  # the same partition, relabelled
    assert ari == 1.0 and p == 1 / 1000
    ari, p = A.ari_test(truth, rng.permutation(truth), 999, 0)
    assert p > 0.01
    with pytest.raises(ValueError, match="labels"):
        A.adjusted_rand(truth, truth[:5])


def test_usage_is_pearson_and_clusters_are_found():
    rng = np.random.default_rng(0)
    loadings, rates = rng.random((200, 7)), rng.random((200, 4))
    loadings[:, 3] = 0.0  # a mode that never fires
    u = A.usage(loadings, rates)
    with np.errstate(invalid="ignore"):  # the silent mode's correlation is 0 / 0
        ref = np.corrcoef(rates.T, loadings.T)[:4, 4:]
    ref[:, 3] = 0.0
    np.testing.assert_allclose(u, ref, atol=1e-12)
    with pytest.raises(ValueError, match="same N"):
        A.usage(loadings, rates[:10])
    truth = np.repeat(np.arange(3), 5)
    feats = np.eye(3)[truth] * 5 + 0.1 * rng.standard_normal((15, 3))
    assert adjusted_rand_score(truth, A.cluster(feats, 3, 0)) == 1.0
    k, labels = A.choose_k(feats, 0)
    assert k == 3 and adjusted_rand_score(truth, labels) == 1.0
    assert A.confusion(truth, labels, 3).sum() == 15 and sorted(A.confusion(truth, labels, 3).max(1)) == [5] * 3


def test_sta_recovers_the_temporal_filters():
    cells = C.make_cells(2, 12, 10, 1, margin=3.0)
    rng = np.random.default_rng(0)
    movie = C.white_noise(rng, 20000, 12)
    counts = C.spikes(rng, C.rates(cells, movie)[9:])
    sta = A.sta_temporal(C.windows(movie, 10), counts)
    for i, t in enumerate(cells.labels):  # the STA is proportional to the linear filter (Bussgang), signed
        sign = C.TYPES[t][1]
        assert np.corrcoef(sta[i], sign * cells.temporal[i])[0, 1] > 0.9, C.TYPES[t][0]


# ---------------------------------------------------------------------------------------------------------
# the whole run


def test_config_presets_load_and_reject_unknown_keys(tmp_path):
    quick, full = run.RetinaConfig.from_json(CONFIG, "quick"), run.RetinaConfig.from_json(CONFIG, "full")
    assert full.per_type >= quick.per_type and full.train_frames > quick.train_frames and full.ig_steps == 20
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"quick": {"lagz": 3}}))
    with pytest.raises(ValueError, match="lagz"):
        run.RetinaConfig.from_json(str(bad), "quick")
    with pytest.raises(ValueError, match="preset"):
        run.RetinaConfig.from_json(str(bad), "full")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_shows_what_it_is_meant_to(tmp_path):
    """One run of the shrunk --quick preset through the CLI: files and provenance; the CNN predicts held-out
    responses; IG is complete; the cell types are recoverable (the STA) and the contribution modes' clusters
    match them above chance (permutation test)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"quick": TINY}))
    out = tmp_path / "out"
    assert run.main(["--quick", "--config", str(path), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    for name in ("cells.png", "modes.png", "clusters.png"):
        assert (out / name).stat().st_size > 10000
    prov = res["provenance"]
    assert prov["config"]["train_frames"] == TINY["train_frames"] and prov["git"]["commit"]
    assert prov["wall_s"] >= res["timings_s"]["total"] - 1
    n = res["n_cells"]
    assert n == 4 * TINY["per_type"] and sorted(res["cell_types"]) == sorted(list(range(4)) * TINY["per_type"])

    # the CNN predicts held-out responses to both movies: every cell's predicted rate follows its true rate, and
    # the median cell reaches most of what its Poisson noise allows (the true rate's correlation with the spikes)
    for movie in ("white", "pink"):
        c = res["heldout_corr"][movie]
        assert min(c["true_rate"]) > 0.5, movie
        assert np.median(np.array(c["counts"]) / np.array(c["ceiling"])) > 0.75, movie
    # IG toward the surprisal is complete at both conv layers (each a full cut of the network)
    assert max(res["completeness_median_rel_gap"].values()) < 0.02

    cl = res["clustering"]
    # the types are there to be found: the classical STA typing recovers them exactly
    assert cl["STA temporal filter (white noise)"]["ari_mean"] == 1.0
    # CODEC's read-out finds them above chance: k-means of the cells by conv2 contribution-mode usage
    primary = cl[res["primary"]]
    assert res["primary"] == "contribution modes, conv2"
    assert primary["ari_mean"] > 0.3 and primary["p_max"] < 0.01
