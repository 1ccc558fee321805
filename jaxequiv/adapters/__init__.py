"""Adapters from other frameworks' checkpoints to jaxequiv models.

:mod:`jaxequiv.adapters.torch` loads PyTorch / Hugging Face checkpoints (torch is optional: safetensors files
and jaxequiv artefacts load without it). Import the submodule directly; this package imports nothing heavy.
"""
