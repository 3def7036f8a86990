"""What l0jax knows about datasets without reading them: shapes, classes, split sizes,
preprocessing family, normalisation statistics and how to prepare each one offline.

The real source of truth is the prepared dataset's TFDS builder info
(:func:`l0jax.data.sources.dataset_info`); this table serves ``config.fake_data`` on
machines where a dataset is not prepared, the defaults of the preprocessing, and the
one-line "how to prepare it" hint. A dataset missing here still works when it is
prepared in the data dir: its family then follows from its image shape.

Families (the default preprocessing, :func:`l0jax.data.transforms.preprocessing`):

* ``"gray"``: small single-channel images (MNIST-like): no augmentation, pixels / 255;
* ``"small"``: fixed-size images up to 64 x 64 (CIFAR-like): pad-4 random crop + flip,
  per-channel mean / std;
* ``"large"``: variable-size or larger images (ImageNet-like): random-resized crop to
  ``image_size`` + flip; eval resizes the shorter side to ``image_size * 256 / 224``
  and takes the centre crop.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

__all__ = ["KnownDataset", "CATALOG", "family_of", "how_to_prepare", "lookup"]

# Per-channel statistics of the training images, on the [0, 1] pixel scale.
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_SVHN_MEAN, _SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


class KnownDataset(NamedTuple):
  """Static facts about a dataset (``None`` image dims: sizes vary per image)."""
  image_shape: Tuple[Optional[int], Optional[int], int]
  num_classes: int
  split_sizes: dict
  family: str                    # "gray" | "small" | "large"
  mean: Tuple[float, ...]        # per channel, [0, 1] scale
  std: Tuple[float, ...]
  encoding: str                  # how the images are stored: "png" | "jpeg"
  prepare: str                   # how to prepare it; {data_dir} is filled in


_TFDS_BUILD = ("prepare it once (on a machine with internet and TensorFlow): "
               "`tfds build {name} --file_format=array_record --data_dir={data_dir}` "
               "(or copy a prepared {name} folder there)")
_IDX = ("it is prepared automatically from MNIST-format IDX files: set "
        "--config.idx_dir to a folder holding train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz{extra}")
_GRAY = ((0.0,), (1.0,))

CATALOG = {
    "mnist": KnownDataset(
        (28, 28, 1), 10, {"train": 60_000, "test": 10_000}, "gray", *_GRAY, "png",
        _IDX.replace("{extra}", " (from yann.lecun.com or any MNIST mirror)")),
    "fashion_mnist": KnownDataset(
        (28, 28, 1), 10, {"train": 60_000, "test": 10_000}, "gray", *_GRAY, "png",
        _IDX.replace("{extra}", " (Debian: `apt-get install dataset-fashion-mnist`, "
                                "found automatically)")),
    "kmnist": KnownDataset(
        (28, 28, 1), 10, {"train": 60_000, "test": 10_000}, "gray", *_GRAY, "png",
        _TFDS_BUILD),
    "cifar10": KnownDataset(
        (32, 32, 3), 10, {"train": 50_000, "test": 10_000}, "small",
        _CIFAR10_MEAN, _CIFAR10_STD, "png", _TFDS_BUILD),
    "cifar100": KnownDataset(
        (32, 32, 3), 100, {"train": 50_000, "test": 10_000}, "small",
        _CIFAR100_MEAN, _CIFAR100_STD, "png", _TFDS_BUILD),
    "svhn_cropped": KnownDataset(
        (32, 32, 3), 10, {"train": 73_257, "test": 26_032, "extra": 531_131}, "small",
        _SVHN_MEAN, _SVHN_STD, "png", _TFDS_BUILD),
    "imagenet_resized/32x32": KnownDataset(
        (32, 32, 3), 1000, {"train": 1_281_167, "validation": 50_000}, "small",
        _IMAGENET_MEAN, _IMAGENET_STD, "png", _TFDS_BUILD),
    "imagenet_resized/64x64": KnownDataset(
        (64, 64, 3), 1000, {"train": 1_281_167, "validation": 50_000}, "small",
        _IMAGENET_MEAN, _IMAGENET_STD, "png", _TFDS_BUILD),
    "tiny_imagenet": KnownDataset(
        (64, 64, 3), 200, {"train": 100_000, "validation": 10_000}, "small",
        _IMAGENET_MEAN, _IMAGENET_STD, "jpeg",
        "not in the TFDS catalog: l0jax prepares it from the official "
        "tiny-imagenet-200 folder: `python -c \"from l0jax import data; "
        "data.prepare_tiny_imagenet('PATH/tiny-imagenet-200', '{data_dir}')\"`"),
    "imagenette": KnownDataset(
        (None, None, 3), 10, {"train": 9_469, "validation": 3_925}, "large",
        _IMAGENET_MEAN, _IMAGENET_STD, "jpeg", _TFDS_BUILD),
    "imagenet2012": KnownDataset(
        (None, None, 3), 1000, {"train": 1_281_167, "validation": 50_000}, "large",
        _IMAGENET_MEAN, _IMAGENET_STD, "jpeg",
        "ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar into MANUAL_DIR, then `tfds build imagenet2012 "
        "--manual_dir=MANUAL_DIR --file_format=array_record --data_dir={data_dir}`"),
}


def lookup(name: str) -> Optional[KnownDataset]:
  """The catalog entry of ``name`` ("cifar10", "imagenette/320px-v2", ...), or None.

  A TFDS config or version suffix falls back to the base name's entry.
  """
  base = name.split(":")[0]
  if base in CATALOG:
    return CATALOG[base]
  return CATALOG.get(base.split("/")[0])


def family_of(image_shape) -> str:
  """The preprocessing family of an image shape (see the module docstring)."""
  h, w, c = image_shape
  if h is None or w is None or max(h, w) > 64:
    return "large"
  if c == 1 and max(h, w) <= 32:
    return "gray"
  return "small"


def how_to_prepare(name: str, data_dir: str) -> str:
  """One sentence saying how to prepare ``name`` into ``data_dir``."""
  known = lookup(name)
  text = known.prepare if known is not None else _TFDS_BUILD
  return text.format(name=name.split(":")[0], data_dir=data_dir)
