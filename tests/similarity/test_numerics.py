"""jaxequiv.similarity.numerics: decompositions that never batch LAPACK on the CPU, and scale normalisation."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxequiv import similarity as sim
from jaxequiv.similarity import numerics as nm
from tests.lapack import batched_lapack_calls, lapack_calls

def _sym(b, k, seed=0):
    A = np.random.default_rng(seed).normal(size=(b, k, k)).astype(np.float32)
    return A @ A.transpose(0, 2, 1)


def test_lapack_call_parser_sees_batched_calls():
    A = _sym(3, 5)
    assert batched_lapack_calls(jax.vmap(jnp.linalg.eigh), A)  # plain vmapped eigh: one batched call
    assert lapack_calls(jnp.linalg.eigh, A[0]) and not batched_lapack_calls(jnp.linalg.eigh, A[0])


@pytest.mark.parametrize("name", ["eigh", "eigvalsh", "svd", "qr_r"])
def test_decompositions_match_jnp_and_never_batch_lapack_on_cpu(name):
    ref = {"eigh": jnp.linalg.eigh, "eigvalsh": jnp.linalg.eigvalsh,
           "svd": lambda A: jnp.linalg.svd(A, full_matrices=False), "qr_r": lambda A: jnp.linalg.qr(A, mode="r")}[name]
    fn = getattr(nm, name)
    A = _sym(6, 5).reshape(2, 3, 5, 5)
    got, want = jax.vmap(jax.vmap(fn))(A), jax.vmap(jax.vmap(ref))(A)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))  # the same LAPACK routine, one matrix at a time
    assert lapack_calls(jax.vmap(jax.vmap(fn)), A)
    assert not batched_lapack_calls(jax.vmap(jax.vmap(fn)), A)
    assert not batched_lapack_calls(jax.vmap(lambda a: fn(a + a[0])), A[0])  # unbatched operands broadcast


def test_decompositions_are_differentiable():
    A = jnp.asarray(_sym(3, 4, seed=1))

    def loss(eig):
        return lambda A: jnp.sum(eig(A).eigenvalues ** 2) + jnp.sum(jnp.abs(eig(A).eigenvectors[:, -1]))

    np.testing.assert_allclose(jax.grad(loss(nm.eigh))(A[0]), jax.grad(loss(jnp.linalg.eigh))(A[0]), rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(jax.grad(loss(nm.eigh)))(A), jax.vmap(jax.grad(loss(jnp.linalg.eigh)))(A),
                               rtol=1e-5)
    t = jnp.ones_like(A[0])
    np.testing.assert_allclose(jax.jvp(nm.eigvalsh, (A[0],), (t,))[1], jax.jvp(jnp.linalg.eigvalsh, (A[0],), (t,))[1],
                               rtol=1e-5)


@pytest.mark.parametrize("k", [-120, -66, 0, 63, 120])
def test_center_unit_and_unit_rows_are_exact_under_power_of_two_scaling(k):
    X = np.random.default_rng(2).normal(size=(7, 3)).astype(np.float32) + 5.0
    Xk = np.ldexp(X, k).astype(np.float32)
    assert np.all(np.isfinite(Xk)) and np.all(np.abs(Xk) > np.finfo(np.float32).tiny)
    c0, ok0 = nm.center_unit(X)
    ck, okk = nm.center_unit(Xk)
    np.testing.assert_array_equal(np.asarray(ck), np.asarray(c0))
    assert bool(ok0) and bool(okk)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(ck)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ck).mean(0), 0.0, atol=2e-6)  # offset 5: float32 rounding of the mean
    for center in (False, True):
        np.testing.assert_array_equal(np.asarray(nm.unit_rows(Xk, center=center)), np.asarray(nm.unit_rows(X, center=center)))


def test_normalisers_keep_documented_values_for_degenerate_input():
    C = np.full((5, 3), 7.0, np.float32)
    c, ok = nm.center_unit(C)
    assert not bool(ok) and not np.any(np.asarray(c))
    Z = np.zeros((4, 2), np.float32)
    assert not np.any(np.asarray(nm.unit_rows(Z))) and float(nm.max_abs(Z)) == 1.0
    rows = np.asarray(nm.unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [-1e-30, 0.0]], np.float32)))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])


@pytest.mark.parametrize("name", sorted(sim.MEASURES))
def test_vmapped_measures_never_batch_lapack_on_cpu(name):
    """One measure, many pairs at once (its vmap, one-to-many and all-pairs kernels), tall and wide data (the
    ridge covariance and Gram forms, the geometry measures' QR reduction)."""
    m = sim.MEASURES[name]
    key = jax.random.key(0)
    for n, d in ((12, 5), (6, 9)):
        Xs = jnp.asarray(np.random.default_rng(n).normal(size=(3, n, d)), jnp.float32)
        assert not batched_lapack_calls(jax.vmap(lambda X: m.kernel(X, Xs[0], key)), Xs)
        assert not batched_lapack_calls(jax.vmap(lambda X: m.many_kernel(X, Xs, key)), Xs)
        assert not batched_lapack_calls(lambda Xs: m.matrix_kernel(Xs, None, key, 4), Xs)
