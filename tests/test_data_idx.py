"""l0jax.data.idx: IDX files and the offline TFDS preparation of (Fashion-)MNIST.

Small random IDX files are written into tmp folders; nothing is downloaded and
TensorFlow is never needed.
"""

import gzip
import importlib.abc
import importlib.machinery
import os
import sys

import numpy as np
import pytest

import tensorflow_datasets as tfds

from l0jax import data
from l0jax.data import idx as idx_lib
from l0jax.errors import UserError

N_TRAIN, N_TEST = 60, 20


def _write_idx_dir(folder, seed, gz=True, sep="-"):
  """Random images / labels in IDX files; returns {split: (images, labels)}."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  ext = ".gz" if gz else ""
  out = {}
  for split, prefix, n in (("train", "train", N_TRAIN), ("test", "t10k", N_TEST)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, :2] = 0  # some structure, as in real digits
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    data.write_idx(os.path.join(folder, f"{prefix}-images{sep}idx3-ubyte{ext}"), images)
    data.write_idx(os.path.join(folder, f"{prefix}-labels{sep}idx1-ubyte{ext}"), labels)
    out[split] = (images, labels)
  return out


class _FakeTensorFlowFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Pretends TensorFlow is installed and records any attempt to import it."""

  def __init__(self):
    self.imported = []

  def find_spec(self, name, path, target=None):
    del path, target
    if name == "tensorflow" or name.startswith("tensorflow."):
      return importlib.machinery.ModuleSpec(name, self)
    return None

  def create_module(self, spec):
    return None

  def exec_module(self, module):
    self.imported.append(module.__name__)
    raise ImportError("l0jax must not import tensorflow")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """fashion_mnist (gzipped IDX) and mnist (raw IDX) prepared offline."""
  finder = _FakeTensorFlowFinder()
  sys.meta_path.insert(0, finder)
  try:
    root = tmp_path_factory.mktemp("datasets")
    fashion = _write_idx_dir(root / "idx_fashion", seed=0, gz=True)
    digits = _write_idx_dir(root / "idx_mnist", seed=1, gz=False, sep=".")
    data_dir = str(root / "tfds")
    data.prepare_idx_dataset("fashion_mnist", root / "idx_fashion", data_dir)
    sources = {split: data.load_split("mnist", split, data_dir=data_dir,
                                      idx_dir=root / "idx_mnist")
               for split in ("train", "test")}
    batch = next(data.train_iterator(sources["train"], global_batch_size=12, seed=0))
  finally:
    sys.meta_path.remove(finder)
  return dict(root=root, data_dir=data_dir, fashion=fashion, mnist=digits,
              sources=sources, batch=batch, tf_imports=finder.imported)


def _as_table(images, labels):
  images = np.asarray(images).reshape(len(labels), 28, 28)
  return sorted((im.tobytes(), int(l)) for im, l in zip(images, labels))


# --- IDX ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip_and_magic(tmp_path, suffix):
  images = np.arange(3 * 28 * 28, dtype=np.int64).astype(np.uint8).reshape(3, 28, 28)
  labels = np.array([7, 0, 9], np.uint8)
  data.write_idx(tmp_path / f"i{suffix}", images)
  data.write_idx(tmp_path / f"l{suffix}", labels)
  raw = (tmp_path / f"i{suffix}").read_bytes()
  if suffix:
    raw = gzip.decompress(raw)
  assert raw[:16] == bytes.fromhex("00000803 00000003 0000001c 0000001c")
  raw = (tmp_path / f"l{suffix}").read_bytes()
  assert (gzip.decompress(raw) if suffix else raw)[:8] == bytes.fromhex("00000801 00000003")
  np.testing.assert_array_equal(data.read_idx(tmp_path / f"i{suffix}"), images)
  np.testing.assert_array_equal(data.read_idx(tmp_path / f"l{suffix}"), labels)


