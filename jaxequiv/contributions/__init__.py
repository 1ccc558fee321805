"""Hidden-unit contributions (CODEC §1): the kernel, targets, reductions and the on-disk store."""

from jaxequiv.contributions.driver import build_store
from jaxequiv.contributions.methods import METHODS, Contributions, contributions, resolve_sites
from jaxequiv.contributions.reduce import VARIANTS, global_std, normalise_global_std, reduce_site, spatial_sum
from jaxequiv.contributions.store import Store, open_store
from jaxequiv.contributions.targets import Target

__all__ = [
    "METHODS",
    "VARIANTS",
    "Contributions",
    "Target",
    "Store",
    "open_store",
    "build_store",
    "contributions",
    "resolve_sites",
    "reduce_site",
    "spatial_sum",
    "global_std",
    "normalise_global_std",
]
