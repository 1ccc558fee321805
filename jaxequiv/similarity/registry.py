"""Measures by name: the registry ``MEASURES`` and :func:`get_measure` (with options for the configurable ones)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from jaxequiv.similarity.base import Measure
from jaxequiv.similarity.cka import LINEAR_CKA, LINEAR_CKA_UNBIASED, RBF_CKA, rbf_cka_measure
from jaxequiv.similarity.drepr import D_REPR
from jaxequiv.similarity.geometry import CCA, KNN, PROCRUSTES, PROCRUSTES_ANGULAR, PWCCA, RSA, SVCCA
from jaxequiv.similarity.ridge import RIDGE, RIDGE_SQRT, ridge_measure

__all__ = ["MEASURES", "get_measure"]

MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        RIDGE,
        RIDGE_SQRT,
        LINEAR_CKA,
        LINEAR_CKA_UNBIASED,
        RBF_CKA,
        PROCRUSTES,
        PROCRUSTES_ANGULAR,
        CCA,
        SVCCA,
        PWCCA,
        RSA,
        KNN,
        D_REPR,
    )
}

# name -> (factory, the options it takes)
_FACTORIES: dict[str, tuple[Callable[..., Measure], tuple[str, ...]]] = {
    "ridge": (functools.partial(ridge_measure, sqrt=False), ("alphas", "test_size", "split")),
    "ridge_sqrt": (functools.partial(ridge_measure, sqrt=True), ("alphas", "test_size", "split")),
    "rbf_cka": (rbf_cka_measure, ("sigma_frac",)),
}


@functools.lru_cache(maxsize=64)
def _built(name: str, options: tuple) -> Measure:
    return _FACTORIES[name][0](**dict(options))


def get_measure(name: str, **options) -> Measure:
    """The measure called ``name`` (a key of :data:`MEASURES`), configured by ``options`` where it takes any.

    Without options this is ``MEASURES[name]``. ``ridge`` / ``ridge_sqrt`` take ``alphas``, ``test_size`` and
    ``split`` (see :func:`~jaxequiv.similarity.ridge_measure`), ``rbf_cka`` takes ``sigma_frac``. The same
    hashable options give the same object (so jitted callers compile once).

    Raises:
      ValueError: an unknown name (the message lists the names) or an option the measure does not take.
    """
    if not isinstance(name, str):
        raise TypeError(f"get_measure: name must be a string, got {type(name).__name__}")
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}; choose one of {', '.join(sorted(MEASURES))}")
    if not options:
        return MEASURES[name]
    factory, accepted = _FACTORIES.get(name, (None, ()))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"takes only {', '.join(accepted)}" if accepted else "takes no options"
        raise ValueError(f"measure {name!r} {takes}; got {', '.join(unknown)}")
    items = tuple(sorted(options.items()))
    try:
        hash(items)
    except TypeError:  # e.g. a split given as index arrays
        return factory(**options)
    return _built(name, items)
