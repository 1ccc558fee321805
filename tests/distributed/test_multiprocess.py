"""Real multi-process runs on this machine: 2 processes x 2 CPU devices, gloo collectives, localhost coordinator.

Each run starts fresh Python processes (about 2-3 s of JAX start-up each, in parallel)."""

import time

import numpy as np
import pytest

from jaxequiv.testing.multiprocess import WorkerError, run_workers
from tests.distributed import workers


def test_two_processes_equal_one():
    n, big = 16, 2**21  # big: 8 MiB of float32 per device, reduce-scattered into 2 MiB chunks
    results = run_workers(workers.placement, n, big, processes=2, devices=2, timeout_s=120)
    x = workers.data(n)
    for i, r in enumerate(results):
        assert (r["process"], r["processes"], r["devices"], r["local_devices"]) == (i, 2, 4, 2)
        assert r["writer"] == (i == 0)
        assert r["again"] and "already initialized with num_processes=2, not 3" in r["mismatch"]
        assert r["flagged"] == {"data": 2, "stack": 2, "pairs": 1}
        np.testing.assert_array_equal(r["rows"], np.arange(8 * i, 8 * i + 8))  # data spans the processes
        np.testing.assert_array_equal(r["local"], x[r["rows"]])  # its own rows back, to write them
        np.testing.assert_array_equal(r["local_gram"], r["gram"])  # a replicated result: whole on each process
        assert r["addressable_rows"] == [8 * i, 8 * i + 4]
        np.testing.assert_array_equal(r["fetched"], x)  # every process sees the global array
        assert r["shard_equals_global"]
        np.testing.assert_array_equal(r["replicated"]["w"], np.arange(3.0))
        # float32 sums of 16 rows in another order: a few ulps of the values (|x| < 5)
        np.testing.assert_allclose(r["sum"], x.sum(dtype=np.float64), atol=1e-5)
        np.testing.assert_allclose(r["gram"], x.astype(np.float64).T @ x, atol=1e-5)
        np.testing.assert_allclose(r["psum"], x.sum(0, dtype=np.float64), atol=1e-5)
        # 4 values summed per element: float32 rounding only (|sum| < 20, ulp 2e-6)
        np.testing.assert_allclose(r["scatter"], r["scatter_ref"], atol=1e-5)
        assert r["collectives"] == [("all-reduce", ("data",))]  # the gram only reduces across processes
        assert any(op == "all-gather" for op, _ in r["gather_collectives"])
    np.testing.assert_array_equal(results[0]["gram"], results[1]["gram"])


def test_barrier_times_out_when_a_process_is_late():
    results = run_workers(workers.barrier_with_a_late_process, 1.0, 5.0, timeout_s=60)
    first, late = results
    assert "1/2 processes arrived within 1 s" in first["outcome"]
    assert 1.0 <= first["waited"] < 4.5  # it gave up on its own, long before the late process came
    assert late["outcome"] != "passed"  # the barrier had already failed when process 1 got there


def test_a_hung_worker_is_killed_within_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"within 15 s \(still running: \[1\];") as e:
        run_workers(workers.hang_in, 1, timeout_s=15)
    assert time.monotonic() - t0 < 25
    assert "'hanging'" in str(e.value)  # the report lists each worker's milestones


def test_a_failing_worker_stops_all_and_shows_its_traceback():
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker\(s\) \[0\] failed") as e:
        run_workers(workers.fail_in, 0, timeout_s=60)
    assert "deliberate failure in process 0" in str(e.value)
    assert time.monotonic() - t0 < 30  # it did not wait for the other worker's hour


def test_kill_at_a_milestone_then_resume(tmp_path):
    first = run_workers(workers.count_steps, 4, str(tmp_path), kill_at=(1, "step1"), timeout_s=60)
    assert first[1] is None  # killed at its second step
    assert (tmp_path / "step1.1").exists() and not (tmp_path / "step2.1").exists()
    again = run_workers(workers.count_steps, 4, str(tmp_path), timeout_s=60)
    assert again[1] == 2  # resumed after the two steps it had done
    assert all((tmp_path / f"step{s}.{p}").exists() for s in range(4) for p in range(2))
    with pytest.raises(WorkerError, match="never reached milestone 'nowhere'"):
        run_workers(workers.count_steps, 1, str(tmp_path), processes=1, kill_at=(0, "nowhere"), timeout_s=60)
