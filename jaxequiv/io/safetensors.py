"""Read and write ``.safetensors`` files with NumPy only (no torch, no safetensors package).

The format: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``), then the raw
little-endian tensor bytes, offsets counted from the end of the header. bf16 and fp8 tensors come back as
``ml_dtypes`` arrays (a JAX dependency), so half-precision checkpoints read without torch.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from jaxequiv.io.arrays import CorruptFileError
from jaxequiv.io.files import atomic_path

__all__ = ["read_safetensors", "write_safetensors", "SafetensorsError"]

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(CorruptFileError):
    """A file is not a valid (complete) safetensors file."""


# XLA:CPU shares host memory aligned to this many bytes (jax.device_put without a copy) and copies the rest
_XLA_ALIGN = 64


def _aligned_read(f, offset: int, nbytes: int) -> np.ndarray:
    """``nbytes`` of the open file ``f`` from ``offset`` into a fresh read-only buffer aligned for XLA."""
    buf = np.empty(nbytes + _XLA_ALIGN, np.uint8)
    start = -buf.ctypes.data % _XLA_ALIGN
    out = buf[start:start + nbytes]
    f.seek(offset)
    if f.readinto(memoryview(out)) != nbytes:
        raise SafetensorsError(f"{f.name}: short read at byte {offset}; the file changed while it was read")
    out.flags.writeable = False
    return out


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; tensors are read-only: memory maps of the file where their
    bytes lie 64-byte aligned (JAX then shares them without a copy), else read into fresh aligned buffers (a
    map there would be copied by JAX and leave the mapped pages resident too: twice the file in memory).

    Raises:
      SafetensorsError: the header is malformed or the file is shorter than its header promises (truncated).
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: {size} bytes is too short for a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise SafetensorsError(f"{path}: header claims {n} bytes but the file has {size}; the file is truncated")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e}); not a safetensors file?") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is a {type(header).__name__}, expected a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    data = np.memmap(path, np.uint8, "r", offset=8 + n, shape=(data_size,)) if data_size else np.zeros(0, np.uint8)
    tensors = {}
    with open(path, "rb") as f:  # for the tensors a map would not serve
        for name, info in header.items():
            dtype = _DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
            if dtype is None:
                raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info!r}; known: "
                                       f"{sorted(_DTYPES)}")
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
            if end - begin != int(np.prod(shape)) * dtype.itemsize or begin < 0:
                raise SafetensorsError(f"{path}: tensor {name!r} of shape {shape} {info['dtype']} has bad offsets")
            if end > data_size:
                raise SafetensorsError(
                    f"{path}: tensor {name!r} ends at byte {end} of the data but the file holds {data_size}; "
                    "the file is truncated"
                )
            aligned = (8 + n + begin) % _XLA_ALIGN == 0
            raw = data[begin:end] if aligned else _aligned_read(f, 8 + n + begin, end - begin)
            tensors[name] = raw.view(dtype).reshape(shape)
    return tensors, dict(metadata)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` atomically (temporary file in the same folder, then ``os.replace``)."""
    path = os.fspath(path)
    arrays = {k: np.asarray(v, order="C") for k, v in sorted(tensors.items())}  # (ascontiguousarray makes 0-d 1-d)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, a in arrays.items():
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if np.dtype(dt) not in _NAMES:
            raise TypeError(f"cannot store tensor {name!r} of dtype {a.dtype} in safetensors")
        arrays[name] = a.astype(dt, copy=False)
        header[name] = {"dtype": _NAMES[np.dtype(dt)], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays.values():
            f.write(a.tobytes())
