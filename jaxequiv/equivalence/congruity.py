"""CONGRUITY (Algorithm 1 of Sun & Toneva), the congruity matrix of many models, and the toy task's bootstrap
distinguishability grid, vmapped.

All take representations of *implementations* (e.g. from :func:`jaxequiv.equivalence.get_impl`) and any
:class:`~jaxequiv.similarity.Measure` (the ridge score by default, as the reference code). For asymmetric
measures the base representation is always the first argument (``X`` predicts ``Y`` for ridge); distances
are negated internally so "closer" always means "more similar".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from jaxequiv.distributed import gather_items, map_items, replicate, split_items
from jaxequiv.rng import as_key
from jaxequiv.similarity import RIDGE, Measure, check_pair, check_reprs, pairwise

__all__ = ["congruity", "CongruityResult", "congruity_matrix", "CongruityMatrix", "distinguishability_grid"]


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
    """``measure(X, own)`` and ``measure(X, other)`` with one draw of ``key`` (the same ridge split and one
    decomposition of X), also when the two have different widths (models like GPT-2 and Pythia)."""
    if own.shape == other.shape:
        return measure.many_kernel(X, jnp.stack([own, other]), key)
    return measure.many_kernel(X, (own[None], other[None]), key)


def _draw_rounds(key, m1, m2, n_rounds, compare_to, needs_key):
    """What each round uses: ``(own1, own2, oth1, oth2, fit keys (n_rounds, 2) or None)`` (indices of the drawn
    implementations; the other model's are 0 when ``compare_to == "model"``), the fit key and the bootstrap key."""
    k_draw, k_fit, k_boot = jax.random.split(key, 3)
    kd = jax.random.split(k_draw, 4)
    own1 = jax.random.randint(kd[0], (n_rounds,), 0, m1)
    own2 = jax.random.randint(kd[1], (n_rounds,), 0, m2)
    oth2 = jax.random.randint(kd[2], (n_rounds,), 0, m2)  # fresh implementation of the other model
    oth1 = jax.random.randint(kd[3], (n_rounds,), 0, m1)
    if compare_to == "model":  # the other base model itself, the same every round
        oth1, oth2 = jnp.zeros_like(oth1), jnp.zeros_like(oth2)
    # a fresh draw (ridge: split) per round and base model, shared by own and other
    fit_keys = jax.random.split(k_fit, (n_rounds, 2)) if needs_key else None
    return (own1, own2, oth1, oth2, fit_keys), k_fit, k_boot


def _indicators(models, rounds, k_fit, measure, compare_to, chunk):
    """Indicators (r, 2) of the rounds ``rounds`` (from :func:`_draw_rounds`, any r of them) of the two models
    ``(base1, impls1, base2, impls2)``."""
    base1, impls1, base2, impls2 = models
    own1, own2, oth1, oth2, fit_keys = rounds
    pool1, pool2 = (base1[None], base2[None]) if compare_to == "model" else (impls1, impls2)
    if measure.needs_key:

        def round_(args):
            i1, i2, o1, o2, ks = args
            return jnp.concatenate([_own_and_other(measure, base1, impls1[i1], pool2[o2], ks[0]),
                                    _own_and_other(measure, base2, impls2[i2], pool1[o1], ks[1])])

        s = jax.lax.map(round_, rounds, batch_size=min(chunk, own1.shape[0])).T  # (4, r)
    else:  # deterministic scores: each (base, implementation) pair once, the rounds look up
        s = (measure.many_kernel(base1, impls1, k_fit)[own1], measure.many_kernel(base1, pool2, k_fit)[oth2],
             measure.many_kernel(base2, impls2, k_fit)[own2], measure.many_kernel(base2, pool1, k_fit)[oth1])
    return jnp.stack([_closer(s[0], s[1], measure.higher_is_similar),
                      _closer(s[2], s[3], measure.higher_is_similar)], 1)


def _summary(ind, k_boot, n_boot):
    """Score and bootstrap scores (n_boot,) of the indicators (n_rounds, 2)."""
    per_round = jnp.sum(ind, axis=1)  # in {0, .., 2}
    boot = jax.random.randint(k_boot, (n_boot, ind.shape[0]), 0, ind.shape[0])
    return _score(jnp.mean(per_round)), _score(jnp.mean(per_round[boot], axis=1))


def _congruity_rounds(base1, impls1, base2, impls2, key, measure, n_rounds, compare_to, n_boot, chunk):
    """Score, bootstrap scores (n_boot,) and indicators (n_rounds, 2) of one pair of models (unjitted)."""
    rounds, k_fit, k_boot = _draw_rounds(key, impls1.shape[0], impls2.shape[0], n_rounds, compare_to,
                                         measure.needs_key)
    ind = _indicators((base1, impls1, base2, impls2), rounds, k_fit, measure, compare_to, chunk)
    return *_summary(ind, k_boot, n_boot), ind


_STATIC = ("measure", "n_rounds", "compare_to", "n_boot", "chunk")
_congruity_kernel = jax.jit(_congruity_rounds, static_argnames=_STATIC)
_draw_kernel = jax.jit(_draw_rounds, static_argnames=("m1", "m2", "n_rounds", "compare_to", "needs_key"))
_summary_kernel = jax.jit(_summary, static_argnames=("n_boot",))


@functools.partial(jax.jit, static_argnames=("measure", "compare_to", "chunk", "mesh"))
def _indicators_on_mesh(rounds, models, k_fit, measure, compare_to, chunk, mesh):
    """:func:`_indicators` of each device's share of the rounds (placed by ``split_items``)."""
    return map_items(lambda r, models, k_fit: _indicators(models, r, k_fit, measure, compare_to, chunk), mesh,
                     rounds, models, k_fit)


def _check_settings(measure, compare_to, n_rounds, n_boot, ci, where):
    if not isinstance(measure, Measure):
        raise TypeError(f"{where}: measure must be a jaxequiv.similarity.Measure, got {type(measure).__name__}")
    if compare_to not in ("implementation", "model"):
        raise ValueError(f"compare_to must be 'implementation' or 'model', got {compare_to!r}")
    if n_rounds < 1 or n_boot < 1 or not 0 < ci < 1:
        raise ValueError(f"need n_rounds >= 1, n_boot >= 1 and 0 < ci < 1; got {n_rounds}, {n_boot}, {ci}")


def _check_chunk(chunk) -> int:
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return int(chunk)


def _check_model(base, impls, measure, label):
    impls = check_reprs(impls, name=f"{label} impls", min_count=2)
    base, _ = check_pair(base, impls[0], min_samples=measure.min_samples, name=f"{label} base")
    return base, impls


def _interval(boots, ci):
    """Percentile interval of bootstrap scores along the last axis: (low, high)."""
    lo, hi = np.quantile(np.asarray(boots), [(1 - ci) / 2, (1 + ci) / 2], axis=-1)
    return lo, hi


def congruity(
    base1: ArrayLike,
    impls1: ArrayLike,
    base2: ArrayLike,
    impls2: ArrayLike,
    *,
    key,
    n_rounds: int = 100,
    measure: Measure = RIDGE,
    compare_to: str = "implementation",
    n_boot: int = 1000,
    ci: float = 0.95,
    chunk: int = 64,
    mesh: Mesh | None = None,
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
      chunk: rounds evaluated per vmapped batch (the memory knob). Decompositions inside run one matrix at a time
        on the CPU whatever the chunk (:mod:`jaxequiv.similarity.numerics`).
      mesh: a device mesh (:func:`jaxequiv.distributed.make_mesh`; devices of one or several processes, which all
        pass the same inputs): the rounds are split over all its devices, each with the draws and keys it has on
        one device, so the result is the one-device result (the bootstrap runs on the gathered indicators).
        A measure that needs no key scores the few (base, implementation) pairs on every device.
    """
    _check_settings(measure, compare_to, n_rounds, n_boot, ci, "congruity")
    base1, impls1 = _check_model(base1, impls1, measure, "congruity model 1")
    base2, impls2 = _check_model(base2, impls2, measure, "congruity model 2")
    if base1.shape[0] != base2.shape[0]:
        raise ValueError(f"congruity: both models need the same N stimuli, got {base1.shape[0]} and {base2.shape[0]}")
    chunk = _check_chunk(chunk)
    if mesh is None:
        score, boots, ind = _congruity_kernel(base1, impls1, base2, impls2, as_key(key), measure, int(n_rounds),
                                              compare_to, int(n_boot), chunk)
    else:
        rounds, k_fit, k_boot = _draw_kernel(as_key(key), impls1.shape[0], impls2.shape[0], int(n_rounds), compare_to,
                                             measure.needs_key)
        rounds, n = split_items(rounds, mesh)
        ind = gather_items(_indicators_on_mesh(rounds, replicate((base1, impls1, base2, impls2), mesh),
                                               replicate(k_fit, mesh), measure, compare_to, chunk, mesh), n)
        score, boots = _summary_kernel(jnp.asarray(ind), k_boot, int(n_boot))
    lo, hi = _interval(boots, ci)
    return CongruityResult(float(score), float(lo), float(hi), np.asarray(ind))


@dataclasses.dataclass(frozen=True)
class CongruityMatrix:
    """Congruity of every pair of k models (see :func:`congruity_matrix`).

    Attributes:
      names: the k model names, in order.
      score, ci_low, ci_high: (k, k) symmetric matrices of congruity and its bootstrap interval.
      indicators: (k, k, n_rounds, 2): ``indicators[i, j]`` are the per-round indicators of
        ``congruity(model i, model j)`` (column 0: model i as base), so ``indicators[j, i]`` swaps the columns.
    """

    names: tuple[str, ...]
    score: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    indicators: np.ndarray

    def pair(self, i: int, j: int) -> CongruityResult:
        """The :class:`CongruityResult` of models ``i`` and ``j`` (model i is "model 1")."""
        return CongruityResult(float(self.score[i, j]), float(self.ci_low[i, j]), float(self.ci_high[i, j]),
                               self.indicators[i, j])


def _pair_key(key, i, j, k):
    """The key of pair (i, j) of k models: ``fold_in(key, i * k + j)``."""
    return jax.random.fold_in(key, i * k + j)


@functools.partial(jax.jit, static_argnames=("groups", "mesh") + _STATIC)
def _matrix_kernel(stacks, pairs, key, groups, measure, n_rounds, compare_to, n_boot, chunk, mesh=None):
    """Per group of pairs: ``vmap`` of the congruity rounds over its pairs.

    ``stacks``: per shape group, ``(bases (G, N, D), impls (G, M, N, D))``; ``groups``: per group of pairs the
    indices ``(a, b)`` of the two shape groups; ``pairs``: per group of pairs ``(i, j, ia, ib)`` (P,) arrays:
    model indices (for the keys) and positions in the shape groups. With a ``mesh`` each group's pairs are split
    over its devices (placed by ``split_items``; ``stacks`` and ``key`` replicated).
    """
    k = sum(b.shape[0] for b, _ in stacks)
    out = []
    for a, b in groups:

        def some(pairs, stacks, key, a=a, b=b):  # the rounds of some pairs of the group
            (ba, ma), (bb, mb) = stacks[a], stacks[b]

            def one(i, j, ia, ib):
                return _congruity_rounds(ba[ia], ma[ia], bb[ib], mb[ib], _pair_key(key, i, j, k),
                                         measure, n_rounds, compare_to, n_boot, chunk)

            return jax.vmap(one)(*pairs)

        group_pairs = pairs[len(out)]
        out.append(some(group_pairs, stacks, key) if mesh is None
                   else map_items(some, mesh, group_pairs, stacks, key))
    return out


def congruity_matrix(
    models: Mapping[str, tuple[ArrayLike, ArrayLike]] | Sequence[tuple[ArrayLike, ArrayLike]],
    *,
    key,
    names: Sequence[str] | None = None,
    n_rounds: int = 100,
    measure: Measure = RIDGE,
    compare_to: str = "implementation",
    n_boot: int = 1000,
    ci: float = 0.95,
    chunk: int = 64,
    mesh: Mesh | None = None,
) -> CongruityMatrix:
    """:func:`congruity` of every pair of models (each with itself on the diagonal), in one compiled call.

    Pair ``(i, j)``, ``i <= j``, is exactly ``congruity(*models[i], *models[j], key=fold_in(key, i * k + j))``
    for k models. Models are grouped by the shape of their implementation stacks; the pairs of each two groups
    run as one vmap (models of one width as one batch), so the matrix costs one compilation and no Python loop.

    Args:
      models: ``{name: (base (N, D), impls (M, N, D))}``, or a sequence of ``(base, impls)`` with ``names``
        (default ``"0"``, ``"1"``, ...). Every model needs the same N stimuli; widths D and counts M may differ.
      key: PRNG key (or int seed).
      names: unique model names for a sequence of models.
      n_rounds, measure, compare_to, n_boot, ci, chunk: as :func:`congruity`.
      mesh: a device mesh (devices of one or several processes, which all pass the same models): the pairs of
        models are split over all its devices, each pair computed as on one device; every process gets the whole
        matrix.

    Returns:
      A :class:`CongruityMatrix`.
    """
    _check_settings(measure, compare_to, n_rounds, n_boot, ci, "congruity_matrix")
    if isinstance(models, Mapping):
        if names is not None:
            raise ValueError("congruity_matrix: pass names only with a sequence of models (a mapping names them)")
        names, models = list(models), list(models.values())
    models = list(models)
    names = [str(i) for i in range(len(models))] if names is None else [str(n) for n in names]
    if len(models) < 1 or len(names) != len(models):
        raise ValueError(f"congruity_matrix: needs >= 1 model and one name per model, got {len(models)} models and "
                         f"{len(names)} names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"congruity_matrix: model names must be unique, {dup} appear more than once")
    checked = []
    for name, model in zip(names, models):
        if not isinstance(model, (tuple, list)) or len(model) != 2:
            raise ValueError(f"congruity_matrix: model {name!r} must be a (base (N, D), impls (M, N, D)) pair")
        checked.append(_check_model(*model, measure, f"congruity_matrix model {name!r}"))
    sizes = {b.shape[0] for b, _ in checked}
    if len(sizes) > 1:
        raise ValueError(f"congruity_matrix: every model needs the same N stimuli, got N = {sorted(sizes)}")
    k = len(checked)
    shapes = list(dict.fromkeys((m.shape, m.dtype) for _, m in checked))  # shape groups, in order of appearance
    group_of = [shapes.index((m.shape, m.dtype)) for _, m in checked]
    position = [group_of[:i].count(group_of[i]) for i in range(k)]
    stacks = tuple((jnp.stack([checked[i][0] for i in range(k) if group_of[i] == g]),
                    jnp.stack([checked[i][1] for i in range(k) if group_of[i] == g])) for g in range(len(shapes)))
    by_groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i in range(k):
        for j in range(i, k):
            by_groups.setdefault((group_of[i], group_of[j]), []).append((i, j))
    groups = tuple(by_groups)
    pairs = tuple(tuple(np.array(v, np.int32) for v in ([p[0] for p in ps], [p[1] for p in ps],
                                                         [position[p[0]] for p in ps], [position[p[1]] for p in ps]))
                  for ps in by_groups.values())
    settings = (measure, int(n_rounds), compare_to, int(n_boot), _check_chunk(chunk))
    if mesh is None:
        out = _matrix_kernel(stacks, pairs, as_key(key), groups, *settings)
    else:
        placed = [split_items(p, mesh) for p in pairs]
        out = _matrix_kernel(replicate(stacks, mesh), tuple(p for p, _ in placed), replicate(as_key(key), mesh),
                             groups, *settings, mesh=mesh)
        out = [gather_items(o, n) for o, (_, n) in zip(out, placed)]
    score, lo, hi = (np.zeros((k, k)) for _ in range(3))
    ind = np.zeros((k, k, int(n_rounds), 2))
    for ps, (sc, boots, indicators) in zip(by_groups.values(), out):
        low, high = _interval(boots, ci)
        for p, (i, j) in enumerate(ps):
            for mat, value in ((score, sc[p]), (lo, low[p]), (hi, high[p])):
                mat[i, j] = mat[j, i] = value
            ind[j, i] = np.asarray(indicators[p])[:, ::-1]  # model j as base in column 0
            ind[i, j] = indicators[p]
    return CongruityMatrix(tuple(names), score, lo, hi, ind)


def _grid_draws(key, A, M, straps, trials, distinct, needs_key):
    """Each trial's ``(a, b, x, x2, y)`` (A, A, straps, trials) and, for a measure that needs one, its key (flat);
    and the key of a measure that needs none."""
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
    # a fresh draw (ridge: train/test split) per trial, shared by its two fits
    keys = jax.random.split(k4, A * A * straps * trials) if needs_key else None
    return (a, b, x, x2, y), keys, k4


def _grid_trials(reprs, trials, measure, chunk):
    """``within = m(X, X')`` and ``across = m(X, Y)`` of flat trials ``(a, b, x, x2, y, key)`` (r,) each."""

    def trial(args):
        a, b, x, x2, y, k = args
        s = measure.many_kernel(reprs[a, x], jnp.stack([reprs[a, x2], reprs[b, y]]), k)
        return s[0], s[1]

    return jax.lax.map(trial, trials, batch_size=min(chunk, trials[0].shape[0]))


def _grid_lookup(S, draws, M):
    """``within`` and ``across`` of every trial from the A*M x A*M score matrix of a measure that needs no key."""
    a, b, x, x2, y = draws
    return S[a * M + x, a * M + x2], S[a * M + x, b * M + y]


@functools.partial(jax.jit, static_argnames=("higher_is_similar", "z"))
def _grid_rates(within, across, higher_is_similar, z):
    """The (A, A) rejection rates from the trials' scores (A, A, straps, trials)."""
    wins = within > across if higher_is_similar else within < across
    p = jnp.mean(wins.astype(within.dtype), axis=-1)  # (A, A, straps)
    flagged = p - z * jnp.sqrt(p * (1.0 - p) / within.shape[-1]) > 0.5
    return jnp.mean(flagged.astype(within.dtype), axis=-1)


@functools.partial(jax.jit, static_argnames=("measure", "straps", "trials", "z", "distinct", "chunk"))
def _grid_kernel(reprs, key, measure, straps, trials, z, distinct, chunk):
    A, M = reprs.shape[:2]
    draws, keys, k4 = _grid_draws(key, A, M, straps, trials, distinct, measure.needs_key)
    if measure.needs_key:
        flat = tuple(v.reshape(-1) for v in draws) + (keys,)
        within, across = (s.reshape(draws[0].shape) for s in _grid_trials(reprs, flat, measure, chunk))
    else:  # deterministic scores: each ordered pair of the A*M implementations is scored once, trials look up
        within, across = _grid_lookup(measure.matrix_kernel(reprs.reshape(A * M, *reprs.shape[2:]), None, k4),
                                      draws, M)
    return _grid_rates(within, across, measure.higher_is_similar, z)


_grid_draw_kernel = jax.jit(_grid_draws, static_argnames=("A", "M", "straps", "trials", "distinct", "needs_key"))
_grid_lookup_kernel = jax.jit(_grid_lookup, static_argnames=("M",))


@functools.partial(jax.jit, static_argnames=("measure", "chunk", "mesh"))
def _grid_trials_on_mesh(trials, reprs, measure, chunk, mesh):
    """:func:`_grid_trials` of each device's share of the trials (placed by ``split_items``)."""
    return map_items(lambda t, reprs: _grid_trials(reprs, t, measure, chunk), mesh, trials, reprs)


def _grid_on_mesh(reprs, key, measure, straps, trials, z, distinct, chunk, mesh):
    """:func:`_grid_kernel` with the trials (or, for a measure that needs no key, the rows of the score matrix)
    split over the devices of ``mesh``."""
    A, M = reprs.shape[:2]
    draws, keys, k4 = _grid_draw_kernel(key, A, M, straps, trials, distinct, measure.needs_key)
    if measure.needs_key:
        items, n = split_items(tuple(v.reshape(-1) for v in draws) + (keys,), mesh)
        within, across = (jnp.asarray(s).reshape(draws[0].shape)
                          for s in gather_items(_grid_trials_on_mesh(items, replicate(reprs, mesh), measure,
                                                                     chunk, mesh), n))
    else:
        S = pairwise(measure, reprs.reshape(A * M, *reprs.shape[2:]), key=k4, mesh=mesh)
        within, across = _grid_lookup_kernel(S, draws, M)
    return _grid_rates(within, across, measure.higher_is_similar, z)


def distinguishability_grid(
    reprs: ArrayLike,
    *,
    key,
    straps: int = 40,
    trials: int = 20,
    measure: Measure = RIDGE,
    z: float = 1.96,
    distinct: bool = False,
    chunk: int = 32,
    mesh: Mesh | None = None,
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
      chunk: trials per vmapped batch for a measure that needs a key (the memory knob).
      mesh: a device mesh (devices of one or several processes, which all pass the same inputs): the trials (for
        a measure that needs no key, the rows of the score matrix) are split over all its devices, with the draws
        and keys they have on one device; every process gets the whole grid.

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
    settings = (measure, int(straps), int(trials), float(z), bool(distinct), _check_chunk(chunk))
    if mesh is None:
        return _grid_kernel(reprs, as_key(key), *settings)
    return _grid_on_mesh(reprs, as_key(key), *settings, mesh)
