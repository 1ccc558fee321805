"""Sites: the one mechanism for reading, differentiating, masking and replacing intermediate values.

Model code marks a point of its forward pass::

    h = site("layer3.1", h, axes=("batch", "height", "width", "channel"))

With no active :func:`run`, ``site`` returns ``h`` unchanged: the cost is one Python check at trace time and
nothing at run time. A caller runs any function under capture patterns and edits::

    out, captured = run(fn, x, capture=["layer*"], edits={"layer3.1": Scale(mask)})

Everything happens at trace time on a thread-local stack of frames, so ``run`` composes with ``jax.jit``,
``jax.vmap``, ``jax.grad`` and with itself. Nested runs apply their edits from the outermost frame to the
innermost; each frame captures the value *after* its own edits (the value that flows on). Site names and
patterns follow :mod:`fnmatch`; a pattern that matches no site of the model raises :class:`UnknownSiteError`
listing the sites that exist.

A model may also answer to another tool's names: it calls :func:`declare_aliases` with ``{alias: site}``
(e.g. TransformerLens' ``blocks.0.hook_resid_post`` for ``h.0``) before marking its sites. Capture patterns,
edit keys and :func:`match` then accept aliases too, and a site reached through an alias is reported under
the alias (the name the caller used).

The model must call ``site`` in the same trace as ``run`` (do not ``jit``/``scan`` inside the model body).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "site",
    "run",
    "Add",
    "Scale",
    "Replace",
    "SiteInfo",
    "list_sites",
    "declare_aliases",
    "SiteTable",
    "match",
    "UnknownSiteError",
    "SPATIAL_AXES",
]

# Axis names a model may declare for a site. Reductions sum over the spatial ones.
SPATIAL_AXES = frozenset({"height", "width", "length", "token", "query", "key"})


class UnknownSiteError(KeyError):
    """A site name or pattern matched no site of the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """What is known about a site without running real data: shape, dtype and axis names."""

    shape: tuple[int, ...]
    dtype: Any
    axes: tuple[str, ...]
    aliases: tuple[str, ...] = ()  # other names of the site (see declare_aliases)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Indices of the axes that a spatial reduction sums over (e.g. height/width, tokens)."""
        return tuple(i for i, a in enumerate(self.axes) if a in SPATIAL_AXES)

    @property
    def channels(self) -> int:
        """Number of units left after summing the batch and spatial axes."""
        n = 1
        for size, a in zip(self.shape, self.axes):
            if a != "batch" and a not in SPATIAL_AXES:
                n *= size
        return n


def default_axes(ndim: int) -> tuple[str, ...]:
    """Axis names assumed when a model does not declare them: batch first, channel last, positions between."""
    if ndim == 0:
        return ()
    if ndim == 1:
        return ("batch",)
    return ("batch",) + ("length",) * (ndim - 2) + ("channel",)


