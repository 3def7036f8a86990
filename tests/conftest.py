"""Test-wide setup: 4 CPU devices, so pmap / shard_map tests run on any machine.

XLA reads XLA_FLAGS once, when the first backend starts, so this must run before any
test imports jax (pytest imports conftest.py first).
"""

import os

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402  (after the XLA flags on purpose)
import pytest  # noqa: E402


def make_idx_images(num: int, seed: int):
  """Learnable fake MNIST: class c lights a 6x6 patch at a class-specific place."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, size=num).astype(np.uint8)
  images = rng.integers(0, 60, size=(num, 28, 28), dtype=np.int64)
  for i, c in enumerate(labels):
    r, q = divmod(int(c), 5)
    images[i, 4 + 12 * r:10 + 12 * r, 1 + 5 * q:7 + 5 * q] += 180
  return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="session")
def fake_dataset(tmp_path_factory):
  """(idx_dir, data_dir) of a small generated fashion_mnist prepared for TFDS."""
  from l0jax import input_pipeline
  root = tmp_path_factory.mktemp("fake_fashion_mnist")
  idx_dir, data_dir = root / "idx", root / "tfds"
  idx_dir.mkdir()
  for split, num, seed in (("train", 400, 0), ("t10k", 100, 1)):
    images, labels = make_idx_images(num, seed)
    input_pipeline.write_idx(idx_dir / f"{split}-images-idx3-ubyte.gz", images)
    input_pipeline.write_idx(idx_dir / f"{split}-labels-idx1-ubyte.gz", labels)
  input_pipeline.prepare_idx_dataset("fashion_mnist", idx_dir, data_dir)
  return str(idx_dir), str(data_dir)
