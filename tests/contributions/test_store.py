"""Dataset driver and on-disk store: equal to the in-memory kernel, resumable, never half-written."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxequiv import Network, site
from jaxequiv.contributions import build_store, contributions, driver, open_store, reduce_site, spatial_sum
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
    assert meta["sites"]["conv2"] == {"channels": 4, "axes": list(AXES), "shape": [3, 3, 4], "reduce": "spatial"}
    assert np.load(tmp_path / "s" / "conv2" / "concat.npy", mmap_mode="r").shape == (7, 8)
    assert not os.path.exists(str(tmp_path / "s") + PARTIAL_SUFFIX)


def test_interrupted_build_resumes_without_recomputing(net, data, tmp_path, monkeypatch):
    x, y = data
    root = tmp_path / "s"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_store(net, Rows(x, fail_from=6), root, "conv*", labels=y, **KW)
    assert not root.exists()  # never half-written at the final path
    with pytest.raises(FileNotFoundError, match="unfinished build"):
        open_store(root)
    meta = json.loads((tmp_path / ("s" + PARTIAL_SUFFIX) / "meta.json").read_text())
    assert meta["finished_chunks"] == [0, 1] and not meta["complete"]

    rows, computed = Rows(x), []
    chunk = driver._chunk
    monkeypatch.setattr(driver, "_chunk", lambda net, x, *a, **k: computed.append(len(x)) or chunk(net, x, *a, **k))
    store = build_store(net, rows, root, "conv*", labels=y, **KW)
    assert rows.reads == [(0, 3), (3, 6), (6, 7)]  # finished chunks are re-read once to check their content
    assert computed == [3]  # only the unfinished chunk is computed (padded to the chunk size)
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
    assert store.meta["config"]["info"]["model"] == "resnet18" and store.meta["config"]["info"]["width"] == 2
    assert main(args) == 2 and "overwrite" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "t"), "--target", "7"]) == 2
    assert "class index 7" in capsys.readouterr().err and not (tmp_path / "t").exists()
    # --mesh: each chunk of 8 (the 5 examples padded) split over 8 (fake) devices, the same store
    assert main([*args[:-1], str(tmp_path / "m"), "--chunk-size", "8", "--mesh", "data=4,stack=2"]) == 0
    for v in store.variants:
        want = np.asarray(store.array("layer4.1", v))
        np.testing.assert_allclose(open_store(tmp_path / "m").array("layer4.1", v), want, rtol=0,
                                   atol=1e-6 * np.abs(want).max())
    assert main([*args[:-1], str(tmp_path / "u"), "--mesh", ""]) == 2  # every device on data: chunks of 4 do not split
    assert "multiple of the 8 devices" in capsys.readouterr().err


def _crash_after_two_chunks(net, x, root, **kw):
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_store(net, Rows(x, fail_from=6), root, "conv*", **{**KW, **kw})


def test_resume_refuses_inputs_changed_in_place(net, data, tmp_path):
    """Kill, replace the data file in place with the same shape, rerun: refused, naming the rows."""
    x, y = data
    path = tmp_path / "x.npy"
    np.save(path, x)
    _crash_after_two_chunks(net, np.load(path, mmap_mode="r"), tmp_path / "s", labels=y)
    np.save(path, x[::-1].copy())  # same shape and dtype, other content
    with pytest.raises(ValueError, match=r"inputs of rows 0..2 differ by content"):
        build_store(net, np.load(path, mmap_mode="r"), tmp_path / "s", "conv*", labels=y, **KW)
    np.save(path, x)  # restored: resumes
    store = build_store(net, np.load(path, mmap_mode="r"), tmp_path / "s", "conv*", labels=y, **KW)
    np.testing.assert_array_equal(store.array("conv2", "sum"),
                                  build_store(net, x, tmp_path / "full", "conv*", labels=y, **KW).array("conv2", "sum"))


def test_resume_refuses_other_labels_model_or_target(net, data, tmp_path):
    x, y = data
    _crash_after_two_chunks(net, x, tmp_path / "s", labels=y, target=y)
    with pytest.raises(ValueError, match="its labels differ by content"):
        build_store(net, x, tmp_path / "s", "conv*", labels=(y + 1) % 3, target=y, **KW)
    with pytest.raises(ValueError, match="its target differ by content"):
        build_store(net, x, tmp_path / "s", "conv*", labels=y, target=(y + 1) % 3, **KW)
    other = net.replace_params(jax.tree_util.tree_map(lambda p: p * 1.01, net.params))
    with pytest.raises(ValueError, match="its model differ by content"):
        build_store(other, x, tmp_path / "s", "conv*", labels=y, target=y, **KW)


def test_full_disk_is_a_clear_error_before_any_work(tmp_path):
    """The store's files are allocated up front: over the file-size limit (as on a full disk) the build stops
    with one clear OSError, computes nothing and leaves nothing behind (was: SIGBUS mid-run)."""
    script = f"""
