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
from jaxequiv.equivalence import impl
from jaxequiv.equivalence.congruity import _congruity_rounds
from jaxequiv.models.transformer import Transformer, TransformerConfig
from tests.lapack import batched_lapack_calls

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
    for one in reps:
        for h in (2, 3):
            is_clean = np.allclose(one[:, :, h], c[:, :, h], atol=1e-5)
            is_cf = np.allclose(one[:, :, h], k[:, :, h], atol=1e-5)
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


def test_get_impl_mean_and_resample_ablation_match_a_manual_patch(net, tokens):
    clean, _ = tokens
    lengths = np.array([8, 5, 3, 8, 6, 2])
    _, c = run(net.apply, net.params, clean, capture="h.0.attn.z")
    c = np.asarray(c["h.0.attn.z"], np.float64)  # (batch, token, head, channel)

    def patched(value):  # h.1 at the last real token with every h.0 head replaced by ``value``
        _, ref = run(net.apply, net.params, clean, capture="h.1",
                     edits={"h.0.attn.z": Replace(jnp.asarray(value, jnp.float32))})
        return np.asarray(ref["h.1"])[np.arange(6), lengths - 1]

    # mean ablation: per token, the mean over the examples whose token is real (float64 loop)
    mean = np.zeros_like(c)
    for t in range(c.shape[1]):
        real = [i for i in range(6) if t < lengths[i]]
        mean[:, t] = c[real, t].mean(0) if real else 0.0
    got = eq.get_impl(net, clean, source="mean", read="h.1", key=0, n=1, circuit=["h.1.attn.z"], p=1.0,
                      lengths=lengths)
    np.testing.assert_allclose(np.asarray(got[0]), patched(mean), rtol=1e-5, atol=1e-5)
    # resample ablation: example i takes the activation of another example of its length (0 <-> 3 here; the
    # others have none and stay clean)
    got = np.asarray(eq.get_impl(net, clean, source="resample", read="h.1", key=0, n=3, circuit=["h.1.attn.z"],
                                 p=1.0, lengths=lengths))
    swap = patched(c[[3, 1, 2, 0, 4, 5]])
    for one in got:
        np.testing.assert_allclose(one, swap, rtol=1e-5, atol=1e-5)
    free = np.asarray(eq.get_impl(net, clean, source="resample", read="h.1", key=0, n=8, circuit=["h.1.attn.z"],
                                  p=1.0))  # without lengths: any other example
    clean_rep = np.asarray(eq.get_impl(net, clean, read="h.1", n=1))[0]
    assert not np.allclose(free, clean_rep[None], atol=1e-4)
    with pytest.raises(ValueError, match="source must be one of"):
        eq.get_impl(net, clean, source="zero", read="h.1", key=0, n=1)
    with pytest.raises(ValueError, match="counterfactual=None"):
        eq.get_impl(net, clean, clean, source="mean", read="h.1", key=0, n=1)


def test_get_impl_and_patching_importance_compile_once_per_network(net, tokens):
    clean, cf = tokens
    eq.get_impl(net, clean, cf, read="h.1", key=0, n=2)
    eq.patching_importance(net, clean, cf)
    sizes = impl._implementations._cache_size(), impl._importance._cache_size()
    again = eq.get_impl(net, clean, cf, read="h.1", key=1, n=2)  # new masks, same program
    eq.patching_importance(net, cf, clean)
    assert (impl._implementations._cache_size(), impl._importance._cache_size()) == sizes
    assert again.shape == (2, 6, 16)


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
    with pytest.raises(ValueError, match="chunk"):
        eq.congruity(a[0], a[1:], b[0], b[1:], key=0, chunk=0)


