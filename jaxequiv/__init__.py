"""jaxequiv: a JAX engine for CODEC contribution decomposition and interpretive equivalence.

Importing the package is light: it pulls in jax/flax/numpy only; torch, tracr and matplotlib are imported by
the modules that need them.
"""

__version__ = "0.1.0"

from jaxequiv.network import Network
from jaxequiv.sites import Add, Replace, Scale, list_sites, run, site

__all__ = ["Network", "site", "run", "Add", "Scale", "Replace", "list_sites", "__version__"]
