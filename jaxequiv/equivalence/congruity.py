"""CONGRUITY (Algorithm 1 of Sun & Toneva) and the toy task's bootstrap distinguishability grid, vmapped.

Both take representations of *implementations* (e.g. from :func:`jaxequiv.equivalence.get_impl`) and any
:class:`~jaxequiv.similarity.Measure` (the ridge score by default, as the reference code). For asymmetric
measures the base representation is always the first argument (``X`` predicts ``Y`` for ridge); distances
are negated internally so "closer" always means "more similar".
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv.similarity import RIDGE, Measure, check_pair, check_reprs
from jaxequiv.similarity.base import default_chunk
from jaxequiv.similarity.pairwise import pairwise_unchecked

__all__ = ["congruity", "CongruityResult", "distinguishability_grid"]


@dataclasses.dataclass(frozen=True)
class CongruityResult:
    """``score`` = 1 - |s/n - 1| in [0, 1] (1: the implementation sets cannot be told apart), its bootstrap
    percentile interval ``(ci_low, ci_high)`` over rounds, and the per-round indicators ``(n_rounds, 2)``
    (column 0: model 1 as base, column 1: model 2 as base; 1 = own implementation closer, 0.5 = tie)."""

    score: float
    ci_low: float
    ci_high: float
    indicators: np.ndarray

    def __str__(self) -> str:
        return f"congruity {self.score:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] over {len(self.indicators)} rounds"


def _closer(own, other, higher_is_similar: bool):
    """1 if ``own`` is more similar than ``other``, 0.5 on a tie, else 0."""
    if not higher_is_similar:
        own, other = -own, -other
    return jnp.where(own > other, 1.0, jnp.where(own == other, 0.5, 0.0))


def _score(s_over_n):
    return 1.0 - jnp.abs(s_over_n - 1.0)


def _own_and_other(measure, X, own, other, key):
    """``measure(X, own)`` and ``measure(X, other)`` with one draw of ``key`` (the same ridge split): one call
    when both have the same width, two otherwise (models of different widths, e.g. GPT-2 vs Pythia)."""
    if own.shape == other.shape:
        return measure.many_kernel(X, jnp.stack([own, other]), key)
    return jnp.stack([measure.many_kernel(X, own[None], key)[0], measure.many_kernel(X, other[None], key)[0]])


@functools.partial(jax.jit, static_argnames=("measure", "n_rounds", "compare_to", "n_boot", "chunk"))
def _congruity_kernel(base1, impls1, base2, impls2, key, measure, n_rounds, compare_to, n_boot, chunk):
    k_draw, k_fit, k_boot = jax.random.split(key, 3)
    kd = jax.random.split(k_draw, 4)
    own1 = jax.random.randint(kd[0], (n_rounds,), 0, impls1.shape[0])
    own2 = jax.random.randint(kd[1], (n_rounds,), 0, impls2.shape[0])
    oth2 = jax.random.randint(kd[2], (n_rounds,), 0, impls2.shape[0])  # fresh implementation of the other model
    oth1 = jax.random.randint(kd[3], (n_rounds,), 0, impls1.shape[0])
    if compare_to == "model":  # the other base model itself, the same every round
        oth1, oth2 = jnp.zeros_like(oth1), jnp.zeros_like(oth2)
        pool1, pool2 = base1[None], base2[None]
    else:
        pool1, pool2 = impls1, impls2
    if measure.needs_key:  # a fresh draw (ridge: split) per round and base model, shared by own and other
        fit_keys = jax.random.split(k_fit, (n_rounds, 2))

        def round_(args):
            i1, i2, o1, o2, ks = args
            return jnp.concatenate([_own_and_other(measure, base1, impls1[i1], pool2[o2], ks[0]),
                                    _own_and_other(measure, base2, impls2[i2], pool1[o1], ks[1])])

        s = jax.lax.map(round_, (own1, own2, oth1, oth2, fit_keys), batch_size=min(chunk, n_rounds)).T  # (4, n)
    else:  # deterministic scores: each (base, implementation) pair once, the rounds look up
        s = (measure.many_kernel(base1, impls1, k_fit)[own1], measure.many_kernel(base1, pool2, k_fit)[oth2],
             measure.many_kernel(base2, impls2, k_fit)[own2], measure.many_kernel(base2, pool1, k_fit)[oth1])
    ind = jnp.stack([_closer(s[0], s[1], measure.higher_is_similar), _closer(s[2], s[3], measure.higher_is_similar)], 1)
    per_round = jnp.sum(ind, axis=1)  # in {0, .., 2}
    boot = jax.random.randint(k_boot, (n_boot, n_rounds), 0, n_rounds)
    boot_scores = _score(jnp.mean(per_round[boot], axis=1))
    return _score(jnp.mean(per_round)), boot_scores, ind


def congruity(
    base1,
    impls1,
    base2,
    impls2,
    *,
    key,
    n_rounds: int = 100,
    measure: Measure = RIDGE,
    compare_to: str = "implementation",
    n_boot: int = 1000,
    ci: float = 0.95,
    chunk: int | None = None,
) -> CongruityResult:
    """Congruity of two models from representations of the models and of their implementations.

    Each round draws an implementation of each model and scores whether each base model is closer to its own
    implementation than to the other model (``compare_to="implementation"``: a fresh implementation of the
    other model, exchangeable with the own one when the interpretations are equivalent; ``"model"``: the
    other base model itself); ``s`` sums both indicators over rounds and the score is ``1 - |s/n - 1|``.
    Ties count 1/2 (the paper's ``<=`` would score identical sets 0). All rounds run in one vmapped call; a
    measure that needs no key (CKA, fixed-split ridge, ...) scores each (base, implementation) pair once.

    Args:
      base1, base2: representations of the two models, (N, D1) and (N, D2).
      impls1, impls2: implementations' representations, (M1, N, D1) and (M2, N, D2), M >= 2.
      key: PRNG key (or int); the result is exact for a given key.
      measure: a :class:`~jaxequiv.similarity.Measure` (ridge R^2 by default; distances are handled).
      n_boot, ci: bootstrap resamples of rounds and the percentile interval's coverage.
      chunk: rounds evaluated per vmapped batch (memory knob); default see :func:`jaxequiv.similarity.base.default_chunk`.
    """
    if not isinstance(measure, Measure):
        raise TypeError(f"congruity: measure must be a jaxequiv.similarity.Measure, got {type(measure).__name__}")
    if compare_to not in ("implementation", "model"):
        raise ValueError(f"compare_to must be 'implementation' or 'model', got {compare_to!r}")
    if n_rounds < 1 or n_boot < 1 or not 0 < ci < 1:
        raise ValueError(f"need n_rounds >= 1, n_boot >= 1 and 0 < ci < 1; got {n_rounds}, {n_boot}, {ci}")
    impls1 = check_reprs(impls1, name="congruity impls1", min_count=2)
    impls2 = check_reprs(impls2, name="congruity impls2", min_count=2)
    base1, _ = check_pair(base1, impls1[0], min_samples=measure.min_samples, name="congruity base1")
    base2, _ = check_pair(base2, impls2[0], min_samples=measure.min_samples, name="congruity base2")
    if base1.shape[0] != base2.shape[0]:
        raise ValueError(f"congruity: both models need the same N stimuli, got {base1.shape[0]} and {base2.shape[0]}")
    if isinstance(key, int):
        key = jax.random.key(key)
    score, boots, ind = _congruity_kernel(
        base1, impls1, base2, impls2, key, measure, int(n_rounds), compare_to, int(n_boot), default_chunk(chunk, 64)
    )
    lo, hi = np.quantile(np.asarray(boots), [(1 - ci) / 2, (1 + ci) / 2])
    return CongruityResult(float(score), float(lo), float(hi), np.asarray(ind))


@functools.partial(jax.jit, static_argnames=("measure", "straps", "trials", "z", "distinct", "chunk"))
def _grid_kernel(reprs, key, measure, straps, trials, z, distinct, chunk):
    A, M = reprs.shape[:2]
    k1, k2, k3, k4 = jax.random.split(key, 4)
    shape = (A, A, straps, trials)
    x = jax.random.randint(k1, shape, 0, M)
    if distinct:  # a second implementation of a that is not x itself
        x2 = (x + jax.random.randint(k2, shape, 1, M)) % M
    else:  # with replacement, as the reference (x2 may equal x, giving R^2(X -> X) ~ 1)
        x2 = jax.random.randint(k2, shape, 0, M)
    y = jax.random.randint(k3, shape, 0, M)
    a = jnp.broadcast_to(jnp.arange(A)[:, None, None, None], shape)
    b = jnp.broadcast_to(jnp.arange(A)[None, :, None, None], shape)
    if measure.needs_key:  # a fresh draw (ridge: train/test split) per trial, shared by its two fits
        keys = jax.random.split(k4, A * A * straps * trials)

        def trial(args):
            a, b, x, x2, y, k = args
            s = measure.many_kernel(reprs[a, x], jnp.stack([reprs[a, x2], reprs[b, y]]), k)
            return s[0], s[1]

        flat = tuple(v.reshape(-1) for v in (a, b, x, x2, y)) + (keys,)
        within, across = (s.reshape(shape) for s in jax.lax.map(trial, flat, batch_size=min(chunk, flat[0].size)))
    else:  # deterministic scores: each ordered pair of the A*M implementations is scored once, trials look up
        S = pairwise_unchecked(measure, reprs.reshape(A * M, *reprs.shape[2:]), None, k4)
        within, across = S[a * M + x, a * M + x2], S[a * M + x, b * M + y]
    wins = within > across if measure.higher_is_similar else within < across
    p = jnp.mean(wins.astype(reprs.dtype), axis=-1)  # (A, A, straps)
    flagged = p - z * jnp.sqrt(p * (1.0 - p) / trials) > 0.5
    return jnp.mean(flagged.astype(reprs.dtype), axis=-1)


def distinguishability_grid(
    reprs,
    *,
    key,
    straps: int = 40,
    trials: int = 20,
    measure: Measure = RIDGE,
    z: float = 1.96,
    distinct: bool = False,
    chunk: int | None = None,
) -> jax.Array:
    """The toy task's statistic: for each ordered pair (a, b) of interpretations, the fraction of ``straps``
    bootstrap rounds in which a one-sided z-test says a's implementations are closer to each other than to b's.

    Each round runs ``trials`` draws of two implementations X, X' of a and one Y of b (uniform, with
    replacement), scores ``within = m(X, X')`` and ``across = m(X, Y)`` (for ridge: the two fits share one
    train/test split and one decomposition of X), lets ``p`` be the fraction with ``within`` more similar
    than ``across``, and flags the round if ``p - z sqrt(p (1 - p) / trials) > 0.5``.

    A measure that needs no key (CKA, Procrustes, ..., or ``ridge_measure(split=seed or indices)``, the
    reference's fixed ``random_state``) gives every pair of implementations one score, so the A*M x A*M
    score matrix is computed once and the trials index it: the same grid for a fraction of the fits.

    Args:
      reprs: (A, M, N, D): M implementations of each of A interpretations on the same N stimuli.
      distinct: forbid X' == X (the reference allows it; then ``within`` is often a self-fit, R^2 ~ 1, which
        makes even identical interpretations look distinguishable).
      chunk: trials per vmapped batch for a measure that needs a key (memory knob); default see
        :func:`jaxequiv.similarity.base.default_chunk`.

    Returns:
      (A, A) array of rejection rates in [0, 1]; row a is the base interpretation.
    """
    if not isinstance(measure, Measure):
        raise TypeError(f"distinguishability_grid: measure must be a Measure, got {type(measure).__name__}")
    reprs = jnp.asarray(reprs)
    if reprs.ndim != 4:
        raise ValueError(
            f"distinguishability_grid: reprs must be (interpretations, implementations, N, D), got shape {reprs.shape}"
        )
    if reprs.shape[1] < 2:
        raise ValueError(f"distinguishability_grid: needs >= 2 implementations per interpretation, got {reprs.shape[1]}")
    check_reprs(reprs.reshape(-1, *reprs.shape[2:]), name="distinguishability_grid reprs")
    if reprs.shape[2] < measure.min_samples:
        raise ValueError(f"{measure.name} needs at least {measure.min_samples} stimuli, got N={reprs.shape[2]}")
    if straps < 1 or trials < 1:
        raise ValueError(f"straps and trials must be >= 1, got {straps} and {trials}")
    if np.dtype(reprs.dtype).kind != "f":
        reprs = reprs.astype(jnp.float32)
    if isinstance(key, int):
        key = jax.random.key(key)
    return _grid_kernel(reprs, key, measure, int(straps), int(trials), float(z), bool(distinct), default_chunk(chunk, 32))
