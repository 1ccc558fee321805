"""Contribution targets: the scalar per example whose drive by hidden units is measured (CODEC §1.2).

A :class:`Target` maps the network's (selected) outputs to one scalar per example. Outputs are ``y [B, K]``
(a classifier) or ``y [B, T, K]`` (a sequence model: one row of K logits per position); a sequence target
first reads the rows at given positions (:func:`at_position`). A target that gives K scalars per example
(``[B, K]``: every output, or every position) makes the contributions carry that axis too.

A target is a pytree: its kind (and a user function, if any) is static, its arrays (class indices, positions,
surprisal mean and precision) are leaves, so it passes through ``jax.jit`` and the kernel differentiates it.

Build one with the constructors below or let :func:`resolve` turn a short spec into one:
``"top1"`` (default, recomputed at every path step), ``"top1_fixed"``, ``"softmax_top1"``,
``"top1_minus_top2"``, ``"sum"``, ``"entropy"``, an ``int`` or integer array (a given class), or a callable.
For language models: ``at_position("top1", "last", mask=attention_mask)`` (the next-token logit at the last
real position), ``at_position(logit_diff(io, s), "last", lengths=n)`` (IOI's logit difference),
``at_position("top1", "all", mask=attention_mask)`` (every position: contributions ``[B, T, *site]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "Target",
    "top1",
    "top1_fixed",
    "softmax_top1",
    "top1_minus_top2",
    "given_class",
    "logit_diff",
    "output_sum",
    "entropy",
    "surprisal",
    "every_output",
    "from_callable",
    "at_position",
    "resolve",
]

_KINDS = ("top1", "top1_fixed", "softmax_top1", "top1_minus_top2", "class", "diff", "sum", "entropy", "surprisal",
          "outputs", "callable")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Target:
    """One scalar per example (or K, for ``kind="outputs"`` and every-position targets) from the outputs.

    Attributes:
      kind: one of ``top1, top1_fixed, softmax_top1, top1_minus_top2, class, diff, sum, entropy, surprisal,
        outputs, callable``.
      fn: the user's ``y [B, K] -> [B]`` for ``kind="callable"``.
      classes: ``[]`` or ``[B]`` int class (token) indices for ``kind="class"`` and ``"diff"``.
      contrast: ``[]`` or ``[B]`` int indices subtracted by ``kind="diff"``: ``y[classes] - y[contrast]``.
      mu, precision: ``[K]`` mean and ``[K, K]`` inverse covariance for ``kind="surprisal"``.
      positions: ``None`` for outputs ``[B, K]``; else ``[]`` or ``[B]`` int positions (negative counts from
        the end) whose rows of outputs ``[B, T, K]`` the target reads.
      every_position: read every row of ``[B, T, K]``: the target is ``[B, T]``.
      position_mask: ``[B, T]`` 0/1 weights of the positions of an every-position target (0 for padding).
    """

    kind: str = dataclasses.field(metadata=dict(static=True))
    fn: Callable[[jax.Array], jax.Array] | None = dataclasses.field(default=None, metadata=dict(static=True))
    classes: Any = None
    mu: Any = None
    precision: Any = None
    contrast: Any = None
    positions: Any = None
    every_position: bool = dataclasses.field(default=False, metadata=dict(static=True))
    position_mask: Any = None

    def __call__(self, y: jax.Array) -> jax.Array:
        """``y [B, K]`` (or ``[B, T, K]`` for a position target) -> ``[B]`` (``[B, K]`` / ``[B, T]``)."""
        rows = self.select(y)
        if not self.every_position:
            return self._scalar(rows)
        t = jax.vmap(self._scalar, in_axes=1, out_axes=1)(rows)  # [B, T]
        if self.position_mask is not None:
            t = t * jnp.asarray(self.position_mask, t.dtype)
        return t

    def select(self, y: jax.Array) -> jax.Array:
        """The output rows the target reads: ``[B, K]`` (``[B, T, K]`` for an every-position target)."""
        sequence = self.positions is not None or self.every_position
        if self.kind == "callable" and not sequence:
            return y
        want = 3 if sequence else 2
        if y.ndim != want:
            if sequence:
                raise ValueError(f"a position target needs sequence outputs [batch, seq, n_outputs], got {y.shape}")
            hint = ("; for a sequence model say which position to explain, e.g. "
                    "targets.at_position('top1', 'last', mask=attention_mask)") if y.ndim == 3 else ""
            raise ValueError(f"target {self.kind!r} needs outputs of shape [batch, n_outputs], got {y.shape}{hint}")
        if self.positions is None:
            return y
        p = jnp.broadcast_to(jnp.asarray(self.positions, jnp.int32), y.shape[:1])
        p = jnp.where(p < 0, p + y.shape[1], p)
        return jnp.take_along_axis(y, p[:, None, None], axis=1)[:, 0]

    def _scalar(self, y: jax.Array) -> jax.Array:
        """``y [B, K] -> [B]`` (``[B, K]`` for ``kind="outputs"``)."""
        if self.kind == "callable":
            t = self.fn(y)
            if jnp.shape(t) != y.shape[:1]:
                raise ValueError(
                    f"a callable target must map outputs of shape {y.shape} to one scalar per example, shape "
                    f"{y.shape[:1]}; it returned shape {jnp.shape(t)}"
                )
            return t
        if self.kind in ("top1", "top1_fixed"):
            if self.kind == "top1_fixed" and self.classes is None:
                raise ValueError("top1_fixed must be resolved to the final predictions first (see fix_classes)")
            if self.classes is None:
                return jnp.max(y, axis=-1)
            return _pick(y, self.classes)
        if self.kind == "class":
            return _pick(y, self.classes)
        if self.kind == "diff":
            return _pick(y, self.classes) - _pick(y, self.contrast)
        if self.kind == "softmax_top1":
            return jnp.max(jax.nn.softmax(y, axis=-1), axis=-1)
        if self.kind == "top1_minus_top2":
            top = jax.lax.top_k(y, 2)[0]
            return top[:, 0] - top[:, 1]
        if self.kind == "sum":
            return jnp.sum(y, axis=-1)
        if self.kind == "entropy":
            logp = jax.nn.log_softmax(y, axis=-1)
            return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        if self.kind == "surprisal":
            d = y - self.mu
            return 0.5 * jnp.einsum("bi,ij,bj->b", d, self.precision, d)
        if self.kind == "outputs":
            return y
        raise ValueError(f"unknown target kind {self.kind!r}; expected one of {_KINDS}")

    @property
    def per_example(self) -> bool:
        """True when the target holds per-example arrays (to be sliced with the batch, see :meth:`rows`)."""
        return self.batch_size is not None

    @property
    def batch_size(self) -> int | None:
        """Number of examples of the per-example arrays (class indices, positions, mask), or ``None``."""
        sizes = {np.shape(v)[0] for v in self.example_fields().values()}
        return sizes.pop() if sizes else None

    def example_fields(self) -> dict[str, Any]:
        """``{field: [B, ...] array}`` of the per-example arrays (sliced with the batch, split over ``data``)."""
        out = {f: getattr(self, f) for f in ("classes", "contrast", "positions")
               if getattr(self, f) is not None and np.ndim(getattr(self, f)) == 1}
        if self.position_mask is not None:
            out["position_mask"] = self.position_mask
        return out

    def rows(self, index) -> Target:
        """This target for the examples ``index`` of a larger data set (slices the per-example arrays)."""
        index = jnp.asarray(index)
        return dataclasses.replace(self, **{f: jnp.asarray(v)[index] for f, v in self.example_fields().items()})

    def fix_classes(self, y_final: jax.Array) -> Target:
        """For ``top1_fixed``: freeze the class to ``argmax`` of the rows read at the real input ``[B, K]``."""
        if self.kind != "top1_fixed":
            return self
        rows = self.select(y_final)
        return dataclasses.replace(self, classes=jnp.argmax(rows, axis=-1))

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless the target's arrays fit outputs of ``shape`` ``[B, K]`` or ``[B, T, K]``."""
        shape = tuple(shape)
        batch, n_outputs = shape[0], shape[-1]
        sequence = self.positions is not None or self.every_position
        if sequence and len(shape) != 3:
            raise ValueError(f"a position target needs sequence outputs [batch, seq, n_outputs]; the network "
                             f"returns {shape}")
        if self.kind == "callable" and not sequence:
            return
        if len(shape) != 2 + sequence:
            hint = ("; say which position to explain, e.g. targets.at_position('top1', 'last', "
                    "mask=attention_mask)") if len(shape) == 3 else ""
            raise ValueError(f"target {self.kind!r} needs outputs of shape [batch, n_outputs]; the network "
                             f"returns {shape}{hint}")
        for field, value in self.example_fields().items():
            if np.shape(value)[0] != batch:
                raise ValueError(f"the target holds {np.shape(value)[0]} {_FIELD_NAMES[field]} for a batch of "
                                 f"{batch} examples")
        for field in {"class": ("classes",), "diff": ("classes", "contrast")}.get(self.kind, ()):
            c = np.asarray(getattr(self, field)).reshape(-1)
            bad = np.flatnonzero((c < 0) | (c >= n_outputs))
            if bad.size:
                what = "class index" if field == "classes" else "contrast index"
                raise ValueError(
                    f"{'given_class' if self.kind == 'class' else 'logit_diff'}: {what} {int(c[bad[0]])} "
                    f"(example {int(bad[0])}) is out of range for a network with {n_outputs} outputs; "
                    f"use 0..{n_outputs - 1}"
                )
        if self.positions is not None:
            p = np.asarray(self.positions).reshape(-1)
            bad = np.flatnonzero((p < -shape[1]) | (p >= shape[1]))
            if bad.size:
                raise ValueError(f"position {int(p[bad[0]])} (example {int(bad[0])}) is out of range for "
                                 f"sequences of length {shape[1]}")
        if self.position_mask is not None and np.shape(self.position_mask) != shape[:2]:
            raise ValueError(f"the position mask has shape {np.shape(self.position_mask)}; the outputs need "
                             f"{shape[:2]} (batch, seq)")
        if self.kind == "top1_minus_top2" and n_outputs < 2:
            raise ValueError(f"top1_minus_top2 needs at least 2 outputs, the network has {n_outputs}")
        if self.kind == "surprisal" and np.shape(self.mu) != (n_outputs,):
            raise ValueError(f"surprisal: mu has shape {np.shape(self.mu)}, the network has {n_outputs} outputs")


