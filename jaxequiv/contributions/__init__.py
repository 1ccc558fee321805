"""Hidden-unit contributions (CODEC §1): the kernel, targets, reductions and the on-disk store."""

from jaxequiv.contributions import targets
from jaxequiv.contributions.driver import build_store
from jaxequiv.contributions.methods import (
    METHODS,
    RULES,
    Contributions,
    KernelConfig,
    completeness_delta,
    contributions,
    kernel,
    prepare,
    resolve_sites,
)
from jaxequiv.contributions.reduce import (
    VARIANTS,
    global_std,
    normalise_global_std,
    reduce_site,
    reduced_channels,
    spatial_sum,
)
from jaxequiv.contributions.store import Store, fingerprint, open_store
from jaxequiv.contributions.targets import Target

__all__ = [
    "METHODS",
    "RULES",
    "VARIANTS",
    "Contributions",
    "KernelConfig",
    "Target",
    "Store",
    "targets",
    "open_store",
    "build_store",
    "contributions",
    "kernel",
    "prepare",
    "completeness_delta",
    "fingerprint",
    "resolve_sites",
    "reduce_site",
    "reduced_channels",
    "spatial_sum",
    "global_std",
    "normalise_global_std",
]
