"""Sparse autoencoders: the interface (:mod:`.interface`), variants (:mod:`.variants`), training (:mod:`.train`),
metrics and readout (:mod:`.metrics`), SAELens-layout files (:mod:`.io`)."""

from jaxequiv.sae.checkpoint import CheckpointError
from jaxequiv.sae.data import BatchStream, Scaled
from jaxequiv.sae.interface import SAE, LossOutput
from jaxequiv.sae.io import load_sae, save_sae
from jaxequiv.sae.metrics import Modes, evaluate, readout
from jaxequiv.sae.train import FitWarning, TrainingDiverged, TrainResult, TrainSettings, codec_sweep, train, train_many
from jaxequiv.sae.variants import STSAE, VARIANTS, BatchTopK, JumpReLU, Matryoshka, ReluL1, TopK, make

__all__ = ["SAE", "LossOutput", "ReluL1", "TopK", "Matryoshka", "BatchTopK", "JumpReLU", "STSAE", "VARIANTS", "make", "train", "train_many", "codec_sweep",
           "TrainSettings", "TrainResult", "TrainingDiverged", "FitWarning", "CheckpointError", "BatchStream", "Scaled",
           "save_sae", "load_sae", "evaluate", "readout", "Modes"]