_FIELD_NAMES = {"classes": "class indices", "contrast": "contrast indices", "positions": "positions",
                "position_mask": "mask rows"}


def _pick(y: jax.Array, classes) -> jax.Array:
    c = jnp.broadcast_to(jnp.asarray(classes, jnp.int32), y.shape[:1])
    return jnp.take_along_axis(y, c[:, None], axis=-1)[:, 0]


def top1() -> Target:
    """Largest output, recomputed at every path step (CODEC's default)."""
    return Target("top1")


def top1_fixed() -> Target:
    """Output of the class predicted at the real input, held fixed along the path (a deviation from CODEC)."""
    return Target("top1_fixed")


def softmax_top1() -> Target:
    """Largest softmax probability (CODEC's ViT setting)."""
    return Target("softmax_top1")


def top1_minus_top2() -> Target:
    """Largest minus second-largest output (CODEC's contrastive target)."""
    return Target("top1_minus_top2")


def _indices(values, what: str) -> jax.Array:
    c = np.asarray(values)
    if c.dtype.kind not in "iu" or c.ndim > 1:
        raise TypeError(f"{what} needs an int or a 1-D integer array of indices, got {c.dtype} {c.shape}")
    return jnp.asarray(c, jnp.int32)


def given_class(classes: ArrayLike) -> Target:
    """Output of a given class: an ``int`` for every example or one index per example ``[B]``."""
    return Target("class", classes=_indices(classes, "given_class (class indices)"))


