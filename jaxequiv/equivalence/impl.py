"""Implementation sampling (GetImpl) and per-head activation-patching importance, through ``jaxequiv.sites``.

A *unit* is a site, or one head of a site whose axes include ``"head"`` (e.g. ``"h.3.attn.z"`` with axes
``(batch, token, head, channel)``). Units are written ``"h.3.attn.z"`` (the whole site) or ``"h.3.attn.z[5]"``
(head 5); site parts may be fnmatch patterns (``"h.*.attn.z[0]"``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from jaxequiv import sites as _sites
from jaxequiv.distributed import gather_items, map_items, replicate, split_items
from jaxequiv.network import Network
from jaxequiv.rng import as_key

__all__ = ["get_impl", "patching_importance", "units_of", "parse_units"]

_UNIT = re.compile(r"^(?P<site>[^\[\]]+)(?:\[(?P<heads>[0-9, ]+)\])?$")


def parse_units(specs: Sequence[str], infos: dict[str, _sites.SiteInfo]) -> set[tuple[str, int | None]]:
    """Expand unit specs (``"site"`` / ``"site[h, ...]"``, patterns allowed) to ``{(site, head or None)}``.

    A whole-site spec of a head site expands to all its heads. Raises ``ValueError`` for a malformed spec or
    a head index out of range and ``UnknownSiteError`` for a pattern matching no site.
    """
    if isinstance(specs, str):
        specs = [specs]
    out: set[tuple[str, int | None]] = set()
    for spec in specs:
        m = _UNIT.match(spec.strip())
        if not m:
            raise ValueError(f"unit {spec!r} is not 'site' or 'site[head, ...]' (e.g. 'h.3.attn.z[5]')")
        for name in _sites.match(m["site"], infos):
            n_heads = _n_heads(infos[name])
            if m["heads"] is None:
                out.update((name, h) for h in (range(n_heads) if n_heads else [None]))
                continue
            if not n_heads:
                raise ValueError(f"unit {spec!r}: site {name!r} has no 'head' axis (axes {infos[name].axes})")
            for h in (int(t) for t in m["heads"].split(",") if t.strip()):
                if not 0 <= h < n_heads:
                    raise ValueError(f"unit {spec!r}: head {h} out of range for {n_heads} heads of {name!r}")
                out.add((name, h))
    return out


def _n_heads(info: _sites.SiteInfo) -> int:
    return info.shape[info.axes.index("head")] if "head" in info.axes else 0


def units_of(infos: dict[str, _sites.SiteInfo], sites: Sequence[str] | None) -> list[tuple[str, int | None]]:
    """Units of the sites matching ``sites``, in forward-pass order.

    Default: the per-head attention outputs (head sites named ``*attn.z``, TransformerLens' ``hook_z``) if the
    model has any, else every site with a head axis.
    """
    if sites is None:
        heads = [n for n, i in infos.items() if "head" in i.axes]
        names = [n for n in heads if n.endswith("attn.z")] or heads
        if not names:
            raise ValueError(
                "this model has no site with a 'head' axis; pass the sites to patch explicitly, e.g. candidates=['layer*']"
            )
    else:
        names = _sites.match(sites, infos)
    return [(n, h) for n in names for h in (range(_n_heads(infos[n])) if _n_heads(infos[n]) else [None])]


def _site_masks(units, flags, infos):
    """``{site: bool mask broadcastable to the site}`` from per-unit flags (U,)."""
    out: dict[str, jax.Array] = {}
    for site in dict.fromkeys(u[0] for u in units):
        idx = [i for i, u in enumerate(units) if u[0] == site]
        info = infos[site]
        if units[idx[0]][1] is None:
            out[site] = flags[idx[0]]
        else:
            shape = [1] * len(info.shape)
            shape[info.axes.index("head")] = _n_heads(info)
            heads = jnp.zeros((_n_heads(info),), bool).at[jnp.array([units[i][1] for i in idx])].set(flags[jnp.array(idx)])
            out[site] = heads.reshape(shape)
    return out


def _pool(value, info: _sites.SiteInfo, pool: str, lengths):
    """(batch, ...) -> (batch, features): last (real) token, mean over tokens, or no pooling."""
    if pool != "none":
        if "token" not in info.axes:
            raise ValueError(f"pool={pool!r} needs a 'token' axis; this site has axes {info.axes}")
        t = info.axes.index("token")
        value = jnp.moveaxis(value, t, 1)
        T = value.shape[1]
        if pool == "last":
            last = jnp.full((value.shape[0],), T - 1) if lengths is None else lengths - 1
            value = jnp.take_along_axis(value, last.reshape(-1, *([1] * (value.ndim - 1))), axis=1)[:, 0]
        else:
            w = jnp.ones(value.shape[:2]) if lengths is None else (jnp.arange(T)[None] < lengths[:, None])
            w = w.reshape(*w.shape, *([1] * (value.ndim - 2))).astype(value.dtype)
            value = jnp.sum(value * w, axis=1) / jnp.sum(w, axis=1)
    return value.reshape(value.shape[0], -1)


def _check_inputs(network, inputs, label):
    if not isinstance(network, Network):
        raise TypeError(f"expected a jaxequiv.Network, got {type(network).__name__}; use Network.from_module(model, ...)")
    try:
        network.check_input(inputs)
    except ValueError as e:
        raise ValueError(f"{label} inputs: {e}") from None
    return jnp.asarray(inputs)


SOURCES = ("counterfactual", "mean", "resample")


def _source_acts(acts, info: _sites.SiteInfo, source: str, lengths):
    """A patched site's source values from its activations ``acts`` (batch first): as they are
    (``"counterfactual"``, ``"resample"``) or their mean over the batch (``"mean"``: per token over the examples
    whose token is real when ``lengths`` is given), broadcast back to the batch."""
    if source != "mean":
        return acts
    w = jnp.ones(acts.shape[:1], acts.dtype)
    if lengths is not None and "token" in info.axes:
        t = info.axes.index("token")
        real = jnp.arange(acts.shape[t])[None] < lengths[:, None]  # (batch, token)
        w = real.reshape(real.shape[:1] + (1,) * (t - 1) + real.shape[1:] + (1,) * (acts.ndim - t - 1))
        w = w.astype(acts.dtype)
    w = jnp.broadcast_to(w.reshape(w.shape + (1,) * (acts.ndim - w.ndim)), acts.shape)
    mean = jnp.sum(acts * w, 0) / jnp.maximum(jnp.sum(w, 0), 1)
    return jnp.broadcast_to(mean, acts.shape)


def _resample_rows(key, n: int, batch: int, lengths):
    """``(n, batch)`` source rows for resample ablation: per implementation, each example takes another example
    drawn uniformly (of the same length when ``lengths`` is given; itself when it has no such partner)."""
    ok = ~jnp.eye(batch, dtype=bool)
    if lengths is not None:
        ok &= lengths[:, None] == lengths[None]
    u = jax.random.uniform(key, (n, batch, batch))
    pick = jnp.argmax(jnp.where(ok, u, -1.0), axis=-1)
    return jnp.where(ok.any(-1), pick, jnp.arange(batch))


@functools.partial(jax.jit, static_argnames=("apply", "infos", "read_sites", "units", "pool", "stacked", "chunk",
                                             "source", "mesh"))
def _implementations(params, flags, rows, clean, counterfactual, lengths, extra_args, *, apply, infos, read_sites,
                     units, pool, stacked, chunk, source="counterfactual", mesh=None):
    """Representations (n, batch, D) of the implementations flagged by ``flags`` (n, U) (see :func:`get_impl`).

    ``rows`` (n, batch): the example whose source activation each example takes, per implementation (the identity
    except for resample ablation). Static: ``apply``, ``infos`` (``((site, SiteInfo), ...)`` of the read and
    patched sites), ``read_sites``, ``units``, ``pool``, ``stacked`` (params carry a leading member axis),
    ``chunk``, ``source`` and ``mesh``: the implementations (``flags``, ``rows``, and a stack's ``params``) split
    over its devices (placed by ``split_items``, the rest replicated).
    """
    infos = dict(infos)
    patch_sites = list(dict.fromkeys(u[0] for u in units))

    def some(items, params, clean, counterfactual, lengths, extra_args):  # the implementations ``items``
        def source_acts(p):
            if not units:
                return {}
            inputs = counterfactual if source == "counterfactual" else clean
            acts = _sites.run(apply, p, inputs, *extra_args, capture=patch_sites)[1]
            return {s: _source_acts(acts[s], infos[s], source, lengths) for s in patch_sites}

        def represent(p, src, flag, row):
            edits = {}
            if units:
                masks = _site_masks(units, flag, infos)
                edits = {s: _sites.Replace(src[s][row], where=masks[s]) for s in patch_sites}
            _, cap = _sites.run(apply, p, clean, *extra_args, capture=list(read_sites), edits=edits)
            return jnp.concatenate([_pool(cap[s], infos[s], pool, lengths) for s in read_sites], axis=1)

        if not stacked:  # source activations once, shared by every implementation
            src = source_acts(params)
            return jax.lax.map(lambda fr: represent(params, src, *fr), items, batch_size=min(chunk, items[0].shape[0]))
        return jax.lax.map(lambda pfr: represent(pfr[0], source_acts(pfr[0]), pfr[1], pfr[2]), items,
                           batch_size=min(chunk, items[1].shape[0]))

    items = (params, flags, rows) if stacked else (flags, rows)
    context = (None if stacked else params, clean, counterfactual, lengths, extra_args)
    return some(items, *context) if mesh is None else map_items(some, mesh, items, *context)


def get_impl(
    network: Network,
    clean: ArrayLike,
    counterfactual: ArrayLike | None = None,
    *,
    read: str | Sequence[str],
    key=None,
    n: int | None = None,
    circuit: Sequence[str] = (),
    candidates: Sequence[str] | None = None,
    p: float = 0.5,
    source: str = "counterfactual",
    pool: str = "last",
    lengths: ArrayLike | None = None,
    extra_args: tuple = (),
    chunk: int = 16,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Representations of ``n`` implementations of a model's interpretation (GetImpl + GetReprs).

    Implementation k patches each non-circuit unit (site, or head of a head site) among ``candidates``
    independently with probability ``p``, replacing it with its activation on ``counterfactual`` inputs, or with
    its mean or resampled activation on the ``clean`` inputs (``source``), through ``Replace(value, where=mask)``
    (:mod:`jaxequiv.sites`); circuit units are never replaced. All
    implementations run in one vmapped forward pass (``chunk`` at a time). For a stacked network
    (:meth:`Network.stack`, e.g. seed ensembles) each stacked member is one implementation (``n`` defaults
    to the stack size); with ``source="counterfactual"`` and ``counterfactual=None`` nothing is patched.

    Args:
      network: the model as a :class:`~jaxequiv.Network` (``apply(params, inputs, *extra_args)``).
      clean, counterfactual: task inputs and their counterfactuals, same shape (batch first).
      read: site names/patterns whose (pooled, flattened, concatenated) values are the representation.
      key: PRNG key (or int) drawing the patch masks; needed when patching.
      n: number of implementations (unstacked networks).
      circuit: units that must stay intact, e.g. ``["h.1.attn.z[0,3]", "h.2.attn.z"]``.
      candidates: sites whose units may be patched (default: see :func:`units_of`).
      p: probability that a non-circuit unit is patched.
      source: what a patched unit takes: ``"counterfactual"`` (its activation on the same example of
        ``counterfactual``), ``"mean"`` (mean ablation: its mean activation over the clean batch, per token over
        the examples whose token is real given ``lengths``) or ``"resample"`` (resample ablation: its activation
        on another clean example, drawn uniformly per implementation and example, among examples of the same
        length given ``lengths``). ``"mean"`` and ``"resample"`` take no ``counterfactual``.
      pool: ``"last"`` (last token, or last real token given ``lengths``), ``"mean"`` (over real tokens) or
        ``"none"``.
      lengths: (batch,) number of real tokens per example (right padding).
      extra_args: further array arguments of ``network.apply`` (traced).
      mesh: a device mesh (devices of one or several processes, which all pass the same inputs): the
        implementations (a stack's members with their parameters) are split over all its devices, each with the
        masks it has on one device; every process gets all representations.

    Returns:
      (n, batch, D) float array of representations.
    """
    clean = _check_inputs(network, clean, "clean")
    if pool not in ("last", "mean", "none"):
        raise ValueError(f"pool must be 'last', 'mean' or 'none', got {pool!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    stacked = network.stacked
    if stacked is not None:
        if n not in (None, stacked):
            raise ValueError(f"a stacked network gives one implementation per member ({stacked}); got n={n}")
        n = stacked
    elif n is None or n < 1:
        raise ValueError(f"pass the number of implementations n >= 1 (got {n})")
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    member = network if stacked is None else network[0]
    infos = _sites.list_sites(member.apply, member.params, clean, *extra_args)
    read_sites = _sites.match(read, infos)

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source != "counterfactual" and counterfactual is not None:
        raise ValueError(f"source={source!r} patches from the clean inputs: pass counterfactual=None")
    units: list = []
    rows = jnp.broadcast_to(jnp.arange(clean.shape[0]), (n, clean.shape[0]))
    if counterfactual is not None or source != "counterfactual":
        if counterfactual is not None:
            counterfactual = _check_inputs(network, counterfactual, "counterfactual")
            if counterfactual.shape != clean.shape:
                raise ValueError(f"counterfactual shape {counterfactual.shape} differs from clean {clean.shape}")
        keep = parse_units(circuit, infos)
        units = [u for u in units_of(infos, candidates) if u not in keep]
        if not units:
            raise ValueError("no non-circuit unit left to patch: every candidate is in the circuit")
        if key is None:
            raise ValueError("patching draws random masks: pass key=jax.random.key(seed)")
        flags = jax.random.bernoulli(as_key(key), p, (n, len(units)))
        if source == "resample":
            rows = _resample_rows(jax.random.fold_in(as_key(key), 1), n, clean.shape[0], lengths)
    else:
        flags = jnp.zeros((n, 0), bool)
    used = dict.fromkeys([*read_sites, *(u[0] for u in units)])
    static = dict(apply=member.apply, infos=tuple((s, infos[s]) for s in used), read_sites=tuple(read_sites),
                  units=tuple(units), pool=pool, stacked=stacked is not None, chunk=int(chunk), source=source)
    context = (clean, counterfactual, lengths, tuple(extra_args))
    if mesh is None:
        return _implementations(network.params, flags, rows, *context, **static)
    if stacked:
        (params, flags, rows), count = split_items((network.params, flags, rows), mesh)
    else:
        ((flags, rows), count), params = split_items((flags, rows), mesh), replicate(network.params, mesh)
    return jnp.asarray(gather_items(
        _implementations(params, flags, rows, *replicate(context, mesh), **static, mesh=mesh), count))


def _final(logits, positions):
    if logits.ndim == 2:
        return logits
    if logits.ndim != 3:
        raise ValueError(f"expected outputs (batch, classes) or (batch, token, vocab), got shape {logits.shape}")
    idx = jnp.full((logits.shape[0],), logits.shape[1] - 1) if positions is None else positions
    return logits[jnp.arange(logits.shape[0]), idx]


@functools.partial(jax.jit, static_argnames=("apply", "infos", "units", "output", "chunk", "mesh"))
def _importance(params, flags, clean, base_in, src_in, positions, extra_args, *, apply, infos, units, output, chunk,
                mesh=None):
    """KL scores (r,) of :func:`patching_importance` for the unit masks ``flags`` (r, U) (one unit each):
    ``base_in`` run with those units replaced by their values on ``src_in``. Static: ``apply``, ``infos``
    (``((site, SiteInfo), ...)``), ``units``, ``output`` (or None), ``chunk`` and ``mesh``: the masks split over
    its devices (placed by ``split_items``, the rest replicated)."""
    infos = dict(infos)
    patch_sites = list(dict.fromkeys(u[0] for u in units))
    to_logits = output if output is not None else (lambda o: o)

    def some(flags, params, clean, base_in, src_in, positions, extra_args):
        clean_out, _ = _sites.run(apply, params, clean, *extra_args)
        _, src = _sites.run(apply, params, src_in, *extra_args, capture=patch_sites)
        ref = jax.nn.log_softmax(_final(to_logits(clean_out), positions))

        def one(flag):
            masks = _site_masks(units, flag, infos)
            edits = {s: _sites.Replace(src[s], where=masks[s]) for s in patch_sites}
            out, _ = _sites.run(apply, params, base_in, *extra_args, edits=edits)
            logq = jax.nn.log_softmax(_final(to_logits(out), positions))
            return jnp.mean(jnp.sum(jnp.exp(ref) * (ref - logq), axis=-1))

        return jax.lax.map(one, flags, batch_size=min(chunk, flags.shape[0]))

    context = (params, clean, base_in, src_in, positions, extra_args)
    return some(flags, *context) if mesh is None else map_items(some, mesh, flags, *context)


def patching_importance(
    network: Network,
    clean: ArrayLike,
    corrupted: ArrayLike,
    *,
    sites: Sequence[str] | None = None,
    mode: str = "denoise",
    positions: ArrayLike | None = None,
    extra_args: tuple = (),
    chunk: int = 64,
    output: Callable | None = None,
    mesh: Mesh | None = None,
) -> dict[str, jax.Array]:
    """Per-unit activation-patching score: mean KL(softmax(clean) || softmax(patched)) at the final position.

    ``mode="denoise"`` (the reference IOI code): run the *corrupted* inputs with one unit replaced by its clean
    activation; a low KL means that unit alone restores the clean behaviour. ``mode="noise"``: run the clean
    inputs with one unit replaced by its corrupted activation; a high KL means the unit matters. Every unit
    (each head of each head site; default sites: see :func:`units_of`) is patched in one vmapped call (``chunk`` at a time).

    Args:
      positions: (batch,) index of the final real token per example (default: the last position).
      extra_args: further array arguments of ``network.apply`` (traced).
      output: optional ``fn(out) -> logits`` when the network returns something else (a hashable function:
        the compiled program is cached per network ``apply`` and ``output``).
      mesh: a device mesh (devices of one or several processes, which all pass the same inputs): the units are
        split over all its devices (each runs the clean and source passes itself); every process gets all scores.

    Returns:
      ``{site: (heads,) scores}`` (a 0-d array for sites without a head axis).
    """
    if mode not in ("denoise", "noise"):
        raise ValueError(f"mode must be 'denoise' or 'noise', got {mode!r}")
    clean = _check_inputs(network, clean, "clean")
    corrupted = _check_inputs(network, corrupted, "corrupted")
    if network.stacked is not None:
        raise ValueError("patching_importance takes one network; index a stacked one with net[i]")
    if corrupted.shape != clean.shape:
        raise ValueError(f"corrupted shape {corrupted.shape} differs from clean {clean.shape}")
    positions = None if positions is None else jnp.asarray(positions, jnp.int32)
    infos = _sites.list_sites(network.apply, network.params, clean, *extra_args)
    units = units_of(infos, sites)
    patch_sites = list(dict.fromkeys(u[0] for u in units))
    base_in, src_in = (corrupted, clean) if mode == "denoise" else (clean, corrupted)
    static = dict(apply=network.apply, infos=tuple((s, infos[s]) for s in patch_sites), units=tuple(units),
                  output=output, chunk=int(chunk))
    flags = np.eye(len(units), dtype=bool)  # one unit patched at a time
    context = (network.params, clean, base_in, src_in, positions, tuple(extra_args))
    if mesh is None:
        flat = _importance(context[0], jnp.asarray(flags), *context[1:], **static)
    else:
        flags, count = split_items(flags, mesh)
        context = replicate(context, mesh)
        flat = jnp.asarray(gather_items(_importance(context[0], flags, *context[1:], **static, mesh=mesh), count))
    out: dict[str, jax.Array] = {}
    for site in patch_sites:
        idx = np.array([i for i, u in enumerate(units) if u[0] == site])
        out[site] = flat[idx] if units[idx[0]][1] is not None else flat[idx[0]]
    return out
