"""Training helper: learning, determinism, NaN detection, BatchNorm modes, loss/accuracy against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxequiv import Network
from jaxequiv.models.mlp import MLP
from jaxequiv.train import accuracy, classification_loss, fit
from tests.nets import tiny_resnet


def blobs(n=96, seed=0):
    """Three well-separated Gaussian blobs in 2-D."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    return (centres[y] + rng.normal(size=(n, 2))).astype(np.float32), y.astype(np.int32)


def params_of(model):
    return [np.asarray(p) for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))]


def test_fit_learns_and_reports_history():
    x, y = blobs()
    model = MLP((2, 16, 3), rngs=nnx.Rngs(0))
    hist = fit(model, classification_loss, (x, y), epochs=6, batch_size=32, optimizer=optax.adam(3e-2), seed=0)
    assert set(hist) == {"loss", "accuracy"} and hist["loss"].shape == (6 * 3,)
    assert hist["loss"][-3:].mean() < 0.5 * hist["loss"][:3].mean()
    assert accuracy(model, x, y) > 0.9


def test_fit_is_deterministic_for_a_seed():
    x, y = blobs()
    runs = []
    for seed in (0, 0, 1):
        model = MLP((2, 8, 3), rngs=nnx.Rngs(0))
        fit(model, classification_loss, (x, y), epochs=2, batch_size=20, seed=seed, progress=False)
        runs.append(params_of(model))
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_fit_takes_any_loss_signature():
    """A one-array, language-model-style loss: predict the next token id of integer sequences."""
    tokens = np.tile(np.arange(5), (40, 2)).astype(np.int32)  # 0 1 2 3 4 0 1 ...

    class Bigram(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(5, 5, rngs=rngs)

    def lm_loss(model, seq):
        logits = model.embed(seq[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, seq[:, 1:]).mean(), {}

    model = Bigram(nnx.Rngs(0))
    hist = fit(model, lm_loss, [tokens], epochs=30, batch_size=8, optimizer=optax.adam(0.1), progress=False)
    assert set(hist) == {"loss"} and hist["loss"][-1] < 0.05


def test_fit_names_the_step_of_a_nan_loss():
    class Root(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.array(1.0))

    # sgd(1.2) on sqrt(w): w = 1 -> 0.4 -> -0.55, so the loss at step 2 is sqrt(-0.55) = NaN
    model = Root()
    x = np.zeros((4, 1), np.float32)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 2 \(epoch 2, batch 0\).*learning rate"):
        fit(model, lambda m, x: (jnp.sqrt(m.w[...]) + x.sum(), {}), (x,), epochs=5, batch_size=4,
            optimizer=optax.sgd(1.2), progress=False)


def test_fit_trains_batchnorm_in_train_mode_and_returns_eval_mode():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 4, 16).astype(np.int32)
    model = tiny_resnet((1,), num_classes=4)
    before = [np.asarray(s) for s in jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))]
    fit(model, classification_loss, (x, y), epochs=1, batch_size=8, progress=False)
    after = [np.asarray(s) for s in jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))  # statistics updated while training
    assert model.bn1.use_running_average and model.layer1[0].bn2.use_running_average  # back in eval mode


def test_fit_bad_input():
    model = MLP((2, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"same first dimension.*\[4, 5\]"):
        fit(model, classification_loss, (np.zeros((4, 2)), np.zeros(5)), epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="epochs and batch_size must be positive"):
        fit(model, classification_loss, (np.zeros((4, 2)), np.zeros(4)), epochs=0, batch_size=2)


def test_classification_loss_matches_float64_numpy():
    model = MLP((3, 4), rngs=nnx.Rngs(1))
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0, 1, 2])
    loss, metrics = classification_loss(model, jnp.asarray(x), jnp.asarray(y))
    logits = np.asarray(model(jnp.asarray(x)), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -logp[np.arange(7), y].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(logits.argmax(1) == y))


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_accuracy_of_module_network_and_stack(batch_size):
    x, y = blobs(n=23)
    models = [MLP((2, 5, 3), rngs=nnx.Rngs(s)) for s in (0, 1)]
    ref = [np.mean(np.asarray(m(jnp.asarray(x))).argmax(1) == y) for m in models]
    assert accuracy(models[0], x, y, batch_size=batch_size) == pytest.approx(ref[0])
    nets = [Network.from_module(m, (2,)) for m in models]
    assert accuracy(nets[1], x, y, batch_size=batch_size) == pytest.approx(ref[1])
    np.testing.assert_allclose(accuracy(Network.stack(nets), x, y, batch_size=batch_size), ref)
    with pytest.raises(ValueError, match="same length, got 23 and 22"):
        accuracy(nets[0], x, y[:-1])
    with pytest.raises(ValueError, match=r"expected \('batch', 2\)"):
        accuracy(nets[0], x[:, :1], y)
