"""Sparse autoencoders: variants (:mod:`.variants`), training (:mod:`.train`), metrics and readout
(:mod:`.metrics`), SAELens-layout files (:mod:`.io`)."""

from jaxequiv.sae.data import BatchStream, Scaled, global_std
from jaxequiv.sae.train import TrainingDiverged, TrainResult, TrainSettings, train, train_many
from jaxequiv.sae.variants import STSAE, VARIANTS, BatchTopK, JumpReLU, ReluL1, TopK, make

__all__ = ["ReluL1", "TopK", "BatchTopK", "JumpReLU", "STSAE", "VARIANTS", "make", "train", "train_many",
           "TrainSettings", "TrainResult", "TrainingDiverged", "BatchStream", "Scaled", "global_std"]
