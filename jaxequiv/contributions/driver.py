"""Dataset driver: stream a data set through the contributions kernel into an on-disk :class:`Store`.

Each chunk of ``chunk_size`` examples runs the kernel and the reductions in one jitted call on the device;
only ``(chunk, C)`` arrays per site come back to the host, so memory is bounded by the chunk size whatever N is.
The last chunk is padded (by repeating its last example) so every chunk has one compiled shape.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv.contributions import methods as _methods
from jaxequiv.contributions import targets as _targets
from jaxequiv.contributions.reduce import VARIANTS, check_variants, reduce_site, spatial_sum
from jaxequiv.contributions.store import Store, StoreWriter
from jaxequiv.io.progress import progress_bar
from jaxequiv.network import Network

__all__ = ["build_store"]


@functools.partial(jax.jit, static_argnames=("static", "infos", "variants"))
def _chunk(net, x, baseline, target, *, static, infos, variants):
    """Kernel + reductions for one chunk: ``({site: {variant: [B, C]}}, {site: [B, C]}, predictions [B])``."""
    values, acts, y = _methods._kernel(net, x, baseline, target, **dict(static))
    reduced = {n: reduce_site(values[n], info, variants) for n, info in infos}
    act_sums = {n: spatial_sum(acts[n], info) for n, info in infos}
    return reduced, act_sums, jnp.argmax(y, axis=-1)


def build_store(
    net: Network,
    inputs,
    root,
    sites: str | Iterable[str],
    *,
    labels=None,
    method: str = "ig",
    target=None,
    steps: int = 10,
    baseline=None,
    variants: Iterable[str] = VARIANTS,
    chunk_size: int = 64,
    step_chunk: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
) -> Store:
    """Compute reduced contributions for a whole data set and write them to ``root`` (see :mod:`.store`).

    Args:
      net: the model.
      inputs: ``[N, *net.input_shape]`` array-like supporting row slices (NumPy array, ``np.memmap``, ...);
        only one chunk is read at a time.
      root: store folder (built in ``root + ".partial"``; an interrupted build with the same settings resumes).
      sites: site names or patterns.
      labels: ``[N]`` ints stored alongside (``-1`` if omitted).
      method, target, steps, step_chunk: as in :func:`jaxequiv.contributions.contributions`; a target with
        one class per example takes ``[N]`` classes.
      baseline: one input ``[*net.input_shape]`` shared by all examples; default zeros.
      variants: subset of ``("positive", "negative", "sum", "concat")``; activations are always stored.
      chunk_size: examples per kernel call (memory ~ chunk_size x step_chunk x network activations).
      overwrite: replace a finished store at ``root``.
      progress: show a progress bar (see :func:`jaxequiv.io.progress_bar`).
      info: extra JSON-able facts recorded in ``meta.json`` (model name, data set, ...).

    Returns:
      The finished :class:`Store`.

    Raises:
      ValueError: bad arguments, or NaN/Inf contributions (naming the site and the example); the unfinished
        build stays in ``root + ".partial"`` and ``root`` is not created.
    """
    shape = tuple(np.shape(inputs))
    n = shape[0] if shape else 0
    if n < 1:
        raise ValueError(f"inputs must be an array-like [N, {net.input_shape}] with N >= 1, got shape {shape}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    chunk_size = int(min(chunk_size, n))
    variants = check_variants(variants)
    if labels is None:
        labels = np.full(n, -1, np.int64)
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be {n} integers (one per input), got {labels.dtype} of shape {labels.shape}")
    if baseline is not None and np.shape(baseline) != shape[1:]:
        raise ValueError(
            f"baseline of shape {np.shape(baseline)} does not fit inputs {shape}: the driver takes one "
            f"input {shape[1:]} shared by all examples"
        )
    full_target = _targets.resolve("top1" if target is None else target)
    if full_target.per_example and np.shape(full_target.classes)[0] != n:
        raise ValueError(f"the target holds {np.shape(full_target.classes)[0]} class indices for {n} inputs")

    template = np.zeros((chunk_size, *shape[1:]), getattr(inputs, "dtype", np.float32))
    x0, b0, _, infos, static = _methods.prepare(
        net, template, sites, method, full_target.rows(np.arange(chunk_size)), "target", steps, baseline, step_chunk
    )
    if full_target.per_example:
        full_target.check(n, int(jax.eval_shape(net.apply, net.params, x0).shape[-1]))
    site_meta = {
        s: {"channels": i.channels, "axes": list(i.axes), "shape": list(i.shape[1:])} for s, i in infos.items()
    }
    config = {
        "method": method,
        "target": full_target.kind,
        "steps": static["steps"] if method == "ig" else None,
        "baseline": "zeros" if baseline is None else "given",
        "input_shape": list(shape[1:]),
        "info": dict(info or {}),
    }
    writer = StoreWriter(root, n, chunk_size, site_meta, variants, config, overwrite=overwrite)
    todo = [i for i in range(writer.meta["n_chunks"]) if i not in writer.finished]
    bar = progress_bar(writer.meta["n_chunks"], initial=writer.meta["n_chunks"] - len(todo), desc="contributions",
                       unit="chunk", enabled=progress)
    kw = dict(static=tuple(sorted(static.items())), infos=tuple(infos.items()), variants=variants)
    try:
        for i in todo:
            lo, hi = writer.chunk_rows(i)
            idx = np.minimum(np.arange(lo, lo + chunk_size), hi - 1)  # pad by repeating the last row
            x = np.asarray(inputs[lo:hi])
            if hi - lo < chunk_size:
                x = x[idx - lo]
            net.check_input(x)
            reduced, acts, pred = _chunk(net, jnp.asarray(x, x0.dtype), b0, full_target.rows(idx), **kw)
            rows = hi - lo
            reduced = {s: {v: np.asarray(a)[:rows] for v, a in d.items()} for s, d in reduced.items()}
            _methods.check_finite({s: np.concatenate(list(d.values()), axis=1) for s, d in reduced.items()}, lo)
            for s, a in acts.items():
                reduced[s]["activations"] = np.asarray(a)[:rows]
            writer.write_chunk(i, reduced, labels[lo:hi], np.asarray(pred)[:rows])
            bar.update(1)
    finally:
        bar.close()
    return writer.finish()
