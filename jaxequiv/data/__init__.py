"""Offline data sets and batching. Images: :func:`load_digits` (scikit-learn's 8x8 digits, the always-available
default) and :func:`load_mnist` (MNIST / Fashion-MNIST IDX files), both returning a :class:`Dataset`;
:func:`batches` iterates aligned minibatches. Task generators live in their own modules (e.g.
``jaxequiv.data.ioi``)."""

from jaxequiv.data.batching import batches
from jaxequiv.data.images import FASHION_CLASSES, Dataset, load_digits, load_mnist, read_idx

__all__ = ["Dataset", "load_digits", "load_mnist", "read_idx", "batches", "FASHION_CLASSES"]
