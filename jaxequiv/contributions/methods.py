"""The contributions kernel: how much each hidden unit at a set of sites drives a target (CODEC §1.3).

For every point it evaluates, the kernel runs ONE forward and ONE backward pass of the whole network, with a
zero :class:`~jaxequiv.sites.Add` probe at every requested site: the VJP with respect to the probes gives
``d target / d site`` for all sites at once while the same run captures their activations. Points are folded
into the batch (``step_chunk`` points at a time) and chunks are scanned, so memory is traded for speed by one
knob. A target with K scalars per example (``outputs="all"``, or every position of a sequence) pulls back K
one-hot cotangents under ``vmap``.

Methods (``a``: site activation, ``g``: its gradient, ``||.||``: L2 norm over the whole per-example site
tensor, floored at 1e-8):

* ``ig``: hidden-unit integrated gradients in conductance form, ``C = int_0^1 g(x(t)) * da(x(t))/dt dt`` along
  the straight path ``x(t) = b + t (x - b)``; summed over a full cut, ``C`` totals ``T(x) - T(b)``
  (completeness). ``rule`` picks the quadrature (see :data:`RULES`);
* ``grad_x_act``: ``a * g`` at the input;
* ``normgrad``: ``a * g / ||g||`` (CODEC's ``act_normgrad``);
* ``normact_normgrad``: ``(a / ||a||) * (g / ||g||)``;
* ``smoothgrad``: ``mean_j a(x + e_j) * g(x + e_j)`` over ``steps`` draws ``e_j ~ N(0, sigma^2)`` per element;
* ``jacobian``: ``g`` itself; with ``outputs="all"`` the full Jacobian of every output by every unit.

``ig`` and ``smoothgrad`` move the network input, or the value of one site (``input_site``, e.g. the
embeddings of a token model, whose integer ids cannot be interpolated).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxequiv import sites as _sites
from jaxequiv.contributions import targets as _targets
from jaxequiv.distributed import DATA, fetch_global, replicate, shard
from jaxequiv.network import Network
from jaxequiv.rng import as_key

__all__ = [
    "METHODS",
    "RULES",
    "Contributions",
    "KernelConfig",
    "OutputPath",
    "contributions",
    "kernel",
    "prepare",
    "Prepared",
    "example_keys",
    "resolve_sites",
    "check_finite",
    "first_nonfinite",
    "nonfinite_error",
    "batch_specs",
    "place_target",
    "quadrature",
    "completeness_delta",
]

Method = Literal["ig", "grad_x_act", "normgrad", "normact_normgrad", "smoothgrad", "jacobian"]
METHODS: tuple[str, ...] = typing.get_args(Method)
#: Quadratures of the ``ig`` path integral ``int_0^1 g . da``; each converges to it as ``steps`` S grows.
#:
#: * ``trapezoid`` (default, CODEC's): ``sum_i (a_i - a_{i-1}) (g_{i-1} + g_i) / 2`` on ``t_i = i / S``
#:   (S + 1 points); error O(1/S^2) on smooth networks;
#: * ``left``: ``sum_i (a_i - a_{i-1}) g_{i-1}`` on the same points (Captum's ``LayerConductance`` with
#:   ``method="riemann_trapezoid"``, ``n_steps=S``); error O(1/S);
#: * ``right``: ``sum_i (a_i - a_{i-1}) g_i``; error O(1/S);
#: * ``midpoint``: ``sum_j (1/S) g(t_j) da/dt(t_j)`` at ``t_j = (j + 1/2) / S`` (S points, ``da/dt`` by
#:   forward-mode differentiation); error O(1/S^2);
#: * ``gauss_legendre``: ``sum_j w_j g(t_j) da/dt(t_j)`` at the S Gauss-Legendre nodes on [0, 1]; exact for
#:   polynomial integrands of degree < 2S, error falling exponentially in S on smooth (analytic) networks.
#:
#: On piecewise-linear networks (ReLU) every rule's error falls as O(1/S) (kinks inside a step).
Rule = Literal["trapezoid", "left", "right", "midpoint", "gauss_legendre"]
RULES: tuple[str, ...] = typing.get_args(Rule)
NORM_FLOOR = 1e-8
DEFAULT_SIGMA = 0.2  # bscope's Scope.use_smooth_grad default


@dataclasses.dataclass(frozen=True)
class Contributions:
    """Result of :func:`contributions` for a batch of ``B`` examples.

    Attributes:
      values: ``{site: [B, *site_shape]}``, or ``[B, K, *site_shape]`` when the target has K scalars per
        example (``outputs="all"``, or every position of a sequence).
      activations: ``{site: [B, *site_shape]}`` at the real input.
      outputs: the network's (selected) outputs at the real input, ``[B, K]`` or ``[B, T, K]``.
      sites: ``{site: SiteInfo}`` (shape for the batch, axis names).
      delta: ``ig`` only (else ``None``): ``{site: [B] or [B, K]}`` completeness gap, the sum of the site's
        contributions minus ``T(x) - T(baseline)`` (Captum's ``convergence_delta``); near zero when the site is
        a full cut of the network and the quadrature has converged.
    """

    values: dict[str, jax.Array]
    activations: dict[str, jax.Array]
    outputs: jax.Array
    sites: dict[str, _sites.SiteInfo]
    delta: dict[str, jax.Array] | None = None


@dataclasses.dataclass(frozen=True)
class OutputPath:
    """Picks one array out of a network's output pytree: ``OutputPath((1,))(out) == out[1]``,
    ``OutputPath(("logits",))(out) == out["logits"]``."""

    path: tuple

    def __call__(self, out):
        for k in self.path:
            out = out[k]
        return out


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static settings of :func:`kernel` (hashable: one compilation per config and shapes).

    Attributes:
      names: site names, in forward order.
      method: one of :data:`METHODS`.
      steps: ``ig`` quadrature steps S, or ``smoothgrad`` noise draws; 1 for the other methods.
      step_chunk: points per forward/backward pass (``<= steps``).
      rule: ``ig`` quadrature, one of :data:`RULES`.
      input_site: site whose value ``ig`` / ``smoothgrad`` move instead of the network input, or ``None``.
      output: ``network output -> array`` (an :class:`OutputPath` or a callable), or ``None`` (the output is
        already an array).
      sigma: ``smoothgrad`` noise standard deviation.
    """

    names: tuple[str, ...]
    method: Method = "ig"
    steps: int = 10
    step_chunk: int = 10
    rule: Rule = "trapezoid"
    input_site: str | None = None
    output: Callable[[Any], jax.Array] | None = None
    sigma: float = DEFAULT_SIGMA


def resolve_sites(net: Network, patterns: str | Iterable[str], batch: int = 1) -> dict[str, _sites.SiteInfo]:
    """``{name: SiteInfo}`` of the network's sites matching ``patterns`` (fnmatch), in forward order.

    Raises:
      UnknownSiteError: a pattern matches no site (the message lists the model's sites).
    """
    infos = net.sites(batch)
    names = _sites.match(patterns, infos)  # the table: sites also match through their aliases
    return {n: infos[n] for n in names}


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``t_j`` in (0, 1) and weights ``w_j`` (float64, ``[steps]`` each) of a node rule
    (``"midpoint"`` or ``"gauss_legendre"``) for ``int_0^1 f(t) dt ~ sum_j w_j f(t_j)``."""
    if rule == "midpoint":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1.0) / 2.0, weights / 2.0
    raise ValueError(f"{rule!r} is not a node rule; expected 'midpoint' or 'gauss_legendre'")


# ---------------------------------------------------------------------------------------------------------
# Pure kernel.


def _select(output, out):
    return out if output is None else output(out)


def _forward(net: Network, config: KernelConfig, x, args, point):
    """The network at ``P`` points around ``x [B, *input]``, folded into one batch of ``P * B``.

    ``point`` is ``None`` (the real input, P = 1) or ``(t [P, B], eps [P, B, *space] | None, base [B, *space])``:
    the value ``v`` of the input (or of ``config.input_site``) becomes ``base + t (v - base) + eps``.

    Returns ``(forward, probes, p)``: ``forward(t_flat [P*B] | None, probes) -> (outputs, {site: activation})``
    with zero ``probes`` ``{site: [P*B, ...]}`` added at the sites.
    """
    b = x.shape[0]
    p = 1 if point is None else point[0].shape[0]

    def tile(a):
        return jnp.broadcast_to(a[None], (p,) + a.shape).reshape((p * b,) + a.shape[1:])

    xs, rest = tile(x), tuple(tile(a) for a in args)
    infos = _sites.list_sites(net.apply, net.params, xs, *rest)
    probes = {n: jnp.zeros(infos[n].shape, infos[n].dtype) for n in config.names}
    if point is not None:
        eps = None if point[1] is None else point[1].reshape((p * b,) + point[1].shape[2:])
        base = tile(point[2])

    def move(v, t):
        v = base + t.reshape((-1,) + (1,) * (v.ndim - 1)).astype(v.dtype) * (v - base)
        return v if eps is None else v + eps

    def forward(t, deltas):
        edits: dict[str, Any] = {n: _sites.Add(deltas[n]) for n in config.names}
        inputs = xs
        if point is not None and config.input_site is None:
            inputs = move(xs, t)
        elif point is not None:
            probe = edits.get(config.input_site)
            edits[config.input_site] = (
                (lambda v: move(v, t)) if probe is None else (lambda v: probe(move(v, t)))
            )
        out, acts = _sites.run(net.apply, net.params, inputs, *rest, capture=config.names, edits=edits)
        return _select(config.output, out), acts

    return forward, probes, p


def _probe(net, config, target, x, args, point=None, tangent=False):
    """One forward + one backward pass at ``P`` points (see :func:`_forward`).

    Returns:
      outputs ``[P, B, ...]``, target values ``[P, B]`` (``[P, B, K]``), activations ``{site: [P, B, ...]}``,
      gradients ``{site: [P, B, (K,) ...]}``, and with ``tangent`` the path derivatives
      ``{site: d activation / dt [P, B, ...]}`` (else ``None``).
    """
    forward, probes, p = _forward(net, config, x, args, point)
    b = x.shape[0]
    t_flat = None if point is None else point[0].reshape(-1)

    def unfold(a):  # [P*B, ...] -> [P, B, ...]
        return a.reshape((p, b) + a.shape[1:])

    def target_flat(y):  # [P*B, ...] -> [P*B] or [P*B, K]
        t = jax.vmap(target)(unfold(y))
        return t.reshape((p * b,) + t.shape[2:])

    y, pullback, acts = jax.vjp(lambda d: forward(t_flat, d), probes, has_aux=True)
    if target.kind == "outputs":  # the identity: pull one-hot cotangents straight back through y
        t = y
    else:
        t, t_pullback = jax.vjp(target_flat, y)
    if t.ndim == 1:
        (ct,) = t_pullback(jnp.ones_like(t))
        (grads,) = pullback(ct)
        grads = {n: unfold(g) for n, g in grads.items()}
    else:
        k = t.shape[1]
        cotangents = jnp.broadcast_to(jnp.eye(k, dtype=t.dtype)[:, None, :], (k, p * b, k))
        if target.kind == "outputs":
            (grads,) = jax.vmap(pullback)(cotangents)  # {site: [K, P*B, ...]}
        else:
            (grads,) = jax.vmap(lambda c: pullback(t_pullback(c)[0]))(cotangents)
        grads = {n: jnp.moveaxis(g.reshape((k, p, b) + g.shape[2:]), 0, 2) for n, g in grads.items()}
    dacts = None
    if tangent:
        _, dacts = jax.jvp(lambda tt: forward(tt, probes)[1], (t_flat,), (jnp.ones_like(t_flat),))
        dacts = {n: unfold(a) for n, a in dacts.items()}
    return unfold(y), unfold(t), {n: unfold(a) for n, a in acts.items()}, grads, dacts


def _evaluate(net, config, target, x, args, point=None):
    """Forward only: outputs ``[P, B, ...]``, target ``[P, B, (K)]``, activations ``{site: [P, B, ...]}``."""
    forward, probes, p = _forward(net, config, x, args, point)
    y, acts = forward(None if point is None else point[0].reshape(-1), probes)
    y = y.reshape((p, x.shape[0]) + y.shape[1:])
    return y, jax.vmap(target)(y), {n: a.reshape((p, x.shape[0]) + a.shape[1:]) for n, a in acts.items()}


def _times(a: jax.Array, g: jax.Array) -> jax.Array:
    """``a * g`` where ``g`` may carry an extra outputs axis right after the batch axis."""
    if g.ndim == a.ndim + 1:
        a = jnp.expand_dims(a, 1)
    return a * g


def _unit_norm(v: jax.Array, lead: int) -> jax.Array:
    """``v`` divided by its L2 norm over every axis after the first ``lead`` ones (floored at 1e-8)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(lead, v.ndim)), keepdims=True))
    return v / jnp.maximum(norm, NORM_FLOOR)