@pytest.mark.timeout(300)
def test_congruity_of_models_of_different_widths_in_the_regime_that_hung():
    """Issue 13.0: the default ridge measure, N = 200 > D, widths 96 and 160: batched LAPACK Cholesky factors (one
    per alpha) of two fits in flight deadlocked XLA's CPU pool. The fits now run unbatched LAPACK calls only."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 8))
    a = np.stack([z @ rng.normal(size=(8, 96)) + rng.normal(size=(200, 96)) for _ in range(4)]).astype(np.float32)
    b = np.stack([z @ rng.normal(size=(8, 160)) + rng.normal(size=(200, 160)) for _ in range(4)]).astype(np.float32)
    r = eq.congruity(a[0], a[1:], b[0], b[1:], key=0, n_rounds=6, n_boot=20)
    assert r.indicators.shape == (6, 2) and 0.0 <= r.score <= 1.0
    for chunk in (1, 3):  # rounds one at a time or vmapped: no batched LAPACK call either way
        def rounds(b1, i1, b2, i2):
            return _congruity_rounds(b1, i1, b2, i2, jax.random.key(0), sim.RIDGE, 6, "implementation", 20, chunk)

        assert not batched_lapack_calls(rounds, a[0], a[1:], b[0], b[1:])


def _models(seed, n=60):
    a, a2, b = _planted(seed, n=n, m=5)
    wide = np.concatenate([b, b[..., :3]], axis=-1)[:4]  # D = 11 and M = 4: a shape group of its own
    return {"a": (a[0], a[1:]), "a2": (a2[0], a2[1:]), "wide": (wide[0], wide[1:])}


@pytest.mark.parametrize("measure,names", [(sim.RIDGE, ["a", "a2"]), (sim.LINEAR_CKA, ["a", "a2", "wide"])],
                         ids=["ridge", "linear_cka"])
def test_congruity_matrix_equals_the_loop_over_pairs(measure, names):
    """Pairs of one shape group run as one vmap (ridge: a fresh split per round; CKA: each pair scored once),
    models of another width in a group of their own."""
    models = {k: v for k, v in _models(6).items() if k in names}
    k = len(names)
    key = jax.random.key(11)
    kw = dict(n_rounds=12, n_boot=50, measure=measure)
    m = eq.congruity_matrix(models, key=key, **kw)
    assert m.names == tuple(names) and m.score.shape == (k, k) and m.indicators.shape == (k, k, 12, 2)
    for i in range(k):
        for j in range(i, k):
            r = eq.congruity(*models[names[i]], *models[names[j]], key=jax.random.fold_in(key, i * k + j), **kw)
            np.testing.assert_array_equal(m.indicators[i, j], r.indicators)
            if i < j:
                np.testing.assert_array_equal(m.indicators[j, i], r.indicators[:, ::-1])
            assert (m.score[i, j], m.ci_low[i, j], m.ci_high[i, j]) == (r.score, r.ci_low, r.ci_high)
            assert m.score[j, i] == r.score and m.pair(i, j).score == r.score
    assert m.score[0, 1] >= 0.5  # a and a2 share a latent
    if k == 3:
        assert m.score[0, 2] <= 0.2  # "wide" does not


def test_congruity_matrix_never_batches_lapack_and_rejects_bad_input():
    models = _models(7, n=40)
    stacks = [(jnp.stack([models["a"][0], models["a2"][0]]), jnp.stack([models["a"][1], models["a2"][1]])),
              (models["wide"][0][None], models["wide"][1][None])]
    pairs = [tuple(jnp.array(v, jnp.int32) for v in ([0, 0, 1], [0, 1, 1], [0, 0, 1], [0, 1, 1])),
             tuple(jnp.array(v, jnp.int32) for v in ([0, 1], [2, 2], [0, 1], [0, 0]))]
    from jaxequiv.equivalence.congruity import _matrix_kernel

    def matrix(stacks, pairs):
        return _matrix_kernel.__wrapped__(stacks, pairs, jax.random.key(0), ((0, 0), (0, 1)), sim.RIDGE, 4,
                                          "implementation", 10, 2)

    assert not batched_lapack_calls(matrix, stacks, pairs)  # pairs and rounds vmapped, decompositions in a loop
    seq = eq.congruity_matrix(list(models.values()), key=0, names=["x", "y", "z"], n_rounds=4, n_boot=10,
                              measure=sim.LINEAR_CKA)
    assert seq.names == ("x", "y", "z")
    with pytest.raises(ValueError, match="unique"):
        eq.congruity_matrix(list(models.values()), key=0, names=["x", "x", "z"])
    with pytest.raises(ValueError, match="same N"):
        eq.congruity_matrix({"a": models["a"], "short": (models["a"][0][:30], models["a"][1][:, :30])}, key=0)
    with pytest.raises(ValueError, match="at least 2"):
        eq.congruity_matrix({"a": (models["a"][0], models["a"][1][:1])}, key=0)
    with pytest.raises(ValueError, match="pair"):
        eq.congruity_matrix({"a": models["a"][0]}, key=0)
    with pytest.raises(TypeError, match="key"):
        eq.congruity_matrix(models, key="0")


def test_equiv_cli_keeps_models_with_the_same_file_name_apart(tmp_path, capsys):
    """Issue 13.7: ``a/m.npz`` and ``b/m.npz`` were both named "m" and one model was scored against itself."""
    import json

    from jaxequiv.cli import main

    models = _models(8, n=40)
    for folder, name in (("a", "a"), ("b", "wide")):
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / "m.npz", base=models[name][0], impls=models[name][1])
    args = ["equiv", "congruity", str(tmp_path / "a" / "m.npz"), str(tmp_path / "b" / "m.npz"), "--rounds", "20",
            "--boot", "20", "--measure", "linear_cka"]
    assert main(args + ["--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "congruity.json").read_text())
    assert doc["names"] == ["a/m", "b/m"]
    assert doc["congruity"][0][1] <= 0.2  # two different models, not one model against itself (~1)
    assert main(args[:3] + [str(tmp_path / "a" / "m.npz")] * 2 + ["--out", str(tmp_path / "o2")]) == 2
    assert "more than once" in capsys.readouterr().err
