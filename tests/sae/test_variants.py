"""SAE variants against independent references: PyTorch autograd (float64) and NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxequiv import sae
from jaxequiv.sae import variants as V

torch = pytest.importorskip("torch")

D, K, B = 6, 12, 8


def _x(seed=0, n=B, d=D):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _noise(shape, seed, scale=0.05):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)


@jax.jit
def _value_and_grad(cfg, params, x, key, state):
    """((loss, LossOutput), grads) of ``cfg.loss``, compiled once per variant (faster than op-by-op dispatch)."""
    def objective(p):
        out = cfg.loss(p, x, key, state)
        return out.loss, out

    return jax.value_and_grad(objective, has_aux=True)(params)


def _grads_close(jg, tg, names, rtol=1e-4, atol=1e-6):
    for n in names:
        np.testing.assert_allclose(np.asarray(jg[n]), tg[n].grad.numpy(), rtol=rtol, atol=atol, err_msg=n)


def test_stsae_matches_torch_forward_and_grads():
    cfg = sae.STSAE(d_in=D, d_sae=K, hidden=5, theta=0.5, l1=1e-2, dropout=0.0)
    p = cfg.init(jax.random.key(0))
    p = {k: v + _noise(v.shape, i) for i, (k, v) in enumerate(p.items())}
    x = _x()
    tp = {k: _t(v) for k, v in p.items()}
    tx = torch.tensor(x, dtype=torch.float64)
    h = tx
    for i in (1, 2):
        h = torch.relu(h @ tp[f"W_{i}"] + tp[f"b_{i}"])
        h = torch.nn.functional.layer_norm(h, (5,), tp[f"ln_{i}_scale"], tp[f"ln_{i}_bias"], eps=1e-5)
    u = torch.sigmoid(h @ tp["W_enc"])
    z = u * (u >= 0.5).double().detach()
    xh = z @ tp["W_dec"]
    loss = ((xh - tx) ** 2).mean() + 1e-2 * tp["W_dec"].abs().mean()
    loss.backward()
    np.testing.assert_allclose(np.asarray(cfg.encode(p, x)), z.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cfg.decode(p, cfg.encode(p, x))), xh.detach().numpy(), rtol=1e-4, atol=1e-5)
    (jl, _), g = _value_and_grad(cfg, p, x, None, cfg.init_state())
    np.testing.assert_allclose(float(jl), loss.item(), rtol=1e-5)
    _grads_close(g, tp, p.keys())
    assert 0 < int((z > 0).sum()) < z.numel()  # the threshold is exercised


def test_stsae_nonneg_dictionary_and_dropout_scaling():
    cfg = sae.STSAE(d_in=D, d_sae=K, theta=0.5, nonneg=True)
    p = cfg.init(jax.random.key(1))
    assert np.all(np.asarray(cfg.atoms(p)) >= 0) and np.any(np.asarray(p["W_dec"]) < 0)
    z = cfg.encode(p, _x())
    np.testing.assert_allclose(np.asarray(cfg.decode(p, z)), np.asarray(z) @ np.maximum(np.asarray(p["W_dec"]), 0),
                               rtol=1e-5, atol=1e-6)
    # dropout changes training codes but not eval codes; Xavier bound on the dictionary
    u_train = cfg.codes_u(p, _x(), jax.random.key(3))
    assert not np.allclose(np.asarray(u_train), np.asarray(cfg.codes_u(p, _x())))
    assert np.abs(np.asarray(p["W_dec"])).max() <= np.sqrt(6 / (K + D))


def test_stsae_init_is_torch_linear_and_xavier():
    """The library initialisers draw PyTorch nn.Linear's U(+-1/sqrt(fan_in)) and Xavier-uniform's
    U(+-sqrt(6 / (fan_in + fan_out))) from the same bits as the hand-written bounds (equal within 2 ulp)."""
    cfg = sae.STSAE(d_in=D, d_sae=3 * D, hidden=5)
    key = jax.random.key(3)
    p = cfg.init(key)
    k1, k2, k3, k4 = jax.random.split(key, 4)

    def close(a, k, shape, bound):
        ref = jax.random.uniform(k, shape, jnp.float32, -bound, bound)
        np.testing.assert_allclose(np.asarray(a), np.asarray(ref), rtol=0, atol=2 * np.spacing(np.float32(bound)))

    for i, k, fan_in, fan_out in ((1, k1, D, 5), (2, k2, 5, 5), (None, k3, 5, 3 * D)):
        kw, kb = jax.random.split(k)
        close(p[f"W_{i}" if i else "W_enc"], kw, (fan_in, fan_out), 1 / np.sqrt(fan_in))
        if i:
            close(p[f"b_{i}"], kb, (fan_out,), 1 / np.sqrt(fan_in))
    close(p["W_dec"], k4, (3 * D, D), np.sqrt(6 / (4 * D)))


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.5])
def test_dropout_masks_rate_and_independence(rate):
    keys = [jax.random.fold_in(jax.random.key(7), i) for i in range(3)]
    masks = np.stack([np.asarray(V._dropout_keep(k, rate, (400, 50))) for k in keys])
    n = masks[0].size
    assert abs((~masks).mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / masks.size) + 1e-9
    if 0 < rate:  # distinct keys -> (nearly) uncorrelated masks; rows and columns not striped
        assert abs(np.mean(masks[0] & masks[1]) - (1 - rate) ** 2) < 4 * np.sqrt(1 / n)
        assert np.abs((~masks[0]).mean(0) - rate).max() < 6 * np.sqrt(rate * (1 - rate) / 400)
        assert np.abs((~masks[0]).mean(1) - rate).max() < 6 * np.sqrt(rate * (1 - rate) / 50)
    np.testing.assert_array_equal(masks[0], np.asarray(V._dropout_keep(keys[0], rate, (400, 50))))


def test_relu_l1_matches_torch():
    cfg = sae.ReluL1(d_in=D, d_sae=K, l1=0.1)
    p = cfg.init(jax.random.key(0))
    p["b_enc"] = p["b_enc"] + 0.1
    p["b_dec"] = p["b_dec"] + 0.2
    x = _x(1)
    tp = {k: _t(v) for k, v in p.items()}
    tx = torch.tensor(x, dtype=torch.float64)
    z = torch.relu((tx - tp["b_dec"]) @ tp["W_enc"] + tp["b_enc"])
    xh = z @ tp["W_dec"] + tp["b_dec"]
    loss = ((xh - tx) ** 2).mean() + 0.1 * (z * tp["W_dec"].norm(dim=1)).sum(1).mean()
    loss.backward()
    (jl, aux), g = _value_and_grad(cfg, p, x, None, cfg.init_state())
    np.testing.assert_allclose(float(jl), loss.item(), rtol=1e-5)
    _grads_close(g, tp, p.keys())


def _torch_topk_loss(p, x, k, dead=None, k_aux=None, aux_coef=0.0):
    tp = {n: _t(v) for n, v in p.items()}
    tx = torch.tensor(x, dtype=torch.float64)
    pre = (tx - tp["b_dec"]) @ tp["W_enc"] + tp["b_enc"]
    top = torch.topk(pre, k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    xh = z @ tp["W_dec"] + tp["b_dec"]
    loss = ((xh - tx) ** 2).mean()
    if dead is not None and dead.any():
        dm = torch.tensor(dead)
        masked = torch.where(dm, pre, torch.tensor(-np.inf, dtype=torch.float64))
        t2 = torch.topk(masked, k_aux, dim=-1)
        vals = torch.relu(t2.values) * dm[t2.indices]
        za = torch.zeros_like(pre).scatter(-1, t2.indices, vals)
        resid = (tx - xh).detach()
        aux = ((za @ tp["W_dec"] - resid) ** 2).mean() * min(dead.sum() / k_aux, 1.0)
        loss = loss + aux_coef * aux
    loss.backward()
    return loss.item(), tp


@pytest.mark.parametrize("n_dead", [0, 3])
def test_topk_sparse_step_matches_dense_torch(n_dead):
    cfg = sae.TopK(d_in=D, d_sae=K, k=3, dead_steps=10, k_aux=4, aux_coef=0.5)
    p = cfg.init(jax.random.key(2))
    p["b_enc"] = p["b_enc"] + _noise((K,), 5)
    x = _x(2)
    state = cfg.init_state()
    dead = np.zeros(K, bool)
    dead[:n_dead] = True
    state = {"since_fired": jnp.asarray(np.where(dead, 10, 0), jnp.int32)}
    (jl, aux), g = _value_and_grad(cfg, p, x, None, state)
    tl, tp = _torch_topk_loss(p, x, 3, dead, 4, 0.5)
    np.testing.assert_allclose(float(jl), tl, rtol=1e-5)
    _grads_close(g, tp, p.keys())
    assert (float(aux.aux_loss) > 0) == (n_dead > 0)
    # inference encode agrees with the training path, and so do the batch statistics
    z = np.asarray(cfg.encode(p, x))
    np.testing.assert_allclose(np.asarray(cfg.decode(p, z)), np.asarray(aux.recon), atol=1e-5)
    _check_batch_stats(aux, z)


def test_matryoshka_matches_dense_torch():
    assert sae.Matryoshka(d_in=D, d_sae=K, k=4).prefixes == (1, 3, 6, K)  # default: d_sae / 8, / 4, / 2, / 1
    sizes = (2, 5, K)
    cfg = sae.Matryoshka(d_in=D, d_sae=K, k=4, prefixes=sizes)
    p = cfg.init(jax.random.key(6))
    p = {**p, "b_dec": p["b_dec"] + 0.1, "b_enc": p["b_enc"] + _noise((K,), 1)}
    x = _x(5)
    (jl, aux), g = _value_and_grad(cfg, p, x, None, cfg.init_state())
    tp = {n: _t(v) for n, v in p.items()}
    tx = torch.tensor(x, dtype=torch.float64)
    pre = (tx - tp["b_dec"]) @ tp["W_enc"] + tp["b_enc"]
    top = torch.topk(pre, 4, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    loss = sum(((z[:, :m] @ tp["W_dec"][:m] + tp["b_dec"] - tx) ** 2).mean() for m in sizes)
    loss.backward()
    np.testing.assert_allclose(float(jl), loss.item(), rtol=1e-5)
    _grads_close(g, tp, p.keys())
    full = z.detach() @ tp["W_dec"].detach() + tp["b_dec"].detach()
    np.testing.assert_allclose(np.asarray(aux.recon), full.numpy(), rtol=1e-5, atol=1e-6)
    _check_batch_stats(aux, z.detach().numpy())
    np.testing.assert_allclose(np.asarray(cfg.decode(p, cfg.encode(p, x))), full.numpy(), rtol=1e-5, atol=1e-6)
    for bad in ((3, 2, K), (2, 5), (0, K)):
        with pytest.raises(ValueError, match="prefixes must be increasing"):
            sae.Matryoshka(d_in=D, d_sae=K, k=2, prefixes=bad)


def test_batchtopk_keeps_k_per_row_on_average_and_thresholds():
    cfg = sae.BatchTopK(d_in=D, d_sae=K, k=2, threshold_lr=0.5)
    p = cfg.init(jax.random.key(0))
    x = _x(3, n=10)
    aux = cfg.loss(p, x, None, cfg.init_state())
    pre = np.maximum((x - np.asarray(p["b_dec"])) @ np.asarray(p["W_enc"]) + np.asarray(p["b_enc"]), 0)
    z = np.where(pre >= np.sort(pre.ravel())[-20], pre, 0)  # the k*B largest, over the batch
    assert (z > 0).sum() == 2 * 10
    np.testing.assert_allclose(np.asarray(aux.recon), z @ np.asarray(p["W_dec"]) + np.asarray(p["b_dec"]),
                               rtol=1e-5, atol=1e-6)
    _check_batch_stats(aux, z)
    s1 = cfg.update_state(cfg.init_state(), aux)
    col_min = np.where(z > 0, z, np.inf).min(0)
    fired = np.isfinite(col_min)
    np.testing.assert_allclose(np.asarray(s1["threshold"])[fired], col_min[fired], rtol=1e-6)
    assert np.isclose(float(s1["global_threshold"]), z[z > 0].min())
    s2 = cfg.update_state(s1, aux)  # EMA with rate 0.5 of the same minimum keeps it
    np.testing.assert_allclose(np.asarray(s2["threshold"]), np.asarray(s1["threshold"]), rtol=1e-6)
    thr = np.asarray(cfg.thresholds(s1))
    assert np.all(thr[~fired] == np.float32(z[z > 0].min()))
    zz = np.asarray(cfg.encode(p, x, s1))
    pre_raw = (x - np.asarray(p["b_dec"])) @ np.asarray(p["W_enc"]) + np.asarray(p["b_enc"])
    np.testing.assert_allclose(zz, np.where(pre_raw > thr, pre_raw, 0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="state"):
        cfg.encode(p, x)


def _check_batch_stats(out, z):
    """``fired``, ``l0`` and ``min_active`` of a LossOutput against the batch's dense (B, K) codes ``z``."""
    np.testing.assert_array_equal(np.asarray(out.fired), (z != 0).any(0))
    np.testing.assert_allclose(float(out.l0), (z != 0).sum(1).mean(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.min_active), np.where(z != 0, z, np.inf).min(0), rtol=1e-5)