def completeness_delta(values: Mapping[str, ArrayLike], change: ArrayLike) -> dict[str, jax.Array]:
    """Completeness gap per site and example (Captum's ``convergence_delta``): the sum of a site's
    contributions ``[B, (K,) *site]`` minus the target's change ``T(x) - T(baseline)`` ``[B]`` (``[B, K]``)."""
    change = jnp.asarray(change)
    return {n: jnp.sum(jnp.asarray(v), axis=tuple(range(change.ndim, jnp.ndim(v)))) - change
            for n, v in values.items()}


def _chunks(a: jax.Array, chunk: int, fill) -> jax.Array:
    """``[S, ...] -> [ceil(S / chunk), chunk, ...]``, the last chunk padded with ``fill``."""
    pad = -a.shape[0] % chunk
    a = jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)])
    return a.reshape((-1, chunk) + a.shape[1:])


def _path(t: jax.Array, b: int, base, eps=None):
    return jnp.broadcast_to(t[:, None], (t.shape[0], b)), eps, base


def _ig_differences(net, config, target, x, args, base):
    """``trapezoid`` / ``left`` / ``right``: differences of activations between path points ``i / S``.

    The first pass takes points ``0..C`` (``C = step_chunk``), so with the default ``C = S`` the whole path is
    one forward and one backward pass; further chunks of ``C`` points are scanned, each carrying its
    predecessor's activations and gradients.
    """
    b, c = x.shape[0], config.step_chunk
    alphas = jnp.linspace(0.0, 1.0, config.steps + 1, dtype=base.dtype)

    def segment(a_all, g_all):  # sum over consecutive points of da * (the rule's gradient): [B, ...]
        da = a_all[1:] - a_all[:-1]
        gm = {"trapezoid": lambda: 0.5 * (g_all[1:] + g_all[:-1]), "left": lambda: g_all[:-1],
              "right": lambda: g_all[1:]}[config.rule]()
        return jnp.sum(jax.vmap(_times)(da, gm), axis=0)

    y, t, a, g, _ = _probe(net, config, target, x, args, _path(alphas[:c + 1], b, base))
    t0 = t[0]
    values = {n: segment(a[n], g[n]) for n in config.names}
    last = lambda tree: {n: v[-1] for n, v in tree.items()}  # noqa: E731
    if config.steps > c:
        def body(carry, al):
            a_prev, g_prev, acc = carry
            y, t, a, g, _ = _probe(net, config, target, x, args, _path(al, b, base))
            new_acc = {n: acc[n] + segment(jnp.concatenate([a_prev[n][None], a[n]]),
                                           jnp.concatenate([g_prev[n][None], g[n]])) for n in config.names}
            return (last(a), last(g), new_acc), (y[-1], t[-1])

        # Padding repeats t = 1: a repeated point adds a_i - a_{i-1} = 0 to the sum.
        rest = _chunks(alphas[c + 1:], c, 1.0)
        (a_last, _, values), (ys, ts) = jax.lax.scan(body, (last(a), last(g), values), rest)
        return values, a_last, ys[-1], ts[-1] - t0
    return values, last(a), y[-1], t[-1] - t0


