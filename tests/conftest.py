"""Test configuration: fake 8 CPU devices (before JAX starts) so sharding code runs in CI."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def toy_tracr():
    """tracr compilations (name -> TracrModel) of the toy experiment's --quick subroutines, compiled once per
    session and shared by the tracr-bridge and toy-experiment tests."""
    pytest.importorskip("tracr")
    from experiments.equiv_toy import run

    return run.compile_subroutines(run.QUICK)
