"""jaxequiv's one I/O layer: atomic files and folders, array and safetensors files, configs as JSON, progress
bars and figures. Every artefact jaxequiv writes goes through it.

* :mod:`.files`: :func:`atomic_path`, :func:`write_text`, :func:`write_json` (one file); :func:`publishing`,
  :func:`publish` (a folder, swapped in whole); :func:`check_output`; :func:`output_lock`.
* :mod:`.arrays`: :func:`read_npy`, :func:`read_npz`, :func:`read_arrays` with one clear error for a bad file.
* :mod:`.safetensors`: :func:`read_safetensors`, :func:`write_safetensors` with NumPy only.
* :mod:`.config`: :func:`to_dict`, :func:`from_dict`, :func:`from_preset`, :class:`DictConfig` for frozen config
  dataclasses.
* :mod:`.generated`: :func:`replace_block`, :func:`regenerate` (README blocks written from results files).
* :mod:`.provenance`: :func:`provenance` (config, seeds, commit, versions, machine, times of a run).
* :mod:`.progress`: :func:`progress_bar`. :mod:`.figures`: :func:`subplots`, :func:`save_figure` (matplotlib),
  :func:`interval_yerr`.
"""

from jaxequiv.io.arrays import CorruptFileError, read_arrays, read_npy, read_npz
from jaxequiv.io.config import DictConfig, from_dict, from_preset, to_dict
from jaxequiv.io.figures import interval_yerr, save_figure, subplots
from jaxequiv.io.files import (OutputLockedError, atomic_path, check_output, output_lock, publish, publishing,
                               write_json, write_text)
from jaxequiv.io.generated import regenerate, replace_block
from jaxequiv.io.progress import progress_bar
from jaxequiv.io.provenance import provenance
from jaxequiv.io.safetensors import SafetensorsError, read_safetensors, write_safetensors

__all__ = ["atomic_path", "write_text", "write_json", "publishing", "publish", "check_output", "output_lock",
           "OutputLockedError",
           "read_npy", "read_npz", "read_arrays", "CorruptFileError", "read_safetensors", "write_safetensors",
           "SafetensorsError", "to_dict", "from_dict", "from_preset", "DictConfig", "progress_bar", "provenance", "replace_block", "regenerate",
           "subplots", "save_figure", "interval_yerr"]
