"""An in-memory contributions store for the store-level CODEC tests."""

import numpy as np


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
    """Sites ``layer{i}.0`` of the given widths; 4 classes, positive contributions larger on a class's channels."""
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
