"""Every engine on 2 processes x 2 CPU devices (gloo, localhost) gives the single-process result.

Each ``run_workers`` call starts two fresh Python processes (about 3 s of start-up, in parallel) and compiles
the engine's kernel in each; the inputs are tiny so that compute is negligible.
"""

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
