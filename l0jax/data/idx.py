"""MNIST-format IDX files and the offline TFDS preparation of (Fashion-)MNIST from them.

``prepare_idx_dataset`` feeds TFDS's own registered ``mnist`` / ``fashion_mnist``
builder from local IDX files (same name, version and features), so the result is
exactly what ``tfds.data_source(name, data_dir=...)`` reads. Nothing is downloaded and
TensorFlow is not needed: images are handed to TFDS as PIL images, which TFDS encodes
as PNG with PIL.
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
import tempfile
import zlib
from typing import Any, Dict, Optional, Tuple

import numpy as np

from l0jax.errors import UserError

__all__ = ["IDX_DATASETS", "read_idx", "write_idx", "default_idx_dir",
           "prepare_idx_dataset", "DataFileError"]

IDX_DATASETS = ("mnist", "fashion_mnist")
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_DEFAULT_IDX_DIRS = {
    "mnist": ("/usr/share/datasets/mnist",),
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}
_IMAGE_HW = (28, 28)
_NUM_CLASSES = 10


class DataFileError(UserError, ValueError):
  """A dataset file is missing, truncated or corrupt (the message names the file)."""


def _check_name(name: str) -> None:
  if name not in IDX_DATASETS:
    raise UserError(f"{name!r} has no IDX route; IDX files prepare only: "
                    f"{', '.join(IDX_DATASETS)}.")


# IDX type byte -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def write_idx(path: str | os.PathLike, array: Any) -> None:
  """Writes ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``).

  Header: two zero bytes, a type byte (0x08 = uint8), the number of dimensions,
  then each dimension as a big-endian uint32; data follow row-major, big-endian.
  So uint8 images [N, 28, 28] start with magic 0x00000803 and labels [N] with
  0x00000801.
  """
  arr = np.asarray(array)
  if arr.ndim < 1 or arr.ndim > 255:
    raise ValueError(f"IDX needs 1 to 255 dimensions, got shape {arr.shape}.")
  for code, dtype in _IDX_DTYPES.items():
    if arr.dtype.kind == dtype.kind and arr.dtype.itemsize == dtype.itemsize:
      break
  else:
    raise ValueError(f"IDX cannot store dtype {arr.dtype}.")
  header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
  payload = header + np.ascontiguousarray(arr, dtype=dtype).tobytes()
  path = os.fspath(path)
  if path.endswith(".gz"):
    payload = gzip.compress(payload, mtime=0)
  with open(path, "wb") as f:
    f.write(payload)


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file, gzipped or raw (detected from its first bytes).

  Raises:
    DataFileError: naming the file, when it is not IDX, truncated or corrupt.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"\x1f\x8b":
    try:
      data = gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
      raise DataFileError(f"{path} is a corrupt or truncated gzip file ({e}); "
                          "replace it with a good copy") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise DataFileError(f"{path} is not an IDX file (bad magic).")
  ndim = data[3]
  if len(data) < 4 + 4 * ndim:
    raise DataFileError(f"{path}: truncated IDX header.")
  shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
  dtype = _IDX_DTYPES[data[2]]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  body = memoryview(data)[4 + 4 * ndim :]
  if len(body) != expected:
    raise DataFileError(
        f"{path}: IDX header says shape {shape} ({expected} bytes) but the file "
        f"holds {len(body)} data bytes.")
  return np.frombuffer(body, dtype=dtype).reshape(shape).astype(
      dtype.newbyteorder("="), copy=True)


def _idx_file(idx_dir, split: str, kind: str) -> Optional[str]:
  """Path of the images / labels IDX file of `split` in idx_dir, or None."""
  prefix = _IDX_PREFIX[split]
  suffix = "idx3-ubyte" if kind == "images" else "idx1-ubyte"
  for sep in ("-", "."):  # "train-images-idx3-ubyte" and "train-images.idx3-ubyte"
    for ext in (".gz", ""):
      path = os.path.join(os.fspath(idx_dir), f"{prefix}-{kind}{sep}{suffix}{ext}")
      if os.path.isfile(path):
        return path
  return None


def idx_files(idx_dir) -> Dict[str, Tuple[str, str]]:
  """{split: (images_path, labels_path)}; DataFileError naming what is missing."""
  files, missing = {}, []
  for split, prefix in _IDX_PREFIX.items():
    images, labels = _idx_file(idx_dir, split, "images"), _idx_file(idx_dir, split, "labels")
    if images is None:
      missing.append(f"{prefix}-images-idx3-ubyte[.gz]")
    if labels is None:
      missing.append(f"{prefix}-labels-idx1-ubyte[.gz]")
    files[split] = (images, labels)
  if missing:
    raise DataFileError(f"IDX folder {os.fspath(idx_dir)!r} lacks {', '.join(missing)}.")
  return files


def has_idx_files(idx_dir) -> bool:
  if idx_dir is None or not os.path.isdir(idx_dir):
    return False
  try:
    idx_files(idx_dir)
  except DataFileError:
    return False
  return True


def default_idx_dir(name: str) -> Optional[str]:
  """A local folder holding `name`'s IDX files, or None.

  fashion_mnist: /usr/share/datasets/fashion-mnist (Debian package
  dataset-fashion-mnist); mnist: /usr/share/datasets/mnist.
  """
  _check_name(name)
  for candidate in _DEFAULT_IDX_DIRS[name]:
    if has_idx_files(candidate):
      return candidate
  return None


def _read_idx_split(images_path: str, labels_path: str):
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.dtype != np.uint8 or images.shape[1:] not in (_IMAGE_HW, _IMAGE_HW + (1,)):
    raise DataFileError(f"{images_path}: expected uint8 images [N, 28, 28], got "
                        f"{images.dtype} {images.shape}.")
  if labels.ndim != 1 or len(labels) != len(images):
    raise DataFileError(f"{labels_path}: expected {len(images)} labels, got shape "
                        f"{labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
    raise DataFileError(f"{labels_path}: labels must lie in [0, {_NUM_CLASSES}).")
  return images.reshape((-1,) + _IMAGE_HW), labels.astype(np.int64)


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _idx_builder(name: str, idx_dir, data_dir: str):
  """TFDS's registered `name` builder, fed from local IDX files."""
  tfds = _tfds()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  base = tfds.builder_cls(name)
  files = idx_files(idx_dir)
  registered_name, source = name, os.fspath(idx_dir)

  class IdxBuilder(base, skip_registration=True):
    """Same name, version and features as TFDS's builder; reads local IDX."""

    name = registered_name
    # TFDS 4.9.x derives `code_path` (used only to find checksums.tsv of URLs
    # to download) via `importlib_resources`, which may not be installed for
    # builders defined in a package. Nothing is downloaded here.
    code_path = None

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing is downloaded.
      return {split: self._generate_idx_examples(*paths)
              for split, paths in files.items()}

    def _generate_idx_examples(self, images_path, labels_path):
      images, labels = _read_idx_split(images_path, labels_path)
      # Keys are the IDX indices, as in TFDS's own builder, so the on-disk
      # (key-hash shuffled) record order matches `tfds build`. A PIL image is
      # PNG-encoded by TFDS with PIL (a numpy array would need TensorFlow).
      for index in range(len(labels)):
        yield index, {"image": Image.fromarray(images[index], mode="L"),
                      "label": int(labels[index])}

    # TFDS prints "Downloading and preparing ..." around every preparation.
    def _log_download_bytes(self):
      print(f"Preparing {registered_name} from the IDX files in {source} into "
            f"{self.data_dir} (offline, once)...", file=sys.stderr, flush=True)

    def _log_download_done(self):
      print(f"Prepared {registered_name} in {self.data_dir}.", file=sys.stderr,
            flush=True)

  return IdxBuilder(data_dir=data_dir, file_format="array_record")