def _weighted_points(net, config, target, x, args, base, ts, weights, eps=None, tangent=True):
    """``sum_j w_j f_j * g_j`` over points ``t_j`` (``f``: path derivative with ``tangent``, else activation)."""
    b = x.shape[0]
    chunk = config.step_chunk
    xs = (_chunks(ts, chunk, 1.0), _chunks(weights, chunk, 0.0))
    if eps is not None:
        xs = xs + (_chunks(eps, chunk, 0.0),)

    def body(acc, inputs):
        t, w = inputs[:2]
        noise = inputs[2] if eps is not None else None
        _, _, a, g, da = _probe(net, config, target, x, args, _path(t, b, base, noise), tangent=tangent)
        f = da if tangent else a
        terms = {n: jax.vmap(lambda fj, gj, wj: wj * _times(fj, gj))(f[n], g[n], w.astype(g[n].dtype))
                 for n in config.names}
        return {n: acc[n] + jnp.sum(terms[n], axis=0) for n in config.names}, None

    grads = jax.eval_shape(lambda: _probe(net, config, target, x, args, _path(ts[:1], b, base))[3])
    acc0 = {n: jnp.zeros(g.shape[1:], g.dtype) for n, g in grads.items()}
    values, _ = jax.lax.scan(body, acc0, xs)
    return values


