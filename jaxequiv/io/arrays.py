"""Reading arrays from ``.npy`` / ``.npz`` / ``.safetensors`` files with one clear error for a bad file.

NumPy's own errors for a truncated or foreign file are ``zipfile.BadZipFile: File is not a zip file`` (no path)
or advice to enable ``allow_pickle`` (never safe for a file of unknown origin). These readers never unpickle and
raise :class:`CorruptFileError` naming the file, what is wrong with it, and how to fix it.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib

import numpy as np

__all__ = ["CorruptFileError", "read_npy", "read_npz", "read_arrays"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first member, or the end record of an empty zip


class CorruptFileError(ValueError):
    """A file is truncated, corrupt, or not of the format its name says."""


def _check_magic(path: str, magic: bytes | tuple[bytes, ...], kind: str, fix: str) -> None:
    magic = (magic,) if isinstance(magic, bytes) else magic
    with open(path, "rb") as f:
        head = f.read(len(magic[0]))
    if head not in magic:
        what = "empty" if not head else f"not a {kind} file (it starts with {head!r})"
        raise CorruptFileError(f"{path} is {what}; {fix}")


def read_npy(path: str | os.PathLike, *, mmap_mode: str | None = None, hint: str | None = None) -> np.ndarray:
    """The array in a ``.npy`` file (memory-mapped with ``mmap_mode="r"``); numeric data only, never pickles.

    Raises:
      CorruptFileError: not a ``.npy`` file, truncated, or holding Python objects; ``hint`` ends the message.
    """
    path = os.fspath(path)
    fix = hint or "write it with numpy.save"
    _check_magic(path, _NPY_MAGIC, ".npy", fix)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as e:
        why = ("it holds Python objects, which jaxequiv does not unpickle" if re.search("pickle|Python obj", str(e))
               else f"it is truncated or corrupt ({e})")
        raise CorruptFileError(f"{path}: {why}; {fix}") from None


def read_npz(path: str | os.PathLike, *, hint: str | None = None) -> dict[str, np.ndarray]:
    """``{name: array}`` of a ``.npz`` file, every member read (so a truncated member fails here, not later).

    Raises:
      CorruptFileError: not a zip archive, truncated, or a member that is not a numeric array; ``hint`` ends
        the message.
    """
    path = os.fspath(path)
    fix = hint or "write it again with numpy.savez"
    _check_magic(path, _ZIP_MAGIC, ".npz (zip)", fix)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise CorruptFileError(f"{path}: it holds Python objects, which jaxequiv does not unpickle; {fix}") from None
        raise CorruptFileError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); {fix}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as e:
        raise CorruptFileError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); {fix}") from None


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of a ``.npz``, ``.safetensors`` or ``.npy`` file (one array named by the file's stem).

    Raises:
      FileNotFoundError: no such file. ValueError: another extension. CorruptFileError: a bad file.
    """
    from jaxequiv.io.safetensors import read_safetensors

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}" + (" (it is a folder)" if os.path.isdir(path) else ""))
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext == ".npz":
        return read_npz(path)
    if ext == ".npy":
        return {stem: read_npy(path)}
    if ext == ".safetensors":
        return read_safetensors(path)[0]
    raise ValueError(f"{path}: expected a .npz, .npy or .safetensors file")
