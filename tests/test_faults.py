"""kill -9 during every long command: the output is the old complete artefact set or the new complete one (never a
mix), and the next run cleans up, resumes where the command can, and leaves nothing else beside the output.

The killed process runs the real CLI (``RUNNER``) with one of two faults:

* ``window STAGE``: :func:`jaxequiv.io.files._window` (a no-op hook at the critical points of a folder
  publication) replaced by ``SIGKILL``, so the kill lands at a known point of the publication of the output
  (always ``<tmp>/out`` here; the publications of folders inside the build, such as each SAE's, are let through):
  ``built`` (the new set is complete beside the output, not yet swapped in) or ``swapped`` (exchanged, the old set
  not yet deleted);
* ``op K``: ``SIGKILL`` at the K-th file-system call (``open``, ``os.open``, ``replace``, ``rename``, ``mkdir``,
  ``unlink``, ``rmdir``, ``fsync``, ...), K drawn at random between 1 and the number of such calls a run makes
  up to its swap. Between two file-system calls a process changes nothing on disk, so these are all the moments
  at which a kill can leave a different state behind.

``two_renames`` forces the fallback for file systems without ``renameat2(RENAME_EXCHANGE)``: killed between its
two renames, the output is missing until the next writer puts the old set back. K is drawn from a fixed seed
(``JAXEQUIV_FAULT_SEED``, default 0; the failure message names K to replay it).

Slow (each test runs its command four or five times, three of them in fresh processes: 5-25 s of CPU each, about
2.5 min for the module); killed runs share one persistent compilation cache.
"""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxequiv.cli import main

pytestmark = pytest.mark.slow

RUNNER = """
import builtins, os, signal, sys
from jaxequiv.io import files
mode, arg, exchange = sys.argv[1], sys.argv[2], sys.argv[3] == "exchange"
if not exchange:
    files._exchange = lambda a, b: False
if os.environ.get("FAULT_FAKE_DEMO"):
    from tests.test_faults import fake_demo_run
    from jaxequiv import demo
    demo.run = fake_demo_run
calls = [0]

def counted(module, name):
    real = getattr(module, name)

    def call(*a, **kw):
        calls[0] += 1
        if mode == "op" and calls[0] == int(arg):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)

    setattr(module, name, call)

def window(at):  # the command's own publication at --out, not one of a file inside it (e.g. an SAE folder)
    target = sys._getframe(1).f_locals["target"]
    if mode == "window" and at == arg and os.path.basename(target) == "out":
        if os.environ.get("FAULT_CALLS"):  # how many file-system calls the run made up to here
            with open(os.environ["FAULT_CALLS"], "w") as f:
                f.write(str(calls[0]))
        os.kill(os.getpid(), signal.SIGKILL)

files._window = window
from jaxequiv.cli import main
for name in ("open", "replace", "rename", "mkdir", "makedirs", "unlink", "remove", "rmdir", "fsync", "ftruncate",
             "posix_fallocate"):
    counted(os, name)
counted(builtins, "open")
sys.exit(main(sys.argv[4:]))
"""

SEED = int(os.environ.get("JAXEQUIV_FAULT_SEED", "0"))


