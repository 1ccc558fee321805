"""Network: the pure view of an nnx module, stacks of parameter sets, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxequiv.network import Network
from jaxequiv.sites import run, site


class Tiny(nnx.Module):
    def __init__(self, seed: int):
        rngs = nnx.Rngs(seed)
        self.fc1 = nnx.Linear(6, 5, rngs=rngs)
        self.bn = nnx.BatchNorm(5, rngs=rngs)
        self.fc2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        h = site("fc1", jax.nn.relu(self.bn(self.fc1(x))))
        return site("fc2", self.fc2(h))


def tiny_net(seed=0):
    m = Tiny(seed)
    m.eval()
    return Network.from_module(m, (6,))


X = jax.random.normal(jax.random.key(3), (4, 6))


def test_from_module_matches_module():
    m = Tiny(0)
    m.eval()
    net = Network.from_module(m, (6,))
    np.testing.assert_allclose(net(X), m(X), rtol=1e-6)


def test_network_is_a_pytree_through_jit():
    net = tiny_net()
    f = jax.jit(lambda n, x: n(x))
    np.testing.assert_allclose(f(net, X), net(X), rtol=1e-6)
    leaves = jax.tree_util.tree_leaves(net)
    assert len(leaves) == len(jax.tree_util.tree_leaves(net.params))
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, net)  # registered as a dataclass: static fields survive
    assert (doubled.apply, doubled.input_shape, doubled.input_dtype, doubled.stacked) == (
        net.apply, net.input_shape, net.input_dtype, net.stacked)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(net)[0]]
    assert all(p.startswith(".params") for p in paths)


def test_stack_vmaps_equal_python_loop():
    nets = [tiny_net(s) for s in range(3)]
    stack = Network.stack(nets)
    assert stack.stacked == 3
    out = stack(X)
    assert out.shape == (3, 4, 3)
    for i, n in enumerate(nets):
        np.testing.assert_allclose(out[i], n(X), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stack[i](X), n(X), rtol=1e-6)


def test_stack_with_sites_vmapped():
    stack = Network.stack([tiny_net(0), tiny_net(1)])
    _, cap = jax.jit(lambda p: jax.vmap(lambda q: run(stack.apply, q, X, capture="fc1"))(p))(stack.params)
    assert cap["fc1"].shape == (2, 4, 5)
    _, cap0 = run(stack[0].apply, stack[0].params, X, capture="fc1")
    np.testing.assert_allclose(cap["fc1"][0], cap0["fc1"], rtol=1e-5, atol=1e-6)


def test_stack_rejects_mismatched_structures():
    with pytest.raises(ValueError, match="at least one"):
        Network.stack([])
    stack = Network.stack([tiny_net(0), tiny_net(1)])
    with pytest.raises(ValueError, match="unstacked"):
        Network.stack([stack, stack])
    with pytest.raises(TypeError, match="stacked"):
        tiny_net()[0]


def test_sites_listed_without_data():
    info = tiny_net().sites(batch=2)
    assert {k: v.shape for k, v in info.items()} == {"fc1": (2, 5), "fc2": (2, 3)}
    assert Network.stack([tiny_net(0), tiny_net(1)]).sites()["fc2"].shape == (1, 3)


def test_bad_input_names_expected_and_given():
    net = tiny_net()
    with pytest.raises(ValueError, match=r"\(4, 7\).*\('batch', 6\)"):
        net(jnp.zeros((4, 7)))
    with pytest.raises(ValueError, match="expected"):
        net(jnp.zeros((6,)))
    with pytest.raises(ValueError, match="floating-point.*input_dtype='int'"):
        net(jnp.zeros((4, 6), jnp.int32))
    with pytest.raises(ValueError, match="input_dtype must be"):
        Network.from_module(Tiny(0), (6,), input_dtype="int32")
    tokens = Network(lambda p, t: t, {}, (None,), "int")
    tokens.check_input(jnp.zeros((2, 9), jnp.int32))
    with pytest.raises(ValueError, match="integer token ids"):
        tokens.check_input(jnp.zeros((2, 9)))


def test_param_count_and_example_input():
    net = tiny_net()
    assert net.param_count() == 6 * 5 + 5 + 5 * 3 + 3 + 4 * 5  # + BatchNorm scale/bias/mean/var
    assert net.example_input(3).shape == (3, 6)
    assert Network(lambda p, t: t, {}, (None,), "int").example_input(2, seq=5).shape == (2, 5)
