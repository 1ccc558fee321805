"""The HLO checker finds the collectives a sharded kernel compiles to, and the mesh axes they span."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxequiv.distributed import AXES, DATA, STACK, Collective, assert_no_gather, collectives, make_mesh, shard

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs the 8 devices tests/conftest.py fakes")


@jax.jit
def gram(x):  # (n, n): every row against every row, so rows must travel
    return x @ x.T


@jax.jit
def feature_gram(y):  # (S, d, d) from (S, n, d): a sum over rows, so only a reduction
    return jnp.einsum("snd,sne->sde", y, y)


@jax.jit
def row_gram(y):  # (S, n, n) per stack item: rows of the data axis must travel, the stack stays put
    return jnp.einsum("snd,smd->snm", y, y)


def test_reductions_pass_and_gathers_are_flagged():
    m = make_mesh(data=2, stack=4)
    x = shard(np.ones((8, 16), np.float32), m)
    y = shard(np.ones((4, 8, 16), np.float32), m, P(STACK, DATA))
    lowered = feature_gram.lower(y)
    assert collectives(lowered, m) == [Collective("all-reduce", (DATA,), "all-reduce")]  # Lowered is compiled
    assert_no_gather(lowered.compile(), m)
    with pytest.raises(AssertionError, match=r"moves shards along data, stack .*all-gather"):
        assert_no_gather(gram.lower(x).compile(), m)
    row = row_gram.lower(y).compile()
    assert [(c.op, c.axes) for c in collectives(row, m)] == [("all-gather", (DATA,))]
    assert_no_gather(row, m, axes=STACK)  # only the data axis is gathered
    with pytest.raises(AssertionError, match="all-gather"):
        assert_no_gather(row.as_text(), m, axes=DATA)


def test_axes_follow_the_mesh_device_order():
    order = np.array(jax.devices()).reshape(2, 4).T.reshape(2, 4, 1)  # not the flat device order
    m = Mesh(order, AXES)
    y = jax.device_put(np.ones((4, 8, 16), np.float32), NamedSharding(m, P(STACK)))
    found = collectives(jax.jit(lambda v: v.sum(0)).lower(y).compile(), m)
    assert [(c.op, c.axes) for c in found] == [("all-reduce", (STACK,))]


MESH = make_mesh(data=2, stack=4) if jax.device_count() == 8 else None  # device i is at (i // 4, i % 4, 0)


@pytest.mark.parametrize("groups, axes", [
    ("replica_groups={{0,1,2,3},{4,5,6,7}}", (STACK,)),
    ("replica_groups={}", (DATA, STACK)),  # all devices
    ("replica_groups=[4,2]<=[2,4]T(1,0)", (DATA,)),  # iota: {0,4},{1,5},...
    ("replica_groups=[2,4]<=[8]", (STACK,)),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}", (DATA,)),
    ("replica_groups=mesh['a'=8] {'a':(1)2}", (DATA,)),  # sub-axis: {0,4},{1,5},...
    ("replica_groups=mesh['a'=8] {'a':(2)4}", (STACK,)),  # {0,1,2,3},{4,5,6,7}
    ("replica_groups=mesh['a'=8] {'a':(1)2,'a':(4)2}", (DATA, STACK)),  # {0,1,4,5},{2,3,6,7}
    ("replica_groups=mesh['x'=4,'y'=2], device_ids=([2,4]T(1,0)) {'x'}", (STACK,)),  # ids 0,4,1,5,2,6,3,7
    ("replica_groups=mesh['x'=4,'y'=2], device_ids=(0,4,1,5,2,6,3,7) {'y'}", (DATA,)),  # {0,4},{1,5},...
    ("source_target_pairs={{0,1},{1,0},{4,5},{5,4}}", (STACK,)),
    ("source_target_pairs={{0,0},{1,1}}", ()),
])
def test_replica_group_formats(groups, axes):
    line = f"  ROOT %ag.3 = f32[8,16]{{1,0}} all-gather(f32[4,16]{{1,0}} %p), channel_id=1, {groups}, dimensions={{0}}"
    assert collectives(line, MESH) == [Collective("all-gather", axes, "ag.3")]


def test_hlo_text_errors_and_non_collectives():
    other = "%fusion.1 = f32[8]{0} fusion(f32[8]{0} %all-gather), kind=kLoop, calls=%all-gather-body"
    done = "%d = f32[8]{0} all-gather-done(%s)"
    start = "%s = f32[8]{0} all-gather-start(f32[4]{0} %p), replica_groups={{0,4}}"
    assert collectives("\n".join([other, done, start]), MESH) == [Collective("all-gather", (DATA,), "s")]
    with pytest.raises(ValueError, match="compiled for 4 devices but the mesh has 8"):
        collectives("HloModule m, num_partitions=4\n", MESH)
    with pytest.raises(ValueError, match="uses device 9 but the mesh has 8"):
        collectives("%a = f32[] all-reduce(%p), replica_groups={{0,9}}", MESH)
    with pytest.raises(ValueError, match="unknown replica_groups format"):
        collectives("%a = f32[] all-reduce(%p), replica_groups=ring<8>", MESH)
