"""Contributions kernel, targets and reductions against independent float64 NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxequiv import Network, site
from jaxequiv.contributions import (
    contributions,
    global_std,
    normalise_global_std,
    reduce_site,
    resolve_sites,
    spatial_sum,
)
from jaxequiv.contributions import methods as M
from jaxequiv.contributions import targets as T
from jaxequiv.sites import SiteInfo, UnknownSiteError

K = 4


class MLP(nnx.Module):
    """x [B, 5] -> h1 [B, 6] -> h2 [B, 5] -> y [B, K]; ReLU, random (non-zero) biases."""

    def __init__(self, seed=0):
        r = np.random.default_rng(seed)
        shapes = [(5, 6), (6, 5), (5, K)]
        self.w = nnx.List([nnx.Param(jnp.asarray(r.normal(0, 0.7, s), jnp.float32)) for s in shapes])
        self.b = nnx.List([nnx.Param(jnp.asarray(r.normal(0, 0.3, s[1]), jnp.float32)) for s in shapes])

    def __call__(self, x):
        h = site("h1", jax.nn.relu(x @ self.w[0][...] + self.b[0][...]), axes=("batch", "channel"))
        h = site("h2", jax.nn.relu(h @ self.w[1][...] + self.b[1][...]), axes=("batch", "channel"))
        return h @ self.w[2][...] + self.b[2][...]


@pytest.fixture(scope="module")
def mlp():
    m = MLP()
    w = [np.asarray(p[...], np.float64) for p in m.w]
    b = [np.asarray(p[...], np.float64) for p in m.b]
    return Network.from_module(m, (5,)), w, b


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(1).normal(0, 1.5, (6, 5)).astype(np.float32)


# -- independent float64 reference -----------------------------------------------------------------------


def ref_cotangent(kind, y, cls=None, mu=None, prec=None):
    """d target / d y for one example in float64 (hand-derived)."""
    e = np.eye(y.size)
    p = np.exp(y - y.max())
    p /= p.sum()
    if kind == "top1":
        return e[np.argmax(y)]
    if kind == "class":
        return e[cls]
    if kind == "sum":
        return np.ones_like(y)
    if kind == "softmax_top1":
        k = np.argmax(p)
        return p[k] * (e[k] - p)
    if kind == "top1_minus_top2":
        o = np.argsort(-y)
        return e[o[0]] - e[o[1]]
    if kind == "entropy":
        h = -(p * np.log(p)).sum()
        return -p * (np.log(p) + h)
    if kind == "surprisal":
        return prec @ (y - mu)
    raise AssertionError(kind)


def ref_forward_backward(w, b, x, ct_fn):
    """float64 forward and manual backprop of the MLP for one example; ``ct_fn(y)`` gives d T / d y."""
    z1 = x @ w[0] + b[0]
    h1 = np.maximum(z1, 0)
    z2 = h1 @ w[1] + b[1]
    h2 = np.maximum(z2, 0)
    y = h2 @ w[2] + b[2]
    gy = ct_fn(y)
    g2 = w[2] @ gy
    g1 = w[1] @ (g2 * (z2 > 0))
    return y, {"h1": h1, "h2": h2}, {"h1": g1, "h2": g2}


def ref_ig(w, b, x, base, steps, ct_fn):
    """The trapezoid of CODEC §1.3, one example and one step at a time."""
    out = {"h1": 0.0, "h2": 0.0}
    prev = None
    for i in range(steps + 1):
        _, a, g = ref_forward_backward(w, b, base + i / steps * (x - base), ct_fn)
        if prev is not None:
            for n in out:
                out[n] = out[n] + (a[n] - prev[0][n]) * (g[n] + prev[1][n]) / 2
        prev = (a, g)
    return out


TARGET_CASES = ["top1", "top1_fixed", "softmax_top1", "top1_minus_top2", "sum", "entropy", "class", "surprisal"]


def _target_and_ref(kind, w, b, x64):
    if kind == "class":
        cls = np.arange(len(x64)) % K
        return T.given_class(cls), lambda i: (lambda y: ref_cotangent("class", y, cls=cls[i]))
    if kind == "surprisal":
        r = np.random.default_rng(3)
        mu = r.normal(size=K)
        a = r.normal(size=(K, K))
        sigma = a @ a.T + np.eye(K)
        prec = np.linalg.inv(sigma)
        return T.surprisal(mu, sigma), lambda i: (lambda y: ref_cotangent("surprisal", y, mu=mu, prec=prec))
    if kind == "top1_fixed":
        final = [np.argmax(ref_forward_backward(w, b, xi, lambda y: np.zeros_like(y))[0]) for xi in x64]
        return T.top1_fixed(), lambda i: (lambda y: ref_cotangent("class", y, cls=final[i]))
    return kind, lambda i: (lambda y: ref_cotangent(kind, y))


@pytest.mark.parametrize("kind", TARGET_CASES)
def test_ig_equals_float64_loop_for_every_target(mlp, xs, kind):
    net, w, b = mlp
    x64 = xs.astype(np.float64)
    base = np.full(5, 0.2)
    target, ct_for = _target_and_ref(kind, w, b, x64)
    r = contributions(net, xs, ["h1", "h2"], target=target, steps=7, baseline=base.astype(np.float32))
    for i in range(len(xs)):
        ref = ref_ig(w, b, x64[i], base, 7, ct_for(i))
        for n in ("h1", "h2"):
            np.testing.assert_allclose(r.values[n][i], ref[n], rtol=1e-4, atol=1e-5, err_msg=f"{kind} {n} ex {i}")


@pytest.mark.parametrize("method", ["grad_x_act", "normgrad"])
def test_gradient_methods_equal_float64_reference(mlp, xs, method):
    net, w, b = mlp
    r = contributions(net, xs, "h*", method=method, target="top1_minus_top2")
    for i, xi in enumerate(xs.astype(np.float64)):
        y, a, g = ref_forward_backward(w, b, xi, lambda y: ref_cotangent("top1_minus_top2", y))
        np.testing.assert_allclose(r.outputs[i], y, rtol=1e-5, atol=1e-5)
        for n in ("h1", "h2"):
            gn = g[n] / max(np.linalg.norm(g[n]), 1e-8) if method == "normgrad" else g[n]
            np.testing.assert_allclose(r.values[n][i], a[n] * gn, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(r.activations[n][i], a[n], rtol=1e-5, atol=1e-6)


def test_normgrad_floor_keeps_zero_gradients_finite(mlp, xs):
    net, _, _ = mlp
    r = contributions(net, xs, "h1", method="normgrad", target=T.from_callable(lambda y: 0.0 * y[:, 0]))
    np.testing.assert_array_equal(np.asarray(r.values["h1"]), 0.0)


def test_callable_target_equals_builtin(mlp, xs):
    net, _, _ = mlp
    a = contributions(net, xs, "h2", target=lambda y: jnp.sum(y, axis=-1), steps=4)
    b = contributions(net, xs, "h2", target="sum", steps=4)
    np.testing.assert_allclose(a.values["h2"], b.values["h2"], rtol=1e-6, atol=1e-7)


def test_target_values_match_numpy():
    y = np.random.default_rng(0).normal(size=(5, K)).astype(np.float32)
    p = np.exp(y) / np.exp(y).sum(1, keepdims=True)
    srt = np.sort(y, 1)
    mu, sigma = np.zeros(K), 2.0 * np.eye(K)
    expected = {
        "top1": y.max(1),
        "softmax_top1": p.max(1),
        "top1_minus_top2": srt[:, -1] - srt[:, -2],
        "sum": y.sum(1),
        "entropy": -(p * np.log(p)).sum(1),
    }
    for name, v in expected.items():
        np.testing.assert_allclose(T.resolve(name)(jnp.asarray(y)), v, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(T.resolve(2)(jnp.asarray(y)), y[:, 2])
    np.testing.assert_allclose(T.surprisal(mu, sigma)(jnp.asarray(y)), 0.25 * (y**2).sum(1), rtol=1e-5)
    fixed = T.top1_fixed().fix_classes(jnp.asarray(y))
    np.testing.assert_allclose(fixed(jnp.asarray(y) * 0 + jnp.arange(K)), np.argmax(y, 1))


def test_top1_recomputed_differs_from_fixed_when_argmax_switches():
    # y = [x, 1 - x]: the top class switches halfway along the path from 0 to x = 1.
    def apply(p, x):
        return site("h", x * p, axes=("batch", "channel")) @ jnp.array([[1.0, -1.0]]) + jnp.array([0, 1.0])

    net = Network(apply, jnp.float32(1.0), (1,))
    x = np.ones((1, 1), np.float32)
    rec = contributions(net, x, "h", target="top1", steps=10).values["h"]
    fix = contributions(net, x, "h", target="top1_fixed", steps=10).values["h"]
    np.testing.assert_allclose(fix, [[1.0]], rtol=1e-6)  # follows class 0 all the way: T(1) - T(0) = 1
    np.testing.assert_allclose(rec, [[0.0]], atol=1e-6)  # -1/2 then +1/2 on the max


@pytest.mark.parametrize("method", ["ig", "grad_x_act", "normgrad"])
def test_all_outputs_equal_per_class_loop(mlp, xs, method):
    net, _, _ = mlp
    allc = contributions(net, xs, "h*", method=method, outputs="all", steps=5)
    for k in range(K):
        one = contributions(net, xs, "h*", method=method, target=k, steps=5)
        for n in ("h1", "h2"):
            assert allc.values[n].shape == (len(xs), K) + one.values[n].shape[1:]
            np.testing.assert_allclose(allc.values[n][:, k], one.values[n], rtol=1e-5, atol=1e-7)


def test_step_chunks_batches_and_vmap_agree(mlp, xs):
    net, _, _ = mlp
    full = contributions(net, xs, "h*", steps=9)
    for chunk in (2, 4):  # 4 pads the last chunk with repeated alpha = 1
        part = contributions(net, xs, "h*", steps=9, step_chunk=chunk)
        for n in full.values:
            np.testing.assert_allclose(part.values[n], full.values[n], rtol=1e-5, atol=1e-7)
    x, base, target, _, static = M.prepare(net, xs, "h*", "ig", None, "target", 9, None, None)
    per_example = jax.vmap(lambda xi, bi: M._kernel(net, xi[None], bi[None], target, **static)[0])(x, base)
    for n in full.values:
        np.testing.assert_allclose(per_example[n][:, 0], full.values[n], rtol=1e-5, atol=1e-7)


def test_deterministic(mlp, xs):
    net, _, _ = mlp
    a = contributions(net, xs, "h*", steps=3)
    b = contributions(net, xs, "h*", steps=3)
    for n in a.values:
        np.testing.assert_array_equal(a.values[n], b.values[n])


# -- ResNet: completeness over a full cut, reductions with declared spatial axes ---------------------------


@pytest.fixture(scope="module")
def resnet():
    from jaxequiv.models.resnet import ResNet

    model = ResNet("basic", (1, 1), width=4, num_classes=5, stem="small", rngs=nnx.Rngs(0))
    net = Network.from_module(model, (8, 8, 3))
    r = np.random.default_rng(0)

    def perturb(path, p):  # non-zero BN statistics and biases so the baseline has no ties
        name = str(path[-1])
        if "var" in name:
            return p * r.uniform(0.5, 1.5, p.shape).astype(np.float32)
        if "mean" in name or "bias" in name:
            return p + r.normal(0, 0.2, p.shape).astype(np.float32)
        return p

    return net.replace_params(jax.tree_util.tree_map_with_path(perturb, net.params))


def test_ig_completeness_on_resnet_block_outputs(resnet):
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 3)).astype(np.float32)
    r = contributions(resnet, x, "layer*", steps=50, step_chunk=25)
    y1, y0 = np.asarray(resnet(x)), np.asarray(resnet(np.zeros_like(x)))
    delta = y1.max(1) - y0.max(1)
    assert set(r.values) == {"layer1.0", "layer2.0"}
    for n, v in r.values.items():
        total = np.asarray(v).reshape(3, -1).sum(1)
        np.testing.assert_allclose(total, delta, rtol=0.01, err_msg=n)


def test_reductions_use_declared_spatial_axes(resnet):
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype(np.float32)
    r = contributions(resnet, x, "layer2.0", method="grad_x_act")
    info = r.sites["layer2.0"]
    c = np.asarray(r.values["layer2.0"], np.float64)  # [B, H, W, C]
    red = reduce_site(r.values["layer2.0"], info)
    np.testing.assert_allclose(red["positive"], np.maximum(c, 0).sum((1, 2)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(red["negative"], np.minimum(c, 0).sum((1, 2)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(red["sum"], c.sum((1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(red["concat"], np.concatenate([red["positive"], red["negative"]], 1))
    # the same tensor declared channel-first reduces over its last two axes instead
    nchw = SiteInfo(c.transpose(0, 3, 1, 2).shape, np.float32, ("batch", "channel", "height", "width"))
    np.testing.assert_allclose(spatial_sum(jnp.asarray(c.transpose(0, 3, 1, 2)), nchw), c.sum((1, 2)), rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
    seed=st.integers(0, 2**16),
)
def test_reduce_properties(shape, seed):
    """Sign split before the sum: p >= 0 >= n, p + n = net sum, invariance to permuting positions,
    heads x channels flattened in order."""
    r = np.random.default_rng(seed)
    c = r.normal(size=shape).astype(np.float32)
    info = SiteInfo(shape, np.float32, ("batch", "token", "head", "channel"))
    red = {k: np.asarray(v) for k, v in reduce_site(jnp.asarray(c), info).items()}
    assert red["positive"].shape == (shape[0], shape[2] * shape[3])
    assert (red["positive"] >= 0).all() and (red["negative"] <= 0).all()
    np.testing.assert_allclose(red["sum"], c.sum(1).reshape(shape[0], -1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(red["positive"] + red["negative"], red["sum"], rtol=1e-5, atol=1e-6)
    perm = reduce_site(jnp.asarray(c[:, r.permutation(shape[1])]), info, ["positive", "negative"])
    np.testing.assert_allclose(perm["positive"], red["positive"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(perm["negative"], red["negative"], rtol=1e-5, atol=1e-6)
    # with an outputs axis after the batch axis
    both = reduce_site(jnp.asarray(np.stack([c, -c], 1)), info, ["positive"])["positive"]
    np.testing.assert_allclose(both[:, 1], -red["negative"], rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(2, 40), cols=st.integers(1, 6), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_global_std_normalisation(rows, cols, scale, seed):
    x = np.random.default_rng(seed).normal(size=(rows, cols)).astype(np.float32) + 0.5
    s = global_std(x, chunk_rows=7)
    np.testing.assert_allclose(s, np.asarray(x, np.float64).std(), rtol=1e-6)
    np.testing.assert_allclose(global_std(x, ddof=1), np.asarray(x, np.float64).std(ddof=1), rtol=1e-6)
    a, _ = normalise_global_std(x)
    b, sb = normalise_global_std(x * np.float32(scale))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # invariant to a global scale
    np.testing.assert_allclose(sb, s * scale, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(a, np.float64).std(), 1.0, rtol=1e-4)


def test_normalise_rejects_constant():
    with pytest.raises(ValueError, match="global std"):
        normalise_global_std(np.ones((3, 2)))


# -- bad input ---------------------------------------------------------------------------------------------


def test_bad_input_errors(mlp, xs):
    net, _, _ = mlp
    with pytest.raises(UnknownSiteError, match="h1"):
        contributions(net, xs, "layer9")
    with pytest.raises(ValueError, match=r"class index 7 \(example 1\) is out of range"):
        contributions(net, xs, "h1", target=np.array([0, 7, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="class indices for a batch of 6"):
        contributions(net, xs, "h1", target=np.array([0, 1]))
    with pytest.raises(ValueError, match="steps must be"):
        contributions(net, xs, "h1", steps=0)
    with pytest.raises(ValueError, match="step_chunk"):
        contributions(net, xs, "h1", step_chunk=0)
    with pytest.raises(ValueError, match="baseline of shape"):
        contributions(net, xs, "h1", baseline=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="unknown method"):
        contributions(net, xs, "h1", method="lrp")
    with pytest.raises(ValueError, match="unknown target"):
        contributions(net, xs, "h1", target="top5")
    with pytest.raises(ValueError, match="leave target=None"):
        contributions(net, xs, "h1", outputs="all", target="top1")
    with pytest.raises(ValueError, match="input of shape"):
        contributions(net, xs[:, :3], "h1")
    with pytest.raises(ValueError, match="one scalar per example"):
        contributions(net, xs, "h1", target=lambda y: y)
    with pytest.raises(ValueError, match="unknown or no reduction"):
        reduce_site(jnp.zeros((1, 2)), SiteInfo((1, 2), np.float32, ("batch", "channel")), ["max"])
    with pytest.raises(TypeError, match="class indices"):
        T.given_class(1.5)
    with pytest.raises(ValueError, match="singular"):
        T.surprisal(np.zeros(2), np.zeros((2, 2)))


def test_non_finite_contributions_name_site_and_example(mlp, xs):
    net, _, _ = mlp
    bad = xs.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"site 'h1' for example 4"):
        contributions(net, bad, ["h1", "h2"], method="grad_x_act")


def test_resolve_sites_patterns_in_forward_order(mlp):
    net, _, _ = mlp
    infos = resolve_sites(net, ["h2", "h*"], batch=3)
    assert list(infos) == ["h1", "h2"]
    assert infos["h2"].shape == (3, 5) and infos["h2"].axes == ("batch", "channel")