def logit_diff(a: ArrayLike, b: ArrayLike) -> Target:
    """``y[a] - y[b]``: e.g. IOI's logit of the indirect object minus that of the subject token.

    ``a`` and ``b`` are each an ``int`` or one index per example ``[B]``.
    """
    return Target("diff", classes=_indices(a, "logit_diff (a)"), contrast=_indices(b, "logit_diff (b)"))


def every_output() -> Target:
    """Every output: ``y [B, K] -> [B, K]``, so contributions get an outputs axis (``outputs="all"``)."""
    return Target("outputs")


def output_sum() -> Target:
    """Sum of all outputs."""
    return Target("sum")


def entropy() -> Target:
    """Entropy of the softmax prediction (nats)."""
    return Target("entropy")


def surprisal(mu, sigma) -> Target:
    """``0.5 (y - mu)^T sigma^-1 (y - mu)`` with output mean ``mu [K]`` and covariance ``sigma [K, K]``."""
    mu = np.asarray(mu, np.float64)
    sigma = np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"surprisal needs mu [K] and sigma [K, K]; got shapes {mu.shape} and {sigma.shape}")
    if not np.allclose(sigma, sigma.T):
        raise ValueError("surprisal: sigma must be a symmetric covariance matrix")
    try:
        precision = np.linalg.inv(sigma)
    except np.linalg.LinAlgError as e:
        raise ValueError("surprisal: sigma is singular; add a small ridge, e.g. sigma + 1e-6 * I") from e
    return Target("surprisal", mu=jnp.asarray(mu, jnp.float32), precision=jnp.asarray(precision, jnp.float32))


