"""The same kernels on 8 (fake CPU) devices of one process give the single-device numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxequiv import similarity as sim
from jaxequiv.contributions import build_store, contributions, driver, methods
from jaxequiv.distributed import (AXES, DATA, assert_no_gather, collectives, fetch_global, gather_items, make_mesh,
                                  map_items, replicate, shard, split_items)
from tests.distributed import workers

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py fakes them)")


def test_contributions_on_a_data_sharded_batch():
    net = workers.store_job("cnn")[0]
    r = np.random.default_rng(0)
    x, y = r.normal(size=(16, 5, 5, 2)).astype(np.float32), r.integers(0, 3, 16)
    m = make_mesh()
    for kw in (dict(method="ig", steps=3), dict(method="smoothgrad", steps=2, key=1, target=y)):
        sharded = contributions(net, x, "conv1", mesh=m, **kw)
        plain = contributions(net, x, "conv1", **kw)
        assert sharded.values["conv1"].sharding.spec[0] == DATA  # the batch stays split over devices
        np.testing.assert_allclose(sharded.values["conv1"], plain.values["conv1"], rtol=1e-5, atol=1e-6)
        if plain.delta is not None:
            np.testing.assert_allclose(sharded.delta["conv1"], plain.delta["conv1"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not split evenly over the 8 devices"):
        contributions(net, x[:12], "conv1", mesh=m)
    bad = x.copy()
    bad[13, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="for example 13"):
        contributions(net, bad, "conv1", method="grad_x_act", mesh=m)


def test_store_on_a_mesh_equals_one_device_and_communicates_nothing(tmp_path, monkeypatch):
    """A token model (mask and attention mask split with the batch, a position target) on data=4 x stack=2."""
    net, ids, sites, kw = workers.store_job("lm")
    calls = []
    chunk = driver._chunk
    monkeypatch.setattr(driver, "_chunk", lambda *a, **k: calls.append((a, k)) or chunk(*a, **k))
    m = make_mesh(data=4, stack=2)
    built = build_store(net, ids, tmp_path / "mesh", sites, mesh=m, progress=False, **kw)
    one = build_store(net, ids, tmp_path / "one", sites, progress=False, **kw)
    for s in built.sites:
        for v in built.variants:
            want = np.asarray(one.array(s, v))  # values up to ~3e3: float32 rounding relative to the largest
            np.testing.assert_allclose(built.array(s, v), want, rtol=0, atol=1e-6 * np.abs(want).max())
    np.testing.assert_array_equal(built.predictions, one.predictions)
    a, k = calls[0]
    assert k["mesh"] is m and collectives(chunk.lower(*a, **k).compile(), m) == []  # each device its examples
    with pytest.raises(ValueError, match="chunk_size 4 must be a multiple of the 8 devices"):
        build_store(net, ids, tmp_path / "bad", sites, mesh=make_mesh(), progress=False, **kw)


def test_nonfinite_report_of_a_split_array():
    m = make_mesh()
    v = np.zeros((8, 3), np.float32)
    v[5, 2] = np.inf
    assert methods.first_nonfinite({"a": shard(np.zeros((8, 2), np.float32), m), "b": shard(v, m)}) == (1, 5, 1)
    assert methods.first_nonfinite({"b": v}, rows=np.arange(10, 18)) == (0, 15, 1)
    assert fetch_global(shard(v, m)).shape == (8, 3)


def test_minibatch_cka_streams_merge_across_devices():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(64, 6)).astype(np.float32)
    Y = (X @ rng.normal(size=(6, 5)) + 0.5 * rng.normal(size=(64, 5))).astype(np.float32)
    m = make_mesh()

    def per_device(xb, yb):  # 8 rows per device: one minibatch each
        s = sim.cka_stream_update(sim.cka_stream_init(), xb, yb)
        s = jax.tree_util.tree_map(lambda f: jax.lax.psum(f, DATA), s)
        return sim.cka_stream_result(s)

    f = jax.shard_map(per_device, mesh=m, in_specs=(P(DATA), P(DATA)), out_specs=P(), check_vma=False)
    got = jax.jit(f)(shard(X, m), shard(Y, m))
    np.testing.assert_allclose(got, sim.minibatch_cka(X, Y, batch_size=8), rtol=1e-5)
    compiled = jax.jit(f).lower(shard(X, m), shard(Y, m)).compile()
    assert {c.op for c in collectives(compiled, m)} == {"all-reduce"}  # only the psum of the partial sums
    assert_no_gather(compiled, m, AXES)


def test_pairwise_on_a_sharded_stack():
    Xs = np.random.default_rng(2).normal(size=(8, 32, 6)).astype(np.float32)
    got = sim.pairwise(sim.LINEAR_CKA, shard(Xs, make_mesh()))
    np.testing.assert_allclose(got, sim.pairwise(sim.LINEAR_CKA, jnp.asarray(Xs)), rtol=1e-5, atol=1e-6)


def test_items_are_split_over_every_device_padded_and_gathered():
    m = make_mesh(data=2, stack=2, pairs=2)
    items, n = split_items((np.arange(5), jax.random.split(jax.random.key(0), 5)), m)
    assert n == 5 and items[0].shape == (8,) and items[0].sharding.spec == P(("data", "stack", "pairs"))
    np.testing.assert_array_equal(fetch_global(items[0]), [0, 1, 2, 3, 4, 4, 4, 4])  # padded with the last item
    out = jax.jit(lambda it, c: map_items(lambda b, c: b[0] * 10 + c + jax.lax.axis_index("pairs"), m, it, c))(
        items, replicate(jnp.int32(1), m))
    np.testing.assert_array_equal(gather_items(out, n), [1, 12, 21, 32, 41])  # one item per device, in order
    with pytest.raises(ValueError, match="same positive number of items"):
        split_items((np.arange(5), np.arange(4)), m)


def _no_collectives(compiled, mesh):
    assert collectives(compiled, mesh) == []  # each device works on its items alone
    assert_no_gather(compiled, mesh, AXES)


def test_pairwise_on_a_mesh_equals_one_device_and_communicates_nothing():
    from jaxequiv.similarity.pairwise import _on_mesh

    rng = np.random.default_rng(3)
    Xs, Ys = rng.normal(size=(5, 24, 6)).astype(np.float32), rng.normal(size=(3, 24, 4)).astype(np.float32)
    m = make_mesh(stack=2, pairs=2)
    # rows of the matrix (CKA Grams; ridge with one split per row) or pairs (procrustes) split over 8 devices;
    # the same keys: float32 rounding of other batch shapes only (values <= 1; measured <= 3e-6 for ridge)
    for measure, Y in ((sim.LINEAR_CKA, None), (sim.LINEAR_CKA, Ys), (sim.RIDGE, Ys), (sim.PROCRUSTES, None)):
        got = sim.pairwise(measure, Xs, Y, key=1, mesh=m)
        np.testing.assert_allclose(got, sim.pairwise(measure, Xs, Y, key=1), rtol=0, atol=1e-5,
                                   err_msg=f"{measure.name}, Ys {'given' if Y is not None else 'None'}")
    for measure, items, context in ((sim.LINEAR_CKA, (Xs, jax.random.split(jax.random.key(1), 5)), (Ys,)),
                                    (sim.PROCRUSTES, (np.arange(15) // 3, np.arange(15) % 3,
                                                      jax.random.split(jax.random.key(1), 15)), (Xs, Ys))):
        items, _ = split_items(items, m)
        _no_collectives(_on_mesh.lower(measure, items, replicate(context, m), 64, m).compile(), m)


def _models(rng, *shapes):
    """(base (20, d), impls (M, 20, d)) for each (d, M): implementations = the base plus noise."""
    out = []
    for d, M in shapes:
        base = rng.normal(size=(20, d)).astype(np.float32)
        out.append((base, (base[None] + 0.5 * rng.normal(size=(M, 20, d))).astype(np.float32)))
    return out


@pytest.mark.slow  # ridge congruity compiled three times (one device, 8 devices, the HLO check): ~25 s CPU
def test_congruity_on_a_mesh_equals_one_device_and_communicates_nothing():
    import importlib

    from jaxequiv import equivalence as eq

    cg = importlib.import_module("jaxequiv.equivalence.congruity")
    (b1, i1), (b2, i2) = _models(np.random.default_rng(4), (5, 4), (4, 3))
    m = make_mesh(data=2, pairs=4)
    # the rounds (ridge: one split each, drawn as on one device) split over 8 devices, 13 rounds padded to 16:
    # the same scores up to rounding, the same indicators, the same bootstrap on them
    kw = dict(key=3, n_rounds=13, n_boot=50, measure=sim.RIDGE)
    got, want = eq.congruity(b1, i1, b2, i2, mesh=m, **kw), eq.congruity(b1, i1, b2, i2, **kw)
    np.testing.assert_array_equal(got.indicators, want.indicators)
    assert (got.score, got.ci_low, got.ci_high) == (want.score, want.ci_low, want.ci_high)
    rounds, k_fit, _ = cg._draw_kernel(jax.random.key(0), 4, 3, 13, "implementation", True)
    rounds, _ = split_items(rounds, m)
    _no_collectives(cg._indicators_on_mesh.lower(rounds, replicate((b1, i1, b2, i2), m), replicate(k_fit, m),
                                                 sim.RIDGE, "implementation", 64, m).compile(), m)
    # the pairs of models, (a, a), (a, b) and (b, b) in three shape groups, each group's pairs split
    got, want = (eq.congruity_matrix({"a": (b1, i1), "b": (b2, i2)}, key=2, n_rounds=9, n_boot=30,
                                     measure=sim.LINEAR_CKA, compare_to="model", mesh=mesh) for mesh in (m, None))
    for field in ("score", "ci_low", "ci_high", "indicators"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


@pytest.mark.slow  # ridge and CKA grids compiled for one device and for 8: ~20 s CPU
def test_distinguishability_grid_on_a_mesh_equals_one_device():
    from jaxequiv import equivalence as eq

    rng = np.random.default_rng(5)
    reprs = rng.normal(size=(3, 4, 20, 5)).astype(np.float32)
    reprs[1] = reprs[0] + 0.1 * rng.normal(size=(4, 20, 5))
    for measure in (sim.RIDGE, sim.LINEAR_CKA):  # trials split (their draws and keys as on one device), or the
        kw = dict(key=1, straps=5, trials=7, measure=measure)  # rows of the score matrix: the same grid
        np.testing.assert_array_equal(eq.distinguishability_grid(reprs, mesh=make_mesh(pairs=-1), **kw),
                                      eq.distinguishability_grid(reprs, **kw), err_msg=measure.name)


@pytest.mark.slow  # a transformer's implementations and patches compiled for one device and for 8: ~15 s idle
def test_get_impl_and_patching_importance_on_a_mesh_equal_one_device():
    from flax import nnx

    from jaxequiv import Network
    from jaxequiv import equivalence as eq
    from jaxequiv.equivalence import impl
    from jaxequiv.models.transformer import Transformer, TransformerConfig
    from jaxequiv.sites import list_sites

    cfg = TransformerConfig(vocab_size=11, n_layer=1, n_head=4, d_model=8, n_ctx=6)
    net = Transformer(cfg, nnx.Rngs(0)).network()
    r = np.random.default_rng(0)
    clean, cf = (jnp.asarray(r.integers(0, 11, (4, 6)), jnp.int32) for _ in range(2))
    m = make_mesh(stack=2)
    # implementations (their masks drawn as on one device) and units split over 8 devices: the same forward
    # passes in other batch shapes, float32 rounding only (|values| < 10)
    got, want = (eq.get_impl(net, clean, cf, read="h.0", key=0, n=5, mesh=mesh) for mesh in (m, None))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    stack = Network.stack([Transformer(cfg, nnx.Rngs(s)).network() for s in range(3)])  # members split
    np.testing.assert_allclose(eq.get_impl(stack, clean, read="h.0", pool="mean", mesh=m),
                               eq.get_impl(stack, clean, read="h.0", pool="mean"), rtol=0, atol=1e-5)
    got, want = (eq.patching_importance(net, clean, cf, mesh=mesh) for mesh in (m, None))
    assert got.keys() == want.keys()
    for site in want:  # KL divergences (>= 0, < 1 here)
        np.testing.assert_allclose(got[site], want[site], rtol=0, atol=1e-6, err_msg=site)
    infos = list_sites(net.apply, net.params, clean)
    units = tuple(eq.units_of(infos, None))
    (flags, rows), _ = split_items((np.ones((5, len(units)), bool), np.tile(np.arange(4), (5, 1))), m)
    _no_collectives(impl._implementations.lower(
        replicate(net.params, m), flags, rows, *replicate((clean, cf, None, ()), m), apply=net.apply,
        infos=tuple(infos.items()), read_sites=("h.0",), units=units, pool="last", stacked=False, chunk=16,
        mesh=m).compile(), m)
