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
    p = M.prepare(net, xs, "h*", "ig", None, "target", 9, None, None)
    per_example = jax.vmap(lambda xi, bi: M.kernel(net, xi[None], bi[None], p.target, p.config)[0])(p.x, p.baseline)
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
    from tests.nets import tiny_resnet

    model = tiny_resnet(in_channels=3)
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
    """Each block output is a full cut, so its contributions total T(x) - T(0) up to the quadrature error. This
    ReLU network is linear along these paths but for a kink at t = 0 (units at exactly zero), which only the
    trapezoid evaluates: its gap falls as 1/S (measured: 1.0% of T(x) - T(0) at S = 50, 0.25% at S = 200),
    while the midpoint rule, which never samples t = 0, is complete to float rounding (measured < 1e-6)."""
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 3)).astype(np.float32)
    y1, y0 = np.asarray(resnet(x)), np.asarray(resnet(np.zeros_like(x)))
    change = y1.max(1) - y0.max(1)
    gaps = {}
    for steps in (50, 200):
        r = contributions(resnet, x, "layer*", steps=steps, step_chunk=25)
        assert set(r.values) == {"layer1.0", "layer2.0"}
        for n, v in r.values.items():
            total = np.asarray(v, np.float64).reshape(3, -1).sum(1)
            np.testing.assert_allclose(r.delta[n], total - change, rtol=1e-3, atol=1e-6)  # Captum's delta
            gaps[steps, n] = np.abs(total - change) / np.abs(change)
    for n in ("layer1.0", "layer2.0"):
        assert (gaps[200, n] <= 0.0125).all(), gaps  # measured <= 0.0034
        assert (gaps[200, n] <= 0.35 * gaps[50, n]).all(), gaps  # the 1/S rate: 0.25
    mid = contributions(resnet, x, "layer*", steps=10, rule="midpoint")
    for n, v in mid.values.items():
        np.testing.assert_allclose(np.asarray(v, np.float64).reshape(3, -1).sum(1), change, rtol=1e-4)


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


# -- integration rules -------------------------------------------------------------------------------------


def ref_path_point(w, b, x, base, t, ct_fn):
    """float64 activations, gradients and path derivatives d a / d t at x(t) = base + t (x - base)."""
    z1 = (base + t * (x - base)) @ w[0] + b[0]
    h1 = np.maximum(z1, 0)
    d1 = (z1 > 0) * ((x - base) @ w[0])
    z2 = h1 @ w[1] + b[1]
    h2 = np.maximum(z2, 0)
    d2 = (z2 > 0) * (d1 @ w[1])
    gy = ct_fn(h2 @ w[2] + b[2])
    g2 = w[2] @ gy
    g1 = w[1] @ (g2 * (z2 > 0))
    return {"h1": h1, "h2": h2}, {"h1": g1, "h2": g2}, {"h1": d1, "h2": d2}


def ref_rule(w, b, x, base, steps, ct_fn, rule):
    """Each quadrature written out one point at a time (nodes and weights from NumPy, not from jaxequiv)."""
    if rule in ("midpoint", "gauss_legendre"):
        if rule == "midpoint":
            nodes, weights = (np.arange(steps) + 0.5) / steps, np.full(steps, 1 / steps)
        else:
            nodes, weights = np.polynomial.legendre.leggauss(steps)
            nodes, weights = (nodes + 1) / 2, weights / 2
        out = {"h1": 0.0, "h2": 0.0}
        for t, wt in zip(nodes, weights):
            _, g, d = ref_path_point(w, b, x, base, t, ct_fn)
            out = {n: out[n] + wt * g[n] * d[n] for n in out}
        return out
    pts = [ref_path_point(w, b, x, base, i / steps, ct_fn)[:2] for i in range(steps + 1)]
    gm = {"left": lambda g0, g1: g0, "right": lambda g0, g1: g1, "trapezoid": lambda g0, g1: (g0 + g1) / 2}[rule]
    return {n: sum((pts[i][0][n] - pts[i - 1][0][n]) * gm(pts[i - 1][1][n], pts[i][1][n])
                   for i in range(1, steps + 1)) for n in ("h1", "h2")}


@pytest.mark.parametrize("rule", M.RULES)
@pytest.mark.parametrize("kind", ["top1", "softmax_top1"])
def test_every_rule_equals_float64_reference(mlp, xs, rule, kind):
    net, w, b = mlp
    x64, base = xs.astype(np.float64), np.full(5, 0.2)
    r = contributions(net, xs, ["h1", "h2"], target=kind, steps=7, step_chunk=3, rule=rule,
                      baseline=base.astype(np.float32))
    for i in range(len(xs)):
        ref = ref_rule(w, b, x64[i], base, 7, lambda y: ref_cotangent(kind, y), rule)
        y1 = ref_forward_backward(w, b, x64[i], lambda y: y)[0]
        y0 = ref_forward_backward(w, b, base, lambda y: y)[0]
        t = {"top1": np.max, "softmax_top1": lambda y: np.max(np.exp(y) / np.exp(y).sum())}[kind]
        for n in ("h1", "h2"):
            np.testing.assert_allclose(r.values[n][i], ref[n], rtol=1e-4, atol=1e-5, err_msg=f"{rule} {n} ex {i}")
            np.testing.assert_allclose(r.delta[n][i], ref[n].sum() - (t(y1) - t(y0)), rtol=1e-4, atol=1e-5)


