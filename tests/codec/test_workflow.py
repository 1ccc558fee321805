"""analyze() equals its steps run one by one on the store it wrote; Stages announces and times; summary is JSON."""

import dataclasses
import functools
import json

import numpy as np
import pytest

from jaxequiv import codec
from jaxequiv.contributions import open_store
from jaxequiv.network import Network
from jaxequiv.sae import TrainSettings, make
from tests.nets import tiny_resnet

pytestmark = pytest.mark.filterwarnings("ignore::jaxequiv.sae.FitWarning")  # tiny SAEs, few steps

SETTINGS = codec.AnalysisSettings(ig_steps=2, chunk_size=40, sae_expansion=2, sae_theta=0.5, sae_steps=20,
                                  sae_batch=16, percentages=(25, 100), trials=2, images_per_class=4,
                                  superclass=(1, 3), superclass_sites=1, picture_images=2, picture_filter=1, seed=4)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    model = tiny_resnet()
    net = Network.from_module(model, (8, 8, 1))
    x = np.random.default_rng(0).standard_normal((40, 8, 8, 1)).astype(np.float32)
    y = np.arange(40) % 5
    root = tmp_path_factory.mktemp("analyze") / "store"
    lines = []
    res = codec.analyze(net, x, y, "layer*", root, SETTINGS, class_names=list("abcde"),
                        stages=codec.Stages(lines.append))
    return net, x, y, open_store(root), res, lines


def test_codec_store_is_analyzes_first_step(analysed, tmp_path):
    net, x, y, store, _, _ = analysed
    alone = codec.codec_store(net, x, y, "layer*", tmp_path / "alone", SETTINGS)
    assert alone.sites == store.sites and set(alone.variants) == set(store.variants) >= {"positive", "sum"}
    np.testing.assert_array_equal(alone.labels, y)
    for site in store.sites:
        for v in store.variants:
            np.testing.assert_array_equal(np.asarray(alone.array(site, v)), np.asarray(store.array(site, v)))


def test_analyze_equals_its_steps(analysed):
    net, x, y, store, res, lines = analysed
    s = SETTINGS
    assert res.sites == store.sites == ["layer1.0", "layer2.0"] and res.class_name(1) == "b"
    assert [line.split(" ", 1)[1] for line in lines[::2]] == [
        "contributions (IG) ...", "layer statistics ...", "SAEs (4) ...", "class selectivity ...", "interventions ...",
        "superclass interventions ...", "pictures ..."]
    for a, b in zip(res.stats, codec.layer_statistics(store, store.sites)):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    sae = functools.partial(make, "stsae", expansion=2, theta=0.5, l1=s.sae_l1)
    train = TrainSettings(batch_size=s.sae_batch, steps=s.sae_steps, lr=s.sae_lr, log_every=200, data_seed=s.seed)
    fits = codec.fit_modes(store, store.sites, train, sae=sae, seed=s.seed)
    modes = {src: {site: f.modes for site, f in by_site.items()} for src, by_site in fits.items()}
    for src in codec.SOURCES:
        sel = codec.mode_selectivity(modes[src], store, codec.SOURCES[src], n_classes=5)
        inter = codec.mode_interventions(net, x, y, modes[src], sel, s.seed, percentages=s.percentages,
                                         n_trials=s.trials, n_images=s.images_per_class)
        for site in store.sites:
            np.testing.assert_array_equal(res.modes[src][site].modes.codes, modes[src][site].codes)
            assert res.modes[src][site].r2 == fits[src][site].r2
            np.testing.assert_array_equal(res.selectivity[src][site].corr, sel[site].corr)
            np.testing.assert_array_equal(res.interventions[src][site].perturbed, inter[site].perturbed)
    contrib = modes["contribution"]
    sup = codec.superclass_interventions(net, x, y, {"layer2.0": contrib["layer2.0"]}, (1, 3), n_classes=5)
    assert res.superclass.sites == ["layer2.0"] and res.superclass.classes == (1, 3)
    for kind in sup.results:
        np.testing.assert_array_equal(res.superclass.results[kind].perturbed, sup.results[kind].perturbed)
    middle = "layer2.0"  # sites[len(sites) // 2]
    pics = codec.mode_pictures(net, x, y, middle, contrib[middle], res.selectivity["contribution"][middle],
                               predictions=store.predictions, n_images=2, size=1)
    assert res.pictures.site == middle
    np.testing.assert_array_equal(res.pictures.masks, pics.masks)


def test_summary_is_json_of_the_headline_numbers(analysed):
    res = analysed[4]
    got = json.loads(json.dumps(res.summary()))
    assert got["sites"] == res.sites and got["dim_act"] == list(res.stats.dim_act)
    np.testing.assert_allclose(got["hoyer_contrib_median"], [np.nanmedian(h) for h in res.stats.hoyer_contrib])
    assert set(got["ablate_auc"]) == set(got["preserve_auc"]) == set(got["median_top_corr"]) == set(codec.SOURCES)
    assert len(got["ablate_auc"]["contribution"]) == 2 and list(got["superclass"]) == ["ablate", "preserve"]
    assert got["superclass"]["ablate"]["before"] == res.superclass.results["ablate"].original[:, 0].tolist()
    assert set(got["sae_r2"]) == {f"{src}/{s}" for src in codec.SOURCES for s in res.sites}
    bare = json.loads(json.dumps(dataclasses.replace(res, selectivity={}, interventions={}, superclass=None,
                                                     modes={}).summary()))
    assert set(bare) == {"sites", "hoyer_contrib_median", "hoyer_act_median", "decorrelation_median", "dim_contrib",
                         "dim_act"}


def test_bad_picture_site_fails_before_the_saes(analysed, tmp_path):
    net, x, y = analysed[:3]
    lines = []
    bad = dataclasses.replace(SETTINGS, picture_site="layer9.0")
    with pytest.raises(ValueError, match=r"picture_site 'layer9.0' is not one of the analysed sites"):
        codec.analyze(net, x, y, "layer*", tmp_path / "store", bad, stages=codec.Stages(lines.append))
    assert not any("SAEs" in line for line in lines)
    with pytest.raises(ValueError, match="labels must have shape"):
        codec.analyze(net, x, y[:5], "layer*", tmp_path / "other", SETTINGS)


def test_stages_announce_then_time():
    lines = []
    stages = codec.Stages(lines.append, prefix="[t]")
    with stages("one"):
        pass
    with pytest.raises(KeyError):
        with stages("two"):
            raise KeyError("x")
    assert lines[0] == "[t] one ..." and lines[1].startswith("[t] one: ") and lines[1].endswith(" s")
    assert lines[2] == "[t] two ..." and len(lines) == 3 and list(stages.timings) == ["one"]
    codec.Stages(None)  # silent
