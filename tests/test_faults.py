"""kill -9 inside the publication window of a command's artefact set: the output is the old complete set or the new
complete one (never a mix), and the next run cleans up what the killed one left.

The killed process runs the real CLI with :func:`jaxequiv.io.files._window` (a no-op hook at the critical points of a
folder publication) replaced by ``os.kill(os.getpid(), SIGKILL)``, so the kill lands at a known point, no sleeps or
timing involved. ``two_renames`` forces the fallback for file systems without ``renameat2(RENAME_EXCHANGE)``: killed
between its two renames, the output is missing until the next writer puts the old set back.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from jaxequiv.cli import main

RUNNER = """
import os, signal, sys
from jaxequiv.io import files
stage, exchange = sys.argv[1], sys.argv[2] == "exchange"
files._window = lambda at: os.kill(os.getpid(), signal.SIGKILL) if at == stage else None
if not exchange:
    files._exchange = lambda a, b: False
from jaxequiv.cli import main
sys.exit(main(sys.argv[3:]))
"""

# before the swap; after the exchange (before the old set is deleted); between the fallback's two renames
WINDOWS = [("built", "exchange"), ("swapped", "exchange"), ("swapped", "two_renames")]


def killed_run(stage, exchange, argv):
    r = subprocess.run([sys.executable, "-c", RUNNER, stage, exchange, *argv], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr


def check_after_kill(out, stage, exchange, which):
    """``which(out)`` names the set at ``out`` ("old" / "new"); it must be complete and the expected one."""
    if stage == "swapped" and exchange == "two_renames":
        assert not out.exists() and len(list(out.parent.glob(f".{out.name}.old-*"))) == 1
    else:
        assert which(out) == ("old" if stage == "built" else "new")


@pytest.mark.parametrize("stage,exchange", WINDOWS)
def test_convert_killed_while_publishing(tmp_path, stage, exchange):
    from flax import nnx

    from jaxequiv.adapters import torch as ad
    from jaxequiv.models.resnet import resnet18

    for name, width in (("old_src", 2), ("new_src", 4)):
        ad.save(resnet18(num_classes=3, in_channels=1, width=width, stem="small", rngs=nnx.Rngs(0)), tmp_path / name)
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "old_src"), str(out)]) == 0

    def which(folder):
        model = ad.load(folder)  # a mixed pair (new weights, old config) would not load
        width = json.loads((folder / "config.json").read_text())["config"]["width"]
        assert model.conv1.out_features == width
        return {2: "old", 4: "new"}[width]

    argv = ["convert", str(tmp_path / "new_src"), str(out), "--overwrite"]
    killed_run(stage, exchange, argv)
    check_after_kill(out, stage, exchange, which)
    assert main(argv) == 0 and which(out) == "new"
    assert sorted(os.listdir(tmp_path)) == ["new_src", "old_src", "out"]


@pytest.mark.parametrize("stage,exchange", WINDOWS)
def test_equiv_pairwise_killed_while_publishing(tmp_path, stage, exchange):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "reps.npz", **{k: rng.normal(size=(20, 3)).astype(np.float32) for k in "abc"})
    out = tmp_path / "out"
    base = ["equiv", "pairwise", str(tmp_path / "reps.npz"), "--out", str(out)]
    assert main([*base, "--measure", "linear_cka"]) == 0

    def which(folder):
        doc = json.loads((folder / "similarity.json").read_text())
        np.testing.assert_array_equal(np.load(folder / "similarity.npy"), doc["matrix"])  # .npy and .json agree
        assert (folder / "similarity.png").read_bytes()[:4] == b"\x89PNG"
        return {"linear_cka": "old", "rsa": "new"}[doc["measure"]]

    argv = [*base, "--measure", "rsa", "--overwrite"]
    killed_run(stage, exchange, argv)
    check_after_kill(out, stage, exchange, which)
    assert main(argv) == 0 and which(out) == "new"
    assert sorted(os.listdir(tmp_path)) == ["out", "reps.npz"]
