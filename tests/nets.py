"""Tiny networks shared by the tests (built in milliseconds, compiled in seconds)."""

from flax import nnx

from jaxequiv.models.resnet import ResNet


def tiny_resnet(layers: tuple[int, ...] = (1, 1), *, width: int = 4, num_classes: int = 5, in_channels: int = 1,
                seed: int = 0) -> ResNet:
    """A small-stem basic-block ResNet: ``layers`` stages of ``width * 2**i`` channels, sites ``layer{i}.{j}``;
    input ``[B, H, W, in_channels]`` -> logits ``[B, num_classes]``."""
    return ResNet("basic", layers, width=width, num_classes=num_classes, in_channels=in_channels, stem="small",
                  rngs=nnx.Rngs(seed))
