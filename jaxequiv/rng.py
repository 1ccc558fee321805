"""Random keys: every public function that draws takes a typed ``jax.random.key`` or an int seed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_key"]


def as_key(key, what: str = "key") -> jax.Array:
    """A typed PRNG key from an int seed (Python or NumPy integer) or a key (typed, or a legacy uint32 (2,) one).

    Raises:
      TypeError: anything else (the message names ``what``).
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise TypeError(f"{what} must be an int seed or a jax.random.key, got {type(key).__name__}; "
                    f"pass {what}=0 or {what}=jax.random.key(0)")
