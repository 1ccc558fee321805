"""Shared helpers of the parity tests against PyTorch: the tolerance (max |got - want| / max |want| per tensor),
torch forward hooks, jaxequiv calls and site captures under one jit, and random batch-norm statistics."""

import jax
import numpy as np
from flax import nnx

from jaxequiv.sites import run

RTOL = 1e-4


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / (np.abs(want).max() + 1e-30))


def torch_hooks(model, specs: dict):
    """Register forward hooks on a torch module: ``{name: (module_name, "in" | "out", fn)}`` -> (dict filled with
    ``fn(numpy value)`` on the next forward, hook handles)."""
    out, handles = {}, []
    modules = dict(model.named_modules())
    for name, (module_name, where, fn) in specs.items():
        def hook(mod, inputs, output, name=name, where=where, fn=fn):
            value = inputs[0] if where == "in" else (output[0] if isinstance(output, tuple) else output)
            out[name] = fn(value.detach().numpy())
        handles.append(modules[module_name].register_forward_hook(hook))
    return out, handles


def jrun(model, *args, capture=None):
    """``model(*args)``, or ``run(model, *args, capture=...)`` when ``capture`` is given, under one ``jax.jit``
    (one compile instead of op-by-op dispatch)."""
    graphdef, state = nnx.split(model)
    if capture is None:
        return jax.jit(lambda st, *a: nnx.merge(graphdef, st)(*a))(state, *args)
    return jax.jit(lambda st, *a: run(nnx.merge(graphdef, st), *a, capture=capture))(state, *args)


def batchnorm_stats(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 batch-norm parameters and running statistics of ``n`` channels, far from the identity
    (scale, bias, mean, var), so that a parity test notices a statistic used in the wrong place."""
    return {"scale": rng.uniform(0.5, 1.5, n), "bias": rng.normal(0, 0.3, n), "mean": rng.normal(0, 0.3, n),
            "var": rng.uniform(0.5, 2.0, n)}
