"""The same kernels on 8 (fake CPU) devices of one process give the single-device numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxequiv import Network
from jaxequiv import similarity as sim
from jaxequiv.contributions import contributions
from jaxequiv.distributed import DATA, make_mesh, replicate, shard
from jaxequiv.models.resnet import ResNet

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py fakes them)")


def test_contributions_on_a_data_sharded_batch():
    model = ResNet("basic", (1, 1), width=4, num_classes=5, in_channels=1, stem="small", rngs=nnx.Rngs(0))
    net = Network.from_module(model, (8, 8, 1))
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    m = make_mesh()
    sharded = contributions(replicate(net, m), shard(x, m), "layer*", method="ig", steps=4)
    plain = contributions(net, x, "layer*", method="ig", steps=4)
    for site, v in plain.values.items():
        assert sharded.values[site].sharding.spec[0] == DATA  # the batch stays split over devices
        np.testing.assert_allclose(sharded.values[site], v, rtol=1e-4, atol=1e-6)


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