@pytest.mark.parametrize("cfg", [sae.ReluL1(d_in=D, d_sae=K), sae.TopK(d_in=D, d_sae=K, k=3),
                                 sae.Matryoshka(d_in=D, d_sae=K, k=3), sae.BatchTopK(d_in=D, d_sae=K, k=3),
                                 sae.JumpReLU(d_in=D, d_sae=K, init_threshold=0.05),
                                 sae.STSAE(d_in=D, d_sae=K, theta=0.5, dropout=0.0)], ids=lambda c: c.name)
def test_every_variant_implements_the_interface(cfg):
    """One loss signature and one LossOutput for every variant; fields with the documented shapes."""
    assert isinstance(cfg, sae.SAE)
    p = cfg.init(jax.random.key(0))
    state = cfg.init_state()
    x = _x(8)
    for with_aux in (True, False):
        out = cfg.loss(p, x, jax.random.key(1), state, with_aux=with_aux)
        assert isinstance(out, sae.LossOutput)
        assert [np.shape(v) for v in out] == [(), (), (B, D), (K,), (), (K,), ()]
        np.testing.assert_allclose(float(out.mse), np.mean((np.asarray(out.recon) - x) ** 2), rtol=1e-5)
    if not isinstance(cfg, sae.BatchTopK):  # batchtopk's training codes are batch-level, not encode's
        _check_batch_stats(out, np.asarray(cfg.encode(p, x, state)))
    assert not bool(cfg.aux_needed(state)) and cfg.has_aux_loss == isinstance(cfg, sae.TopK)
    assert cfg.atoms(p).shape == (K, D) and cfg.decode(p, cfg.encode(p, x, state)).shape == (B, D)
    s1 = cfg.update_state(state, out)
    assert jax.tree_util.tree_structure(s1) == jax.tree_util.tree_structure(state)
    np.testing.assert_array_equal(np.asarray(s1["since_fired"]), np.where(np.asarray(out.fired), 0, 1))


