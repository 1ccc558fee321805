"""On-disk store of reduced contributions: memory-mappable ``.npy`` arrays, written chunk by chunk, resumable.

Layout of a finished store ``<root>/``::

    meta.json                      format, n, sites (axes, per-example shape, channels), variants, config,
                                   chunk_size, finished chunks
    labels.npy                     int64 (N,)   ground-truth labels, -1 where unknown
    predictions.npy                int64 (N,)   argmax of the outputs at the real input
    <site>/<variant>.npy           float32 (N, C) for positive / negative / sum; (N, 2C) for concat
    <site>/activations.npy         float32 (N, C) spatially summed activations at the real input

A store is built in ``<root>.partial/``: every file is pre-allocated on disk (``posix_fallocate``: a full disk
is an error before any work, never a crash mid-run), each finished chunk is flushed and then recorded in
``meta.json`` (written to a temporary file and ``os.replace``-d), and the folder is renamed to ``<root>`` only
once every chunk is done. A half-written store therefore never sits at ``<root>``, and an interrupted run
resumes from the chunks ``meta.json`` lists, after checking that its inputs are the same by content: the
fingerprints of the model, labels, target and baseline, and of the input rows of every finished chunk.

Several processes (``jax.distributed``) build one store in a folder they share (a local disk, NFS, Lustre,
GPFS: any file system where writers of disjoint byte ranges of one file do not disturb each other): process 0
creates the files and ``meta.json``; each process writes its own rows of every chunk into them (``pwrite``,
not a shared memory map, so no page is written by two hosts) and flushes them; after a :func:`barrier` process
0 records the chunk and, at the end, publishes the folder. The input digest of a chunk (:func:`rows_digest`) is
a sum over its rows, so each process hashes only the rows it read, and a resume may use another number of
processes or devices.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxequiv.distributed import barrier, is_writer
from jaxequiv.io.arrays import read_npy
from jaxequiv.io.files import publish, write_json

__all__ = ["FORMAT", "Store", "open_store", "StoreWriter", "PARTIAL_SUFFIX", "fingerprint", "rows_digest",
           "all_processes"]

FORMAT = "jaxequiv.contributions/1"
PARTIAL_SUFFIX = ".partial"
_DAMAGED = "the store is damaged: build it again (jaxequiv contributions ... --overwrite)"
ACTIVATIONS = "activations"


def _write_json(path: str, obj: Any) -> None:
    write_json(path, obj, indent=1, sort_keys=True)


def fingerprint(tree: Any) -> str:
    """Content hash (hex) of a pytree of arrays (``None`` allowed): leaf paths, dtypes, shapes and bytes.

    Static parts of a pytree (e.g. a target's kind) are not hashed; record them in the config.
    """
    h = hashlib.blake2b(digest_size=16)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def rows_digest(rows, *arrays) -> np.ndarray:
    """Content hash of some rows of a data set: ``uint32 [4]``, the sum (mod 2**32, per word) of one 128-bit
    hash per row of its index and of its bytes, dtype and shape in each of ``arrays`` (each ``[len(rows), ...]``).

    Being a sum, the digests of disjoint sets of rows add up to the digest of their union, whatever the order:
    processes that each hash their own rows of a chunk agree on the chunk's digest (see :func:`all_processes`).
    """
    total = np.zeros(4, np.uint64)
    for k, row in enumerate(np.asarray(rows, np.int64)):
        h = hashlib.blake2b(str(int(row)).encode(), digest_size=16)
        for a in arrays:
            r = np.ascontiguousarray(np.asarray(a[k]))
            h.update(f"|{r.dtype.str}|{r.shape}|".encode())
            h.update(r.reshape(-1).view(np.uint8))
        total += np.frombuffer(h.digest(), np.uint32)
    return (total % 2**32).astype(np.uint32)


_BARRIER_S = 600.0  # how long a process waits for the others (a slow chunk, a large allocation)


def all_processes(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` (a small array, the same shape everywhere) of every process, stacked in process order ``[P, ...]``.

    Every process calls it at the same point; ``name`` names the :func:`barrier` passed first, so that a process
    that never comes makes the others fail (:class:`~jaxequiv.distributed.BarrierTimeout`), not wait forever.
    """
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    barrier(name, _BARRIER_S)
    return np.asarray(multihost_utils.process_allgather(x))
_DISK_FULL = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))


