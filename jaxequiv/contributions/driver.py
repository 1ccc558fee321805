"""Dataset driver: stream a data set through the contributions kernel into an on-disk :class:`Store`.

Each chunk of ``chunk_size`` examples runs the kernel and the reductions in one jitted call on the device;
only ``(chunk, C)`` arrays per site come back to the host, so memory is bounded by the chunk size whatever N is.
The last chunk is padded (by repeating its last example) so every chunk has one compiled shape.

On a mesh, each chunk is split over the axis ``data``, across every device of every process: each process
reads only its own rows of the chunk (:func:`jaxequiv.distributed.local_rows`), each device computes its own
examples with no communication, and each process writes its own rows of the store (see :mod:`.store`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxequiv.contributions import methods as _methods
from jaxequiv.contributions import targets as _targets
from jaxequiv.contributions.reduce import VARIANTS, check_variants, reduce_site, reduced_channels, spatial_sum
from jaxequiv.contributions.store import Store, StoreWriter, all_processes, fingerprint, rows_digest
from jaxequiv.distributed import DATA, global_array, is_writer, local_array, local_rows, replicate, shard
from jaxequiv.io.progress import progress_bar
from jaxequiv.network import Network

__all__ = ["build_store"]


@functools.partial(jax.jit, static_argnames=("config", "plan", "variants", "mesh"))
def _chunk(net, x, baseline, target, args, key, rows, mask, *, config, plan, variants, mesh):
    """Kernel + reductions for one chunk: ``({site: {variant: [B, C]}}, {site: [B, C]}, predictions [B])``.

    ``plan``: ``((site, SiteInfo, axes kept as channels or None), ...)``; ``rows``: ``[B]`` the examples' rows
    in the data set (``smoothgrad`` draws from ``fold_in(key, row)``). With a ``mesh``, every array but the
    model and the key is split over ``data`` and each device computes its own examples.
    """
    def local(net, x, baseline, target, args, key, rows, mask):
        keys = None if key is None else _methods.example_keys(key, rows)
        values, acts, y, _ = _methods.kernel(net, x, baseline, target, config, args, keys)
        reduced = {n: reduce_site(values[n], info, variants, keep=keep, mask=mask) for n, info, keep in plan}
        act_sums = {n: spatial_sum(acts[n], info, keep=keep, mask=mask) for n, info, keep in plan}
        return reduced, act_sums, jnp.argmax(target.select(y), axis=-1)

    if mesh is not None:
        local = jax.shard_map(local, mesh=mesh, in_specs=_methods.batch_specs(target) + (P(DATA),),
                              out_specs=P(DATA), check_vma=False)  # per-example work: nothing crosses devices
    return local(net, x, baseline, target, args, key, rows, mask)


def _read(a, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, repeats allowed) of an array-like, reading each contiguous run of them once."""
    unique = np.unique(rows)
    runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)
    return np.concatenate([np.asarray(a[r[0]: r[-1] + 1]) for r in runs])[np.searchsorted(unique, rows)]