def test_read_idx_rejects_bad_files_naming_them(tmp_path):
  (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
  with pytest.raises(data.DataFileError, match="bad magic"):
    data.read_idx(tmp_path / "bad")
  (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
  with pytest.raises(data.DataFileError, match="shape"):
    data.read_idx(tmp_path / "short")
  data.write_idx(tmp_path / "cut.gz", np.zeros((50, 28, 28), np.uint8))
  blob = (tmp_path / "cut.gz").read_bytes()
  (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])  # a truncated download
  with pytest.raises(data.DataFileError) as err:
    data.read_idx(tmp_path / "cut.gz")
  assert str(tmp_path / "cut.gz") in str(err.value) and "\n" not in str(err.value)
  assert isinstance(err.value, UserError)


# --- offline TFDS preparation ------------------------------------------------


def test_prepared_data_is_pixel_exact_via_tfds_data_source(prepared):
  for name, written in (("mnist", prepared["mnist"]), ("fashion_mnist", prepared["fashion"])):
    sources = tfds.data_source(name, data_dir=prepared["data_dir"], download=False)
    assert set(sources) == {"train", "test"}
    for split, (images, labels) in written.items():
      source = sources[split]
      assert len(source) == len(labels)
      records = [source[i] for i in range(len(source))]  # TFDS's own decoding
      assert records[0]["image"].shape == (28, 28, 1)
      assert records[0]["image"].dtype == np.uint8
      got = _as_table([r["image"] for r in records], [r["label"] for r in records])
      assert got == _as_table(images, labels)


def test_prepared_dataset_matches_tfds_registered_builder(prepared):
  builder = tfds.builder("fashion_mnist", data_dir=prepared["data_dir"])
  assert builder.is_prepared()
  assert str(builder.version) == str(tfds.builder_cls("fashion_mnist").VERSION)
  assert builder.info.features["label"].num_classes == 10
  assert builder.info.features["label"].names[0] == "T-shirt/top"
  assert tuple(builder.info.features["image"].shape) == (28, 28, 1)
  assert builder.info.file_format.value == "array_record"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": N_TRAIN, "test": N_TEST}
  info = data.dataset_info("fashion_mnist", prepared["data_dir"])
  assert (info.num_classes, info.image_shape, info.family) == (10, (28, 28, 1), "gray")
  assert info.split_sizes == {"train": N_TRAIN, "test": N_TEST}
  assert data.dataset_info("mnist").split_sizes == {"train": 60000, "test": 10000}


def test_tensorflow_is_never_imported(prepared):
  assert prepared["tf_imports"] == []
  assert "tensorflow" not in sys.modules


def test_reader_equals_tfds_decoding_and_batches_are_pixels_over_255(prepared):
  source = prepared["sources"]["train"]
  reference = tfds.data_source("mnist", split="train", data_dir=prepared["data_dir"],
                               download=False)
  order = np.random.default_rng(3).permutation(len(source))
  images, labels = data.cache_source(source).read(order)
  for row, i in enumerate(order):
    record = reference[int(i)]
    np.testing.assert_array_equal(images[row], record["image"])
    assert labels[row] == record["label"]
  batch = prepared["batch"]
  assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
  truth = dict(_as_table(*prepared["mnist"]["train"]))
  for image, label in zip(batch["image"][0], batch["label"][0]):
    pixels = np.rint(image[..., 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels.astype(np.float32) / np.float32(255), image[..., 0])
    assert truth[pixels.tobytes()] == label


def test_prepared_data_is_reused_not_rebuilt(prepared, monkeypatch):
  data_dir = prepared["data_dir"]
  version_dir = os.path.join(data_dir, "fashion_mnist",
                             str(tfds.builder_cls("fashion_mnist").VERSION))
  before = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns
            for f in os.listdir(version_dir)}

  def fail(*args, **kwargs):
    raise AssertionError("rebuilt an already prepared dataset")

  monkeypatch.setattr(idx_lib, "_idx_builder", fail)
  # idx_dir does not even exist: it must not be needed.
  assert data.prepare_idx_dataset("fashion_mnist", prepared["root"] / "nowhere",
                                  data_dir) == version_dir
  source = data.load_split("fashion_mnist", "test", data_dir=data_dir, idx_dir=None)
  assert len(source) == N_TEST
  after = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns
           for f in os.listdir(version_dir)}
  assert after == before


