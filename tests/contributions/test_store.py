"""Dataset driver and on-disk store: equal to the in-memory kernel, resumable, never half-written."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxequiv import Network, site
from jaxequiv.contributions import build_store, contributions, open_store, reduce_site, spatial_sum
from jaxequiv.contributions.store import PARTIAL_SUFFIX

AXES = ("batch", "height", "width", "channel")


class TinyCNN(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.c1 = nnx.Conv(2, 3, (3, 3), bias_init=nnx.initializers.normal(0.3), rngs=rngs)
        self.c2 = nnx.Conv(3, 4, (3, 3), strides=(2, 2), bias_init=nnx.initializers.normal(0.3), rngs=rngs)
        self.fc = nnx.Linear(4, 3, bias_init=nnx.initializers.normal(0.3), rngs=rngs)

    def __call__(self, x):
        h = site("conv1", jax.nn.relu(self.c1(x)), axes=AXES)
        h = site("conv2", jax.nn.relu(self.c2(h)), axes=AXES)
        return self.fc(h.mean((1, 2)))


@pytest.fixture(scope="module")
def net():
    return Network.from_module(TinyCNN(), (6, 6, 2))


@pytest.fixture(scope="module")
def data():
    r = np.random.default_rng(0)
    return r.normal(size=(7, 6, 6, 2)).astype(np.float32), r.integers(0, 3, 7)


class Rows:
    """Array-like over ``x`` that records the row slices read and can fail from a given row on."""

    def __init__(self, x, fail_from=None):
        self.x, self.fail_from, self.reads = x, fail_from, []
        self.shape, self.dtype = x.shape, x.dtype

    def __getitem__(self, s):
        if self.fail_from is not None and s.stop > self.fail_from:
            raise RuntimeError("simulated crash")
        self.reads.append((s.start, s.stop))
        return self.x[s]


KW = dict(method="ig", steps=4, chunk_size=3, progress=False)


def test_store_equals_in_memory_kernel(net, data, tmp_path):
    x, y = data
    store = build_store(net, x, tmp_path / "s", "conv*", labels=y, info={"model": "tiny"}, **KW)
    ref = contributions(net, x, "conv*", steps=4)
    assert store.sites == ["conv1", "conv2"] and store.n == 7
    assert store.variants == ["positive", "negative", "sum", "concat", "activations"]
    for s in store.sites:
        red = reduce_site(ref.values[s], ref.sites[s])
        for v, a in red.items():
            got = store.array(s, v)
            assert got.dtype == np.float32 and got.shape == a.shape
            np.testing.assert_allclose(got, a, rtol=1e-5, atol=1e-6, err_msg=f"{s}/{v}")
        np.testing.assert_allclose(store.array(s, "activations"), spatial_sum(ref.activations[s], ref.sites[s]),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(store.labels, y)
    np.testing.assert_array_equal(store.predictions, np.argmax(ref.outputs, 1))
    with pytest.raises(ValueError):  # read-only memory map
        store.array("conv1", "sum")[0, 0] = 1.0
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["complete"] and meta["finished_chunks"] == [0, 1, 2] and meta["config"]["info"] == {"model": "tiny"}
    assert meta["sites"]["conv2"] == {"channels": 4, "axes": list(AXES), "shape": [3, 3, 4]}
    assert np.load(tmp_path / "s" / "conv2" / "concat.npy", mmap_mode="r").shape == (7, 8)
    assert not os.path.exists(str(tmp_path / "s") + PARTIAL_SUFFIX)


def test_interrupted_build_resumes_without_recomputing(net, data, tmp_path):
    x, y = data
    root = tmp_path / "s"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_store(net, Rows(x, fail_from=6), root, "conv*", labels=y, **KW)
    assert not root.exists()  # never half-written at the final path
    with pytest.raises(FileNotFoundError, match="unfinished build"):
        open_store(root)
    meta = json.loads((tmp_path / ("s" + PARTIAL_SUFFIX) / "meta.json").read_text())
    assert meta["finished_chunks"] == [0, 1] and not meta["complete"]

    rows = Rows(x)
    store = build_store(net, rows, root, "conv*", labels=y, **KW)
    assert rows.reads == [(6, 7)]  # only the unfinished chunk is read and computed
    full = build_store(net, x, tmp_path / "full", "conv*", labels=y, **KW)
    for s in store.sites:
        for v in store.variants:
            np.testing.assert_array_equal(store.array(s, v), full.array(s, v))


def test_resume_with_other_settings_is_refused(net, data, tmp_path):
    x, _ = data
    with pytest.raises(RuntimeError):
        build_store(net, Rows(x, fail_from=4), tmp_path / "s", "conv*", **KW)
    with pytest.raises(ValueError, match=r"different \['config'\]"):
        build_store(net, x, tmp_path / "s", "conv*", **{**KW, "steps": 5})


def test_variant_subset_given_classes_and_overwrite(net, data, tmp_path):
    x, y = data
    store = build_store(net, x, tmp_path / "s", "conv2", method="grad_x_act", target=y, variants=["positive"],
                        chunk_size=4, progress=False)
    assert store.variants == ["positive", "activations"]
    ref = contributions(net, x, "conv2", method="grad_x_act", target=y)
    np.testing.assert_allclose(store.array("conv2", "positive"),
                               reduce_site(ref.values["conv2"], ref.sites["conv2"], ["positive"])["positive"],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match=r"has no variant 'sum'; it has \['positive', 'activations'\]"):
        store.array("conv2", "sum")
    with pytest.raises(KeyError, match=r"has no site 'conv1'; it has \['conv2'\]"):
        store.array("conv1", "positive")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_store(net, x, tmp_path / "s", "conv1", **KW)
    again = build_store(net, x, tmp_path / "s", "conv1", overwrite=True, **KW)
    assert again.sites == ["conv1"] and open_store(tmp_path / "s").sites == ["conv1"]


def test_nan_input_names_site_and_global_example(net, data, tmp_path):
    x, _ = data
    bad = x.copy()
    bad[5, 1, 1, 0] = np.inf
    with pytest.raises(ValueError, match=r"site 'conv1' for example 5"):
        build_store(net, bad, tmp_path / "s", "conv*", **KW)
    assert not (tmp_path / "s").exists()


def test_driver_bad_arguments(net, data, tmp_path):
    x, y = data
    with pytest.raises(ValueError, match="labels must be 7 integers"):
        build_store(net, x, tmp_path / "a", "conv1", labels=y[:3], **KW)
    with pytest.raises(ValueError, match="3 class indices for 7 inputs"):
        build_store(net, x, tmp_path / "a", "conv1", target=y[:3], **KW)
    with pytest.raises(ValueError, match=r"class index 3 \(example 2\)"):
        build_store(net, x, tmp_path / "a", "conv1", target=np.array([0, 1, 3, 0, 0, 0, 0]), **KW)
    with pytest.raises(ValueError, match="baseline of shape"):
        build_store(net, x, tmp_path / "a", "conv1", baseline=np.zeros((7, 6, 6, 2), np.float32), **KW)
    with pytest.raises(ValueError, match="unknown or no reduction"):
        build_store(net, x, tmp_path / "a", "conv1", variants=["abs"], **KW)
    with pytest.raises(ValueError, match="chunk_size"):
        build_store(net, x, tmp_path / "a", "conv1", **{**KW, "chunk_size": 0})
    with pytest.raises(KeyError, match="conv1"):
        build_store(net, x, tmp_path / "a", "layer*", **KW)
    with pytest.raises(ValueError, match="not a finished contributions store"):
        (tmp_path / "fake").mkdir()
        (tmp_path / "fake" / "meta.json").write_text(json.dumps({"format": "other"}))
        open_store(tmp_path / "fake")
    assert not (tmp_path / "a").exists()


def test_cli_writes_store_and_reports_errors(tmp_path, capsys):
    from jaxequiv.cli import main

    r = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", r.normal(size=(5, 8, 8, 1)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 1, 0]))
    args = ["contributions", "--data", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
            "--model", "resnet18", "--width", "2", "--sites", "layer4.*", "--method", "grad_x_act", "--chunk-size", "4",
            "--variants", "positive,sum", "--no-progress", "--out", str(tmp_path / "s")]
    assert main(args) == 0
    store = open_store(tmp_path / "s")
    assert store.sites == ["layer4.0", "layer4.1"] and store.n == 5
    assert store.variants == ["positive", "sum", "activations"] and store.array("layer4.1", "sum").shape == (5, 16)
    np.testing.assert_array_equal(store.labels, [0, 1, 2, 1, 0])
    assert store.meta["config"]["info"]["model"] == "resnet18"
    assert main(args) == 2 and "overwrite" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "t"), "--target", "7"]) == 2
    assert "class index 7" in capsys.readouterr().err and not (tmp_path / "t").exists()
