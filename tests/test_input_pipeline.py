"""Tests for l0jax.input_pipeline: offline TFDS preparation and batching.

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

tfds = pytest.importorskip("tensorflow_datasets")

from l0jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top

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
    ip.write_idx(os.path.join(folder, f"{prefix}-images{sep}idx3-ubyte{ext}"), images)
    ip.write_idx(os.path.join(folder, f"{prefix}-labels{sep}idx1-ubyte{ext}"), labels)
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
    ip.prepare_idx_dataset("fashion_mnist", root / "idx_fashion", data_dir)
    sources = {
        split: ip.load_split(
            "mnist", split, data_dir=data_dir, idx_dir=root / "idx_mnist"
        )
        for split in ("train", "test")
    }
    sources["fashion_train"] = ip.load_split("fashion_mnist", "train", data_dir=data_dir)
    sources["train"][0]  # read through TFDS's own decoding too
    ip.cache_source(sources["train"])
  finally:
    sys.meta_path.remove(finder)
  return dict(
      root=root,
      data_dir=data_dir,
      fashion=fashion,
      mnist=digits,
      sources=sources,
      tf_imports=finder.imported,
  )


def _as_table(images, labels):
  images = np.asarray(images).reshape(len(labels), 28, 28)
  return sorted((im.tobytes(), int(l)) for im, l in zip(images, labels))


# --- IDX ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip_and_magic(tmp_path, suffix):
  images = np.arange(3 * 28 * 28, dtype=np.int64).astype(np.uint8).reshape(3, 28, 28)
  labels = np.array([7, 0, 9], np.uint8)
  ip.write_idx(tmp_path / f"i{suffix}", images)
  ip.write_idx(tmp_path / f"l{suffix}", labels)
  raw = (tmp_path / f"i{suffix}").read_bytes()
  if suffix:
    raw = gzip.decompress(raw)
  assert raw[:16] == bytes.fromhex("00000803 00000003 0000001c 0000001c")
  raw = (tmp_path / f"l{suffix}").read_bytes()
  assert (gzip.decompress(raw) if suffix else raw)[:8] == bytes.fromhex("00000801 00000003")
  np.testing.assert_array_equal(ip.read_idx(tmp_path / f"i{suffix}"), images)
  np.testing.assert_array_equal(ip.read_idx(tmp_path / f"l{suffix}"), labels)


def test_read_idx_rejects_bad_files(tmp_path):
  (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
  with pytest.raises(ValueError, match="bad magic"):
    ip.read_idx(tmp_path / "bad")
  (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
  with pytest.raises(ValueError, match="shape"):
    ip.read_idx(tmp_path / "short")


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
      "train": N_TRAIN,
      "test": N_TEST,
  }
  info = ip.dataset_info("fashion_mnist", prepared["data_dir"])
  assert (info.num_classes, info.image_shape) == (10, (28, 28, 1))
  assert info.split_sizes == {"train": N_TRAIN, "test": N_TEST}
  assert ip.dataset_info("mnist").split_sizes == {"train": 60000, "test": 10000}


def test_tensorflow_is_never_imported(prepared):
  assert prepared["tf_imports"] == []
  assert "tensorflow" not in sys.modules


def test_fast_reader_equals_tfds_decoding(prepared):
  source = prepared["sources"]["train"]
  assert ip._fast_image_feature(source) is not None  # the fast path is taken
  order = np.random.default_rng(3).permutation(len(source))
  images, labels = ip._read_records(source, order)
  for row, i in enumerate(order):
    record = source[int(i)]
    np.testing.assert_array_equal(images[row], record["image"])
    assert labels[row] == record["label"]


@pytest.mark.parametrize("variant", ["zlib", "sub_filter"])
def test_fast_reader_handles_other_pngs(tmp_path, monkeypatch, variant):
  """Compressed PNGs and PNGs with row filters (as libpng writes) decode right."""
  written = _write_idx_dir(tmp_path / "idx", seed=5)
  if variant == "zlib":
    monkeypatch.setattr(ip, "_PNG_LEVEL", 6)
  else:
    import zlib  # pylint: disable=g-import-not-at-top

    def sub_filtered_png(image):
      image = image.reshape(28, 28).astype(np.int16)
      rows = np.zeros((28, 29), np.uint8)
      rows[:, 0] = 1  # PNG filter type 1 (Sub)
      rows[:, 1:] = np.diff(image, axis=1, prepend=0) % 256
      return b"".join((
          b"\x89PNG\r\n\x1a\n",
          ip._IHDR_CHUNK,
          ip._png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
          ip._png_chunk(b"IEND", b""),
      ))

    monkeypatch.setattr(ip, "_encode_png_gray", sub_filtered_png)
  source = ip.load_split("mnist", "test", data_dir=tmp_path / "tfds", idx_dir=tmp_path / "idx")
  images, labels = ip._read_records(source, range(len(source)))
  assert _as_table(images, labels) == _as_table(*written["test"])
  for i in range(0, len(source), 7):
    np.testing.assert_array_equal(images[i], source[i]["image"])


def test_prepared_data_is_reused_not_rebuilt(prepared, monkeypatch):
  data_dir = prepared["data_dir"]
  version_dir = os.path.join(data_dir, "fashion_mnist", str(tfds.builder_cls("fashion_mnist").VERSION))
  before = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}

  def fail(*args, **kwargs):
    raise AssertionError("rebuilt an already prepared dataset")

  monkeypatch.setattr(ip, "_idx_builder", fail)
  # idx_dir does not even exist: it must not be needed.
  assert ip.prepare_idx_dataset("fashion_mnist", prepared["root"] / "nowhere", data_dir) == version_dir
  source = ip.load_split("fashion_mnist", "test", data_dir=data_dir, idx_dir=None)
  assert len(source) == N_TEST
  after = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}
  assert after == before


def test_missing_data_and_idx_gives_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(ip, "_DEFAULT_IDX_DIRS", {"mnist": (), "fashion_mnist": ()})
  with pytest.raises(FileNotFoundError) as err:
    ip.load_split("fashion_mnist", "train", data_dir=tmp_path / "empty")
  message = str(err.value)
  assert "fashion_mnist" in message and str(tmp_path / "empty") in message
  assert "idx_dir" in message and "train-images-idx3-ubyte" in message
  (tmp_path / "partial").mkdir()
  ip.write_idx(tmp_path / "partial" / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
  with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
    ip.prepare_idx_dataset("mnist", tmp_path / "partial", tmp_path / "tfds")
  assert not ip.is_prepared("mnist", tmp_path / "tfds")


def test_unknown_dataset_lists_allowed_names(tmp_path):
  for call in (
      lambda: ip.load_split("cifar10", "train", data_dir=tmp_path),
      lambda: ip.prepare_idx_dataset("emnist", tmp_path, tmp_path),
      lambda: ip.default_idx_dir("kmnist"),
      lambda: ip.dataset_info("svhn"),
  ):
    with pytest.raises(ValueError, match="allowed: mnist, fashion_mnist"):
      call()


@pytest.mark.skipif(
    ip.default_idx_dir("fashion_mnist") is None,
    reason="no local Fashion-MNIST IDX files (Debian dataset-fashion-mnist)",
)
def test_real_fashion_mnist_idx_files_parse():
  folder = ip.default_idx_dir("fashion_mnist")
  labels = ip.read_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
  images = ip.read_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))
  assert labels.shape == (10000,) and images.shape == (10000, 28, 28)
  assert images.dtype == np.uint8 and np.bincount(labels).tolist() == [1000] * 10


def test_default_idx_dir(tmp_path, monkeypatch):
  expected = "/usr/share/datasets/fashion-mnist"
  has_debian = os.path.exists(os.path.join(expected, "train-images-idx3-ubyte.gz"))
  assert ip.default_idx_dir("fashion_mnist") == (expected if has_debian else None)
  monkeypatch.setattr(
      ip, "_DEFAULT_IDX_DIRS",
      {"mnist": (str(tmp_path / "missing"), str(tmp_path / "idx")), "fashion_mnist": ()},
  )
  assert ip.default_idx_dir("mnist") is None
  _write_idx_dir(tmp_path / "idx", seed=2, gz=False)
  assert ip.default_idx_dir("mnist") == str(tmp_path / "idx")
  assert ip.default_idx_dir("fashion_mnist") is None


# --- training batches --------------------------------------------------------


def _all_hosts(source, steps, process_count, local_device_count, **kw):
  """Per step: the hosts' batches concatenated along the example axis."""
  iters = [
      ip.train_iterator(
          source,
          process_index=h,
          process_count=process_count,
          local_device_count=local_device_count,
          **kw,
      )
      for h in range(process_count)
  ]
  out = []
  for _ in range(steps):
    batches = [next(it) for it in iters]
    for b in batches:
      d = local_device_count
      assert b["image"].shape == (d, kw["global_batch_size"] // (process_count * d), 28, 28, 1)
      assert b["label"].shape == b["image"].shape[:2]
    out.append({
        k: np.concatenate([b[k].reshape((-1,) + b[k].shape[2:]) for b in batches])
        for k in ("image", "label")
    })
  return out


def _keys(batch):
  return [im.tobytes() for im in batch["image"]]


def test_train_batches_dtypes_and_labels(prepared):
  images, labels = prepared["mnist"]["train"]
  truth = dict(_as_table(images, labels))
  batch = next(ip.train_iterator(prepared["sources"]["train"], global_batch_size=12, seed=0))
  assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  for image, label in zip(batch["image"][0], batch["label"][0]):
    pixels = np.rint(image[..., 0] * 255).astype(np.uint8)
    assert truth[pixels.tobytes()] == label


def test_every_example_once_per_epoch_across_hosts_and_devices(prepared):
  source = prepared["sources"]["train"]
  steps_per_epoch = N_TRAIN // 12
  batches = _all_hosts(source, 2 * steps_per_epoch, 2, 2, global_batch_size=12, seed=4)
  written = {im.tobytes() for im in prepared["mnist"]["train"][0].reshape(N_TRAIN, -1).astype(np.float32) / np.float32(255)}
  for epoch in range(2):
    seen = [k for b in batches[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch] for k in _keys(b)]
    assert len(seen) == len(set(seen)) == N_TRAIN
    assert {np.frombuffer(k, np.float32).tobytes() for k in seen} == written
  assert _keys(batches[0]) != _keys(batches[steps_per_epoch])  # reshuffled


def test_remainder_is_dropped_each_epoch(prepared):
  it = ip.train_iterator(prepared["sources"]["train"], global_batch_size=8, seed=1)
  assert it.steps_per_epoch == N_TRAIN // 8
  for epoch in range(3):
    ids = np.concatenate([it.global_indices(epoch * it.steps_per_epoch + k) for k in range(it.steps_per_epoch)])
    assert len(set(ids.tolist())) == len(ids) == 8 * (N_TRAIN // 8)
    np.testing.assert_array_equal(ids, ip.epoch_permutation(N_TRAIN, 1, epoch)[: len(ids)])


@pytest.mark.parametrize("process_count,local_device_count", [(2, 1), (2, 2), (3, 2), (1, 4)])
def test_global_batches_do_not_depend_on_topology(prepared, process_count, local_device_count):
  source = prepared["sources"]["train"]
  kw = dict(global_batch_size=12, seed=7, start_step=3)
  single = _all_hosts(source, 8, 1, 1, **kw)
  multi = _all_hosts(source, 8, process_count, local_device_count, **kw)
  for a, b in zip(single, multi):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_host_reads_only_its_contiguous_slice(prepared):
  source = prepared["sources"]["train"]
  full = ip.train_iterator(source, global_batch_size=12, seed=2)
  host = ip.train_iterator(source, global_batch_size=12, seed=2, process_index=1, process_count=3)
  for step in (0, 4, 5, 11):
    np.testing.assert_array_equal(host.host_indices(step), full.global_indices(step)[4:8])


def test_resume_equals_uninterrupted_tail(prepared):
  source = prepared["sources"]["train"]
  kw = dict(global_batch_size=10, seed=3, process_index=1, process_count=2, local_device_count=1)
  it = ip.train_iterator(source, **kw)
  stream = [next(it) for _ in range(15)]
  assert it.step == 15
  resumed = ip.train_iterator(source, start_step=7, **kw)
  for expected in stream[7:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])
  assert resumed.step == 15
  finite = ip.train_iterator(source, start_step=13, num_steps=2, **kw)
  assert [b["label"].tolist() for b in finite] == [b["label"].tolist() for b in stream[13:]]


def test_seed_determines_order(prepared):
  source = prepared["sources"]["train"]

  def labels(seed):
    it = ip.train_iterator(source, global_batch_size=20, seed=seed)
    return [next(it)["label"].tolist() for _ in range(6)]

  def order(seed):
    it = ip.train_iterator(source, global_batch_size=20, seed=seed)
    return [it.global_indices(step).tolist() for step in range(6)]

  assert order(0) == order(0) and labels(0) == labels(0)
  assert order(0) != order(1) and labels(0) != labels(1)
  perm = ip.epoch_permutation(1000, 123, 5)
  assert sorted(perm.tolist()) == list(range(1000))
  assert not np.array_equal(perm, ip.epoch_permutation(1000, 123, 6))
  assert not np.array_equal(perm, ip.epoch_permutation(1000, 124, 5))
  np.testing.assert_array_equal(perm, ip.epoch_permutation(1000, 123, 5))
  # Pinned: the order must not change silently between versions/platforms.
  assert ip.epoch_permutation(10, 0, 0).tolist() == [7, 0, 8, 2, 3, 1, 6, 9, 4, 5]


def test_cache_threads_and_sources_agree(prepared):
  source = prepared["sources"]["train"]
  kw = dict(global_batch_size=12, seed=9, start_step=2, process_index=1, process_count=2, local_device_count=2)
  ref = [next(it) for it in [ip.train_iterator(source, cache=True, **kw)] for _ in range(7)]
  for other in (
      ip.train_iterator(source, cache=False, **kw),
      ip.train_iterator(source, cache=False, num_threads=2, num_steps=7, **kw),
      ip.train_iterator(ip.cache_source(source), **kw),
  ):
    got = list(other) if other._stop is not None else [next(other) for _ in range(7)]
    assert len(got) == 7
    for a, b in zip(ref, got):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  assert ip.cache_source(source) is ip.cache_source(source)  # memoised


def test_bad_batch_arguments_raise_one_line_errors(prepared):
  source = prepared["sources"]["train"]
  with pytest.raises(ValueError) as err:
    ip.train_iterator(source, global_batch_size=10, seed=0, process_count=2, local_device_count=3)
  message = str(err.value)
  assert "\n" not in message
  assert "global_batch_size=10" in message and "process_count" in message and "local_device_count" in message
  with pytest.raises(ValueError, match="process_index"):
    ip.train_iterator(source, global_batch_size=12, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="exceeds"):
    ip.train_iterator(source, global_batch_size=64, seed=0)
  with pytest.raises(ValueError, match="start_step"):
    ip.train_iterator(source, global_batch_size=12, seed=0, start_step=-1)
  with pytest.raises(ValueError, match="global_batch_size"):
    ip.eval_iterator(source, global_batch_size=0)
  with pytest.raises(ValueError, match="global_batch_size=9"):
    ip.eval_iterator(source, global_batch_size=9, process_count=2)


# --- eval batches ------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False])
def test_eval_counts_every_example_once_with_padding_masked(prepared, cache):
  source = prepared["sources"]["test"]
  global_batch, hosts, devices = 8, 2, 2
  per_host = []
  for h in range(hosts):
    batches = list(ip.eval_iterator(
        source, global_batch_size=global_batch, process_index=h,
        process_count=hosts, local_device_count=devices, cache=cache,
    ))
    assert len(batches) == ip.num_eval_batches(N_TEST, global_batch) == 3
    for b in batches:
      assert b["image"].shape == (devices, 2, 28, 28, 1)
      assert b["mask"].shape == b["label"].shape == (devices, 2)
      assert b["mask"].dtype == np.float32
    per_host.append(batches)
  images, labels, masks = [], [], []
  for k in range(3):  # global batch k = host 0's slice then host 1's
    for h in range(hosts):
      b = per_host[h][k]
      images.append(b["image"].reshape(-1, 28, 28, 1))
      labels.append(b["label"].reshape(-1))
      masks.append(b["mask"].reshape(-1))
  images, labels, masks = map(np.concatenate, (images, labels, masks))
  assert masks.sum() == N_TEST
  np.testing.assert_array_equal(masks, (np.arange(24) < N_TEST).astype(np.float32))
  assert not images[N_TEST:].any() and not labels[N_TEST:].any()
  expected_images, expected_labels = ip._read_records(source, range(N_TEST))  # in order
  np.testing.assert_array_equal(images[:N_TEST], expected_images.astype(np.float32) / 255)
  np.testing.assert_array_equal(labels[:N_TEST], expected_labels)
  got = _as_table(np.rint(images[:N_TEST] * 255).astype(np.uint8), labels[:N_TEST])
  assert got == _as_table(*prepared["mnist"]["test"])