def test_preparation_says_offline_not_downloading(tmp_path, capfd):
  _write_idx_dir(tmp_path / "idx", seed=4)
  data.prepare_idx_dataset("mnist", tmp_path / "idx", tmp_path / "tfds")
  out, err = capfd.readouterr()
  assert "Downloading" not in out + err
  assert f"Preparing mnist from the IDX files in {tmp_path / 'idx'}" in err


def test_missing_data_and_idx_gives_one_line_how_to(tmp_path, monkeypatch):
  monkeypatch.setattr(idx_lib, "_DEFAULT_IDX_DIRS", {"mnist": (), "fashion_mnist": ()})
  with pytest.raises(data.DatasetNotPrepared) as err:
    data.load_split("fashion_mnist", "train", data_dir=tmp_path / "empty")
  message = str(err.value)
  assert "\n" not in message and isinstance(err.value, UserError)
  assert "fashion_mnist" in message and str(tmp_path / "empty") in message
  assert "--config.idx_dir" in message and "train-images-idx3-ubyte" in message
  assert "apt-get install dataset-fashion-mnist" in message
  with pytest.raises(data.DatasetNotPrepared, match="yann.lecun.com"):
    data.load_split("mnist", "train", data_dir=tmp_path / "empty")
  (tmp_path / "partial").mkdir()
  data.write_idx(tmp_path / "partial" / "train-images-idx3-ubyte",
                 np.zeros((2, 28, 28), np.uint8))
  with pytest.raises(data.DataFileError, match="train-labels-idx1-ubyte"):
    data.prepare_idx_dataset("mnist", tmp_path / "partial", tmp_path / "tfds")
  assert not data.is_prepared("mnist", tmp_path / "tfds")


def test_corrupt_idx_file_fails_naming_it_and_prepares_nothing(tmp_path):
  _write_idx_dir(tmp_path / "idx", seed=6)
  path = tmp_path / "idx" / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-40])
  with pytest.raises(data.DataFileError, match=str(path)):
    data.load_split("mnist", "train", data_dir=tmp_path / "tfds", idx_dir=tmp_path / "idx")
  assert not data.is_prepared("mnist", tmp_path / "tfds")


def test_idx_route_only_for_mnist_datasets(tmp_path):
  for call in (lambda: data.prepare_idx_dataset("emnist", tmp_path, tmp_path),
               lambda: data.default_idx_dir("kmnist")):
    with pytest.raises(UserError, match="IDX files prepare only: mnist, fashion_mnist"):
      call()


@pytest.mark.skipif(data.default_idx_dir("fashion_mnist") is None,
                    reason="no local Fashion-MNIST IDX files (Debian dataset-fashion-mnist)")
def test_real_fashion_mnist_idx_files_parse():
  folder = data.default_idx_dir("fashion_mnist")
  labels = data.read_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
  images = data.read_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))
  assert labels.shape == (10000,) and images.shape == (10000, 28, 28)
  assert images.dtype == np.uint8 and np.bincount(labels).tolist() == [1000] * 10


def test_default_idx_dir(tmp_path, monkeypatch):
  expected = "/usr/share/datasets/fashion-mnist"
  has_debian = os.path.exists(os.path.join(expected, "train-images-idx3-ubyte.gz"))
  assert data.default_idx_dir("fashion_mnist") == (expected if has_debian else None)
  monkeypatch.setattr(idx_lib, "_DEFAULT_IDX_DIRS",
                      {"mnist": (str(tmp_path / "missing"), str(tmp_path / "idx")),
                       "fashion_mnist": ()})
  assert data.default_idx_dir("mnist") is None
  _write_idx_dir(tmp_path / "idx", seed=2, gz=False)
  assert data.default_idx_dir("mnist") == str(tmp_path / "idx")
  assert data.default_idx_dir("fashion_mnist") is None
