"""Tiny networks shared by the tests (built in milliseconds, compiled in seconds)."""

import jax
from flax import nnx

from jaxequiv import site
from jaxequiv.models.resnet import ResNet


def tiny_resnet(layers: tuple[int, ...] = (1, 1), *, width: int = 4, num_classes: int = 5, in_channels: int = 1,
                seed: int = 0) -> ResNet:
    """A small-stem basic-block ResNet: ``layers`` stages of ``width * 2**i`` channels, sites ``layer{i}.{j}``;
    input ``[B, H, W, in_channels]`` -> logits ``[B, num_classes]``."""
    return ResNet("basic", layers, width=width, num_classes=num_classes, in_channels=in_channels, stem="small",
                  rngs=nnx.Rngs(seed))


class TinyMLP(nnx.Module):
    """x ``[B, 5]`` -> site ``fc1`` ``[B, 8]`` (ReLU, random biases) -> logits ``[B, 3]``."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.l1 = nnx.Linear(5, 8, bias_init=nnx.initializers.normal(0.3), rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(site("fc1", jax.nn.relu(self.l1(x)), axes=("batch", "channel")))