def test_jumprelu_straight_through_gradients():
    eps = 0.5
    cfg = sae.JumpReLU(d_in=D, d_sae=K, l0=0.3, bandwidth=eps, init_threshold=0.2)
    p = cfg.init(jax.random.key(4))
    x = _x(4)
    (jl, aux), g = _value_and_grad(cfg, p, x, None, cfg.init_state())
    # NumPy float64 reference of the pseudo-derivative w.r.t. log_threshold
    P = {k: np.asarray(v, np.float64) for k, v in p.items()}
    pre = (x - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
    th = P["threshold"]
    z = np.where(pre > th, pre, 0)
    xh = z @ P["W_dec"] + P["b_dec"]
    dxh = 2 * (xh - x) / x.size
    dz = dxh @ P["W_dec"].T
    kern = (np.abs((pre - th) / eps) < 0.5).astype(float)
    dth = (dz * -(th / eps) * kern).sum(0) + 0.3 * (-(1 / eps) * kern).sum(0) / x.shape[0]
    np.testing.assert_allclose(np.asarray(g["threshold"]), dth, rtol=1e-4, atol=1e-7)
    assert np.abs(dth).sum() > 0
    mse = ((xh - x) ** 2).mean()
    np.testing.assert_allclose(float(jl), mse + 0.3 * (pre > th).sum(1).mean(), rtol=1e-5)
    assert p["threshold"].dtype == jnp.float32
    assert float(cfg.post_update({**p, "threshold": p["threshold"] - 1.0})["threshold"].min()) == 0.0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), theta=st.floats(0.05, 0.95), scale=st.floats(0.1, 10.0))
