"""Training checkpoints of :func:`jaxequiv.sae.train_many` through orbax-checkpoint.

A checkpoint folder holds one numbered step (``<dir>/<step>/``) with two items: ``state``, the stacked params,
optimiser states and statistics of every group of SAEs (orbax ``StandardSave``: arrays written by the processes
that hold them, restored onto whatever mesh and sharding the resuming run asks for), and ``meta``, JSON with the
step, the logged history and the run's identity (configs, seeds, settings and a content fingerprint of each SAE's
data, :func:`jaxequiv.sae.data.fingerprint`). Orbax writes a step into a temporary folder and renames it when
complete, so a kill at any moment leaves the previous checkpoint usable; it writes in the background while training
continues. Resuming refuses a checkpoint whose identity differs from the run's, saying what differs.
"""

from __future__ import annotations

import os
from typing import Any

import jax

__all__ = ["CheckpointError", "Checkpoints", "read_meta"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, or written for other inputs."""


def _ocp():
    import orbax.checkpoint as ocp  # imported on use: it takes about a second

    return ocp


def _short(e: BaseException) -> str:
    """The first 200 characters of an exception's message, on one line."""
    return " ".join(str(e).split())[:200]


def _fresh(directory: str) -> str:
    return f"delete {directory} (or pass another checkpoint folder) to start fresh"


def _options(read_only: bool = False):
    return _ocp().CheckpointManagerOptions(max_to_keep=1, create=not read_only, read_only=read_only,
                                        cleanup_tmp_directories=not read_only)


def _check_format(directory: str) -> None:
    if os.path.exists(os.path.join(directory, "checkpoint.npz")):
        raise CheckpointError(f"{directory} holds a checkpoint.npz written by an older jaxequiv, which cannot be "
                              f"resumed; {_fresh(directory)}")


def read_meta(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON part (``step``, ``history``, ``configs``, ``seeds``, ``settings``, ``data``) of the latest
    checkpoint in ``directory``, or None when it holds none."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return None
    _check_format(directory)
    with _ocp().CheckpointManager(os.path.abspath(directory), options=_options(read_only=True)) as mngr:
        step = mngr.latest_step()
        return None if step is None else _restore_meta(mngr, directory, step)


def _restore_meta(mngr, directory: str, step: int) -> dict[str, Any]:
    ocp = _ocp()
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many types for unreadable files)
        raise CheckpointError(f"the checkpoint in {directory} (step {step}) cannot be read ({type(e).__name__}: "
                              f"{_short(e)}); it is damaged: {_fresh(directory)}") from e
    if not isinstance(meta, dict) or meta.get("step") != step:
        raise CheckpointError(f"the checkpoint in {directory} (step {step}) has no valid metadata; it is damaged: "
                              f"{_fresh(directory)}")
    return meta


def _describe(fp: dict[str, Any]) -> str:
    return f"{tuple(fp['shape'])} {fp['dtype']} data with content hash {fp['sha256'][:12]}"


def _data_difference(saved: list, now: list, names: list[str]) -> str | None:
    for name, a, b in zip(names, saved, now):
        if a != b:
            what = ("shapes" if a["shape"] != b["shape"] else "dtypes" if a["dtype"] != b["dtype"] else
                    "values (same shape and dtype)")
            return (f"{name} was trained on {_describe(a)}, but this run passes {_describe(b)}: the {what} "
                    f"differ")
    return None


class Checkpoints:
    """The checkpoints of one training run in ``directory`` (created if missing); use as a context manager, or
    call :meth:`close`, which waits for a write in progress."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        _check_format(self.directory)
        self._mngr = _ocp().CheckpointManager(os.path.abspath(self.directory), options=_options())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._mngr.close()

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def restore(self, template, identity: dict[str, Any], names: list[str]):
        """``(state, step, history)`` of the latest checkpoint, restored with the shapes, dtypes and shardings of
        ``template``, after checking that it was written with this ``identity`` (configs, seeds, settings,
        data); ``names`` label the SAEs in messages.

        Raises:
          CheckpointError: the checkpoint is damaged or was written for another run (the message says what
            differs and how to start fresh).
        """
        step = self._mngr.latest_step()
        meta = _restore_meta(self._mngr, self.directory, step)
        where = f"the checkpoint in {self.directory} (step {step})"
        diff = _data_difference(meta.get("data", []), identity["data"], names)
        if diff:
            raise CheckpointError(f"{where} was written for other training data: {diff}. Pass the same data to "
                                  f"resume, or {_fresh(self.directory)}")
        for key in ("configs", "seeds", "settings"):
            if meta.get(key) != identity[key]:
                raise CheckpointError(f"{where} has different {key} ({meta.get(key)}) than this run "
                                      f"({identity[key]}); use the same {key} to resume, or {_fresh(self.directory)}")
        ocp = _ocp()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            state = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{where} cannot be read ({type(e).__name__}: {_short(e)}); it is damaged: "
                                  f"{_fresh(self.directory)}") from e
        return state, step, meta["history"]

    def save(self, step: int, state, identity: dict[str, Any], history: list[dict]) -> None:
        """Start writing ``state`` (any pytree of arrays) as checkpoint ``step``; returns once the arrays are
        copied off the devices, the files are written in the background."""
        meta = {**identity, "step": step, "history": list(history)}  # a copy: written later, in the background
        ocp = _ocp()
        self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)), force=True)