def fake_demo_run(cfg, out_dir, **kw):
    """Stands in for `jaxequiv.demo.run` in the demo's fault test: a report and figures, each naming the seed. (The
    demo itself runs in tests/test_demo.py; what a kill can break here is how the demo
    publishes its files.)"""
    from jaxequiv.io.files import write_text

    for i in range(4):
        write_text(os.path.join(out_dir, "figures", f"fig{i}.txt"), f"seed {cfg.seed}")
    write_text(os.path.join(out_dir, "report.md"), f"seed {cfg.seed}")
    return os.path.join(out_dir, "report.md")


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """The killed runs of a test compile the same programs: they share them through JAX's persistent cache (a
    third of the time of a run otherwise; the cache writes through ``io.open``, which the fault runner leaves
    uncounted)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax-cache")))
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        yield


def killed_run(mode, arg, argv, exchange="exchange", calls=None, expect_kill=True):
    env = dict(os.environ, **({"FAULT_CALLS": str(calls)} if calls else {}))
    r = subprocess.run([sys.executable, "-c", RUNNER, mode, str(arg), exchange, *argv], capture_output=True,
                       text=True, timeout=300, env=env, cwd=Path(__file__).parent.parent)
    if expect_kill:
        assert r.returncode == -signal.SIGKILL, r.stderr
    return r.returncode


def kill_cycle(tmp_path, name, old, new, which, keep):
    """The output set at ``tmp_path / "out"`` made by ``old`` (argv), then ``new --overwrite`` killed in the
    publication window (before the swap: old stays; after it: new, complete), then ``old --overwrite`` killed at a
    random file-system call (either complete set), then ``old --overwrite`` to completion; ``keep``: what else
    ``tmp_path`` holds (the inputs)."""
    out = tmp_path / "out"
    assert main(old) == 0 and which(out) == "old"
    killed_run("window", "built", [*new, "--overwrite"])
    assert which(out) == "old"
    calls = tmp_path.parent / f"{tmp_path.name}.calls"
    killed_run("window", "swapped", [*new, "--overwrite"], calls=calls)
    assert which(out) == "new"
    n = int(calls.read_text())
    k = random.Random(f"{name}-{SEED}").randint(1, n)
    status = killed_run("op", k, [*old, "--overwrite"], expect_kill=False)
    state = which(out)
    assert (status == -signal.SIGKILL and state in ("old", "new")) or (status == 0 and state == "old"), (k, n, status)
    assert main([*old, "--overwrite"]) == 0 and which(out) == "old", (k, n)
    assert sorted(os.listdir(tmp_path)) == sorted([*keep, "out"]), (k, n)


# -- convert and equiv pairwise: the fallback swap (two renames) too ----------------------------------------------
@pytest.fixture
def convert_sources(tmp_path):
    from flax import nnx

    from jaxequiv.adapters import torch as ad
    from jaxequiv.models.resnet import resnet18

    for name, width in (("old_src", 2), ("new_src", 4)):
        ad.save(resnet18(num_classes=3, in_channels=1, width=width, stem="small", rngs=nnx.Rngs(0)), tmp_path / name)

    def which(folder):
        model = ad.load(folder)  # a mixed pair (new weights, old config) would not load
        width = json.loads((folder / "config.json").read_text())["config"]["width"]
        assert model.conv1.out_features == width
        return {2: "old", 4: "new"}[width]

    return (["convert", str(tmp_path / "old_src"), str(tmp_path / "out")],
            ["convert", str(tmp_path / "new_src"), str(tmp_path / "out")], which, ["new_src", "old_src"])


@pytest.fixture
def pairwise_reps(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "reps.npz", **{k: rng.normal(size=(20, 3)).astype(np.float32) for k in "abc"})
    base = ["equiv", "pairwise", str(tmp_path / "reps.npz"), "--out", str(tmp_path / "out")]

    def which(folder):
        doc = json.loads((folder / "similarity.json").read_text())
        np.testing.assert_array_equal(np.load(folder / "similarity.npy"), doc["matrix"])  # .npy and .json agree
        assert (folder / "similarity.png").read_bytes()[:4] == b"\x89PNG"
        return {"linear_cka": "old", "rsa": "new"}[doc["measure"]]

    return [*base, "--measure", "linear_cka"], [*base, "--measure", "rsa"], which, ["reps.npz"]


def test_killed_between_the_two_renames_of_the_fallback_swap(pairwise_reps, tmp_path):
    """One command is enough: every command publishes through the same jaxequiv.io.files swap."""
    old, new, which, keep = pairwise_reps
    out = tmp_path / "out"
    assert main(old) == 0
    killed_run("window", "swapped", [*new, "--overwrite"], exchange="two_renames")
    assert not out.exists() and len(list(tmp_path.glob(".out.old-*"))) == 1
    assert main([*new, "--overwrite"]) == 0 and which(out) == "new"  # the next writer puts the old set back first
    assert sorted(os.listdir(tmp_path)) == sorted([*keep, "out"])


@pytest.mark.parametrize("command", ["convert_sources", "pairwise_reps"])
def test_convert_and_pairwise_killed(command, tmp_path, request):
    kill_cycle(tmp_path, command, *request.getfixturevalue(command))


# -- the long commands ---------------------------------------------------------------------------------------------
def test_contributions_killed(tmp_path):
    from jaxequiv.contributions import open_store

    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype(np.float32))
    base = ["contributions", "--data", str(tmp_path / "x.npy"), "--model", "resnet18", "--width", "2", "--sites",
            "layer1.0", "--variants", "sum", "--chunk-size", "2", "--no-progress", "--out", str(tmp_path / "out")]

    def which(folder):
        store = open_store(folder)
        for site in store.sites:
            for v in ("activations", *store.variants):
                assert store.array(site, v).shape[0] == 6 and np.isfinite(store.array(site, v)).all()
        assert store.labels.shape == store.predictions.shape == (6,)
        return {"grad_x_act": "old", "normgrad": "new"}[store.meta["config"]["method"]]

    kill_cycle(tmp_path, "contributions", [*base, "--method", "grad_x_act"], [*base, "--method", "normgrad"], which,
               ["x.npy"])


@pytest.fixture
def store(mlp_store):
    return mlp_store


def _sae_which(names):
    def which(folder):
        from jaxequiv.sae import load_sae

        summary = json.loads((folder / "summary.json").read_text())
        folders = sorted(p.name for p in folder.iterdir() if p.is_dir())
        assert sorted(s["name"] for s in summary) == folders  # summary.json describes exactly the SAEs present
        for f in folders:
            load_sae(folder / f)
        return names[tuple(folders)]
    return which


SAE_RUN = ["--site", "fc1", "--variant", "activations", "--steps", "20", "--batch-size", "32", "--log-every", "10",
           "--checkpoint-every", "10", "--lr", "3e-3", "--no-progress"]


def test_sae_train_killed(store, tmp_path):
    base = ["sae", "train", "--store", str(store), *SAE_RUN, "--expansion", "1", "--out", str(tmp_path / "out")]
    which = _sae_which({("stsae_x1_seed0",): "old", ("stsae_x1_seed1",): "new"})
    kill_cycle(tmp_path, "sae train", [*base, "--seed", "0"], [*base, "--seed", "1"], which, [])


def test_sae_sweep_killed(store, tmp_path):
    base = ["sae", "sweep", "--store", str(store), *SAE_RUN, "--expansions", "1", "--thetas", "0.5", "--l1s", "0",
            "--out", str(tmp_path / "out")]
    which = _sae_which({("stsae_x1_theta0.5_l10_seed1", "stsae_x1_theta0.5_l10_seed2"): "old",
                        ("stsae_x1_theta0.5_l10_seed3",): "new"})
    kill_cycle(tmp_path, "sae sweep", [*base, "--seeds", "1,2"], [*base, "--seeds", "3"], which, [])


def test_sae_rerun_with_other_settings_after_a_kill_publishes_only_its_own_saes(store, tmp_path):
    """A run killed after its build was complete leaves ``<out>.partial`` holding its SAEs (and no checkpoint); a
    run with other settings must not publish them beside its own."""
    base = ["sae", "train", "--store", str(store), *SAE_RUN, "--expansion", "1", "--out", str(tmp_path / "out")]
    killed_run("window", "built", [*base, "--seed", "1"])
    assert (tmp_path / "out.partial" / "stsae_x1_seed1").is_dir()
    assert main([*base, "--seed", "0"]) == 0
    assert _sae_which({("stsae_x1_seed0",): "old"})(tmp_path / "out") == "old"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_sae_train_stopped_while_deleting_its_finished_checkpoint(store, tmp_path, monkeypatch):
    """The last step of a build deletes the resume checkpoint; stopped half-way through (the step's and the JSON
    part's metadata deleted, the rest not yet: what a kill at file-system call 182 of 219 left), the rerun must not find a damaged checkpoint
    and refuse."""
    import shutil

    base = ["sae", "train", "--store", str(store), *SAE_RUN, "--expansion", "1", "--out", str(tmp_path / "out"),
            "--seed", "0"]

    rmtree = shutil.rmtree

    def stopped(path, *args, **kwargs):  # the CLI's deletion of the whole checkpoint folder, not orbax's of a step
        if Path(path).parent.name != "out.partial":
            return rmtree(path, *args, **kwargs)
        for p in [*Path(path).glob("*/_CHECKPOINT_METADATA"), *Path(path).glob("*/meta/metadata")]:
            p.unlink()
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(shutil, "rmtree", stopped)
        assert main(base) == 130
    assert main(base) == 0
    assert _sae_which({("stsae_x1_seed0",): "old"})(tmp_path / "out") == "old"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_equiv_congruity_killed(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("m1", "m2"):
        np.savez(tmp_path / f"{name}.npz", base=rng.normal(size=(20, 3)), impls=rng.normal(size=(3, 20, 3)))
    base = ["equiv", "congruity", str(tmp_path / "m1.npz"), str(tmp_path / "m2.npz"), "--rounds", "4", "--boot", "8",
            "--out", str(tmp_path / "out")]

    def which(folder):
        doc = json.loads((folder / "congruity.json").read_text())
        assert np.array(doc["congruity"]).shape == (2, 2)
        assert (folder / "congruity.png").read_bytes()[:4] == b"\x89PNG"
        return {"linear_cka": "old", "rsa": "new"}[doc["measure"]]

    kill_cycle(tmp_path, "equiv congruity", [*base, "--measure", "linear_cka"], [*base, "--measure", "rsa"], which,
               ["m1.npz", "m2.npz"])


def test_demo_killed(tmp_path, monkeypatch):
    from jaxequiv import demo

    monkeypatch.setattr(demo, "run", fake_demo_run)
    monkeypatch.setenv("FAULT_FAKE_DEMO", "1")
    base = ["demo", "--quick", "--out", str(tmp_path / "out")]

    def which(folder):
        texts = {p.read_text() for p in [folder / "report.md", *(folder / "figures").iterdir()]}
        assert len(texts) == 1 and len(list((folder / "figures").iterdir())) == 4  # one run's files, all of them
        return {"seed 1": "old", "seed 2": "new"}[texts.pop()]

    kill_cycle(tmp_path, "demo", [*base, "--seed", "1"], [*base, "--seed", "2"], which, [])
