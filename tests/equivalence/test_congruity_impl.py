"""jaxequiv.equivalence: GetImpl through sites, patching importance vs a per-head loop, congruity and the grid."""

import dataclasses

import jax
import numpy as np
import pytest

import jax.numpy as jnp
from flax import nnx

from jaxequiv import Network, Replace, run
from jaxequiv import equivalence as eq
from jaxequiv import similarity as sim
from jaxequiv.models.transformer import Transformer, TransformerConfig

CFG = TransformerConfig(vocab_size=11, n_layer=2, n_head=4, d_model=16, n_ctx=8)


@pytest.fixture(scope="module")
def net():
    return Transformer(CFG, nnx.Rngs(0)).network()


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.integers(0, 11, (6, 8)), jnp.int32), jnp.asarray(rng.integers(0, 11, (6, 8)), jnp.int32))


def test_get_impl_keeps_circuit_heads_clean_and_patches_whole_heads(net, tokens):
    clean, cf = tokens
    reps = eq.get_impl(net, clean, cf, read="h.0.attn.z", pool="none", key=1, n=6, circuit=["h.0.attn.z[0,1]"])
    reps = np.asarray(reps).reshape(6, 6, 8, 4, 4)  # (impl, batch, token, head, channel)
    _, c = run(net.apply, net.params, clean, capture="h.0.attn.z")
    _, k = run(net.apply, net.params, cf, capture="h.0.attn.z")
    c, k = np.asarray(c["h.0.attn.z"]), np.asarray(k["h.0.attn.z"])
    # jit vs eager rounding only (~1e-7): circuit heads carry the clean values
    np.testing.assert_allclose(reps[:, :, :, :2], np.broadcast_to(c[:, :, :2], reps[:, :, :, :2].shape), atol=1e-5)
    patched = 0
    for impl in reps:
        for h in (2, 3):
            is_clean = np.allclose(impl[:, :, h], c[:, :, h], atol=1e-5)
            is_cf = np.allclose(impl[:, :, h], k[:, :, h], atol=1e-5)
            assert is_clean or is_cf
            patched += is_cf
    assert 0 < patched < 12  # p = 0.5 over 12 (impl, head) draws
    again = eq.get_impl(net, clean, cf, read="h.0.attn.z", pool="none", key=1, n=6, circuit=["h.0.attn.z[0,1]"])
    np.testing.assert_array_equal(np.asarray(again).reshape(reps.shape), reps)


def test_get_impl_matches_manual_patch_and_pools(net, tokens):
    clean, cf = tokens
    lengths = jnp.array([8, 5, 3, 8, 6, 2])
    # p = 1: every non-circuit head of every attn.z site is patched
    last = eq.get_impl(net, clean, cf, read="h.1", key=0, n=1, circuit=["h.1.attn.z"], p=1.0, lengths=lengths)
    mean = eq.get_impl(net, clean, cf, read="h.1", key=0, n=1, circuit=["h.1.attn.z"], p=1.0, pool="mean", lengths=lengths)
    _, k = run(net.apply, net.params, cf, capture="h.0.attn.z")
    _, ref = run(net.apply, net.params, clean, capture="h.1", edits={"h.0.attn.z": Replace(k["h.0.attn.z"])})
    r = np.asarray(ref["h.1"])
    np.testing.assert_allclose(np.asarray(last[0]), r[np.arange(6), np.asarray(lengths) - 1], rtol=1e-5, atol=1e-6)
    want = np.stack([r[i, :L].mean(0) for i, L in enumerate(np.asarray(lengths))])
    np.testing.assert_allclose(np.asarray(mean[0]), want, rtol=1e-5, atol=1e-6)


def test_get_impl_from_stacked_parameter_sets(tokens):
    clean, _ = tokens
    nets = [Transformer(CFG, nnx.Rngs(s)).network() for s in range(3)]
    reps = eq.get_impl(Network.stack(nets), clean, read="h.1", pool="mean")
    assert reps.shape == (3, 6, 16)
    for i, one in enumerate(nets):
        _, c = run(one.apply, one.params, clean, capture="h.1")
        np.testing.assert_allclose(np.asarray(reps[i]), np.asarray(c["h.1"]).mean(1), rtol=1e-5, atol=1e-6)


