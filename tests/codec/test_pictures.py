"""Mode pictures: the few-pass JVP/VJP maps against the reference's one-backward-pass-per-unit loop."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxequiv.codec.metrics import selectivity
from jaxequiv.codec.pictures import mode_picture_maps, mode_pictures, picture_mask
from jaxequiv.network import Network
from jaxequiv.sae import Modes
from jaxequiv.sites import Add, run
from tests.nets import tiny_resnet


@pytest.fixture(scope="module")
def tiny():
    model = tiny_resnet(num_classes=3, in_channels=2, seed=1)
    net = Network.from_module(model, (5, 5, 2))
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 2)).astype(np.float32)
    return net, x


def reference_maps(net, xi, site, channels, y, score):
    """The reference procedure: one backward pass to the input per unit (k, p), accumulated in float64."""
    xb = jnp.asarray(xi[None])

    def h_fn(z):
        return run(net.apply, net.params, z, capture=[site])[1][site]

    def out(delta):
        logits, _ = run(net.apply, net.params, xb, edits={site: Add(delta)})
        return (jax.nn.softmax(logits) if score == "softmax" else logits)[0, y]

    h = h_fn(xb)
    j = np.asarray(jax.grad(out)(jnp.zeros_like(h)), np.float64)[0]
    unit_grad = jax.jit(lambda z, i, r, c: jax.grad(lambda q: h_fn(q)[0, i, r, c])(z)[0])
    pos = np.zeros(xi.shape)
    neg = np.zeros(xi.shape)
    units = np.zeros(h.shape[1:])
    for k in channels:
        for i in range(h.shape[1]):
            for r in range(h.shape[2]):
                jk = j[i, r, k] * np.asarray(unit_grad(xb, i, r, k), np.float64)
                units[i, r, k] = np.sum(jk * xi)
                if units[i, r, k] > 0:
                    pos += jk
                else:
                    neg += jk
    return pos * xi, neg * xi, units


@pytest.mark.parametrize("site,score", [("layer1.0", "softmax"), ("layer2.0", "logit")])
def test_maps_match_per_unit_reference(tiny, site, score):
    net, x = tiny
    c = 4 if site == "layer1.0" else 8
    atoms = np.random.default_rng(3).standard_normal((2, c)).astype(np.float32)
    maps = mode_picture_maps(net, x, site, atoms, [1, 2], n_channels=2, score=score)
    for i in range(2):
        channels = np.argsort(-atoms[i], kind="stable")[:2]
        pos, neg, units = reference_maps(net, x[i], site, channels, [1, 2][i], score)
        scale = np.abs(units).max()
        np.testing.assert_allclose(maps.units[i], units, atol=1e-5 * scale + 1e-8)
        np.testing.assert_allclose(maps.positive[i], pos, atol=1e-5 * scale + 1e-8, rtol=1e-4)
        np.testing.assert_allclose(maps.negative[i], neg, atol=1e-5 * scale + 1e-8, rtol=1e-4)
        # completeness: the map sums to the channel set's total contribution
        np.testing.assert_allclose(np.sum(maps.total[i]), units.sum(), rtol=1e-4, atol=1e-7)


def test_maps_bad_input(tiny):
    net, x = tiny
    with pytest.raises(ValueError, match="not a site"):
        mode_picture_maps(net, x, "layer7.0", np.ones(4), 0)
    with pytest.raises(ValueError, match="atoms must have shape"):
        mode_picture_maps(net, x, "layer1.0", np.ones(5), 0)
    with pytest.raises(ValueError, match="score"):
        mode_picture_maps(net, x, "layer1.0", np.ones(4), 0, score="prob")
    with pytest.raises(ValueError, match="n must be"):
        mode_picture_maps(net, x, "layer1.0", np.ones(4), 0, n_channels=9)


def test_picture_mask_reference():
    m = np.random.default_rng(4).standard_normal((3, 6, 7, 3))
    got = picture_mask(m, size=1, gamma=2.5)
    a = np.abs(m).mean(-1)
    for i in range(3):
        want = np.clip(2.5 * (a[i] - a[i].min()) / (a[i].max() - a[i].min()), 0, 1)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
    assert got.shape == (3, 6, 7) and got.min() >= 0 and got.max() <= 1
    np.testing.assert_array_equal(picture_mask(np.ones((4, 4, 3))), np.zeros((4, 4)))
    spike = np.zeros((9, 9, 1))
    spike[4, 4] = 100.0
    spike[:, :2] = 1.0
    filtered = picture_mask(spike, size=3, gamma=1.0)
    assert filtered[4, 4] == 0.0 and filtered[4, 0] == 1.0  # an isolated pixel is filtered away
    with pytest.raises(ValueError, match="size"):
        picture_mask(spike, size=0)


def test_mode_pictures_draw_each_class_first_correct_example(tiny):
    net, _ = tiny
    x = np.random.default_rng(5).standard_normal((12, 5, 5, 2)).astype(np.float32)
    pred = np.asarray(jnp.argmax(net(jnp.asarray(x)), -1))
    y = pred.copy()
    y[0] = (pred[0] + 1) % 3  # misclassified: never drawn
    r = np.random.default_rng(6)
    codes = np.abs(r.standard_normal((12, 5))).astype(np.float32)
    codes[:, 2] = 0  # a dead mode: indices count alive modes only
    modes = Modes(codes, (codes != 0).any(0), r.standard_normal((5, 4)).astype(np.float32))
    corr = r.uniform(-1, 1, (4, 3)).astype(np.float32)
    sel = SimpleNamespace(modes=selectivity(corr))
    pics = mode_pictures(net, x, y, "layer1.0", modes, sel, predictions=pred, n_images=2, n_channels=2, size=1,
                         gamma=2.0)
    good = [i for i in range(12) if y[i] == pred[i]]
    chosen = [min(i for i in good if y[i] == c) for c in sorted(set(y[good]))][:2]
    top = np.argmax(corr, axis=0)[y[chosen]]
    assert pics.site == "layer1.0" and list(pics.classes) == list(y[chosen]) and list(pics.modes) == list(top)
    np.testing.assert_array_equal(pics.images, x[chosen])
    maps = mode_picture_maps(net, x[chosen], "layer1.0", modes.atoms[modes.alive][top], y[chosen], n_channels=2)
    np.testing.assert_allclose(pics.masks, picture_mask(np.asarray(maps.total), size=1, gamma=2.0), atol=1e-6)
    default = mode_pictures(net, x, y, "layer1.0", modes, sel, n_images=2, n_channels=2, size=1, gamma=2.0)
    np.testing.assert_array_equal(default.classes, pics.classes)  # predictions from one forward pass
    with pytest.raises(ValueError, match="no example is classified correctly"):
        mode_pictures(net, x, (pred + 1) % 3, "layer1.0", modes, sel, predictions=pred)
    with pytest.raises(ValueError, match=r"must have shape \(12,\)"):
        mode_pictures(net, x, y[:5], "layer1.0", modes, sel)
