"""Representation similarity measures, each a jittable kernel with declared properties, and pairwise batching.

Every measure takes ``X`` (n, d1) and ``Y`` (n, d2) whose rows are the same n stimuli::

    from jaxequiv import similarity as sim
    sim.ridge_score(X, Y, key=0)          # the interpretive-equivalence reference score (RidgeCV, 90/10 split)
    sim.linear_cka(X, Y, unbiased=True)
    sim.pairwise(sim.LINEAR_CKA, Xs)      # (m, m) for a stack Xs (m, n, d), one compiled call
    sim.MEASURES["procrustes"].higher_is_similar   # False: a distance
    sim.get_measure("ridge", split=0)     # by name, with options (the CLI's --measure)

``MEASURES`` maps names to :class:`Measure` objects (used by ``pairwise``, ``congruity`` and the CLI);
:func:`get_measure` looks them up by name with options. Every measure accepts any finite float32 scale, and the
decompositions in their kernels are safe to ``vmap`` on the CPU (:mod:`jaxequiv.similarity.numerics`).
"""

from jaxequiv.similarity.base import INVARIANCES, Measure, check_pair, check_reprs
from jaxequiv.similarity.cka import (
    LINEAR_CKA,
    LINEAR_CKA_UNBIASED,
    RBF_CKA,
    CKAStream,
    cka_stream_init,
    cka_stream_merge,
    cka_stream_result,
    cka_stream_update,
    linear_cka,
    minibatch_cka,
    minibatch_cka_measure,
    rbf_cka,
    rbf_cka_measure,
)
from jaxequiv.similarity.drepr import D_REPR, constrained_fit_error, d_repr
from jaxequiv.similarity.geometry import (
    CCA,
    KNN,
    PROCRUSTES,
    PROCRUSTES_ANGULAR,
    PWCCA,
    RSA,
    SVCCA,
    cca,
    knn_alignment,
    procrustes,
    pwcca,
    rsa,
    svcca,
)
from jaxequiv.similarity.pairwise import pairwise
from jaxequiv.similarity.registry import MEASURES, get_measure
from jaxequiv.similarity.ridge import (
    DEFAULT_ALPHAS,
    RIDGE,
    RIDGE_SQRT,
    ridge_many,
    ridge_measure,
    ridge_r2_outputs,
    ridge_score,
    split_indices,
)

__all__ = [
    "Measure",
    "MEASURES",
    "get_measure",
    "INVARIANCES",
    "check_pair",
    "check_reprs",
    "pairwise",
    "ridge_score",
    "ridge_many",
    "ridge_r2_outputs",
    "ridge_measure",
    "split_indices",
    "DEFAULT_ALPHAS",
    "RIDGE",
    "RIDGE_SQRT",
    "linear_cka",
    "rbf_cka",
    "rbf_cka_measure",
    "minibatch_cka",
    "minibatch_cka_measure",
    "CKAStream",
    "cka_stream_init",
    "cka_stream_update",
    "cka_stream_merge",
    "cka_stream_result",
    "LINEAR_CKA",
    "LINEAR_CKA_UNBIASED",
    "RBF_CKA",
    "procrustes",
    "cca",
    "svcca",
    "pwcca",
    "rsa",
    "knn_alignment",
    "PROCRUSTES",
    "PROCRUSTES_ANGULAR",
    "CCA",
    "SVCCA",
    "PWCCA",
    "RSA",
    "KNN",
    "d_repr",
    "constrained_fit_error",
    "D_REPR",
]
