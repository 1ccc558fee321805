"""Flax nnx architectures that mark their sites. Import the architecture's module directly, e.g.
``from jaxequiv.models.resnet import resnet18``; each module documents its site names and axes."""
