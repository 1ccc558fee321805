"""fit_modes: one job over every (source, site) equals training each SAE alone on its global-std-normalised array."""

import functools

import numpy as np
import pytest

from jaxequiv import sae
from jaxequiv.codec import SOURCES, fit_modes
from tests.codec.fakes import make_store

pytestmark = pytest.mark.filterwarnings("ignore::jaxequiv.sae.FitWarning")  # tiny SAEs, few steps

SETTINGS = sae.TrainSettings(batch_size=16, steps=12, lr=1e-3, log_every=6, data_seed=5)
SITES = ["layer1.0", "layer3.0"]  # 6 and 10 channels: two vmapped groups of two SAEs


@pytest.fixture(scope="module")
def fitted():
    store = make_store()
    small = functools.partial(sae.make, "stsae", expansion=2, theta=0.5, l1=1e-4)
    return store, small, fit_modes(store, SITES, SETTINGS, sae=small, seed=3)


def test_every_sae_equals_its_own_run(fitted):
    store, small, fits = fitted
    assert list(fits) == list(SOURCES) and all(list(by_site) == SITES for by_site in fits.values())
    for src, variant in SOURCES.items():
        for s in SITES:
            f = fits[src][s]
            raw = np.asarray(store.array(s, variant), np.float32)
            np.testing.assert_allclose(f.scale, raw.astype(np.float64).std(), rtol=1e-6)  # one std, not centred
            x = raw / np.float32(f.scale)
            assert f.sae.cfg == small(raw.shape[1]) and f.sae.seed == 3
            m = sae.readout(f.sae.cfg, f.sae.params, x, f.sae.state)
            np.testing.assert_array_equal(f.modes.codes, m.codes)
            np.testing.assert_array_equal(f.modes.alive, m.alive)
            assert f.modes.codes.shape == (store.n, 2 * raw.shape[1])
            assert f.r2 == sae.evaluate(f.sae.cfg, f.sae.params, x, f.sae.state)["r2_codec"]
    # the reference: one (source, site) trained alone (in the job its vmapped group held another SAE)
    raw = np.asarray(store.array("layer3.0", "activations"), np.float32)
    alone = sae.train(small(10), raw / np.float32(raw.astype(np.float64).std()), seed=3, settings=SETTINGS)
    got = fits["activation"]["layer3.0"].sae
    for k in alone.params:
        np.testing.assert_allclose(np.asarray(got.params[k]), np.asarray(alone.params[k]), rtol=1e-5, atol=1e-6)


def test_sources_and_default_sae():
    store = make_store(n=40, widths=(4,))
    fits = fit_modes(store, ["layer1.0"], SETTINGS, sources={"sum": "sum"})
    f = fits["sum"]["layer1.0"]
    assert list(fits) == ["sum"] and f.sae.cfg == sae.make("stsae", 4, expansion=3) and f.modes.atoms.shape == (12, 4)


def test_bad_input():
    store = make_store(n=40, widths=(4,))
    with pytest.raises(ValueError, match=r"sites \['layer9.0'\] are not in the store"):
        fit_modes(store, ["layer9.0"], SETTINGS)
    with pytest.raises(ValueError, match=r"variants \['concat'\]"):
        fit_modes(store, ["layer1.0"], SETTINGS, sources={"c": "concat"})
    with pytest.raises(ValueError, match="at least one site"):
        fit_modes(store, [], SETTINGS)
    store.arrays["layer1.0"]["activations"][:] = 0
    with pytest.raises(ValueError, match="global std"):
        fit_modes(store, ["layer1.0"], SETTINGS)