def prepare_idx_dataset(name: str, idx_dir, data_dir) -> str:
  """Prepares TFDS dataset `name` in data_dir from IDX files in idx_dir.

  The result is exactly what ``tfds.data_source(name, data_dir=data_dir)`` reads:
  array_record files under ``data_dir/name/<version>/`` written by a subclass of
  TFDS's own builder (same name, version, features: image uint8 (28, 28, 1), label
  ClassLabel(10)). If data_dir already holds the prepared dataset it is used as is
  (idx_dir is not even read). No TensorFlow, no network.

  Returns:
    The folder of the prepared dataset (``data_dir/name/<version>``).
  """
  from l0jax.data import sources  # pylint: disable=g-import-not-at-top
  _check_name(name)
  data_dir = os.fspath(data_dir)
  builder = sources.prepared_builder(name, data_dir)
  if builder is not None:
    return os.fspath(builder.data_dir)
  if idx_dir is None or not os.path.isdir(idx_dir):
    raise DataFileError(f"IDX folder {idx_dir!r} for {name} does not exist (needed to "
                        f"prepare {name} in {data_dir!r}).")
  os.makedirs(data_dir, exist_ok=True)
  builder = _idx_builder(name, idx_dir, data_dir)
  config = _tfds().download.DownloadConfig(try_download_gcs=False)
  try:
    with tempfile.TemporaryDirectory(prefix="l0jax_idx_dl_") as download_dir:
      builder.download_and_prepare(download_dir=download_dir, download_config=config)
  except DataFileError:
    raise
  except Exception:
    # Another process sharing data_dir may have finished first (the final
    # rename of TFDS's incomplete.* folder then fails here): accept its result.
    if sources.prepared_builder(name, data_dir) is None:
      raise
  sources.assert_no_tensorflow()
  return os.fspath(builder.data_dir)