def build_store(
    net: Network,
    inputs: ArrayLike,
    root: str | os.PathLike,
    sites: str | Iterable[str],
    *,
    labels: ArrayLike | None = None,
    method: str = "ig",
    target: Any = None,
    steps: int = 10,
    baseline: ArrayLike | None = None,
    variants: Iterable[str] = VARIANTS,
    chunk_size: int = 64,
    step_chunk: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
    rule: str = "trapezoid",
    output: Any = None,
    args: Sequence[ArrayLike] = (),
    input_site: str | None = None,
    sigma: float = _methods.DEFAULT_SIGMA,
    key: Any = None,
    mask: ArrayLike | None = None,
    per_head: bool = False,
    mesh: Mesh | None = None,
) -> Store:
    """Compute reduced contributions for a whole data set and write them to ``root`` (see :mod:`.store`).

    Args:
      net: the model.
      inputs: ``[N, *net.input_shape]`` array-like supporting row slices (NumPy array, ``np.memmap``, ...);
        only one chunk is read at a time.
      root: store folder (built in ``root + ".partial"``; an interrupted build with the same settings and the
        same inputs, labels and model resumes; changed ones are refused).
      sites: site names or patterns.
      labels: ``[N]`` ints stored alongside (``-1`` if omitted).
      method, target, steps, step_chunk, rule, output, input_site, sigma, key: as in
        :func:`jaxequiv.contributions.contributions`; a target with per-example arrays (class indices,
        positions) takes ``N`` of them; ``smoothgrad`` draws example ``i``'s noise from ``fold_in(key, i)``.
      baseline: one ``[*space]`` shared by all examples; default zeros.
      variants: subset of ``("positive", "negative", "sum", "concat")``; activations are always stored.
      chunk_size: examples per kernel call (memory ~ chunk_size x step_chunk x network activations).
      overwrite: replace a finished store at ``root``.
      progress: show a progress bar (see :func:`jaxequiv.io.progress_bar`).
      info: extra JSON-able facts recorded in ``meta.json`` (model name, data set, ...).
      args: further network inputs ``[N, ...]`` (e.g. attention masks), read chunk by chunk with ``inputs``.
      mask: ``[N, T]`` token mask (1 real, 0 padding): padded positions are left out of the reductions.
      per_head: reduce sites with a ``head`` axis to one value per head (``C = H``).
      mesh: split each chunk over the mesh axis ``data`` (``chunk_size`` must be a multiple of its size), across
        the devices of every process: each process reads and writes only its rows of each chunk (``root`` must
        be on a file system they share), process 0 alone shows progress and publishes the store. Every process
        calls ``build_store`` with the same arguments. The store equals a one-device build: bitwise when the
        examples per device are the same, else to float32 rounding.

    Returns:
      The finished :class:`Store` (on every process).

    Raises:
      ValueError: bad arguments, NaN/Inf contributions (naming the site and the example), or a resume whose
        inputs, labels or model differ from the unfinished build's; the unfinished build stays in
        ``root + ".partial"`` and ``root`` is not created.
      OSError: not enough disk space for the store (raised before any work).
    """
    shape = tuple(np.shape(inputs))
    n = shape[0] if shape else 0
    if n < 1:
        raise ValueError(f"inputs must be an array-like [N, {net.input_shape}] with N >= 1, got shape {shape}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    d = 1 if mesh is None else mesh.shape[DATA]
    chunk_size = int(min(chunk_size, -(-n // d) * d))
    if chunk_size % d:
        raise ValueError(f"chunk_size {chunk_size} must be a multiple of the {d} devices of the mesh axis 'data' "
                         "(each device computes an equal share of a chunk)")
    variants = check_variants(variants)
    if labels is None:
        labels = np.full(n, -1, np.int64)
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be {n} integers (one per input), got {labels.dtype} of shape {labels.shape}")
    for i, a in enumerate(args):
        if np.shape(a)[:1] != (n,):
            raise ValueError(f"args[{i}] has shape {np.shape(a)}; every further input needs {n} rows")
    if mask is not None and np.shape(mask)[:1] != (n,):
        raise ValueError(f"mask has shape {np.shape(mask)}; it needs {n} rows [N, T]")
    if baseline is not None and method == "ig" and input_site is None and np.shape(baseline) != shape[1:]:
        raise ValueError(
            f"baseline of shape {np.shape(baseline)} does not fit inputs {shape}: the driver takes one "
            f"input {shape[1:]} shared by all examples"
        )
    full_target = _targets.resolve("top1" if target is None else target)
    if full_target.every_position:
        raise ValueError("a store holds one row per example: an every-position target (at_position(..., 'all')) "
                         "does not fit it; use contributions() for per-position values")
    if full_target.per_example and full_target.batch_size != n:
        raise ValueError(f"the target holds {full_target.batch_size} class indices for {n} inputs")

    first = np.arange(chunk_size)
    def template(a):  # shapes and dtypes only: prepare traces, it does not compute
        return np.zeros((chunk_size, *np.shape(a)[1:]), getattr(a, "dtype", np.float32))

    args0 = tuple(template(a) for a in args)
    prep = _methods.prepare(
        net, template(inputs), sites, method, full_target.rows(first), "target", steps, baseline, step_chunk, rule=rule,
        output=output, args=args0, input_site=input_site, sigma=sigma, key=key)
    x0, b0, infos, config, key = prep.x, prep.baseline, prep.infos, prep.config, prep.key
    if full_target.per_example:
        full_target.check((n,) + prep.output_shape[1:])
    plan = tuple((s, i, ("head",) if per_head and "head" in i.axes else None) for s, i in infos.items())
    site_meta = {
        s: {"channels": reduced_channels(i, keep), "axes": list(i.axes), "shape": list(i.shape[1:]),
            "reduce": "head" if keep else "spatial"}
        for s, i, keep in plan
    }
    config_meta = {
        "method": method,
        "target": full_target.kind,
        "steps": config.steps if method in ("ig", "smoothgrad") else None,
        "rule": rule if method == "ig" else None,
        "baseline": "zeros" if baseline is None else "given",
        "input_shape": list(shape[1:]),
        "input_site": input_site,
        "sigma": config.sigma if method == "smoothgrad" else None,
        "info": dict(info or {}),
    }
    fingerprints = {
        "model": fingerprint(net.params),
        "labels": fingerprint(labels),
        "target": fingerprint(full_target),
        "baseline": fingerprint(b0[0]),
        "mask": fingerprint(mask),
        "key": fingerprint(None if key is None else jax.random.key_data(key)),
    }
    writer = StoreWriter(root, n, chunk_size, site_meta, variants, config_meta, overwrite=overwrite,
                         fingerprints=fingerprints)

    own = np.arange(chunk_size) if mesh is None else local_rows(chunk_size, mesh)  # this process's share

    def place(a):  # this process's rows of a chunk -> the chunk's array
        return jnp.asarray(a) if mesh is None else global_array(a, mesh, n=chunk_size)

    def read(i):
        """Chunk ``i``'s rows (padded by repeating its last), this process's: (rows, real rows, x, further)."""
        lo, hi = writer.chunk_rows(i)
        idx = np.minimum(lo + own, hi - 1)
        return idx, (lo + own)[lo + own < hi], _read(inputs, idx), tuple(_read(a, idx) for a in args)

    def digest(rows, x, extra):
        return rows_digest(rows, x[: len(rows)], *(a[: len(rows)] for a in extra))

    # A resume re-reads the rows it already holds and checks their content (each process hashes its own).
    done = sorted(writer.finished)
    if done:
        mine = np.stack([digest(*read(i)[1:]) for i in done])
        total = all_processes(mine, "jaxequiv.store.resume").sum(0, dtype=np.uint64) % 2**32
        for i, sums in zip(done, total.astype(np.uint32)):
            writer.check_chunk_inputs(i, sums.tobytes().hex())
    todo = [i for i in range(writer.meta["n_chunks"]) if i not in writer.finished]
    bar = progress_bar(writer.meta["n_chunks"], initial=writer.meta["n_chunks"] - len(todo), desc="contributions",
                       unit="chunk", enabled=progress and is_writer())
    kw = dict(config=config, plan=plan, variants=variants, mesh=mesh)
    if mesh is not None:
        net, b0 = replicate(net, mesh), shard(b0, mesh)
    try:
        for i in todo:
            lo, hi = writer.chunk_rows(i)
            idx, real, x, extra = read(i)
            net.check_input(x)
            chunk_target = full_target.rows(np.minimum(np.arange(lo, lo + chunk_size), hi - 1))
            if mesh is not None:
                chunk_target = _methods.place_target(chunk_target, mesh)
            reduced, acts, pred = _chunk(
                net, place(np.asarray(x, x0.dtype)), b0, chunk_target, tuple(place(a) for a in extra), key,
                place(idx.astype(np.int32)), None if mask is None else place(_read(mask, idx)), **kw)
            k = len(real)
            reduced = {s: {v: local_array(a)[:k] for v, a in d.items()} for s, d in reduced.items()}
            bad = _methods.first_nonfinite({s: np.concatenate(list(d.values()), axis=1) for s, d in reduced.items()},
                                           real)
            for s, a in acts.items():
                reduced[s]["activations"] = local_array(a)[:k]
            writer.write_rows(real, reduced, labels[real], local_array(pred)[:k])
            # after every process has written its rows: one exchange of NaN reports and input digests
            status = np.concatenate([[bad is not None], bad or (0, 0, 0), digest(real, x, extra)]).astype(np.uint32)
            every = all_processes(status, f"jaxequiv.store.chunk{i}")
            if every[:, 0].any():
                site = every[every[:, 0] == 1, 1].min()
                at = every[(every[:, 0] == 1) & (every[:, 1] == site)]
                raise _methods.nonfinite_error(plan[int(site)][0], int(at[:, 2].min()), int(at[:, 3].sum()))
            writer.record(i, (every[:, 4:].sum(0, dtype=np.uint64) % 2**32).astype(np.uint32).tobytes().hex())
            bar.update(1)
    finally:
        bar.close()
    return writer.finish()
