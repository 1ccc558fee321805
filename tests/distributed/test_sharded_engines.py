"""The same kernels on 8 (fake CPU) devices of one process give the single-device numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxequiv import similarity as sim
from jaxequiv.contributions import build_store, contributions, driver, methods
from jaxequiv.distributed import DATA, collectives, fetch_global, make_mesh, shard
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


def test_pairwise_on_a_sharded_stack():
    Xs = np.random.default_rng(2).normal(size=(8, 32, 6)).astype(np.float32)
    got = sim.pairwise(sim.LINEAR_CKA, shard(Xs, make_mesh()))
    np.testing.assert_allclose(got, sim.pairwise(sim.LINEAR_CKA, jnp.asarray(Xs)), rtol=1e-5, atol=1e-6)