import resource, signal, numpy as np
from tests.contributions.test_store import TinyCNN, Rows
from jaxequiv import Network
from jaxequiv.contributions import build_store
net = Network.from_module(TinyCNN(), (6, 6, 2))
rows = Rows(np.zeros((4000, 6, 6, 2), np.float32))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    build_store(net, rows, {str(tmp_path / 's')!r}, "conv*", steps=2, chunk_size=500, progress=False)
except OSError as e:
    print("ERROR", e, "READS", rows.reads)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "not enough disk space for the contributions store" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "MiB (4000 examples" in out.stdout and "READS []" in out.stdout
    assert os.listdir(tmp_path) == []


def test_smoothgrad_store_draws_per_example_noise(net, data, tmp_path):
    """Example i draws from fold_in(key, i): a store cut in chunks of 3 equals one batch of 7."""
    x, _ = data
    store = build_store(net, x, tmp_path / "s", "conv2", method="smoothgrad", steps=3, key=5, sigma=0.5,
                        chunk_size=3, progress=False)
    ref = contributions(net, x, "conv2", method="smoothgrad", steps=3, key=5, sigma=0.5)
    np.testing.assert_allclose(store.array("conv2", "sum"), reduce_site(ref.values["conv2"], ref.sites["conv2"],
                               ["sum"])["sum"], rtol=1e-5, atol=1e-6)
    assert store.meta["config"]["sigma"] == 0.5 and store.meta["config"]["steps"] == 3


def test_token_model_store_with_positions_mask_and_heads(tmp_path):
    """A language model: token inputs with an attention mask (args), ig from the embeddings, the next-token target
    at each example's last real position, padding left out of the token sums, attention sites per head."""
    from jaxequiv.contributions import targets as T
    from jaxequiv.models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(vocab_size=11, n_layer=1, n_head=2, d_model=8, n_ctx=6)
    net = Transformer(cfg, nnx.Rngs(0)).network()
    r = np.random.default_rng(0)
    ids = r.integers(0, 11, (5, 6))
    mask = (np.arange(6)[None] < np.array([6, 4, 2, 5, 3])[:, None]).astype(np.int32)
    target = T.at_position("top1", "last", mask=mask)
    kw = dict(method="ig", steps=3, input_site="embed", target=target, args=(mask,))
    store = build_store(net, ids, tmp_path / "s", ["h.0.attn.z", "h.0"], chunk_size=2, progress=False,
                        mask=mask, per_head=True, **kw)
    ref = contributions(net, ids, ["h.0.attn.z", "h.0"], **kw)
    assert store.meta["sites"]["h.0.attn.z"]["channels"] == 2 and store.meta["sites"]["h.0"]["channels"] == 8
    for s, keep in (("h.0.attn.z", ("head",)), ("h.0", None)):
        want = reduce_site(ref.values[s], ref.sites[s], keep=keep, mask=mask)
        for v in ("positive", "negative"):
            np.testing.assert_allclose(store.array(s, v), want[v], rtol=1e-5, atol=1e-6, err_msg=f"{s}/{v}")
    last = np.asarray(ref.outputs)[np.arange(5), mask.sum(1) - 1]
    np.testing.assert_array_equal(store.predictions, last.argmax(-1))
    with pytest.raises(ValueError, match="every-position target"):
        build_store(net, ids, tmp_path / "t", "h.0", **{**kw, "target": T.at_position("top1", "all", mask=mask)})


def test_cli_checkpoint_meta_records_the_checkpoints_widths(tmp_path):
    """A width-8 checkpoint: meta.json has its per-site widths and no --width default (was: width 64)."""
    from jaxequiv.adapters.torch import save
    from jaxequiv.cli import main
    from tests.nets import tiny_resnet

    save(tiny_resnet(width=8, num_classes=3),
         tmp_path / "ckpt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32))
    assert main(["contributions", "--data", str(tmp_path / "x.npy"), "--checkpoint", str(tmp_path / "ckpt"),
                 "--method", "grad_x_act", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    meta = open_store(tmp_path / "s").meta
    assert {s: v["channels"] for s, v in meta["sites"].items()} == {"layer1.0": 8, "layer2.0": 16}
    assert "width" not in meta["config"]["info"] and meta["config"]["info"]["model"] == str(tmp_path / "ckpt")
