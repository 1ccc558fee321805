"""Interpretive equivalence: implementation sampling, congruity, distinguishability tests, patching importance.

::

    from jaxequiv import equivalence as eq
    reps1 = eq.get_impl(net1, clean, cf, read="h.5", key=0, n=10, circuit=["h.*.attn.z[0]"])   # (10, N, D)
    base1 = eq.get_impl(net1, clean, read="h.5", n=1)[0]                                        # unpatched
    eq.congruity(base1, reps1, base2, reps2, key=0)                     # CongruityResult(score, ci_low, ci_high)
    eq.congruity_matrix({"gpt2": (base1, reps1), "pythia": (base2, reps2)}, key=0)   # every pair, one call
    eq.distinguishability_grid(reprs, key=0)                            # (A, A) for reprs (A, M, N, D)
    eq.patching_importance(net, clean, corrupted)                       # {"h.0.attn.z": (heads,), ...}
"""

from jaxequiv.equivalence.congruity import (
    CongruityMatrix,
    CongruityResult,
    congruity,
    congruity_matrix,
    distinguishability_grid,
)
from jaxequiv.equivalence.impl import get_impl, parse_units, patching_importance, units_of

__all__ = [
    "congruity",
    "CongruityResult",
    "congruity_matrix",
    "CongruityMatrix",
    "distinguishability_grid",
    "get_impl",
    "patching_importance",
    "parse_units",
    "units_of",
]