def _ig_nodes(net, config, target, x, args, base):
    """``midpoint`` / ``gauss_legendre``: ``sum_j w_j g(t_j) da/dt(t_j)``; endpoints for outputs and delta."""
    nodes, weights = quadrature(config.rule, config.steps)
    values = _weighted_points(net, config, target, x, args, base, jnp.asarray(nodes, base.dtype),
                              jnp.asarray(weights, base.dtype))
    y, t, acts = _evaluate(net, config, target, x, args, _path(jnp.array([0.0, 1.0], base.dtype), x.shape[0], base))
    return values, {n: a[1] for n, a in acts.items()}, y[1], t[1] - t[0]


def _smoothgrad(net, config, target, x, args, base, keys):
    space = base.shape[1:]
    draw = jax.vmap(lambda k: jax.random.normal(k, (config.steps,) + space, base.dtype))
    eps = config.sigma * jnp.moveaxis(draw(keys), 0, 1)  # [S, B, *space]
    ones = jnp.ones((config.steps,), base.dtype)
    values = _weighted_points(net, config, target, x, args, jnp.zeros_like(base), ones, ones / config.steps,
                              eps=eps, tangent=False)
    y, _, acts = _evaluate(net, config, target, x, args)
    return values, {n: a[0] for n, a in acts.items()}, y[0], None