# ---------------------------------------------------------------------------------------------------------
# Edits: functions value -> value. Their fields are arrays, so they may be traced, vmapped and differentiated.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Add:
    """``value + delta``. A zero ``delta`` leaves the forward pass unchanged and exposes d(out)/d(site)."""

    delta: Any

    def __call__(self, value):
        return value + jnp.asarray(self.delta, value.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Scale:
    """``value * mask`` (broadcast). A 0/1 mask over channels or heads ablates them."""

    mask: Any

    def __call__(self, value):
        return value * jnp.asarray(self.mask, value.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Replace:
    """Swap in ``value`` (broadcast), e.g. activations from another input; ``where`` limits it to a mask."""

    value: Any
    where: Any = None

    def __call__(self, value):
        new = jnp.broadcast_to(jnp.asarray(self.value, value.dtype), value.shape)
        if self.where is None:
            return new
        return jnp.where(jnp.asarray(self.where, bool), new, value)


Edit = Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------------------------
# The trace-time stack.


def _answers_to(name: str, aliases: tuple[str, ...], pattern: str) -> str | None:
    """The name under which a site called ``name`` (also known as ``aliases``) matches ``pattern``, if any."""
    if fnmatch.fnmatchcase(name, pattern):
        return name
    return next((a for a in aliases if fnmatch.fnmatchcase(a, pattern)), None)


class _Frame:
    def __init__(self, capture: tuple[str, ...], edits: Mapping[str, Edit]):
        self.capture = capture
        self.edits = dict(edits)
        self.captured: dict[str, jax.Array] = {}
        self.seen: dict[str, SiteInfo] = {}
        self.used: set[str] = set()  # patterns (capture or edit keys) that matched at least one site
        self.alias_to: dict[str, str] = {}  # alias -> site
        self.aliases_of: dict[str, tuple[str, ...]] = {}  # site -> aliases

    def declare(self, table: Mapping[str, str]) -> None:
        for alias, name in table.items():
            if self.alias_to.setdefault(alias, name) != name:
                raise ValueError(f"alias {alias!r} declared for both {self.alias_to[alias]!r} and {name!r}")
            if alias not in self.aliases_of.get(name, ()):
                self.aliases_of[name] = (*self.aliases_of.get(name, ()), alias)

    def visit(self, name: str, value, axes: tuple[str, ...]):
        if name in self.seen:
            raise ValueError(f"site {name!r} was marked twice in one forward pass; site names must be unique")
        aliases = self.aliases_of.get(name, ())
        self.seen[name] = SiteInfo(tuple(value.shape), value.dtype, axes, aliases)
        for pattern, edit in self.edits.items():
            if _answers_to(name, aliases, pattern) is not None:
                self.used.add(pattern)
                value = edit(value)
        for pattern in self.capture:
            hit = _answers_to(name, aliases, pattern)
            if hit is not None:
                self.used.add(pattern)
                self.captured[hit] = value
        return value

    def check(self) -> None:
        missing = [p for p in (*self.capture, *self.edits) if p not in self.used]
        if missing:
            raise UnknownSiteError(
                f"no site matches {missing}; this model's sites are: {sorted(self.seen) or 'none'}"
                + (f" (also known by {len(self.alias_to)} aliases, e.g. {sorted(self.alias_to)[:4]})"
                   if self.alias_to else "")
                + ". Use jaxequiv.sites.list_sites(fn, *args) to list them with their shapes and aliases."
            )


_STATE = threading.local()


def _stack() -> list[_Frame]:
    if not hasattr(_STATE, "stack"):
        _STATE.stack = []
    return _STATE.stack


def site(name: str, value: jax.Array, axes: Iterable[str] | None = None) -> jax.Array:
    """Mark a named point of a forward pass; returns ``value`` as edited by the active :func:`run` frames.

    Args:
      name: unique dotted name, after the PyTorch module name where one exists (``"layer3.1"``, ``"h.5.attn"``).
      value: the array at that point, batch axis first.
      axes: one name per axis, e.g. ``("batch", "height", "width", "channel")`` or
        ``("batch", "token", "head", "channel")``. Defaults to batch, positions..., channel.
    """
    stack = _stack()
    if not stack:
        return value
    axes = tuple(axes) if axes is not None else default_axes(value.ndim)
    if len(axes) != value.ndim:
        raise ValueError(f"site {name!r}: {len(axes)} axis names {axes} for an array of shape {value.shape}")
    for frame in stack:
        value = frame.visit(name, value, axes)
    return value


def declare_aliases(table: Mapping[str, str]) -> None:
    """Let the sites of this forward pass also answer to other names: ``{alias: site_name}``.

    Model code calls it at trace time before marking the sites it names (e.g. a transformer declaring
    TransformerLens hook names). Outside :func:`run` / :func:`list_sites` it does nothing. An alias names
    exactly one site; declaring it for two different sites is a ``ValueError``.
    """
    for frame in _stack():
        frame.declare(table)


def _as_patterns(capture: str | Iterable[str] | None) -> tuple[str, ...]:
    if capture is None:
        return ()
    if isinstance(capture, str):
        return (capture,)
    return tuple(capture)


def run(
    fn: Callable[..., Any],
    *args,
    capture: str | Iterable[str] | None = None,
    edits: Mapping[str, Edit] | None = None,
    **kwargs,
) -> tuple[Any, dict[str, jax.Array]]:
    """Call ``fn(*args, **kwargs)`` with ``edits`` applied at matching sites; return ``(out, captured)``.

    Args:
      fn: any function whose forward pass marks sites (a model, ``Network.apply``, a loss).
      capture: site names or fnmatch patterns whose (edited) values to return.
      edits: ``{name_or_pattern: edit}``; an edit is ``Add``, ``Scale``, ``Replace`` or any ``value -> value``
        function. Several matching edits apply in the mapping's order.

    Returns:
      ``out`` of ``fn`` and ``{name: value}`` for every captured site, in forward-pass order; a site matched
      only through an alias (see :func:`declare_aliases`) is keyed by that alias.

    Raises:
      UnknownSiteError: a capture pattern or edit key matched no site.
    """
    frame = _Frame(_as_patterns(capture), edits or {})
    stack = _stack()
    stack.append(frame)
    try:
        out = fn(*args, **kwargs)
    finally:
        stack.pop()
    frame.check()
    return out, frame.captured


class SiteTable(dict):
    """``{site_name: SiteInfo}`` in forward-pass order; looking up an alias of a site gives that site's info."""

    def _site(self, key):
        if dict.__contains__(self, key):
            return key
        return next((n for n, info in self.items() if key in info.aliases), None)

    def __missing__(self, key):
        name = self._site(key)
        if name is None:
            raise KeyError(key)
        return dict.__getitem__(self, name)

    def __contains__(self, key) -> bool:
        return self._site(key) is not None

    def get(self, key, default=None):
        return self[key] if key in self else default


# fn -> {(argument structure, shapes and dtypes): SiteTable}; an entry goes when its function does
_LISTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LISTED_PER_FN = 16


def _trace_key(args, kwargs):
    """What a trace depends on besides the function: the argument structure and every leaf's shape and dtype
    (non-array leaves by value); ``None`` when a leaf is unhashable."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    key = (treedef, tuple((tuple(x.shape), str(x.dtype)) if hasattr(x, "shape") and hasattr(x, "dtype") else x
                          for x in leaves))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def list_sites(fn: Callable[..., Any], *args, **kwargs) -> SiteTable:
    """Every site ``fn(*args, **kwargs)`` marks, with shape, dtype, axes and aliases, without computing anything.

    Arguments may be arrays or ``jax.ShapeDtypeStruct``; the function is traced with ``jax.eval_shape`` once per
    function and argument shapes (later calls return a copy of the table: tracing a ResNet-18 takes 0.2 s).
    """
    try:
        known = _LISTED.setdefault(fn, {})
    except TypeError:  # not weakly referenceable: trace every time
        known = {}
    key = _trace_key(args, kwargs)
    if key in known:
        return SiteTable(known[key])
    frame = _Frame((), {})

    def traced(*a, **k):
        stack = _stack()
        stack.append(frame)
        try:
            return fn(*a, **k)
        finally:
            stack.pop()

    jax.eval_shape(traced, *args, **kwargs)
    table = SiteTable(frame.seen)
    if key is not None:
        if len(known) >= _LISTED_PER_FN:
            known.pop(next(iter(known)))
        known[key] = table
    return SiteTable(table)


def match(patterns: str | Iterable[str], names: Iterable[str] | Mapping[str, SiteInfo]) -> list[str]:
    """Names (in order) matching any of the fnmatch ``patterns``; raises if a pattern matches none.

    ``names`` may be a :func:`list_sites` table, whose sites then also match through their aliases: such a site
    is returned under the alias that matched (a table looks it up under either name).
    """
    if isinstance(names, Mapping):
        known = [(n, tuple(getattr(info, "aliases", ()))) for n, info in names.items()]
    else:
        known = [(n, ()) for n in names]
    patterns = _as_patterns(patterns)
    hits: dict[str, str] = {}  # site -> name it is returned under (first pattern wins)
    missing = []
    for p in patterns:
        found = False
        for n, aliases in known:
            hit = _answers_to(n, aliases, p)
            if hit is not None:
                found = True
                hits.setdefault(n, hit)
        if not found:
            missing.append(p)
    if missing:
        raise UnknownSiteError(f"no site matches {missing}; available sites are: {[n for n, _ in known]}")
    return [hits[n] for n, _ in known if n in hits]
