"""Offline TFDS preparation of Tiny ImageNet (not in the TFDS catalog).

Reads the official ``tiny-imagenet-200`` folder (``wnids.txt``,
``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` + ``val/val_annotations.txt``)
and writes an array_record TFDS dataset ``tiny_imagenet`` (64x64x3 JPEG, 200 classes
in ``wnids.txt`` order; splits ``train`` 100,000 and ``validation`` 10,000; the
unlabelled test images are skipped). The JPEG bytes are stored as they are. l0jax
reads the result from its folder, so the builder class is not registered with TFDS.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Tuple

from l0jax.data.idx import DataFileError

__all__ = ["prepare_tiny_imagenet"]

NAME = "tiny_imagenet"


def _listing(root: str) -> Tuple[List[str], Dict[str, List[Tuple[str, str]]]]:
  """(wnids, {split: [(path, wnid)]}) of a tiny-imagenet-200 folder."""
  wnids_path = os.path.join(root, "wnids.txt")
  if not os.path.isfile(wnids_path):
    raise DataFileError(f"{root} is not a tiny-imagenet-200 folder (no wnids.txt); "
                        "unpack tiny-imagenet-200.zip and pass its folder")
  with open(wnids_path) as f:
    wnids = [line.strip() for line in f if line.strip()]
  train = []
  for wnid in wnids:
    folder = os.path.join(root, "train", wnid, "images")
    if not os.path.isdir(folder):
      raise DataFileError(f"{folder} is missing (class {wnid} of wnids.txt)")
    train += [(os.path.join(folder, name), wnid) for name in sorted(os.listdir(folder))
              if name.lower().endswith((".jpeg", ".jpg"))]
  annotations = os.path.join(root, "val", "val_annotations.txt")
  if not os.path.isfile(annotations):
    raise DataFileError(f"{annotations} is missing")
  with open(annotations) as f:
    rows = [line.split("\t") for line in f if line.strip()]
  val = [(os.path.join(root, "val", "images", row[0]), row[1]) for row in rows]
  unknown = {w for _, w in val} - set(wnids)
  if unknown:
    raise DataFileError(f"{annotations} names classes not in wnids.txt: "
                        f"{sorted(unknown)[:3]}")
  return wnids, {"train": train, "validation": val}


def _builder(root: str, data_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  wnids, splits = _listing(root)

  class TinyImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Tiny ImageNet (200 classes, 64x64) from a local tiny-imagenet-200 folder."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # nothing to download, no checksums to find

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description="Tiny ImageNet, prepared by l0jax from tiny-imagenet-200.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(64, 64, 3), encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(names=wnids)}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(items) for split, items in splits.items()}

    def _generate_examples(self, items):
      for path, wnid in items:
        with open(path, "rb") as f:
          yield os.path.basename(path), {"image": f.read(), "label": wnid}

    def _log_download_bytes(self):
      print(f"Preparing {NAME} from {root} into {self.data_dir} (offline, once)...",
            file=sys.stderr, flush=True)

  return TinyImagenet(data_dir=data_dir, file_format="array_record")


def prepare_tiny_imagenet(root, data_dir) -> str:
  """Prepares ``tiny_imagenet`` in ``data_dir`` from the ``tiny-imagenet-200`` folder.

  Returns the prepared folder (``data_dir/tiny_imagenet/1.0.0``); an already prepared
  one is returned as is.
  """
  from l0jax.data import sources  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = os.fspath(data_dir)
  existing = sources.prepared_builder(NAME, data_dir)
  if existing is not None:
    return os.fspath(existing.data_dir)
  os.makedirs(data_dir, exist_ok=True)
  builder = _builder(os.fspath(root), data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  sources.assert_no_tensorflow()
  return os.fspath(builder.data_dir)