class SmoothMLP:
    """tanh MLP 5 -> 8 -> 6 -> 3: an analytic integrand along any path."""

    @staticmethod
    def network():
        r = np.random.default_rng(0)
        shapes = [(5, 8), (8, 6), (6, 3)]
        params = ([r.normal(0, 0.6, s).astype(np.float32) for s in shapes],
                  [r.normal(0, 0.5, s[1]).astype(np.float32) for s in shapes])

        def apply(p, x):
            (w0, w1, w2), (b0, b1, b2) = p
            h = site("h1", jnp.tanh(x @ w0 + b0), axes=("batch", "channel"))
            h = site("h2", jnp.tanh(h @ w1 + b1), axes=("batch", "channel"))
            return h @ w2 + b2

        return Network(apply, params, (5,))


def test_convergence_orders_on_a_smooth_network():
    """Errors against a converged Gauss-Legendre value (S = 40): trapezoid and midpoint O(1/S^2) (measured
    orders 1.96, 2.04 from S = 16 to 32), left and right O(1/S) (0.99, 1.01); Gauss-Legendre with 8 nodes beats
    the trapezoid with 32 points by 7x and is at float32 rounding by 16 nodes (1.2e-7)."""
    net = SmoothMLP.network()
    x = np.random.default_rng(0).normal(0, 1.0, (4, 5)).astype(np.float32)
    ref = contributions(net, x, "h*", rule="gauss_legendre", steps=40, target="sum")

    def err(rule, steps):
        c = contributions(net, x, "h*", rule=rule, steps=steps, target="sum")
        return max(float(np.abs(c.values[n] - ref.values[n]).max() / np.abs(ref.values[n]).max()) for n in c.values)

    for rule, order in (("trapezoid", 2), ("midpoint", 2), ("left", 1), ("right", 1)):
        measured = np.log2(err(rule, 16) / err(rule, 32))
        assert abs(measured - order) < 0.35, (rule, measured)
    assert err("gauss_legendre", 8) < err("trapezoid", 32) / 2
    assert err("gauss_legendre", 16) < 1e-5
    for n, d in ref.delta.items():  # h1 and h2 are full cuts: complete once converged
        assert np.abs(np.asarray(d)).max() < 1e-4, (n, d)


# -- the other methods of the CODEC authors' library -------------------------------------------------------


def test_normact_normgrad_and_jacobian_equal_float64_reference(mlp, xs):
    net, w, b = mlp
    nn_ = contributions(net, xs, "h*", method="normact_normgrad", target="top1_minus_top2")
    jac = contributions(net, xs, "h*", method="jacobian", outputs="all")
    for i, xi in enumerate(xs.astype(np.float64)):
        _, a, g = ref_forward_backward(w, b, xi, lambda y: ref_cotangent("top1_minus_top2", y))
        for n in ("h1", "h2"):
            ref = a[n] / max(np.linalg.norm(a[n]), 1e-8) * g[n] / max(np.linalg.norm(g[n]), 1e-8)
            np.testing.assert_allclose(nn_.values[n][i], ref, rtol=1e-4, atol=1e-6)
        for k in range(K):
            _, _, gk = ref_forward_backward(w, b, xi, lambda y: np.eye(K)[k])
            for n in ("h1", "h2"):  # row k of the Jacobian of the outputs by the units
                np.testing.assert_allclose(jac.values[n][i, k], gk[n], rtol=1e-4, atol=1e-6)


