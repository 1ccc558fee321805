"""Network: the pure-function view ``(apply, params)`` of any model, which every kernel takes.

``apply(params, *inputs)`` is a pure function of a params pytree and arrays; it marks sites (see
:mod:`jaxequiv.sites`). ``Network`` is itself a pytree whose only leaves are ``params``, so it passes
through ``jax.jit`` / ``jax.vmap``; a stack of networks (many seeds or implementations) is one ``Network``
whose params carry a leading axis, applied with :meth:`Network.vmap_apply`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from jaxequiv import sites as _sites

__all__ = ["Network"]


def _static(**kwargs):
    return dataclasses.field(metadata={"static": True}, **kwargs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Network:
    """A model as a pure function; a pytree whose only leaves are ``params`` (the other fields are static).

    Attributes:
      apply: ``apply(params, *inputs) -> outputs``; pure and traceable.
      params: pytree of arrays (with a leading stack axis after :meth:`stack`).
      input_shape: shape of one example of the first input, e.g. ``(28, 28, 1)`` or ``(seq_len,)``; used to
        validate inputs and to list sites without data. ``None`` entries are free sizes.
      input_dtype: dtype kind of the first input: ``"float"`` or ``"int"``.
      stacked: number of stacked parameter sets, or ``None`` for a single network.
    """

    apply: Callable[..., Any] = _static()
    params: Any
    input_shape: tuple[int | None, ...] = _static()
    input_dtype: str = _static(default="float")
    stacked: int | None = _static(default=None)

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_module(cls, module: nnx.Module, input_shape: Sequence[int | None], input_dtype: str = "float",
                    **call_kwargs):
        """Pure view of an nnx module in its current mode (call ``module.eval()`` first for inference).

        All of the module's state (parameters, BatchNorm statistics, ...) becomes ``params``. ``input_dtype`` is
        ``"int"`` for models of token ids (a transformer), ``"float"`` otherwise. ``call_kwargs`` are passed to
        every call of the module (e.g. a transformer's ``logits="last"``).
        """
        if input_dtype not in ("float", "int"):
            raise ValueError(f"input_dtype must be 'float' or 'int' (token ids), got {input_dtype!r}")
        graphdef, state = nnx.split(module)

        def apply(params, *inputs, **kwargs):
            return nnx.merge(graphdef, params)(*inputs, **call_kwargs, **kwargs)

        return cls(apply, state, tuple(input_shape), input_dtype)

    @classmethod
    def stack(cls, networks: Sequence[Network]) -> Network:
        """One network whose params hold ``len(networks)`` parameter sets along a new leading axis."""
        if not networks:
            raise ValueError("Network.stack needs at least one network")
        first = networks[0]
        structs = {jax.tree_util.tree_structure(n.params) for n in networks}
        if len(structs) > 1 or any(n.stacked is not None for n in networks):
            raise ValueError("Network.stack: all networks must be unstacked and share one params structure")
        params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *(n.params for n in networks))
        return dataclasses.replace(first, params=params, stacked=len(networks))

    def replace_params(self, params) -> Network:
        return dataclasses.replace(self, params=params)

    def __getitem__(self, i: int) -> Network:
        """The ``i``-th network of a stack."""
        if self.stacked is None:
            raise TypeError("indexing needs a stacked Network (see Network.stack)")
        params = jax.tree_util.tree_map(lambda p: p[i], self.params)
        return dataclasses.replace(self, params=params, stacked=None)

    # -- running --------------------------------------------------------------------------------------------
    def __call__(self, x: ArrayLike, *rest, **kwargs):
        """``apply(params, x, *rest)`` after checking ``x`` against ``input_shape``; vmaps over a stack."""
        self.check_input(x)
        if self.stacked is not None:
            return self.vmap_apply(x, *rest, **kwargs)
        return self.apply(self.params, x, *rest, **kwargs)

    def vmap_apply(self, x: ArrayLike, *rest, **kwargs):
        """Outputs of every stacked network on the same inputs: leading axis = stack."""
        if self.stacked is None:
            raise TypeError("vmap_apply needs a stacked Network (see Network.stack)")
        return jax.vmap(lambda p: self.apply(p, x, *rest, **kwargs))(self.params)

    def check_input(self, x: ArrayLike) -> None:
        """Raise ``ValueError`` naming the expected and given shapes/dtypes if ``x`` is not a batch of inputs."""
        shape = tuple(np.shape(x))
        expected = ("batch", *(s if s is not None else "any" for s in self.input_shape))
        if len(shape) != len(self.input_shape) + 1 or any(
            e is not None and e != g for e, g in zip(self.input_shape, shape[1:])
        ):
            raise ValueError(f"input of shape {shape} does not fit this network: expected {expected}")
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        kind = np.dtype(dtype).kind
        if self.input_dtype == "int" and kind not in "iu":
            raise ValueError(f"this network takes integer token ids, got dtype {dtype}")
        if self.input_dtype == "float" and kind not in "f":
            raise ValueError(f"this network takes floating-point inputs, got dtype {dtype}; cast with x.astype('float32'), "
                             "or, if these are token ids, build it with input_dtype='int' (Network.from_module(module, "
                             "input_shape, input_dtype='int'))")

    def example_input(self, batch: int = 1, **sizes) -> jax.ShapeDtypeStruct:
        """A ``ShapeDtypeStruct`` for a batch of inputs; free sizes (``None``) default to 8."""
        free = iter(sizes.values())
        shape = tuple(s if s is not None else next(free, 8) for s in self.input_shape)
        dtype = jnp.int32 if self.input_dtype == "int" else jnp.float32
        return jax.ShapeDtypeStruct((batch, *shape), dtype)

    def sites(self, batch: int = 1, **sizes) -> dict[str, _sites.SiteInfo]:
        """Every site of the network with its shape (for ``batch`` examples), dtype and axes; runs no data."""
        params = self.params if self.stacked is None else self[0].params
        return _sites.list_sites(self.apply, params, self.example_input(batch, **sizes))

    def param_count(self) -> int:
        return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(self.params))