def from_callable(fn: Callable[[jax.Array], jax.Array]) -> Target:
    """Any pure, differentiable ``y [B, K] -> [B]``."""
    if not callable(fn):
        raise TypeError(f"from_callable needs a function y -> [batch], got {type(fn).__name__}")
    return Target("callable", fn=fn)


def at_position(target: Any = None, position: str | int | ArrayLike = "last", *, mask: ArrayLike | None = None,
                lengths: ArrayLike | None = None) -> Target:
    """``target`` read at a position of sequence outputs ``[B, T, K]`` (e.g. a language model's logits).

    Args:
      target: any spec :func:`resolve` takes (default ``"top1"``: the predicted next token's logit).
      position: ``"last"`` (the last real position: from ``mask`` or ``lengths``, else ``T - 1``), an ``int``
        (negative counts from the end), ``[B]`` ints (one position per example), or ``"all"`` (every position:
        the target is ``[B, T]`` and contributions get a positions axis; padded positions, 0 in ``mask``,
        give zero).
      mask: ``[B, T]`` attention mask, 1 for real tokens and 0 for padding (left or right).
      lengths: ``[B]`` numbers of real tokens (right padding), instead of ``mask``.
    """
    base = resolve("top1" if target is None else target)
    if base.positions is not None or base.every_position:
        raise ValueError("at_position: the target is already read at a position")
    if mask is not None and lengths is not None:
        raise ValueError("at_position: pass mask or lengths, not both")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim != 2 or not np.isin(mask, (0, 1)).all():
            raise ValueError(f"at_position: mask must be a [batch, seq] array of 0/1, got {mask.dtype} {mask.shape}")
        if not mask.any(axis=1).all():
            raise ValueError(f"at_position: example {int(np.flatnonzero(~mask.any(axis=1))[0])} has no real token")
    if lengths is not None:
        lengths = _indices(lengths, "at_position (lengths)")
        if lengths.ndim != 1 or bool(jnp.any(lengths < 1)):
            raise ValueError(f"at_position: lengths must be [batch] integers >= 1, got {np.asarray(lengths)}")
    if isinstance(position, str):
        if position == "all":
            if lengths is not None:
                raise ValueError("at_position: position='all' takes mask= (lengths do not give the sequence length)")
            if base.kind == "top1_fixed":
                raise ValueError("at_position: top1_fixed at every position is not supported; pass given classes")
            pm = None if mask is None else jnp.asarray(mask, jnp.float32)
            return dataclasses.replace(base, every_position=True, position_mask=pm)
        if position != "last":
            raise ValueError(f"at_position: position must be 'last', 'all', an int or [batch] ints, got {position!r}")
        if mask is not None:  # the last real token, whichever side the padding is on
            positions = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        elif lengths is not None:
            positions = lengths - 1
        else:
            positions = -1
        return dataclasses.replace(base, positions=jnp.asarray(positions, jnp.int32))
    if mask is not None or lengths is not None:
        raise ValueError("at_position: mask and lengths only apply to position='last' or 'all'")
    return dataclasses.replace(base, positions=_indices(position, "at_position (position)"))


_NAMED = {
    "top1": top1,
    "top1_fixed": top1_fixed,
    "softmax_top1": softmax_top1,
    "top1_minus_top2": top1_minus_top2,
    "sum": output_sum,
    "entropy": entropy,
}


def resolve(spec) -> Target:
    """A :class:`Target` from a name in ``{top1, top1_fixed, softmax_top1, top1_minus_top2, sum, entropy}``,
    a class index (int or ``[B]`` ints), a callable, or a :class:`Target`."""
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise ValueError(
                f"unknown target {spec!r}; expected one of {sorted(_NAMED)}, a class index, a callable, "
                "or jaxequiv.contributions.targets.surprisal(mu, sigma)"
            )
        return _NAMED[spec]()
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) or (
        hasattr(spec, "dtype") and np.asarray(spec).dtype.kind in "iu"
    ):
        return given_class(spec)
    if callable(spec):
        return from_callable(spec)
    raise TypeError(f"cannot make a target from {type(spec).__name__}; pass a name, a class index or a callable")
