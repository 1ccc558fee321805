"""The contributions kernel: how much each hidden unit at a set of sites drives a target (CODEC §1.3).

For every path point the kernel runs ONE forward and ONE backward pass of the whole network, with a zero
:class:`~jaxequiv.sites.Add` probe at every requested site: the VJP with respect to the probes gives
``d target / d site`` for all sites at once while the same run captures their activations. Path points are
folded into the batch (``step_chunk`` points at a time) and chunks are scanned, so memory is traded for speed
by one knob. ``outputs="all"`` pulls back one-hot cotangents for every output under ``vmap``.

Methods (``a``: site activation, ``g``: its gradient):

* ``ig``: C = sum_i (a_i - a_{i-1}) * (g_{i-1} + g_i) / 2 along x_i = b + (i/S)(x - b), i = 0..S
  (hidden-unit integrated gradients in conductance form; summed over a full cut ~ T(x) - T(b));
* ``grad_x_act``: a * g at the input;
* ``normgrad``: a * g / max(||g||_2, 1e-8), the norm over the whole per-example site tensor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv import sites as _sites
from jaxequiv.contributions import targets as _targets
from jaxequiv.network import Network

__all__ = ["METHODS", "Contributions", "contributions", "resolve_sites", "check_finite"]

METHODS = ("ig", "grad_x_act", "normgrad")
NORM_FLOOR = 1e-8


@dataclasses.dataclass(frozen=True)
class Contributions:
    """Result of :func:`contributions` for a batch of ``B`` examples.

    Attributes:
      values: ``{site: [B, *site_shape]}``, or ``[B, K, *site_shape]`` with ``outputs="all"``.
      activations: ``{site: [B, *site_shape]}`` at the real input.
      outputs: ``[B, K]`` network outputs at the real input.
      sites: ``{site: SiteInfo}`` (shape for the batch, axis names).
    """

    values: dict[str, jax.Array]
    activations: dict[str, jax.Array]
    outputs: jax.Array
    sites: dict[str, _sites.SiteInfo]


def resolve_sites(net: Network, patterns: str | Iterable[str], batch: int = 1) -> dict[str, _sites.SiteInfo]:
    """``{name: SiteInfo}`` of the network's sites matching ``patterns`` (fnmatch), in forward order.

    Raises:
      UnknownSiteError: a pattern matches no site (the message lists the model's sites).
    """
    infos = net.sites(batch)
    names = _sites.match(patterns, list(infos))
    return {n: infos[n] for n in names}


# ---------------------------------------------------------------------------------------------------------
# Pure kernel.


def _probe(net: Network, xs: jax.Array, target: _targets.Target, names: tuple[str, ...], all_outputs: bool):
    """One forward + one backward at ``P`` path points.

    Args:
      xs: ``[P, B, *input]`` inputs.
    Returns:
      ``y [P, B, K]``, activations ``{site: [P, B, ...]}`` and gradients ``{site: [P, B, ...]}``
      (``[P, B, K, ...]`` when ``all_outputs``).
    """
    p, b = xs.shape[:2]
    flat = xs.reshape((p * b,) + xs.shape[2:])
    infos = _sites.list_sites(net.apply, net.params, flat)
    deltas = {n: jnp.zeros(infos[n].shape, infos[n].dtype) for n in names}

    def forward(d):
        return _sites.run(net.apply, net.params, flat, capture=names, edits={n: _sites.Add(d[n]) for n in names})

    y, pullback, acts = jax.vjp(forward, deltas, has_aux=True)
    if y.ndim != 2:
        raise ValueError(f"the network must return outputs of shape [batch, n_outputs]; it returned {y.shape}")
    k = y.shape[-1]

    def unfold(a):  # [P*B, ...] -> [P, B, ...]
        return a.reshape((p, b) + a.shape[1:])

    if all_outputs:
        cotangents = jnp.broadcast_to(jnp.eye(k, dtype=y.dtype)[:, None, :], (k, p * b, k))
        (grads,) = jax.vmap(pullback)(cotangents)  # {site: [K, P*B, ...]}
        grads = {n: jnp.moveaxis(g.reshape((k, p, b) + g.shape[2:]), 0, 2) for n, g in grads.items()}
    else:
        t, t_pullback = jax.vjp(lambda yy: jax.vmap(target)(yy.reshape(p, b, k)).reshape(-1), y)
        (ct,) = t_pullback(jnp.ones_like(t))
        (grads,) = pullback(ct)
        grads = {n: unfold(g) for n, g in grads.items()}
    acts = {n: unfold(a) for n, a in acts.items()}
    return y.reshape(p, b, k), acts, grads


def _times(a: jax.Array, g: jax.Array) -> jax.Array:
    """``a * g`` where ``g`` may carry an extra outputs axis right after the batch axis."""
    if g.ndim == a.ndim + 1:
        a = jnp.expand_dims(a, 1)
    return a * g


def _grad_methods(net, x, target, names, method, all_outputs):
    y, acts, grads = _probe(net, x[None], target, names, all_outputs)
    acts = {n: a[0] for n, a in acts.items()}
    values = {}
    for n in names:
        g = grads[n][0]
        if method == "normgrad":
            lead = 2 if all_outputs else 1
            norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(lead, g.ndim)), keepdims=True))
            g = g / jnp.maximum(norm, NORM_FLOOR)
        values[n] = _times(acts[n], g)
    return values, acts, y[0]


def _ig(net, x, baseline, target, names, steps, step_chunk, all_outputs):
    alphas = jnp.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
    n_chunks = -(-steps // step_chunk)
    # Padding repeats alpha = 1: a repeated point adds a_i - a_{i-1} = 0 to the sum.
    rest = jnp.concatenate([alphas[1:], jnp.ones(n_chunks * step_chunk - steps, x.dtype)]).reshape(n_chunks, step_chunk)

    def points(al):
        return baseline[None] + al.reshape((-1,) + (1,) * x.ndim) * (x - baseline)[None]

    _, a0, g0 = _probe(net, points(alphas[:1]), target, names, all_outputs)
    first = lambda tree: {n: v[0] for n, v in tree.items()}  # noqa: E731

    def body(carry, al):
        a_prev, g_prev, acc = carry
        y, a, g = _probe(net, points(al), target, names, all_outputs)
        new_acc = {}
        for n in names:
            a_all = jnp.concatenate([a_prev[n][None], a[n]])
            g_all = jnp.concatenate([g_prev[n][None], g[n]])
            da = a_all[1:] - a_all[:-1]
            gm = 0.5 * (g_all[1:] + g_all[:-1])
            new_acc[n] = acc[n] + jnp.sum(jax.vmap(_times)(da, gm), axis=0)
        return ({n: a[n][-1] for n in names}, {n: g[n][-1] for n in names}, new_acc), y[-1]

    acc0 = {n: jnp.zeros_like(g) for n, g in first(g0).items()}
    (a_last, _, values), ys = jax.lax.scan(body, (first(a0), first(g0), acc0), rest)
    return values, a_last, ys[-1]


@functools.partial(jax.jit, static_argnames=("names", "method", "steps", "step_chunk", "all_outputs"))
def _kernel(net, x, baseline, target, *, names, method, steps, step_chunk, all_outputs):
    """Jitted core: ``(values, activations, outputs)``; see :func:`contributions`."""
    if target.kind == "top1_fixed":
        target = target.fix_classes(net.apply(net.params, x))
    if method == "ig":
        return _ig(net, x, baseline, target, names, steps, step_chunk, all_outputs)
    return _grad_methods(net, x, target, names, method, all_outputs)


# ---------------------------------------------------------------------------------------------------------
# Public boundary: validation, then the jitted kernel.


def _check_args(net, x, method, steps, step_chunk, baseline, outputs):
    if not isinstance(net, Network):
        raise TypeError(f"contributions needs a jaxequiv.Network, got {type(net).__name__}; use Network.from_module")
    net.check_input(x)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if outputs not in ("target", "all"):
        raise ValueError(f"outputs must be 'target' (one scalar per example) or 'all', got {outputs!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (CODEC uses 10), got {steps!r}")
    if step_chunk is not None and (not isinstance(step_chunk, (int, np.integer)) or step_chunk < 1):
        raise ValueError(f"step_chunk must be None (all steps at once) or an integer >= 1, got {step_chunk!r}")
    x = jnp.asarray(x)
    if baseline is None:
        return x, jnp.zeros_like(x)
    baseline = jnp.asarray(baseline, x.dtype)
    if baseline.shape == x.shape[1:]:
        baseline = jnp.broadcast_to(baseline, x.shape)
    if baseline.shape != x.shape:
        raise ValueError(
            f"baseline of shape {baseline.shape} does not fit inputs of shape {x.shape}: pass one input "
            f"{x.shape[1:]} (shared by all examples) or one per example {x.shape}"
        )
    return x, baseline


def check_finite(values: dict[str, jax.Array], offset: int = 0) -> None:
    """Raise ``ValueError`` naming the first site and example (``offset`` + row) holding NaN or Inf."""
    for name, v in values.items():
        v = np.asarray(v)
        bad = ~np.isfinite(v.reshape(v.shape[0], -1)).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"non-finite contributions (NaN or Inf) at site {name!r} for example {offset + i} "
                f"({int(bad.sum())} example(s) affected); check that input for NaN/Inf and the target for "
                "overflow (e.g. a softmax of huge logits)"
            )


def prepare(net, x, sites, method, target, outputs, steps, baseline, step_chunk):
    """Validate arguments; return ``(x, baseline, target, infos, static kwargs)`` for :func:`_kernel`."""
    x, baseline = _check_args(net, x, method, steps, step_chunk, baseline, outputs)
    infos = resolve_sites(net, sites, batch=x.shape[0])
    out = jax.eval_shape(net.apply, net.params, x)
    if outputs == "all":
        if target is not None:
            raise ValueError("outputs='all' computes contributions toward every output; leave target=None")
        target = _targets.top1()  # unused by the kernel in this mode
    else:
        target = _targets.resolve("top1" if target is None else target)
        if len(out.shape) == 2:
            target.check(x.shape[0], out.shape[1])
    if method != "ig":
        steps = 1
        step_chunk = 1
    else:
        step_chunk = min(step_chunk or steps, steps)
    static = dict(names=tuple(infos), method=method, steps=int(steps), step_chunk=int(step_chunk),
                  all_outputs=outputs == "all")
    return x, baseline, target, infos, static


def contributions(
    net: Network,
    x,
    sites: str | Iterable[str],
    *,
    method: str = "ig",
    target=None,
    outputs: str = "target",
    steps: int = 10,
    baseline=None,
    step_chunk: int | None = None,
    finite: bool = True,
) -> Contributions:
    """Contributions of every unit at ``sites`` for a batch ``x [B, *input]``, from one pass per path point.

    Args:
      net: the model (see :class:`jaxequiv.Network`).
      x: ``[B, *net.input_shape]`` float inputs (already normalised).
      sites: site names or fnmatch patterns, e.g. ``"layer*"``.
      method: ``"ig"`` (default), ``"grad_x_act"`` or ``"normgrad"``.
      target: what to explain (see :func:`jaxequiv.contributions.targets.resolve`); default ``"top1"``.
      outputs: ``"target"`` (one scalar per example) or ``"all"`` (every output: values ``[B, K, ...]``).
      steps: ``ig`` interpolation steps S (S+1 path points); ignored by the other methods.
      baseline: ``ig`` baseline, one input ``[*input]`` or ``[B, *input]``; default zeros.
      step_chunk: path points per forward/backward (memory ~ step_chunk x batch); default all ``steps``.
      finite: raise if any contribution is NaN/Inf (naming the site and the example).

    Returns:
      :class:`Contributions` with ``values {site: [B, ...]}``, activations, outputs ``[B, K]`` and site infos.
    """
    x, baseline, target, infos, static = prepare(net, x, sites, method, target, outputs, steps, baseline, step_chunk)
    values, acts, y = _kernel(net, x, baseline, target, **static)
    if finite:
        check_finite(values)
    return Contributions(values, acts, y, infos)
