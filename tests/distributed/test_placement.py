"""Mesh vocabulary and placement on the 8 fake CPU devices of one process (tests/conftest.py)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxequiv.distributed import (
    AXES,
    DATA,
    PAIRS,
    STACK,
    fetch_global,
    global_array,
    local_array,
    local_rows,
    make_mesh,
    parse_mesh_spec,
    replicate,
    shard,
)

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs the 8 devices tests/conftest.py fakes")


def test_parse_mesh_spec():
    assert parse_mesh_spec("data=4,stack=2") == {"data": 4, "stack": 2}
    assert parse_mesh_spec(" stack = -1 , pairs=2 ") == {"stack": -1, "pairs": 2}
    assert parse_mesh_spec("") == {}
    for bad, why in [("model=2", "NAME in"), ("data", "NAME=SIZE"), ("data=2,data=4", "twice"),
                     ("data=two", "must be an integer")]:
        with pytest.raises(ValueError, match=why):
            parse_mesh_spec(bad)


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (8, 1, 1)), ({"stack": 2}, (4, 2, 1)), ({"stack": -1}, (1, 8, 1)), ({"data": 2, "pairs": -1}, (2, 1, 4)),
    ({"data": 2, "stack": 2, "pairs": 2}, (2, 2, 2)), (parse_mesh_spec("data=-1,stack=4"), (2, 4, 1)),
])
def test_make_mesh_shapes(kwargs, shape):
    m = make_mesh(**kwargs)
    assert m.axis_names == AXES == (DATA, STACK, PAIRS)
    assert tuple(m.shape.values()) == shape
    assert sorted(d.id for d in m.devices.flat) == sorted(d.id for d in jax.devices())  # every device, once


@pytest.mark.parametrize("kwargs, why", [
    ({"data": 3}, "uses 3 devices but must cover the 8 devices of 1 process"),
    ({"stack": 3}, "other axes use 3 devices, which does not divide the 8 devices"),
    ({"data": -1, "stack": -1}, "only one axis may be -1"),
    ({"data": 0}, "positive integer or -1"), ({"stack": 2.0}, "positive integer or -1"),
])
def test_make_mesh_errors(kwargs, why):
    with pytest.raises(ValueError, match=why):
        make_mesh(**kwargs)


def test_make_mesh_on_some_devices():
    m = make_mesh(stack=2, devices=jax.devices()[:4])
    assert dict(m.shape) == {DATA: 2, STACK: 2, PAIRS: 1}
    with pytest.raises(ValueError, match="must cover the 4 devices given"):
        make_mesh(data=8, devices=jax.devices()[:4])


def test_shard_replicate_fetch():
    m = make_mesh(stack=2)
    x = np.arange(24.0).reshape(8, 3)
    s = shard(x, m)
    assert s.sharding.spec == P(DATA, None) and s.addressable_shards[0].data.shape == (2, 3)
    t = shard(x.reshape(2, 4, 3), m, P(STACK, DATA))
    assert t.addressable_shards[0].data.shape == (1, 1, 3)
    tree = replicate({"w": np.ones(3), "b": np.zeros(())}, m)
    assert tree["w"].sharding.is_fully_replicated
    keys = jax.random.split(jax.random.key(3), 4)  # typed keys travel as their key data (any process's devices)
    for placed in (shard(keys, m, STACK), replicate(keys, m)):
        assert jax.dtypes.issubdtype(placed.dtype, jax.dtypes.prng_key)
        np.testing.assert_array_equal(jax.random.key_data(placed), jax.random.key_data(keys))
    assert shard(keys, m, STACK).sharding.spec[0] == STACK
    got = fetch_global({"s": s, "t": t, "w": tree["w"], "plain": [1.0, 2.0]})
    assert all(isinstance(v, np.ndarray) for v in jax.tree.leaves(got))
    np.testing.assert_array_equal(got["s"], x)
    np.testing.assert_array_equal(got["t"], x.reshape(2, 4, 3))
    np.testing.assert_array_equal(got["plain"], [1.0, 2.0])
    with pytest.raises(ValueError, match="12 rows do not split evenly over the 8 devices of mesh axis 'data'"):
        shard(np.zeros((12, 3)), make_mesh())


def test_local_rows_and_global_array_in_one_process():
    m = make_mesh(stack=2)
    np.testing.assert_array_equal(local_rows(8, m), np.arange(8))  # one process holds every row
    np.testing.assert_array_equal(local_rows(8, m, STACK), np.arange(8))
    x = np.arange(16.0).reshape(8, 2)
    g = global_array(x[local_rows(8, m)], m, n=8)
    assert g.sharding.spec == P(DATA, None)
    np.testing.assert_array_equal(fetch_global(g), x)
    np.testing.assert_array_equal(fetch_global(global_array(x, m)), x)  # n inferred
    with pytest.raises(ValueError, match="holds 8 of the 8 rows split over 'data', but got 6"):
        global_array(x[:6], m, n=8)
    with pytest.raises(ValueError, match="do not split evenly"):
        local_rows(6, m)
    with pytest.raises(ValueError, match="not 'model'"):
        local_rows(8, m, "model")


def test_local_array_is_the_inverse_of_global_array():
    m = make_mesh(stack=2)
    x = np.arange(48.0).reshape(8, 3, 2)
    np.testing.assert_array_equal(local_array(global_array(x, m, n=8)), x)  # replicas over stack taken once
    np.testing.assert_array_equal(local_array(shard(x, m, STACK)), x)
    np.testing.assert_array_equal(local_array(replicate(np.float32(3.0), m)), 3.0)
    with pytest.raises(ValueError, match="dimension 1 of an array of shape \\(2, 4, 3\\) is split"):
        local_array(shard(np.zeros((2, 4, 3)), m, P(STACK, DATA)))
