"""Functions the multi-process tests run in each worker (jaxequiv.testing.multiprocess.run_workers).

Module level, and no JAX work at import time: the workers import this module after jax.distributed is up.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxequiv import distributed as dist
from jaxequiv.testing.multiprocess import milestone


def data(n: int, d: int = 3) -> np.ndarray:
    """The data set every test splits: (n, d) float32, the same in every process."""
    return np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)


def _gram(x):
    return x.T @ x  # (d, d): a sum over rows, i.e. a reduction across the data axis


_gram_jit = jax.jit(_gram)


def _psum_rows(x):
    return jax.lax.psum(jnp.sum(x, axis=0), dist.DATA)


def placement(n: int, big: int) -> dict:
    """Each process reads only its rows; kernels over the global array; results fetched to every process."""
    parser = argparse.ArgumentParser()
    dist.add_distributed_args(parser)
    flagged = dist.from_args(parser.parse_args(["--mesh", "data=2,stack=-1"]))  # joins the run already up
    try:
        dist.initialize(num_processes=3)
        mismatch = ""
    except ValueError as e:
        mismatch = str(e)
    m = dist.make_mesh()
    x = data(n)
    rows = dist.local_rows(n, m)
    g = dist.global_array(x[rows], m, n=n)  # this process's rows only
    summed = jax.shard_map(_psum_rows, mesh=m, in_specs=P(dist.DATA), out_specs=P())
    # gloo's reduce-scatter of multi-MiB chunks (jax-ml/jax#40830): a (4, big) float32 psum_scatter
    y = np.random.default_rng(1).normal(size=(m.shape[dist.DATA], big)).astype(np.float32)
    scatter = jax.shard_map(lambda v: jax.lax.psum_scatter(v[0], dist.DATA, tiled=True)[None], mesh=m,
                            in_specs=P(dist.DATA), out_specs=P(dist.DATA))
    compiled = _gram_jit.lower(g).compile()
    return {
        "again": dist.initialize(), "mismatch": mismatch, "flagged": dict(flagged.shape),
        "process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
        "local_devices": jax.local_device_count(), "writer": dist.is_writer(), "rows": rows,
        "local": dist.local_array(g), "local_gram": dist.local_array(_gram_jit(g)),
        "addressable_rows": sorted(int(s.index[0].start) for s in g.addressable_shards),
        "sum": dist.fetch_global(jax.jit(jnp.sum)(g)), "gram": dist.fetch_global(_gram_jit(g)),
        "psum": dist.fetch_global(jax.jit(summed)(g)), "fetched": dist.fetch_global(g),
        "shard_equals_global": bool(np.array_equal(dist.fetch_global(dist.shard(x, m)), x)),
        "replicated": dist.fetch_global(dist.replicate({"w": np.arange(3.0)}, m)),
        "scatter": dist.fetch_global(jax.jit(scatter)(dist.shard(y, m))).reshape(-1), "scatter_ref": y.sum(0),
        "collectives": [(c.op, c.axes) for c in dist.collectives(compiled, m)],
        "gather_collectives": [(c.op, c.axes) for c in dist.collectives(jax.jit(
            lambda v: v @ v.T).lower(g).compile(), m)],
    }


def barrier_with_a_late_process(timeout_s: float, late_s: float) -> dict:
    """Process 0 waits at a barrier that process 1 reaches only after late_s."""
    dist.barrier("start", timeout_s=30)
    t0 = time.monotonic()
    if jax.process_index() == 1:
        time.sleep(late_s)
    try:
        dist.barrier("late", timeout_s=timeout_s)
        outcome = "passed"
    except dist.BarrierTimeout as e:
        outcome = str(e)
    return {"outcome": outcome, "waited": time.monotonic() - t0}


def hang_in(process: int) -> None:
    """Process `process` never returns."""
    if jax.process_index() == process:
        milestone("hanging")
        time.sleep(3600)


def fail_in(process: int) -> None:
    if jax.process_index() == process:
        raise RuntimeError(f"deliberate failure in process {process}")
    time.sleep(3600)  # the other waits forever: the harness must stop it


def count_steps(steps: int, folder: str) -> int:
    """Write one file per step and process, reporting each as a milestone; resumes from the files present."""
    from pathlib import Path

    done = 0
    for step in range(steps):
        path = Path(folder) / f"step{step}.{jax.process_index()}"
        if not path.exists():
            path.write_text("done")
            done += 1
        milestone(f"step{step}")
    return done


# --- engines ------------------------------------------------------------------------------------------------


class Rows:
    """Array-like over ``x`` that records the row slices read, reporting each as a milestone ``read<start>``."""

    def __init__(self, x):
        self.x, self.reads = x, []
        self.shape, self.dtype = x.shape, x.dtype

    def __getitem__(self, s):
        milestone(f"read{s.start}")
        self.reads.append((s.start, s.stop))
        return self.x[s]


def store_job(kind: str):
    """``(net, inputs, sites, keyword arguments)`` of a small store build, the same in every process.

    ``"cnn"``: a convolutional net, smoothgrad (per-example keys) toward given classes (a per-example target),
    10 examples in chunks of 4 (the last one padded). ``"lm"``: a one-layer transformer, ig from the embeddings
    with an attention mask (a further input and the token mask), the last real position's top class, per head.
    """
    from flax import nnx

    from jaxequiv import Network, site
    from jaxequiv.contributions import targets

    r = np.random.default_rng(0)
    if kind == "cnn":
        class TinyCNN(nnx.Module):
            def __init__(self):
                rngs = nnx.Rngs(0)
                self.c1 = nnx.Conv(2, 3, (3, 3), bias_init=nnx.initializers.normal(0.3), rngs=rngs)
                self.fc = nnx.Linear(3, 3, bias_init=nnx.initializers.normal(0.3), rngs=rngs)

            def __call__(self, x):
                h = site("conv1", jax.nn.relu(self.c1(x)), axes=("batch", "height", "width", "channel"))
                return self.fc(h.mean((1, 2)))

        x = r.normal(size=(10, 5, 5, 2)).astype(np.float32)
        y = r.integers(0, 3, 10)
        return Network.from_module(TinyCNN(), (5, 5, 2)), x, "conv1", dict(
            labels=y, target=y, method="smoothgrad", steps=2, key=3, chunk_size=4)
    from jaxequiv.models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(vocab_size=11, n_layer=1, n_head=2, d_model=8, n_ctx=6)
    ids = r.integers(0, 11, (6, 6))
    mask = (np.arange(6)[None] < np.array([6, 4, 2, 5, 3, 6])[:, None]).astype(np.int32)
    return Transformer(cfg, nnx.Rngs(0)).network(), ids, ["h.0.attn.z", "h.0"], dict(
        method="ig", steps=2, input_site="embed", target=targets.at_position("top1", "last", mask=mask),
        args=(mask,), mask=mask, per_head=True, chunk_size=4)


def build_stores(root: str, kinds: tuple[str, ...]) -> dict:
    """Build each store of ``kinds`` at ``root/<kind>`` on a mesh over every device of every process."""
    from jaxequiv.contributions import build_store

    reads = {}
    for kind in kinds:
        net, x, sites, kw = store_job(kind)
        rows = Rows(x)
        build_store(net, rows, f"{root}/{kind}", sites, mesh=dist.make_mesh(), progress=False, **kw)
        reads[kind] = rows.reads
    return reads


def sae_job():
    """``(configs, per-SAE data, seeds, settings)`` of a small SAE sweep, the same in every process: two TopK SAEs
    (AuxK statistics) each on its own data, checkpointed every 10 of 40 steps."""
    from jaxequiv import sae

    r = np.random.default_rng(0)
    atoms = r.normal(size=(12, 8))
    xs = [((r.random((128, 12)) * (r.random((128, 12)) < 0.15)) @ atoms).astype(np.float32) for _ in range(2)]
    cfgs = [sae.TopK(d_in=8, d_sae=16, k=2, dead_steps=4, aux_coef=a) for a in (1 / 32, 0.5)]
    return cfgs, xs, [1, 2], sae.TrainSettings(batch_size=32, steps=40, lr=3e-3, log_every=10, checkpoint_every=10,
                                               data_seed=0)


def train_saes(checkpoint_dir: str, mesh: dict) -> list[dict]:
    """train_many of :func:`sae_job` on ``make_mesh(**mesh)`` over every device of every process; each result's
    params, state and history as NumPy. Reports milestone ``step<S>`` after each logged chunk."""
    from jaxequiv import sae

    cfgs, xs, seeds, settings = sae_job()
    results = sae.train_many(cfgs, xs, seeds=seeds, settings=settings, checkpoint_dir=checkpoint_dir,
                             mesh=dist.make_mesh(**mesh), callback=lambda step, entry: milestone(f"step{step}"))
    return [{"params": jax.tree.map(np.asarray, r.params), "state": jax.tree.map(np.asarray, r.state),
             "history": r.history, "step": r.step} for r in results]


def similarity_job():
    """``(Xs (6, 20, 5), (base1, impls1, base2, impls2))`` of the similarity tests, the same in every process."""
    r = np.random.default_rng(6)
    Xs = r.normal(size=(6, 20, 5)).astype(np.float32)
    b1, b2 = Xs[0], Xs[1]
    return Xs, (b1, (b1[None] + 0.5 * r.normal(size=(3, 20, 5))).astype(np.float32),
                b2, (b2[None] + 0.5 * r.normal(size=(3, 20, 5))).astype(np.float32))


def similarity_on_mesh() -> dict:
    """pairwise (linear CKA) and congruity (ridge) of :func:`similarity_job` on a mesh of every device of every
    process: the rows of the matrix and the rounds split over the processes."""
    from jaxequiv import equivalence as eq
    from jaxequiv import similarity as sim

    Xs, models = similarity_job()
    mesh = dist.make_mesh(pairs=-1)
    c = eq.congruity(*models, key=3, n_rounds=10, n_boot=50, mesh=mesh)
    return {"pairwise": np.asarray(sim.pairwise(sim.LINEAR_CKA, Xs, mesh=mesh)),
            "congruity": (c.score, c.ci_low, c.ci_high), "indicators": c.indicators}


def cli_runs(argvs: list[list[str]]) -> list[tuple[int, str]]:
    """``jaxequiv`` command lines run in this process of a run (the flags join the run already up): each one's
    exit status and what it printed."""
    import contextlib
    import io

    from jaxequiv.cli import main

    out = []
    for argv in argvs:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            code = main(argv)
        out.append((code, printed.getvalue()))
    return out