def test_code_ranges_and_linear_decoders(seed, theta, scale):
    x = _x(seed) * scale
    c = sae.STSAE(d_in=D, d_sae=K, theta=theta)
    p = c.init(jax.random.key(seed))
    z = np.asarray(c.encode(p, x))
    assert np.all((z == 0) | ((z >= np.float32(theta)) & (z < 1)))
    t = sae.TopK(d_in=D, d_sae=K, k=3)
    pt = t.init(jax.random.key(seed))
    zt = np.asarray(t.encode(pt, x))
    assert np.all(zt >= 0) and np.all((zt > 0).sum(1) <= 3)
    for cfg, pp in ((c, p), (t, pt)):  # decode is affine in the codes
        z0 = np.zeros_like(zt)
        base = np.asarray(cfg.decode(pp, z0))
        np.testing.assert_allclose(np.asarray(cfg.decode(pp, 2 * zt)) - base,
                                   2 * (np.asarray(cfg.decode(pp, zt)) - base), rtol=1e-4, atol=1e-4)


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="k must be"):
        sae.TopK(d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match=r"theta must lie in \(0, 1\)"):
        sae.STSAE(d_in=4, d_sae=8, theta=1.0)
    with pytest.raises(ValueError, match="theta"):
        sae.make("stsae", 4, expansion=2, theta=0.0)
    with pytest.raises(ValueError, match="unknown SAE variant"):
        sae.make("gated", 4, expansion=2)
    with pytest.raises(ValueError, match="exactly one"):
        sae.make("topk", 4)
    with pytest.raises(ValueError, match="finite"):
        sae.ReluL1(d_in=4, d_sae=8, l1=float("nan"))
    with pytest.raises(ValueError, match=">= 0"):
        sae.ReluL1(d_in=4, d_sae=8, l1=-1.0)
    with pytest.raises(ValueError, match="d_in"):
        sae.ReluL1(d_in=0, d_sae=8)


def test_configs_stack_and_vmap():
    cfgs = [sae.STSAE(d_in=D, d_sae=K, theta=t) for t in (0.3, 0.6)]
    assert cfgs[0].static_key() == cfgs[1].static_key() != sae.STSAE(d_in=D, d_sae=3 * D).static_key()
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack([jnp.asarray(v) for v in a]), *cfgs)
    p = cfgs[0].init(jax.random.key(0))
    z = jax.vmap(lambda c: c.encode(p, _x()))(stacked)
    for i, c in enumerate(cfgs):
        np.testing.assert_allclose(np.asarray(z[i]), np.asarray(c.encode(p, _x())), atol=1e-6)
    assert cfgs[0].config_dict()["theta"] == 0.3 and V.VARIANTS["stsae"] is sae.STSAE
