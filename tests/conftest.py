"""Test configuration: fake 8 CPU devices (before JAX starts) so sharding code runs in CI; property tests draw
the same examples on every run (``HYPOTHESIS_PROFILE=explore`` draws new, and more, examples)."""

import os

import pytest
from hypothesis import settings

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def toy_tracr():
    """tracr compilations (name -> TracrModel) of the toy experiment's --quick subroutines, compiled once per
    session and shared by the tracr-bridge and toy-experiment tests."""
    pytest.importorskip("tracr")
    from experiments.equiv_toy import run

    return run.compile_subroutines(run.QUICK)


@pytest.fixture(scope="session")
def mlp_store(tmp_path_factory):
    """A contributions store (IG, 4 steps) of :class:`tests.nets.TinyMLP`'s site ``fc1`` on 96 random rows."""
    import numpy as np

    from jaxequiv import Network
    from jaxequiv.contributions import build_store
    from tests.nets import TinyMLP

    root = tmp_path_factory.mktemp("store") / "s"
    x = np.random.default_rng(0).normal(size=(96, 5)).astype(np.float32)
    build_store(Network.from_module(TinyMLP(), (5,)), x, root, "fc1", method="ig", steps=4, chunk_size=48,
                progress=False)
    return root