def test_patching_importance_matches_per_head_loop(net, tokens):
    clean, corrupted = tokens
    scores = eq.patching_importance(net, clean, corrupted)
    assert sorted(scores) == ["h.0.attn.z", "h.1.attn.z"]
    ref_logits = np.asarray(net(clean))[:, -1].astype(np.float64)

    def logsoftmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p = logsoftmax(ref_logits)
    for site in scores:
        _, c = run(net.apply, net.params, clean, capture=site)
        for h in range(4):
            mask = np.zeros((1, 1, 4, 1), bool)
            mask[..., h, :] = True
            out, _ = run(net.apply, net.params, corrupted, edits={site: Replace(c[site], where=mask)})
            q = logsoftmax(np.asarray(out)[:, -1].astype(np.float64))
            kl = np.mean(np.sum(np.exp(p) * (p - q), -1))
            assert float(scores[site][h]) == pytest.approx(kl, rel=1e-3, abs=1e-6)
    noise = eq.patching_importance(net, clean, corrupted, sites=["h.0.attn.z"], mode="noise")
    assert noise["h.0.attn.z"].shape == (4,) and bool(jnp.all(noise["h.0.attn.z"] >= 0))


def test_units_and_bad_input(net, tokens):
    clean, cf = tokens
    infos = net.sites(batch=6, )
    assert eq.parse_units(["h.*.attn.z[2]"], infos) == {("h.0.attn.z", 2), ("h.1.attn.z", 2)}
    with pytest.raises(ValueError, match="out of range"):
        eq.parse_units(["h.0.attn.z[9]"], infos)
    with pytest.raises(ValueError, match="no 'head' axis"):
        eq.parse_units(["h.0[1]"], infos)
    with pytest.raises(KeyError, match="no site matches"):
        eq.get_impl(net, clean, cf, read="nope", key=0, n=2)
    with pytest.raises(ValueError, match="key"):
        eq.get_impl(net, clean, cf, read="h.1", n=2)
    with pytest.raises(ValueError, match="every candidate"):
        eq.get_impl(net, clean, cf, read="h.1", key=0, n=2, circuit=["h.*.attn.z"])
    with pytest.raises(ValueError, match="counterfactual"):
        eq.get_impl(net, clean, cf[:3], read="h.1", key=0, n=2)


# ---------------------------------------------------------------------------------------------------------
# congruity and the distinguishability grid on planted equivalence


def _planted(seed, n=120, latent=4, d=8, m=6, noise=0.3):
    """Two interpretations = two latents; an implementation = random orthogonal embedding of a latent + noise."""
    rng = np.random.default_rng(seed)
    lats = [rng.normal(size=(n, latent)) for _ in range(2)]

    def impls(lat):
        out = []
        for _ in range(m):
            q, _ = np.linalg.qr(rng.normal(size=(d, d)))
            out.append(lat @ q[:latent] + noise * rng.normal(size=(n, d)))
        return np.stack(out).astype(np.float32)

    return impls(lats[0]), impls(lats[0]), impls(lats[1])


def test_congruity_planted_equivalence():
    a, a2, b = _planted(0)
    same = eq.congruity(a[0], a[1:], a2[0], a2[1:], key=0, n_rounds=100, n_boot=100)
    diff = eq.congruity(a[0], a[1:], b[0], b[1:], key=0, n_rounds=100, n_boot=100)
    assert same.score >= 0.8 and diff.score <= 0.2
    assert same.ci_low <= same.score <= same.ci_high
    assert same.indicators.shape == (100, 2)
    again = eq.congruity(a[0], a[1:], a2[0], a2[1:], key=0, n_rounds=100, n_boot=100)
    assert again.score == same.score and np.array_equal(again.indicators, same.indicators)
    # a distance measure and the "model" comparator plug in the same way
    dist = eq.congruity(a[0], a[1:], b[0], b[1:], key=1, n_rounds=50, n_boot=50, measure=sim.PROCRUSTES, compare_to="model")
    assert dist.score <= 0.2
    # one model against itself: own and other implementations come from the same pool (ties count 1/2)
    ident = eq.congruity(a[0], a[1:], a[0], a[1:], key=2, n_rounds=100, n_boot=20, measure=sim.LINEAR_CKA)
    assert ident.score >= 0.8


