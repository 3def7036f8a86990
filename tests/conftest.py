"""Test-wide setup: 4 CPU devices, so pmap / shard_map tests run on any machine.

XLA reads XLA_FLAGS once, when the first backend starts, so this must run before any
test imports jax (pytest imports conftest.py first).
"""

import os

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