def test_smoothgrad_equals_float64_loop_over_the_same_noise(mlp, xs):
    net, w, b = mlp
    steps, sigma = 5, 0.3
    r = contributions(net, xs, "h*", method="smoothgrad", steps=steps, step_chunk=2, sigma=sigma, key=7,
                      target="sum")
    for i, xi in enumerate(xs.astype(np.float64)):
        eps = sigma * np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(7), i), (steps, 5)), np.float64)
        ref = {"h1": 0.0, "h2": 0.0}
        for e in eps:
            _, a, g = ref_forward_backward(w, b, xi + e, lambda y: ref_cotangent("sum", y))
            ref = {n: ref[n] + a[n] * g[n] / steps for n in ref}
        a_real = ref_forward_backward(w, b, xi, lambda y: y)[1]
        for n in ("h1", "h2"):
            np.testing.assert_allclose(r.values[n][i], ref[n], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(r.activations[n][i], a_real[n], rtol=1e-5, atol=1e-6)
    again = contributions(net, xs, "h*", method="smoothgrad", steps=steps, step_chunk=2, sigma=sigma,
                          key=jax.random.key(7), target="sum")
    np.testing.assert_array_equal(again.values["h1"], r.values["h1"])  # keyed: same key, same noise
    other = contributions(net, xs, "h*", method="smoothgrad", steps=steps, sigma=sigma, key=8, target="sum")
    assert not np.allclose(other.values["h1"], r.values["h1"])
    assert r.delta is None


def test_output_selector_on_structured_outputs(mlp, xs):
    net, _, _ = mlp
    def structured(y):
        return y, {"twice": 2 * y}

    tup = Network(lambda p, x: structured(net.apply(p, x)), net.params, (5,))
    plain = contributions(net, xs, "h*", steps=3, target="sum")
    first = contributions(tup, xs, "h*", steps=3, target="sum", output=0)
    second = contributions(tup, xs, "h*", steps=3, target="sum", output=(1, "twice"))
    picked = contributions(tup, xs, "h*", steps=3, target="sum", output=lambda out: out[1]["twice"])
    for n in plain.values:
        np.testing.assert_array_equal(first.values[n], plain.values[n])
        np.testing.assert_allclose(second.values[n], 2 * plain.values[n], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(picked.values[n], second.values[n])
    with pytest.raises(ValueError, match=r"returns a tuple .*\[0\]: \(6, 4\).*pick the output to explain"):
        contributions(tup, xs, "h*")
    with pytest.raises(ValueError, match="does not select an array"):
        contributions(tup, xs, "h*", output=(1, "thrice"))
    with pytest.raises(ValueError, match="the selected output is a dict"):
        contributions(tup, xs, "h*", output=1)


def test_new_arguments_bad_input(mlp, xs):
    net, _, _ = mlp
    with pytest.raises(ValueError, match="unknown rule"):
        contributions(net, xs, "h1", rule="simpson")
    with pytest.raises(ValueError, match="takes no rule"):
        contributions(net, xs, "h1", method="grad_x_act", rule="left")
    with pytest.raises(ValueError, match="pass key=0"):
        contributions(net, xs, "h1", method="smoothgrad")
    with pytest.raises(ValueError, match="only applies to method='smoothgrad'"):
        contributions(net, xs, "h1", key=0)
    with pytest.raises(ValueError, match="sigma must be"):
        contributions(net, xs, "h1", method="smoothgrad", key=0, sigma=0.0)
    with pytest.raises(TypeError, match="int seed or a jax.random.key"):
        contributions(net, xs, "h1", method="smoothgrad", key="seven")
    with pytest.raises(ValueError, match="input_site applies to"):
        contributions(net, xs, "h1", method="jacobian", input_site="h1")
    with pytest.raises(ValueError, match="baseline applies to method='ig'"):
        contributions(net, xs, "h1", method="normgrad", baseline=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="baseline of shape .* does not fit site 'h1'"):
        contributions(net, xs, "h2", input_site="h1", baseline=np.zeros(5, np.float32))


def test_ig_from_a_site_equals_ig_of_the_network_above_it(mlp, xs):
    """input_site='h1' integrates from h1 = base to h1(x): the same as ig on the network h1 -> y."""
    net, w, b = mlp
    h1 = np.maximum(xs @ w[0] + b[0], 0).astype(np.float32)
    base = np.full(6, 0.1, np.float32)
    upper = Network(lambda p, h: site("h2", jax.nn.relu(h @ p[0] + p[1]), axes=("batch", "channel")) @ p[2] + p[3],
                    tuple(jnp.asarray(a, jnp.float32) for a in (w[1], b[1], w[2], b[2])), (6,))
    got = contributions(net, xs, "h2", input_site="h1", baseline=base, steps=6)
    want = contributions(upper, h1, "h2", baseline=base, steps=6)
    np.testing.assert_allclose(got.values["h2"], want.values["h2"], rtol=1e-5, atol=1e-6)


def test_per_head_reduction_and_token_mask():
    r = np.random.default_rng(0)
    c = r.normal(size=(2, 5, 3, 4)).astype(np.float32)  # [B, T, H, dh]
    info = SiteInfo(c.shape, np.float32, ("batch", "token", "head", "channel"))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    red = reduce_site(jnp.asarray(c), info, keep=("head",), mask=mask)
    real = c * mask[:, :, None, None]
    np.testing.assert_allclose(red["positive"], np.maximum(real, 0).sum((1, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(red["negative"], np.minimum(real, 0).sum((1, 3)), rtol=1e-5, atol=1e-6)
    assert red["concat"].shape == (2, 6)
    with pytest.raises(ValueError, match="no axis \\['head'\\]"):
        reduce_site(jnp.zeros((1, 2)), SiteInfo((1, 2), np.float32, ("batch", "channel")), keep=("head",))
    with pytest.raises(ValueError, match="no token axis"):
        spatial_sum(jnp.zeros((1, 2)), SiteInfo((1, 2), np.float32, ("batch", "channel")), mask=np.ones((1, 2)))
    with pytest.raises(ValueError, match="token mask has shape"):
        spatial_sum(jnp.asarray(c), info, mask=np.ones((2, 4)))