def test_congruity_models_of_different_widths():
    a, _, b = _planted(3, m=4)
    wide = np.concatenate([b, b[..., :3]], axis=-1)  # model 2 has D = 11, model 1 has D = 8
    r = eq.congruity(a[0], a[1:], wide[0], wide[1:], key=0, n_rounds=40, n_boot=20, measure=sim.LINEAR_CKA)
    assert r.score <= 0.2


def test_distinguishability_grid_planted():
    a, a2, b = _planted(1, m=5)
    reprs = np.stack([a, a2, b])
    grid = np.asarray(eq.distinguishability_grid(reprs, key=0, straps=5, trials=20, distinct=True))
    assert grid.shape == (3, 3)
    assert grid[0, 2] == 1.0 and grid[2, 0] == 1.0 and grid[1, 2] == 1.0  # different latents: always rejected
    assert grid[0, 0] <= 0.25 and grid[0, 1] <= 0.25  # same latent: rarely rejected
    dist = np.asarray(eq.distinguishability_grid(reprs, key=0, straps=4, trials=10, measure=sim.PROCRUSTES))
    assert dist[0, 2] == 1.0
    again = np.asarray(eq.distinguishability_grid(reprs, key=0, straps=4, trials=10, measure=sim.PROCRUSTES))
    np.testing.assert_array_equal(dist, again)


def test_grid_scores_each_pair_once_for_deterministic_measures():
    a, a2, b = _planted(4, n=60, m=4)
    reprs = np.stack([a, a2, b])
    fixed = sim.ridge_measure(split=(np.arange(6, 60), np.arange(6)))
    once = np.asarray(eq.distinguishability_grid(reprs, key=3, straps=6, trials=12))  # default: per-trial splits
    assert once.shape == (3, 3)
    matrix = np.asarray(eq.distinguishability_grid(reprs, key=3, straps=6, trials=12, measure=fixed))
    per_trial = dataclasses.replace(fixed, needs_key=True)  # same scores, forced through one fit pair per trial
    looped = np.asarray(eq.distinguishability_grid(reprs, key=3, straps=6, trials=12, measure=per_trial))
    np.testing.assert_array_equal(matrix, looped)
    assert matrix[0, 2] == 1.0 and matrix[2, 1] == 1.0


@pytest.mark.parametrize("compare_to", ["implementation", "model"])
def test_congruity_scores_each_pair_once_for_deterministic_measures(compare_to):
    a, _, b = _planted(5, n=60, m=5)
    kw = dict(key=4, n_rounds=30, n_boot=50, compare_to=compare_to)
    once = eq.congruity(a[0], a[1:], b[0], b[1:], measure=sim.LINEAR_CKA, **kw)
    per_round = eq.congruity(a[0], a[1:], b[0], b[1:], measure=dataclasses.replace(sim.LINEAR_CKA, needs_key=True), **kw)
    np.testing.assert_array_equal(once.indicators, per_round.indicators)
    assert once.score == per_round.score


def test_congruity_and_grid_bad_input():
    a, _, b = _planted(2, m=3)
    with pytest.raises(ValueError, match="at least 2"):
        eq.congruity(a[0], a[:1], b[0], b[1:], key=0)
    with pytest.raises(ValueError, match="same number of rows"):
        eq.congruity(a[0][:50], a[1:], b[0], b[1:], key=0)
    with pytest.raises(ValueError, match="compare_to"):
        eq.congruity(a[0], a[1:], b[0], b[1:], key=0, compare_to="x")
    with pytest.raises(ValueError, match=">= 2 implementations"):
        eq.distinguishability_grid(np.stack([a[:1], b[:1]]), key=0)
    with pytest.raises(ValueError, match="interpretations, implementations"):
        eq.distinguishability_grid(a, key=0)
    bad = np.stack([a, b]).copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        eq.distinguishability_grid(bad, key=0)


def test_default_chunk_is_unbatched_on_cpu():
    from jaxequiv.similarity.base import default_chunk

    assert default_chunk(7, 64) == 7
    assert default_chunk(None, 64) == (1 if jax.default_backend() == "cpu" else 64)
    with pytest.raises(ValueError, match="chunk"):
        default_chunk(0, 64)
