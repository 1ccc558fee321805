"""Every engine on 2 processes x 2 CPU devices (gloo, localhost) gives the single-process result.

Each ``run_workers`` call starts two fresh Python processes (about 3 s of start-up, in parallel) and compiles
the engine's kernel in each; the inputs are tiny so that compute is negligible.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxequiv.contributions import build_store, open_store
from jaxequiv.distributed import make_mesh
from jaxequiv.testing.multiprocess import run_workers
from tests.distributed import workers

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices (tests/conftest.py fakes 8)")


def _same_store(a, b, exact: bool, tol: float = 0.0):
    """Equal stores: bitwise, or within ``tol`` of each array's largest magnitude (float32 rounding)."""
    assert a.sites == b.sites and a.variants == b.variants and a.meta["config"] == b.meta["config"]
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    for s in a.sites:
        for v in a.variants:
            if exact:
                np.testing.assert_array_equal(a.array(s, v), b.array(s, v), err_msg=f"{s}/{v}")
            else:
                want = np.asarray(b.array(s, v))
                np.testing.assert_allclose(a.array(s, v), want, rtol=0, atol=tol * np.abs(want).max(),
                                           err_msg=f"{s}/{v}")


def _reference(kind, root, mesh):
    net, x, sites, kw = workers.store_job(kind)
    return build_store(net, x, root, sites, mesh=mesh, progress=False, **kw)


def test_store_built_by_two_processes_equals_one_process(tmp_path):
    reads = run_workers(workers.build_stores, str(tmp_path / "mp"), ("cnn",), timeout_s=300)
    # 4 devices, chunks of 4: each process reads its 2 rows of each chunk (the padding repeats row 9)
    assert reads[0]["cnn"] == [(0, 2), (4, 6), (8, 10)] and reads[1]["cnn"] == [(2, 4), (6, 8), (9, 10)]
    built = open_store(tmp_path / "mp" / "cnn")
    # the same 1 example per device on 4 devices of this process: bitwise
    _same_store(built, _reference("cnn", tmp_path / "four", make_mesh(devices=jax.devices()[:4])), True)
    # 4 examples per call on one device: float32 rounding of other batch shapes
    _same_store(built, _reference("cnn", tmp_path / "one", None), False, 1e-6)


def test_store_build_killed_in_one_process_resumes(tmp_path):
    root = tmp_path / "mp"
    first = run_workers(workers.build_stores, str(root), ("cnn",), kill_at=(1, "read9"), timeout_s=300)
    assert first == [None, None] and not (root / "cnn").exists()
    meta = json.loads((root / "cnn.partial" / "meta.json").read_text())
    assert 0 in meta["finished_chunks"] and 2 not in meta["finished_chunks"]  # killed reading the last chunk
    again = run_workers(workers.build_stores, str(root), ("cnn",), timeout_s=300)
    assert again[1]["cnn"][0] == (2, 4)  # the finished chunks' rows are read back to check their content
    _same_store(open_store(root / "cnn"),
                _reference("cnn", tmp_path / "ref", make_mesh(devices=jax.devices()[:4])), True)



def _same_saes(results, reference, atol=0.0):
    for r, ref in zip(results, reference, strict=True):
        for part in ("params", "state"):
            for k, v in getattr(ref, part).items():
                np.testing.assert_allclose(r[part][k], np.asarray(v), rtol=0, atol=atol, err_msg=f"{part} {k}")
        assert r["step"] == ref.step and (atol or r["history"] == ref.history)


@pytest.mark.slow  # two runs of 2 processes (start-up and compilation): about 25 s on two idle cores
def test_train_many_on_two_processes_resumes_after_a_kill_and_equals_one_process(tmp_path):
    """An SAE sweep (per-SAE data, SAEs over stack, batches over data across the processes) with orbax checkpoints:
    one worker is killed after step 20, all restart and resume; the result is that of one process."""
    from jaxequiv import sae
    from jaxequiv.sae.checkpoint import read_meta

    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jit"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    first = run_workers(workers.train_saes, str(tmp_path / "ckpt"), {"stack": 2}, kill_at=(1, "step20"),
                        timeout_s=300, env=cache)
    assert first == [None, None]
    assert read_meta(tmp_path / "ckpt")["step"] in (10, 20)  # 20 if its background write had finished
    again = run_workers(workers.train_saes, str(tmp_path / "ckpt"), {"stack": 2}, timeout_s=300, env=cache)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["40"]  # no temporary folders left
    cfgs, xs, seeds, settings = workers.sae_job()
    settings = dataclasses.replace(settings, checkpoint_every=None)
    four = sae.train_many(cfgs, xs, seeds=seeds, settings=settings, mesh=make_mesh(stack=2, devices=jax.devices()[:4]))
    one = sae.train_many(cfgs, xs, seeds=seeds, settings=settings)
    for r in again:
        # uninterrupted on 4 devices of one process (the same per-device batches and programs; the batch sums
        # across the processes reduce 2 operands, in either order the same): bitwise
        _same_saes(r, four)
        # one device sums each batch in another order: float32 rounding of the gradients (|params| < 2) carried
        # through 40 Adam steps; measured 1.2e-7, tolerance 8x that
        _same_saes(r, one, atol=1e-6)


