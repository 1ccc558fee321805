"""Test configuration: fake 8 CPU devices (before JAX starts) so sharding code runs in CI."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
