"""CODEC on real images (an 8-block ResNet on digits / MNIST) beside the paper's ResNet-50: ``run.py``, ``paper.py``."""