def _at_input(net, config, target, x, args):
    y, _, acts, grads, _ = _probe(net, config, target, x, args)
    acts = {n: a[0] for n, a in acts.items()}
    values = {}
    for n in config.names:
        g = grads[n][0]
        lead = 1 + g.ndim - acts[n].ndim  # 2 when g carries an outputs axis
        if config.method == "jacobian":
            values[n] = g
        elif config.method == "grad_x_act":
            values[n] = _times(acts[n], g)
        elif config.method == "normgrad":
            values[n] = _times(acts[n], _unit_norm(g, lead))
        else:  # normact_normgrad
            values[n] = _times(_unit_norm(acts[n], 1), _unit_norm(g, lead))
    return values, acts, y[0], None


@functools.partial(jax.jit, static_argnames=("config",))
def kernel(
    net: Network,
    x: jax.Array,
    baseline: jax.Array,
    target: _targets.Target,
    config: KernelConfig,
    args: tuple[jax.Array, ...] = (),
    keys: jax.Array | None = None,
):
    """Jitted contributions of one batch, without validation (see :func:`prepare` and :func:`contributions`).

    Args:
      net: the model.
      x: ``[B, *input]`` inputs.
      baseline: ``[B, *space]`` ``ig`` baseline in the space that moves (the input, or ``config.input_site``).
      target: a resolved :class:`~jaxequiv.contributions.targets.Target` for this batch.
      config: static settings.
      args: further network inputs ``[B, ...]`` (e.g. an attention mask), held fixed.
      keys: ``[B]`` typed keys, one per example, for ``smoothgrad``'s noise.

    Returns:
      ``(values, activations, outputs, change)`` with the first three as in :class:`Contributions` and, for
      ``ig`` (else ``None``), the target's change ``T(x) - T(baseline)`` ``[B]`` (``[B, K]``); see
      :func:`completeness_delta`.
    """
    if target.kind == "top1_fixed":
        target = target.fix_classes(_select(config.output, net.apply(net.params, x, *args)))
    if config.method == "ig" and config.rule in ("trapezoid", "left", "right"):
        return _ig_differences(net, config, target, x, args, baseline)
    if config.method == "ig":
        return _ig_nodes(net, config, target, x, args, baseline)
    if config.method == "smoothgrad":
        return _smoothgrad(net, config, target, x, args, baseline, keys)
    return _at_input(net, config, target, x, args)


# ---------------------------------------------------------------------------------------------------------
# Public boundary: validation, then the jitted kernel.


def _output_selector(output) -> Callable[[Any], jax.Array] | None:
    if output is None or callable(output):
        return output
    if isinstance(output, (str, int, np.integer)):
        return OutputPath((output.item() if isinstance(output, np.integer) else output,))
    if isinstance(output, (tuple, list)):
        return OutputPath(tuple(output))
    raise TypeError(f"output must be None, a key/index, a path (tuple of keys/indices) or a callable, got "
                    f"{type(output).__name__}")


def _describe(tree) -> str:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return ", ".join(f"{jax.tree_util.keystr(p) or 'out'}: {tuple(v.shape)}" for p, v in leaves[:8]) + (
        " ..." if len(leaves) > 8 else "")


def _output_shape(net: Network, x, args, output) -> tuple[int, ...]:
    """Shape of the selected output for the batch ``x``; a clear error if it is not one array."""
    raw = jax.eval_shape(net.apply, net.params, x, *args)
    try:
        out = _select(output, raw)
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"output={getattr(output, 'path', output)!r} does not select an array from the network's "
                         f"outputs ({_describe(raw)}): {type(e).__name__}: {e}") from None
    if not isinstance(out, jax.ShapeDtypeStruct):
        what = "the network returns" if output is None else "the selected output is"
        raise ValueError(f"{what} a {type(out).__name__} ({_describe(out)}), not one array; pick the output to "
                         "explain with output= (an index or key, a path of them, or a callable)")
    if out.ndim < 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"the selected output has shape {out.shape}; expected [batch, n_outputs] or "
                         f"[batch, seq, n_outputs] with batch {x.shape[0]}")
    return tuple(out.shape)