def _preallocate(path: str) -> None:
    """Reserve the disk blocks of a (sparse) file now, so that writing it later cannot hit a full disk."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:  # not on this platform (macOS): the file stays sparse
        return
    with open(path, "r+b") as f:
        try:
            allocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate
                return
            raise


def _check_site_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"site name {name!r} cannot be a folder name in a store")


class Store:
    """A finished contributions store, opened read-only (see :func:`open_store`)."""

    def __init__(self, root: str, meta: Mapping[str, Any]):
        self.root = root
        self.meta = dict(meta)

    @property
    def sites(self) -> list[str]:
        """Site names in forward order."""
        return list(self.meta["site_order"])

    @property
    def variants(self) -> list[str]:
        """Arrays stored per site: the contribution variants plus ``"activations"``."""
        return list(self.meta["variants"]) + [ACTIVATIONS]

    @property
    def n(self) -> int:
        """Number of examples N."""
        return int(self.meta["n"])

    def array(self, site: str, variant: str = "positive") -> np.memmap:
        """Read-only memory map ``[N, C]`` (``[N, 2C]`` for ``concat``) of one site and variant."""
        if site not in self.meta["sites"]:
            raise KeyError(f"store {self.root!r} has no site {site!r}; it has {self.sites}")
        if variant not in self.variants:
            raise KeyError(f"store {self.root!r} has no variant {variant!r}; it has {self.variants}")
        return self._read(os.path.join(site, variant + ".npy"))

    @property
    def labels(self) -> np.memmap:
        """``int64 [N]`` labels (-1 where none were given)."""
        return self._read("labels.npy")

    @property
    def predictions(self) -> np.memmap:
        """``int64 [N]`` predicted classes at the real input."""
        return self._read("predictions.npy")

    def _read(self, name: str) -> np.memmap:
        return read_npy(os.path.join(self.root, name), mmap_mode="r", hint=_DAMAGED)

    def __repr__(self) -> str:
        return f"Store({self.root!r}, n={self.n}, sites={self.sites}, variants={self.variants})"


def open_store(path: str | os.PathLike) -> Store:
    """Open a finished store written by :func:`jaxequiv.contributions.build_store`.

    Raises:
      FileNotFoundError: nothing at ``path`` (the message says if an unfinished ``.partial`` build exists).
      ValueError: ``path`` is not a contributions store.
    """
    root = os.fspath(path).rstrip("/")
    meta_path = os.path.join(root, "meta.json")
    if not os.path.exists(meta_path):
        hint = ""
        if os.path.exists(root + PARTIAL_SUFFIX):
            hint = f"; an unfinished build exists at {root + PARTIAL_SUFFIX!r}: run the same build again to resume it"
        raise FileNotFoundError(f"no contributions store at {root!r} (no meta.json){hint}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path} is truncated or corrupt ({e}); {_DAMAGED}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not meta.get("complete"):
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{root!r} is not a finished contributions store (format {found!r})")
    return Store(root, meta)


class StoreWriter:
    """Creates or resumes ``<root>.partial``, writes chunks, and publishes ``<root>`` when all are done.

    Every process of a multi-process run makes one, with the same arguments: process 0 creates (or finds) the
    files and keeps ``meta.json``; each process writes its own rows (:meth:`write_rows`) and then all record the
    chunk together (:meth:`record`).

    Args:
      root: final store folder.
      n: number of examples.
      chunk_size: examples per chunk (chunk ``i`` covers rows ``i*chunk_size`` up to ``n``).
      sites: ``{site: {"channels": C, "axes": [...], "shape": [...]}}`` in forward order.
      variants: contribution variants to store.
      config: everything that determines the values (method, target, steps, model, ...); a resume
        must present the same config.
      overwrite: replace an existing finished store at ``root`` once the new one is complete.
      fingerprints: ``{name: content hash}`` of what the values depend on besides ``config`` (model params,
        labels, ...; see :func:`fingerprint`); a resume must present the same.

    Raises:
      OSError: not enough disk space for the store (nothing is left behind).
    """

    def __init__(self, root, n: int, chunk_size: int, sites: Mapping[str, Mapping[str, Any]],
                 variants, config: Mapping[str, Any], overwrite: bool = False,
                 fingerprints: Mapping[str, str] | None = None):
        self.root = os.fspath(root).rstrip("/")
        self.partial = self.root + PARTIAL_SUFFIX
        if os.path.exists(self.root) and not overwrite:
            raise FileExistsError(f"{self.root!r} already exists; open it with open_store or pass overwrite=True")
        for s in sites:
            _check_site_name(s)
        self.overwrite = overwrite
        self.meta = {
            "format": FORMAT,
            "n": int(n),
            "chunk_size": int(chunk_size),
            "n_chunks": -(-int(n) // int(chunk_size)),
            "site_order": list(sites),
            "sites": {k: dict(v) for k, v in sites.items()},
            "variants": list(variants),
            "config": json.loads(json.dumps(dict(config))),
            "fingerprints": dict(fingerprints or {}),
            "chunk_inputs": {},
            "finished_chunks": [],
            "complete": False,
        }
        meta_path = os.path.join(self.partial, "meta.json")
        resume = os.path.exists(meta_path)
        if resume:  # every process checks (and fails) alike
            self._resume(meta_path)
        barrier("jaxequiv.store.found", _BARRIER_S)  # all have looked before process 0 creates
        if not resume and is_writer():
            self._create()
        barrier("jaxequiv.store.created", _BARRIER_S)
        self._offsets = {path: np.load(path, mmap_mode="r").offset for path, _, _ in self._files()}

    def _files(self):
        for s, info in self.meta["sites"].items():
            for v in self.meta["variants"] + [ACTIVATIONS]:
                width = 2 * info["channels"] if v == "concat" else info["channels"]
                yield os.path.join(self.partial, s, v + ".npy"), np.float32, (self.meta["n"], width)
        for name in ("labels", "predictions"):
            yield os.path.join(self.partial, name + ".npy"), np.int64, (self.meta["n"],)

    def _create(self) -> None:
        if os.path.exists(self.partial):
            shutil.rmtree(self.partial)  # a build that died before writing its meta.json holds nothing
        files = list(self._files())
        try:
            for path, dtype, shape in files:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
                _preallocate(path)
            _write_json(os.path.join(self.partial, "meta.json"), self.meta)
        except OSError as e:
            shutil.rmtree(self.partial, ignore_errors=True)
            if e.errno not in _DISK_FULL:
                raise
            need = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, dtype, shape in files)
            raise OSError(
                e.errno,
                f"not enough disk space for the contributions store at {self.partial!r}: it needs "
                f"{need / 2**20:.1f} MiB ({self.meta['n']} examples x {len(files)} arrays); free some space or "
                f"write it elsewhere ({e.strerror or e})",
            ) from None

    def _resume(self, meta_path: str) -> None:
        with open(meta_path) as f:
            old = json.load(f)
        keys = ("format", "n", "chunk_size", "site_order", "sites", "variants", "config")
        diff = [k for k in keys if old.get(k) != self.meta[k]]
        if diff:
            raise ValueError(
                f"cannot resume {self.partial!r}: it was started with different {diff} "
                f"(there: {[old.get(k) for k in diff]}; now: {[self.meta[k] for k in diff]}). "
                "Run with the original settings, or delete that folder to start over."
            )
        there = old.get("fingerprints", {})
        changed = sorted(k for k in set(there) | set(self.meta["fingerprints"])
                         if there.get(k) != self.meta["fingerprints"].get(k))
        if changed:
            raise ValueError(
                f"cannot resume {self.partial!r}: its {', '.join(changed)} differ by content from this run's "
                "(fingerprints in its meta.json). Run with the original ones, or delete that folder to start over."
            )
        self.meta["finished_chunks"] = sorted(old["finished_chunks"])
        self.meta["chunk_inputs"] = dict(old.get("chunk_inputs", {}))

    def check_chunk_inputs(self, i: int, digest: str) -> None:
        """On resume: raise ``ValueError`` unless the finished chunk ``i`` was computed from inputs whose
        digest (:func:`rows_digest` of all its rows, hex) is ``digest``."""
        there = self.meta["chunk_inputs"].get(str(i))
        if there != digest:
            lo, hi = self.chunk_rows(i)
            raise ValueError(
                f"cannot resume {self.partial!r}: the inputs of rows {lo}..{hi - 1} differ by content from those "
                "its finished chunks were computed from; the data changed since that build started. Restore the "
                "original data, or delete that folder to start over."
            )

    @property
    def finished(self) -> set[int]:
        return set(self.meta["finished_chunks"])

    def chunk_rows(self, i: int) -> tuple[int, int]:
        lo = i * self.meta["chunk_size"]
        return lo, min(lo + self.meta["chunk_size"], self.meta["n"])

    def write_rows(self, rows: np.ndarray, arrays: Mapping[str, Mapping[str, np.ndarray]], labels,
                   predictions) -> None:
        """Write some rows (sorted global indices, e.g. this process's of a chunk) and flush them to disk:
        ``arrays[site][variant]`` of shape ``[len(rows), width]``, ``labels`` and ``predictions`` ``[len(rows)]``."""
        rows = np.asarray(rows, np.int64)
        runs = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(rows) != 1) + 1) if len(rows) else []
        for path, dtype, shape in self._files():
            rel = os.path.relpath(path, self.partial)[: -len(".npy")]
            head, _, tail = rel.rpartition(os.sep)
            block = {"labels": labels, "predictions": predictions}[tail] if not head else arrays[head][tail]
            block = np.ascontiguousarray(block, dtype)
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
            fd = os.open(path, os.O_WRONLY)
            try:
                for run in runs:
                    data = memoryview(block[run].reshape(-1).view(np.uint8))
                    offset = self._offsets[path] + int(rows[run[0]]) * row_bytes
                    while data:  # pwrite may write less than asked
                        done = os.pwrite(fd, data, offset)
                        data, offset = data[done:], offset + done
                os.fsync(fd)
            finally:
                os.close(fd)

    def record(self, i: int, inputs_digest: str = "") -> None:
        """Record chunk ``i`` as done (its rows written by every process), computed from inputs whose digest is
        ``inputs_digest``; process 0 writes it to ``meta.json``. Call it on every process, after the writes."""
        self.meta["chunk_inputs"][str(i)] = inputs_digest
        self.meta["finished_chunks"] = sorted(self.finished | {i})
        if is_writer():
            _write_json(os.path.join(self.partial, "meta.json"), self.meta)

    def finish(self) -> Store:
        """Publish the store at ``root`` (all chunks must be recorded); every process opens it."""
        missing = sorted(set(range(self.meta["n_chunks"])) - self.finished)
        if missing:
            raise RuntimeError(f"cannot finish {self.partial!r}: chunks {missing[:10]} are not written")
        self.meta["complete"] = True
        if is_writer():
            _write_json(os.path.join(self.partial, "meta.json"), self.meta)
            publish(self.partial, self.root, overwrite=self.overwrite, marker="meta.json")
        barrier("jaxequiv.store.published", _BARRIER_S)
        return open_store(self.root)
