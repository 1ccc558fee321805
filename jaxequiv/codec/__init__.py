"""CODEC (spec ``papers/codec.md`` §2-6) on your network, data and sites, as steps that each work alone:

contributions store (:func:`jaxequiv.contributions.build_store`) -> :func:`layer_statistics` (sparsity,
decorrelation, dimensionality) -> :func:`fit_modes` (one SAE per site and source, one training job) ->
:func:`mode_selectivity` -> :func:`mode_interventions`, :func:`superclass_interventions` (causal control) ->
:func:`mode_pictures` -> :func:`write_report`. :func:`analyze` chains them (see :mod:`.workflow`).

The kernels under the steps live in :mod:`.metrics`, :mod:`.interventions` and :mod:`.pictures`.
"""

from jaxequiv.codec.analysis import LayerStats, ModeSelectivity, layer_statistics, mode_selectivity
from jaxequiv.codec.interventions import InterventionResult, Superclass, mode_interventions, superclass_interventions
from jaxequiv.codec.modes import SOURCES, ModeFit, fit_modes
from jaxequiv.codec.pictures import ModePictures, mode_pictures
from jaxequiv.codec.report import write_report
from jaxequiv.codec.workflow import AnalysisSettings, CodecAnalysis, Stages, analyze, codec_store

__all__ = ["layer_statistics", "LayerStats", "fit_modes", "ModeFit", "SOURCES", "mode_selectivity",
           "ModeSelectivity", "mode_interventions", "InterventionResult", "superclass_interventions", "Superclass",
           "mode_pictures", "ModePictures", "write_report", "codec_store", "analyze", "AnalysisSettings",
           "CodecAnalysis", "Stages"]
