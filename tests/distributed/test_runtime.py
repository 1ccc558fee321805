"""initialize / is_writer / barrier and the CLI flags, in one process (the multi-process paths run in
test_multiprocess.py)."""

import argparse
import os
import subprocess
import sys

import jax
import pytest

from jaxequiv.distributed import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    add_distributed_args,
    barrier,
    from_args,
    initialize,
    is_writer,
)


@pytest.fixture
def no_env(monkeypatch):
    for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_one_process_is_a_no_op(no_env):
    assert initialize() is False  # JAX already runs here: nothing to join
    assert initialize(num_processes=1) is False
    no_env.setenv(ENV_NUM_PROCESSES, "1")
    assert initialize() is False
    assert not jax.distributed.is_initialized()
    assert is_writer()
    barrier("alone", timeout_s=0.1)  # returns at once


def test_bad_settings_are_named(no_env):
    no_env.setenv(ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="JAXEQUIV_NUM_PROCESSES must be an integer, got 'two'"):
        initialize()
    with pytest.raises(RuntimeError, match="before any JAX"):  # too late to join a run in this process
        initialize("localhost:1", 2, 0, timeout_s=1)


def test_fresh_process_without_a_cluster():
    code = ("from jaxequiv.distributed import initialize; import jax; "
            "print(initialize(local_device_count=3), jax.process_count(), jax.local_device_count())")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", ENV_COORDINATOR, ENV_NUM_PROCESSES,
                                                           ENV_PROCESS_ID)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "1", "3"]  # no TPU / Slurm / MPI found: one process, 3 CPU devices


def _parser():
    parser = argparse.ArgumentParser()
    add_distributed_args(parser)
    return parser


def test_cli_flags(no_env, capsys):
    args = _parser().parse_args(["--mesh", "data=-1,stack=2", "--num-processes", "1", "--process-id", "0"])
    assert (args.mesh, args.coordinator, args.num_processes, args.process_id) == ({"data": -1, "stack": 2}, None, 1, 0)
    assert dict(from_args(args).shape) == {"data": jax.device_count() // 2, "stack": 2, "pairs": 1}
    assert from_args(_parser().parse_args([])) is None  # one process, no --mesh: the one-device path
    assert dict(from_args(_parser().parse_args(["--mesh", ""])).shape)["data"] == jax.device_count()  # all on data
    with pytest.raises(SystemExit):
        _parser().parse_args(["--mesh", "data=2,model=4"])
    assert "NAME in ('data', 'stack', 'pairs')" in capsys.readouterr().err
    help_text = _parser().format_help()
    assert all(name in help_text for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID))
