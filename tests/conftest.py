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
  from l0jax import data
  root = tmp_path_factory.mktemp("fake_fashion_mnist")
  idx_dir, data_dir = root / "idx", root / "tfds"
  idx_dir.mkdir()
  for split, num, seed in (("train", 400, 0), ("t10k", 100, 1)):
    images, labels = make_idx_images(num, seed)
    data.write_idx(idx_dir / f"{split}-images-idx3-ubyte.gz", images)
    data.write_idx(idx_dir / f"{split}-labels-idx1-ubyte.gz", labels)
  data.prepare_idx_dataset("fashion_mnist", idx_dir, data_dir)
  return str(idx_dir), str(data_dir)


def make_rgb_images(num: int, seed: int, size=(32, 32), num_classes: int = 10):
  """Learnable RGB images: class c brightens a 6x6 patch of channel c % 3 at a
  class-specific place; ``size`` is (h, w), or None for odd random sizes."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, size=num)
  images = []
  for c in labels:
    h, w = size if size is not None else rng.integers(29, 62, size=2)
    image = rng.integers(0, 60, size=(h, w, 3), dtype=np.int64)
    r, q = divmod(int(c), 5)
    top, left = 2 + r * (h - 10), 1 + q * (w - 8) // 4
    image[top:top + 6, left:left + 6, int(c) % 3] += 180
    images.append(np.clip(image, 0, 255).astype(np.uint8))
  return images, labels


def _image_builder(name: str, shape, encoding: str, num_classes: int, splits):
  """A TFDS builder class (not registered: read back from its folder) of RGB images."""
  import tensorflow_datasets as tfds
  from PIL import Image

  builder_name = name

  class ImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = builder_name
    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # nothing to download, no checksums to find

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=shape, encoding_format=encoding),
              "label": tfds.features.ClassLabel(num_classes=num_classes)}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(images, labels)
              for split, (images, labels) in splits.items()}

    def _generate_examples(self, images, labels):
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": Image.fromarray(image), "label": int(label)}

  return ImageBuilder


@pytest.fixture(scope="session")
def image_datasets(tmp_path_factory):
  """A TFDS data dir with two datasets written by real (unregistered) TFDS builders.

  ``l0jax_test_cifar``: 32x32x3 PNG, 10 classes, 200 train / 60 test, learnable;
  ``l0jax_test_photos``: RGB JPEGs of odd sizes (29-61 px), 10 classes, 24 / 9.
  Returns (data_dir, {name: {split: (images, labels)}}).
  """
  import tensorflow_datasets as tfds
  data_dir = str(tmp_path_factory.mktemp("image_datasets"))
  written = {
      "l0jax_test_cifar": ((32, 32, 3), "png", {
          "train": make_rgb_images(200, 0), "test": make_rgb_images(60, 1)}),
      "l0jax_test_photos": ((None, None, 3), "jpeg", {
          "train": make_rgb_images(24, 2, size=None),
          "test": make_rgb_images(9, 3, size=None)}),
  }
  for name, (shape, encoding, splits) in written.items():
    builder = _image_builder(name, shape, encoding, 10, splits)(
        data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir, {name: splits for name, (_, _, splits) in written.items()}
