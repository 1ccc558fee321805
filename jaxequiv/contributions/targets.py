"""Contribution targets: the scalar per example whose drive by hidden units is measured (CODEC §1.2).

A :class:`Target` maps the network's outputs ``y`` of shape ``[B, K]`` to ``[B]``. It is a pytree: its kind
(and a user function, if any) is static, its arrays (class indices, surprisal mean and precision) are leaves,
so a target passes through ``jax.jit`` and the kernel differentiates it with everything else.

Build one with the constructors below or let :func:`resolve` turn a short spec into one:
``"top1"`` (default, recomputed at every path step), ``"top1_fixed"``, ``"softmax_top1"``,
``"top1_minus_top2"``, ``"sum"``, ``"entropy"``, an ``int`` or integer array (a given class), or a callable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Target",
    "top1",
    "top1_fixed",
    "softmax_top1",
    "top1_minus_top2",
    "given_class",
    "output_sum",
    "entropy",
    "surprisal",
    "from_callable",
    "resolve",
]

_KINDS = ("top1", "top1_fixed", "softmax_top1", "top1_minus_top2", "class", "sum", "entropy", "surprisal", "callable")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Target:
    """A scalar per example computed from the outputs ``y [B, K]``.

    Attributes:
      kind: one of ``top1, top1_fixed, softmax_top1, top1_minus_top2, class, sum, entropy, surprisal, callable``.
      fn: the user's ``y [B, K] -> [B]`` for ``kind="callable"``.
      classes: ``[]`` or ``[B]`` int class indices for ``kind="class"``.
      mu, precision: ``[K]`` mean and ``[K, K]`` inverse covariance for ``kind="surprisal"``.
    """

    kind: str = dataclasses.field(metadata=dict(static=True))
    fn: Callable[[jax.Array], jax.Array] | None = dataclasses.field(default=None, metadata=dict(static=True))
    classes: Any = None
    mu: Any = None
    precision: Any = None

    def __call__(self, y: jax.Array) -> jax.Array:
        """``y [B, K] -> [B]``."""
        if self.kind == "callable":
            t = self.fn(y)
            if jnp.shape(t) != y.shape[:1]:
                raise ValueError(
                    f"a callable target must map outputs of shape {y.shape} to one scalar per example, shape "
                    f"{y.shape[:1]}; it returned shape {jnp.shape(t)}"
                )
            return t
        if y.ndim != 2:
            raise ValueError(f"target {self.kind!r} needs outputs of shape [batch, n_outputs], got {y.shape}")
        if self.kind in ("top1", "top1_fixed"):
            if self.kind == "top1_fixed" and self.classes is None:
                raise ValueError("top1_fixed must be resolved to the final predictions first (see fix_classes)")
            if self.classes is None:
                return jnp.max(y, axis=-1)
            return _pick(y, self.classes)
        if self.kind == "class":
            return _pick(y, self.classes)
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
        raise ValueError(f"unknown target kind {self.kind!r}; expected one of {_KINDS}")

    @property
    def per_example(self) -> bool:
        """True when the target holds one class index per example (to be sliced with the batch)."""
        return self.classes is not None and np.ndim(self.classes) == 1

    def rows(self, index) -> Target:
        """This target for the examples ``index`` of a larger data set (slices per-example classes)."""
        if not self.per_example:
            return self
        return dataclasses.replace(self, classes=jnp.asarray(self.classes)[jnp.asarray(index)])

    def fix_classes(self, y_final: jax.Array) -> Target:
        """For ``top1_fixed``: freeze the class to ``argmax`` of the outputs at the real input ``[B, K]``."""
        if self.kind != "top1_fixed":
            return self
        return dataclasses.replace(self, classes=jnp.argmax(y_final, axis=-1))

    def check(self, batch: int, n_outputs: int) -> None:
        """Raise ``ValueError`` if class indices or surprisal parameters do not fit ``batch`` x ``n_outputs``."""
        if self.kind == "class":
            c = np.asarray(self.classes)
            if c.ndim == 1 and c.shape[0] != batch:
                raise ValueError(f"given_class: {c.shape[0]} class indices for a batch of {batch} examples")
            bad = np.flatnonzero((c.reshape(-1) < 0) | (c.reshape(-1) >= n_outputs))
            if bad.size:
                raise ValueError(
                    f"given_class: class index {int(c.reshape(-1)[bad[0]])} (example {int(bad[0])}) is out of range "
                    f"for a network with {n_outputs} outputs; use 0..{n_outputs - 1}"
                )
        if self.kind == "top1_minus_top2" and n_outputs < 2:
            raise ValueError(f"top1_minus_top2 needs at least 2 outputs, the network has {n_outputs}")
        if self.kind == "surprisal" and np.shape(self.mu) != (n_outputs,):
            raise ValueError(f"surprisal: mu has shape {np.shape(self.mu)}, the network has {n_outputs} outputs")


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


def given_class(classes) -> Target:
    """Output of a given class: an ``int`` for every example or one index per example ``[B]``."""
    c = np.asarray(classes)
    if c.dtype.kind not in "iu" or c.ndim > 1:
        raise TypeError(f"given_class needs an int or a 1-D integer array of class indices, got {c.dtype} {c.shape}")
    return Target("class", classes=jnp.asarray(c, jnp.int32))


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
    if isinstance(spec, (int, np.integer)) or (hasattr(spec, "dtype") and np.asarray(spec).dtype.kind in "iu"):
        return given_class(spec)
    if callable(spec):
        return from_callable(spec)
    raise TypeError(f"cannot make a target from {type(spec).__name__}; pass a name, a class index or a callable")
