"""Datasets on disk (TFDS, array_record, no TensorFlow) and fake ones, as random-access
sources of (image, label) records.

A *source* has ``info`` (:class:`DatasetInfo`), ``len(source)`` and
``read(indices) -> (images, labels)``: ``images`` is a uint8 ``[n, H, W, C]`` array
or a list of encoded (PNG / JPEG) or decoded images, ``labels`` int32 ``[n]``.

* :class:`TfdsSource`: a split of any TFDS image-classification dataset prepared in
  array_record format (``tfds.data_source``); images stay encoded until the
  preprocessing decodes them. Datasets whose builder code is not installed (a custom
  builder, or one prepared elsewhere) are read from their folder
  (``tfds.builder_from_directory``).
* :class:`ArraySource`: a split decoded into memory (:func:`cache_source`).
* :class:`FakeSource`: synthetic, learnable images with the dataset's shape, classes
  and split sizes, encoded like the real ones, deterministic from a seed
  (``config.fake_data``).

Nothing here downloads anything; module import does no I/O and does not import
TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import sys
import threading
import types
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from l0jax.data import catalog, idx, randomness, transforms
from l0jax.errors import UserError

__all__ = ["DatasetInfo", "DatasetNotPrepared", "dataset_info", "load_split",
           "TfdsSource", "ArraySource", "FakeSource", "cache_source", "is_prepared",
           "prepared_builder"]


class DatasetNotPrepared(UserError, FileNotFoundError):
  """The dataset is not in the data dir; the message says how to prepare it."""


class DatasetInfo(NamedTuple):
  """What the pipeline and the model need to know about a dataset."""
  name: str
  image_shape: Tuple[Optional[int], Optional[int], int]  # None: varies per image
  num_classes: int
  split_sizes: Dict[str, int]
  family: str                   # "gray" | "small" | "large" (catalog module doc)
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  image_key: str = "image"
  label_key: str = "label"
  encoding: str = "png"


def assert_no_tensorflow() -> None:
  if "tensorflow" in sys.modules:  # pragma: no cover - a regression guard
    raise RuntimeError("l0jax.data imported TensorFlow; the pipeline must run "
                       "without it (tfds.data_source + array_record only).")


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _version_dirs(data_dir: str, name: str) -> List[str]:
  """Prepared version folders ``data_dir/name[/config]/<version>``, newest first."""
  base = os.path.join(data_dir, *name.split(":")[0].split("/"))
  if not os.path.isdir(base):
    return []
  found = [os.path.join(base, v) for v in os.listdir(base)
           if os.path.isfile(os.path.join(base, v, "dataset_info.json"))]
  key = lambda p: tuple(int(t) if t.isdigit() else -1
                        for t in os.path.basename(p).split("."))
  return sorted(found, key=key, reverse=True)


def prepared_builder(name: str, data_dir):
  """The TFDS builder of ``name`` prepared in ``data_dir``, or None.

  Raises:
    UserError: prepared, but not in array_record format.
  """
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(os.path.join(data_dir, name.split(":")[0].split("/")[0])):
    return None  # (and spares TFDS's warning about a missing folder)
  tfds = _tfds()
  builder = None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception:  # not a registered builder (or its code needs TensorFlow)
    builder = None
  if builder is None or not builder.is_prepared():
    folders = _version_dirs(data_dir, name)
    if not folders:
      return None
    builder = tfds.builder_from_directory(folders[0])
  formats = {str(getattr(f, "value", f)) for f in builder.info.available_file_formats()}
  formats.add(str(getattr(builder.info.file_format, "value", builder.info.file_format)))
  if "array_record" not in formats:
    raise UserError(
        f"{name} is prepared in {builder.data_dir} only as {sorted(formats)}; l0jax "
        "reads array_record (random access without TensorFlow): convert it with "
        f"`tfds convert_format --dataset_dir={builder.data_dir} "
        "--out_file_format=array_record` or prepare it again with "
        "--file_format=array_record")
  return builder


def is_prepared(name: str, data_dir) -> bool:
  """Whether ``name`` is prepared (array_record) in data_dir."""
  return prepared_builder(name, data_dir) is not None


def info_from_builder(name: str, builder) -> DatasetInfo:
  tfds = _tfds()
  features = builder.info.features
  keys = builder.info.supervised_keys
  if keys and len(keys) == 2 and all(isinstance(k, str) for k in keys):
    image_key, label_key = keys
  else:
    image_key = next((k for k, f in features.items()
                      if isinstance(f, tfds.features.Image)), None)
    label_key = next((k for k, f in features.items()
                      if isinstance(f, tfds.features.ClassLabel)), None)
  image, label = features[image_key] if image_key else None, (
      features[label_key] if label_key else None)
  if not isinstance(image, tfds.features.Image) or not isinstance(
      label, tfds.features.ClassLabel):
    raise UserError(f"{name} is not an image-classification dataset (needs an Image "
                    "and a ClassLabel feature, e.g. supervised_keys=('image', "
                    f"'label')); its features: {list(features)}")
  h, w, c = tuple(image.shape)
  if c not in (1, 3):
    raise UserError(f"{name} images have {c} channels; l0jax reads 1 (gray) or 3 (RGB)")
  known = catalog.lookup(name)
  family = known.family if known else catalog.family_of((h, w, c))
  if known and len(known.mean) == c:
    mean, std = known.mean, known.std
  else:
    mean, std = ((0.0,), (1.0,)) if family == "gray" else ((0.5,) * c, (0.5,) * c)
  sizes = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
  return DatasetInfo(name, (h, w, c), int(label.num_classes), sizes, family,
                     tuple(mean), tuple(std), image_key, label_key,
                     image.encoding_format or "png")


def _info_from_catalog(name: str) -> Optional[DatasetInfo]:
  known = catalog.lookup(name)
  if known is None:
    return None
  return DatasetInfo(name, known.image_shape, known.num_classes, dict(known.split_sizes),
                     known.family, known.mean, known.std, encoding=known.encoding)


def _not_prepared(name: str, data_dir) -> DatasetNotPrepared:
  where = os.fspath(data_dir) if data_dir is not None else "~/tensorflow_datasets"
  return DatasetNotPrepared(
      f"{name} is not prepared in data_dir={where!r}: "
      f"{catalog.how_to_prepare(name, where)}; or train on synthetic data of its "
      "shape with --config.fake_data=True")


def dataset_info(name: str, data_dir=None, *, fake: bool = False) -> DatasetInfo:
  """Shape, classes, split sizes and defaults of ``name``.

  From the dataset prepared in ``data_dir`` when there is one; otherwise, for
  ``fake=True`` or ``data_dir=None``, from :data:`l0jax.data.catalog.CATALOG`.

  Raises:
    DatasetNotPrepared: not prepared and (for real data) or unknown to the catalog.
  """
  builder = prepared_builder(name, data_dir) if data_dir is not None else None
  if builder is not None:
    return info_from_builder(name, builder)
  info = _info_from_catalog(name)
  if info is None:
    if fake:
      raise UserError(
          f"fake_data needs {name}'s image shape, classes and split sizes: prepare it "
          f"in the data dir, or use one of {', '.join(catalog.CATALOG)}")
    raise _not_prepared(name, data_dir)
  if data_dir is not None and not fake and name not in idx.IDX_DATASETS:
    raise _not_prepared(name, data_dir)
  return info


# ------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------
class TfdsSource:
  """A split of a prepared TFDS dataset; images are returned encoded (bytes)."""

  def __init__(self, info: DatasetInfo, split: str, data_dir: str, builder,
               skip_decoding: bool = True):
    """``skip_decoding=False`` lets TFDS decode the images (OpenCV or PIL): slower for
    resized JPEGs, but what ``tfds.testing.mock_data`` needs (it has no bytes)."""
    self.info, self.split, self.data_dir = info, split, os.fspath(data_dir)
    self._folder, self._skip_decoding = os.fspath(builder.data_dir), skip_decoding
    tfds = _tfds()
    decoders = {info.image_key: tfds.decode.SkipDecoding()} if skip_decoding else None
    try:
      self._source = builder.as_data_source(split=split, decoders=decoders)
    except (ValueError, KeyError) as e:
      raise UserError(f"split {split!r} of {info.name}: {str(e).splitlines()[0]} "
                      f"(splits: {', '.join(info.split_sizes)})") from None
    assert_no_tensorflow()

  def __len__(self) -> int:
    return len(self._source)

  def __getstate__(self):  # grain worker processes rebuild the TFDS source
    return {"info": self.info, "split": self.split, "data_dir": self.data_dir,
            "folder": self._folder, "skip_decoding": self._skip_decoding}

  def __setstate__(self, state):
    builder = _tfds().builder_from_directory(state["folder"])
    self.__init__(state["info"], state["split"], state["data_dir"], builder,
                  state["skip_decoding"])

  def _records(self, indices: List[int]) -> list:
    if not indices:
      return []
    try:
      return self._source.__getitems__(indices)  # one batched array_record read
    except TypeError:  # tfds.testing.mock_data's __getitems__ does not bind (TFDS 4.9)
      return [self._source[i] for i in indices]

  def read(self, indices: Sequence[int]):
    indices = [int(i) for i in indices]
    try:
      records = self._records(indices)
    except Exception as e:  # array_record / riegeli / protobuf errors
      raise idx.DataFileError(
          f"cannot read records of {self.info.name}/{self.split} under "
          f"{self._folder}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
          " (a corrupt or truncated file: prepare the dataset again)") from None
    images = [r[self.info.image_key] for r in records]
    labels = np.fromiter((int(r[self.info.label_key]) for r in records), np.int32,
                         len(records))
    return images, labels


@dataclasses.dataclass(eq=False)
class ArraySource:
  """A decoded split held in memory: images uint8 [N, H, W, C], labels int32 [N]."""
  info: DatasetInfo
  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if len(self.images) != len(self.labels):
      raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices):
    indices = np.asarray(indices, np.int64)
    return self.images[indices], self.labels[indices].astype(np.int32)


def _absolute_ranges(spec: str, sizes: Dict[str, int]) -> List[Tuple[str, int, int]]:
  """TFDS split syntax ("train[:10%]+test[5:20]") -> [(split, from, to)]."""
  tfds = _tfds()
  infos = {k: types.SimpleNamespace(num_examples=v, shard_lengths=[v])
           for k, v in sizes.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
  except (ValueError, AssertionError) as e:
    raise UserError(f"split {spec!r}: {str(e).splitlines()[0]} (splits: "
                    f"{', '.join(f'{k} ({v})' for k, v in sizes.items())})") from None
  return [(i.splitname, int(i.from_ or 0),
           sizes[i.splitname] if i.to is None else int(i.to)) for i in instructions]


class FakeSource:
  """Synthetic examples with ``info``'s shape, classes and split sizes.

  Example ``i`` of a split is a pure function of ``(seed, split, i)``: a label
  uniform over the classes and an image of uniform noise in [0, 60] with a bright
  class-specific patch (and, for colour images, a class-specific tint), so models
  learn it. Variable-size datasets get heights and widths in [0.5, 1] x 400. Images
  are encoded like the real dataset's (``info.encoding``), so they go through the
  same decoding and augmentation as real records.
  """

  def __init__(self, info: DatasetInfo, split: str, seed: int = 0):
    self.info, self.split, self.seed = info, split, int(seed)
    self._ranges = _absolute_ranges(split, info.split_sizes)
    self._starts = np.cumsum([0] + [b - a for _, a, b in self._ranges])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _locate(self, i: int) -> Tuple[str, int]:
    k = int(np.searchsorted(self._starts, i, side="right")) - 1
    name, start, _ = self._ranges[k]
    return name, start + i - int(self._starts[k])

  def example(self, i: int) -> Tuple[np.ndarray, int]:
    """The decoded image (uint8 [H, W, C]) and the label of example ``i``."""
    split, offset = self._locate(int(i))
    split_id = int.from_bytes(split.encode()[:8].ljust(8, b"\0"), "little")
    words = randomness.mix64(np.array([self.seed, split_id, offset], np.uint64))
    rng = np.random.default_rng(words)
    h, w, c = self.info.image_shape
    if h is None or w is None:
      h, w = (int(v) for v in rng.integers(200, 401, size=2))
    label = int(rng.integers(self.info.num_classes))
    image = rng.integers(0, 61, size=(h, w, c), dtype=np.int64)
    cells = int(np.ceil(np.sqrt(self.info.num_classes)))
    row, col = divmod(label, cells)
    ph, pw = max(1, h // (cells + 1)), max(1, w // (cells + 1))
    top, left = (row * (h - ph)) // max(cells - 1, 1), (col * (w - pw)) // max(cells - 1, 1)
    tint = 1.0 if c == 1 else 0.5 + 0.5 * np.array([(label >> b) & 1 for b in range(c)])
    image[top:top + ph, left:left + pw] += (180 * np.asarray(tint)).astype(np.int64)
    return np.clip(image, 0, 255).astype(np.uint8), label

  def read(self, indices):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    images, labels = [], np.empty((len(indices),), np.int32)
    for k, i in enumerate(indices):
      array, labels[k] = self.example(int(i))
      pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
      buffer = io.BytesIO()
      if self.info.encoding == "jpeg":
        pil.save(buffer, format="JPEG", quality=90)
      else:
        pil.save(buffer, format="PNG", compress_level=1)
      images.append(buffer.getvalue())
    return images, labels


def load_split(name: str, split: str, *, data_dir, idx_dir=None, fake: bool = False,
               seed: int = 0):
  """A random-access source of ``name``/``split`` (any TFDS split string).

  ``fake=True`` gives a :class:`FakeSource` of the dataset's shape (``seed`` picks
  its examples). (Fashion-)MNIST not yet prepared in data_dir is prepared first from
  IDX files (``idx_dir``, default: the Debian package's folder).

  Raises:
    DatasetNotPrepared: with the one line saying how to prepare the dataset.
  """
  data_dir = os.fspath(data_dir)
  if fake:
    return FakeSource(dataset_info(name, data_dir, fake=True), split, seed)
  builder = prepared_builder(name, data_dir)
  if builder is None and name in idx.IDX_DATASETS:
    idx_dir = idx_dir or idx.default_idx_dir(name)
    if not idx.has_idx_files(idx_dir):
      given = f" (idx_dir={os.fspath(idx_dir)!r} lacks them)" if idx_dir else ""
      raise DatasetNotPrepared(
          f"{name} is not prepared in data_dir={data_dir!r}{given}: "
          f"{catalog.how_to_prepare(name, data_dir)}; or use --config.fake_data=True")
    idx.prepare_idx_dataset(name, idx_dir, data_dir)
    builder = prepared_builder(name, data_dir)
  if builder is None:
    raise _not_prepared(name, data_dir)
  return TfdsSource(info_from_builder(name, builder), split, data_dir, builder)


# ------------------------------------------------------------------------------------
# Whole-split cache
# ------------------------------------------------------------------------------------
_CACHE: Dict[tuple, ArraySource] = {}
_CACHE_LOCK = threading.Lock()


def cacheable(source) -> bool:
  """Whether ``source`` is a real split of fixed-size images (worth decoding once)."""
  h, w, _ = source.info.image_shape
  return isinstance(source, TfdsSource) and h is not None and w is not None


def cache_source(source, *, num_threads: int = 4, chunk_size: int = 2048) -> ArraySource:
  """Decodes a whole split of fixed-size images once into an :class:`ArraySource`.

  Memoised per (dataset folder, split) in this process (up to 4 splits), so a run
  that evaluates after training, or the tests, decode once. Decoding 60,000 28x28
  PNGs takes about 2.5 s on one core of this machine.
  """
  if isinstance(source, ArraySource):
    return source
  if not cacheable(source):
    raise ValueError(f"cannot cache {type(source).__name__} of shape "
                     f"{source.info.image_shape}")
  key = (source._folder, source.split)  # pylint: disable=protected-access
  with _CACHE_LOCK:
    if key in _CACHE:
      return _CACHE[key]
  n, shape = len(source), source.info.image_shape

  def read(start):
    images, labels = source.read(range(start, min(start + chunk_size, n)))
    return transforms.decode_batch(images, shape), labels

  starts = range(0, n, chunk_size)
  if num_threads > 1 and n > chunk_size:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      parts = list(pool.map(read, starts))
  else:
    parts = [read(start) for start in starts]
  images = (np.concatenate([p[0] for p in parts]) if parts
            else np.zeros((0,) + tuple(shape), np.uint8))
  labels = (np.concatenate([p[1] for p in parts]) if parts else np.zeros((0,), np.int32))
  cached = ArraySource(source.info, images, labels)
  with _CACHE_LOCK:
    if len(_CACHE) >= 4:
      _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = cached
  return cached
