"""jaxequiv.rng.as_key: one way to accept seeds and keys."""

import jax
import numpy as np
import pytest

from jaxequiv.rng import as_key


def test_seed_and_keys_give_the_same_typed_key():
    k = as_key(3)
    assert jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
    same = [as_key(np.int64(3)), as_key(jax.random.key(3)), as_key(jax.random.PRNGKey(3))]
    for other in same:
        assert np.array_equal(jax.random.key_data(k), jax.random.key_data(other))


@pytest.mark.parametrize("bad", [1.5, "0", True, None, np.zeros(3, np.uint32)])
def test_bad_keys_name_the_argument(bad):
    with pytest.raises(TypeError, match="seed must be an int seed"):
        as_key(bad, "seed")