@pytest.mark.slow  # 2 processes compile ridge congruity: about 15 s on two idle cores
def test_pairwise_and_congruity_on_two_processes_equal_one_process():
    from jaxequiv import equivalence as eq
    from jaxequiv import similarity as sim

    results = run_workers(workers.similarity_on_mesh, timeout_s=300)
    Xs, models = workers.similarity_job()
    want = eq.congruity(*models, key=3, n_rounds=10, n_boot=50)
    for r in results:  # 10 rounds (padded to 12) split over 4 devices of 2 processes, drawn as on one device
        np.testing.assert_array_equal(r["indicators"], want.indicators)
        assert r["congruity"] == (want.score, want.ci_low, want.ci_high)
        # rows of the CKA matrix on other devices: float32 rounding of a different batch shape (values <= 1)
        np.testing.assert_allclose(r["pairwise"], sim.pairwise(sim.LINEAR_CKA, Xs), rtol=0, atol=1e-6)


@pytest.mark.slow  # 2 processes, two commands: about 20 s on two idle cores
def test_commands_on_two_processes_print_and_publish_once(tmp_path):
    """``equiv pairwise`` (rows over pairs=4) and ``sae sweep`` (2 SAEs over stack=2, batches over data across the
    processes) with --mesh: what one process writes, printed and published by process 0 only."""
    from jaxequiv import Network
    from jaxequiv.cli import main
    from jaxequiv.contributions import build_store
    from jaxequiv.sae import load_sae
    from tests.nets import TinyMLP
    from tests.sae.test_cli import TRAIN

    Xs = np.random.default_rng(7).normal(size=(5, 16, 4)).astype(np.float32)
    np.save(tmp_path / "reps.npy", Xs)
    build_store(Network.from_module(TinyMLP(), (5,)), np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32),
                tmp_path / "store", "fc1", method="ig", steps=2, chunk_size=32, progress=False)

    def commands(root, *mesh):
        return [["equiv", "pairwise", str(tmp_path / "reps.npy"), "--out", str(tmp_path / root / "pw"),
                 *(["--mesh", "pairs=-1"] if mesh else [])],
                ["sae", "sweep", "--store", str(tmp_path / "store"), "--site", "fc1", "--variant", "activations",
                 "--out", str(tmp_path / root / "sae"), *TRAIN, "--expansions", "1", "--thetas", "0.5", "--l1s", "0",
                 "--seeds", "1,2", "--no-progress", *(["--mesh", "stack=2"] if mesh else [])]]

    runs = run_workers(workers.cli_runs, commands("mp", True), timeout_s=300)
    assert all(code == 0 for r in runs for code, _ in r)
    assert all(printed == "" for _, printed in runs[1])  # process 1 trains and computes but says nothing
    assert main(commands("one")[0]) == 0 and main(commands("one")[1]) == 0
    assert "5 x 5 linear_cka matrix" in runs[0][0][1] and runs[0][1][1].count("r2_codec=") == 2  # process 0 reports
    # the rows of the CKA matrix on other devices: float32 rounding of other batch shapes (values <= 1)
    np.testing.assert_allclose(np.load(tmp_path / "mp" / "pw" / "similarity.npy"),
                               np.load(tmp_path / "one" / "pw" / "similarity.npy"), rtol=0, atol=1e-6)
    folders = sorted(p.name for p in (tmp_path / "one" / "sae").iterdir())
    assert sorted(p.name for p in (tmp_path / "mp" / "sae").iterdir()) == folders and len(folders) == 3
    assert sorted(p.name for p in (tmp_path / "mp").iterdir()) == ["pw", "sae"]  # no .partial left
    for name in folders[:2]:
        (_, mp, _), (_, one, _) = load_sae(tmp_path / "mp" / "sae" / name), load_sae(tmp_path / "one" / "sae" / name)
        for k in one:  # batches summed over 2 devices: float32 rounding carried through 10 Adam steps
            np.testing.assert_allclose(mp[k], one[k], rtol=0, atol=1e-6, err_msg=f"{name} {k}")