def _check_int(value, name: str, hint: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1{hint}, got {value!r}")
    return int(value)


def _baseline(baseline, space: tuple[int, ...], dtype, b: int, where: str) -> jax.Array:
    if baseline is None:
        return jnp.zeros((b, *space), dtype)
    baseline = jnp.asarray(baseline, dtype)
    if baseline.shape == space:
        baseline = jnp.broadcast_to(baseline, (b, *space))
    if baseline.shape != (b, *space):
        raise ValueError(
            f"baseline of shape {baseline.shape} does not fit {where} of shape {(b, *space)}: pass one "
            f"{space} (shared by all examples) or one per example {(b, *space)}"
        )
    return baseline


class Prepared(NamedTuple):
    """Validated arguments of :func:`kernel` (see :func:`prepare`)."""

    x: jax.Array  #: [B, *input]
    baseline: jax.Array  #: [B, *space]
    target: _targets.Target
    infos: dict[str, _sites.SiteInfo]
    config: KernelConfig
    args: tuple[jax.Array, ...]
    key: jax.Array | None  #: typed key for smoothgrad
    output_shape: tuple[int, ...]  #: shape of the selected output for this batch


def prepare(net: Network, x: ArrayLike, sites: str | Iterable[str], method: str = "ig", target: Any = None,
            outputs: str = "target", steps: int = 10, baseline: ArrayLike | None = None,
            step_chunk: int | None = None, *, rule: str = "trapezoid", output: Any = None,
            args: Sequence[ArrayLike] = (), input_site: str | None = None, sigma: float = DEFAULT_SIGMA,
            key: Any = None):
    """Validate the arguments of :func:`contributions` (same names and meanings); raise one clear error.

    Returns:
      :class:`Prepared` arguments for :func:`kernel`.
    """
    if not isinstance(net, Network):
        raise TypeError(f"contributions needs a jaxequiv.Network, got {type(net).__name__}; use Network.from_module")
    net.check_input(x)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if outputs not in ("target", "all"):
        raise ValueError(f"outputs must be 'target' (what target= says) or 'all' (every output), got {outputs!r}")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
    if rule != "trapezoid" and method != "ig":
        raise ValueError(f"rule={rule!r} is the quadrature of method='ig'; method={method!r} takes no rule")
    moves = method in ("ig", "smoothgrad")
    steps = _check_int(steps, "steps", " (CODEC uses 10)")
    if step_chunk is not None:
        _check_int(step_chunk, "step_chunk", " or None (all steps at once)")
    if input_site is not None and not moves:
        raise ValueError(f"input_site applies to method='ig' or 'smoothgrad', not {method!r}")
    if (key is not None) != (method == "smoothgrad"):
        raise ValueError("method='smoothgrad' draws noise: pass key=0 or key=jax.random.key(0)" if key is None
                         else f"key= only applies to method='smoothgrad', not {method!r}")
    if method == "smoothgrad" and not (isinstance(sigma, (int, float, np.floating)) and 0 < sigma < np.inf):
        raise ValueError(f"sigma must be a positive finite noise scale, got {sigma!r}")
    if moves and input_site is None and net.input_dtype == "int":
        raise ValueError(f"method={method!r} moves the input, but this network takes integer token ids; pass "
                         "input_site= a float site to move instead, e.g. input_site='embed' (the embeddings)")
    x = jnp.asarray(x)
    b = x.shape[0]
    args = tuple(jnp.asarray(a) for a in args)
    for i, a in enumerate(args):
        if a.ndim < 1 or a.shape[0] != b:
            raise ValueError(f"args[{i}] has shape {a.shape}; every further input needs the batch axis first ({b})")
    output = _output_selector(output)
    out_shape = _output_shape(net, x, args, output)
    all_sites = _sites.list_sites(net.apply, net.params, x, *args)  # shapes of this batch (free lengths too)
    infos = {n: all_sites[n] for n in _sites.match(sites, all_sites)}  # aliases (TransformerLens names) too
    if outputs == "all":
        if target is not None:
            raise ValueError("outputs='all' computes contributions toward every output; leave target=None")
        target = _targets.every_output()
    else:
        target = _targets.resolve("top1" if target is None else target)
    target.check(out_shape)
    space, where = x.shape[1:], "inputs"
    if input_site is not None:
        if input_site not in all_sites:
            raise ValueError(f"input_site={input_site!r} is not a site of this network; its sites are "
                             f"{list(all_sites)}")
        info = all_sites[input_site]
        space, where = info.shape[1:], f"site {input_site!r}"
        if not jnp.issubdtype(info.dtype, jnp.floating):
            raise ValueError(f"input_site={input_site!r} holds {info.dtype} values; it must be a float site")
    dtype = x.dtype if input_site is None else all_sites[input_site].dtype
    if method == "ig":
        baseline = _baseline(baseline, space, dtype, b, where)
    elif baseline is not None:
        raise ValueError(f"baseline applies to method='ig', not {method!r}")
    else:
        baseline = jnp.zeros((b, *space), dtype if moves else jnp.float32)
    if not moves:
        steps, step_chunk = 1, 1
    else:
        step_chunk = min(step_chunk or steps, steps)
    config = KernelConfig(names=tuple(infos), method=method, steps=steps, step_chunk=int(step_chunk), rule=rule,
                          input_site=input_site, output=output, sigma=float(sigma))
    return Prepared(x, baseline, target, infos, config, args, None if key is None else as_key(key, "key"),
                    out_shape)


def example_keys(key: jax.Array, rows: ArrayLike) -> jax.Array:
    """One typed key per example ``[B]``: ``key`` folded with each example's row index in its data set, so a
    draw never depends on how a data set is cut into batches."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(rows, jnp.uint32))


_row_nonfinite = jax.jit(lambda v: ~jnp.isfinite(v.reshape(v.shape[0], -1)).all(axis=1))


def first_nonfinite(values: Mapping[str, ArrayLike], rows: ArrayLike | None = None) -> tuple[int, int, int] | None:
    """Where the first site (in order) of ``values`` ``{site: [B, ...]}`` holds NaN or Inf, or ``None``.

    Returns ``(site index, example, examples affected at that site)``; the example is ``rows[i]`` for row ``i``
    (default ``i``). Arrays split over processes are checked where they lie (only ``[B]`` flags are gathered).
    """
    for k, v in enumerate(values.values()):
        if isinstance(v, jax.Array) and not v.is_fully_addressable:
            bad = fetch_global(_row_nonfinite(v))
        else:
            v = np.asarray(v)
            bad = ~np.isfinite(v.reshape(v.shape[0], int(np.prod(v.shape[1:])))).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return k, int(i if rows is None else rows[i]), int(bad.sum())
    return None


def nonfinite_error(site: str, example: int, count: int) -> ValueError:
    """The error for NaN or Inf contributions at ``site``, first at ``example``, in ``count`` examples."""
    return ValueError(
        f"non-finite contributions (NaN or Inf) at site {site!r} for example {example} ({count} example(s) "
        "affected); check that input for NaN/Inf and the target for overflow (e.g. a softmax of huge logits)"
    )


def check_finite(values: Mapping[str, ArrayLike], offset: int = 0) -> None:
    """Raise ``ValueError`` naming the first site and example (``offset`` + row) holding NaN or Inf."""
    found = first_nonfinite(values)
    if found is not None:
        site, row, count = found
        raise nonfinite_error(list(values)[site], offset + row, count)


# ---------------------------------------------------------------------------------------------------------
# Many devices and processes: the examples split over the mesh axis ``data``, each device computing its own.


def _array_fields(target: _targets.Target) -> dict[str, Any]:
    return {f.name: getattr(target, f.name) for f in dataclasses.fields(target)
            if not f.metadata.get("static") and getattr(target, f.name) is not None}


def place_target(target: _targets.Target, mesh: Mesh) -> _targets.Target:
    """``target`` on ``mesh``: its per-example arrays split over ``data``, the others replicated."""
    example = target.example_fields()
    return dataclasses.replace(target, **{f: shard(v, mesh) if f in example else replicate(v, mesh)
                                          for f, v in _array_fields(target).items()})


def batch_specs(target: _targets.Target) -> tuple:
    """``shard_map`` specs of ``(net, x, baseline, target, args, key, rows)`` for a batch split over ``data``:
    the model, the key and the target's shared arrays replicated, everything per example split."""
    example = target.example_fields()
    specs = dataclasses.replace(target, **{f: P(DATA) if f in example else P() for f in _array_fields(target)})
    return P(), P(DATA), P(DATA), specs, P(DATA), P(), P(DATA)


@functools.partial(jax.jit, static_argnames=("config", "mesh"))
def _kernel_on_mesh(net, x, baseline, target, args, key, rows, *, config: KernelConfig, mesh: Mesh):
    """:func:`kernel` on each device's share of a batch split over ``data``; no communication."""
    def local(net, x, baseline, target, args, key, rows):
        return kernel(net, x, baseline, target, config, args, None if key is None else example_keys(key, rows))

    return jax.shard_map(local, mesh=mesh, in_specs=batch_specs(target), out_specs=P(DATA), check_vma=False)(
        net, x, baseline, target, args, key, rows)


def contributions(
    net: Network,
    x: ArrayLike,
    sites: str | Iterable[str],
    *,
    method: str = "ig",
    target: Any = None,
    outputs: str = "target",
    steps: int = 10,
    baseline: ArrayLike | None = None,
    step_chunk: int | None = None,
    finite: bool = True,
    rule: str = "trapezoid",
    output: Any = None,
    args: Sequence[ArrayLike] = (),
    input_site: str | None = None,
    sigma: float = DEFAULT_SIGMA,
    key: Any = None,
    mesh: Mesh | None = None,
) -> Contributions:
    """Contributions of every unit at ``sites`` for a batch ``x [B, *input]``, from one pass per point.

    Args:
      net: the model (see :class:`jaxequiv.Network`).
      x: ``[B, *net.input_shape]`` inputs (float, already normalised; or token ids with ``input_site``).
      sites: site names or fnmatch patterns, e.g. ``"layer*"``.
      method: one of :data:`METHODS` (see the module docstring); default ``"ig"``.
      target: what to explain (see :mod:`jaxequiv.contributions.targets`); default ``"top1"``. For sequence
        outputs ``[B, T, K]`` read it at a position: ``targets.at_position("top1", "last", mask=mask)``.
      outputs: ``"target"`` or ``"all"`` (every output of ``[B, K]``: values ``[B, K, ...]``).
      steps: ``ig`` quadrature steps S (see :data:`RULES`) or ``smoothgrad`` draws; ignored by the others.
      baseline: ``ig`` baseline in the space that moves, one ``[*space]`` or ``[B, *space]``; default zeros.
      step_chunk: points per forward/backward (memory ~ step_chunk x batch); default all ``steps``.
      finite: raise if any contribution is NaN/Inf (naming the site and the example).
      rule: ``ig`` quadrature, one of :data:`RULES`; default ``"trapezoid"`` (CODEC's).
      output: which part of the network's output to explain when it is not one array: an index or key
        (``0``, ``"logits"``), a path of them (``("heads", 1)``), or a callable ``out -> array``.
      args: further network inputs after ``x``, batch axis first (e.g. the attention mask ``[B, T]``);
        held fixed along any path.
      input_site: for ``ig`` / ``smoothgrad``, the float site to move instead of the input (``"embed"`` for a
        token model: the path runs from ``baseline`` to the embeddings of ``x``).
      sigma: ``smoothgrad`` noise standard deviation (in the units of the space that moves).
      key: ``smoothgrad``'s random key (int seed or ``jax.random.key``); example ``i`` draws from
        ``fold_in(key, i)``.
      mesh: split the batch over the mesh axis ``data`` (every device of every process computes its own
        examples; B must be a multiple of that axis). ``x`` (and ``args``, a per-example ``baseline`` or target)
        is then the whole batch, the same on every process, or a global array
        (:func:`jaxequiv.distributed.global_array`); the results are global arrays split the same way
        (:func:`jaxequiv.distributed.local_array` gives a process its rows).

    Returns:
      :class:`Contributions` with ``values {site: [B, ...]}``, activations, outputs, site infos and, for
      ``ig``, the completeness gap ``delta``.
    """
    p = prepare(net, x, sites, method, target, outputs, steps, baseline, step_chunk, rule=rule, output=output,
                args=args, input_site=input_site, sigma=sigma, key=key)
    rows = np.arange(p.x.shape[0], dtype=np.int32)
    if mesh is None:
        keys = None if p.key is None else example_keys(p.key, rows)
        values, acts, y, change = kernel(net, p.x, p.baseline, p.target, p.config, p.args, keys)
    else:
        values, acts, y, change = _kernel_on_mesh(
            replicate(net, mesh), shard(p.x, mesh), shard(p.baseline, mesh), place_target(p.target, mesh),
            tuple(shard(a, mesh) for a in p.args), p.key, shard(rows, mesh), config=p.config, mesh=mesh)
    if finite:
        check_finite(values)
    delta = None if change is None else completeness_delta(values, change)
    return Contributions(values, acts, y, p.infos, delta)
