"""Per-dataset preprocessing in one place: decoding, augmentation, eval crops, scaling.

A :class:`Preprocessing` (built from the dataset's info and the config by
:func:`preprocessing`) says what the model sees; the functions below apply it to host
numpy images. Every random choice comes from a row of uniforms that
:func:`l0jax.data.randomness.example_uniforms` derives from (seed, epoch, example
index), so augmentation is a pure function of those.

Two paths, one meaning:

* fixed-size images kept at their size (MNIST, CIFAR, ...): a whole batch is decoded
  (or gathered from memory) and :func:`augment_batch` pads, crops and flips it with
  one numpy gather;
* everything else (variable-size images, resizing): :func:`train_example` /
  :func:`eval_example` per image with OpenCV, decoding JPEGs at a reduced DCT scale
  where the crop allows it.

Augmentations (``Preprocessing.augment``):

* ``"pad_crop"``: zero-pad ``crop_padding`` pixels on each side, take a random crop of
  the original size (offsets uniform in ``[0, 2 * crop_padding]``);
* ``"random_resized_crop"``: the Inception crop: up to 10 tries of an area fraction
  uniform in ``rrc_scale`` and an aspect ratio log-uniform in ``rrc_ratio``; the first
  that fits is taken at a uniform position, else the centre crop of the largest
  in-range aspect ratio; resized (bilinear, as ``tf.image.resize``) to ``image_size``;
* ``"_flip"`` suffix (or ``"flip"`` alone): a horizontal flip with probability 1/2;
* eval (per-example path): resize the shorter side to ``eval_resize`` and take the
  centre ``image_size`` crop.

Pixels are then scaled to float32 ``(x / 255 - mean) / std`` per channel.
"""

from __future__ import annotations

import functools
import io
import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from l0jax.errors import UserError

__all__ = ["AUGMENTS", "Preprocessing", "preprocessing", "decode_image",
           "augment_batch", "train_example", "eval_example", "normalize",
           "NUM_DRAWS"]

AUGMENTS = ("auto", "none", "flip", "pad_crop", "pad_crop_flip", "random_resized_crop",
            "random_resized_crop_flip")
_RRC_TRIES = 10
NUM_DRAWS = 4 * _RRC_TRIES + 1  # uniforms per example: crop tries + the flip
_FLIP_DRAW = NUM_DRAWS - 1
Image = Union[bytes, np.ndarray]  # encoded (PNG/JPEG) or decoded uint8 [H, W, C]


class PreprocessingError(UserError, ValueError):
  """A preprocessing setting that does not fit the dataset."""


class Preprocessing(NamedTuple):
  """What the model sees and how it gets there (static, hashable)."""
  image_shape: Tuple[int, int, int]  # model input (H, W, C)
  augment: str                       # one of AUGMENTS except "auto"
  crop_padding: int
  rrc_scale: Tuple[float, float]
  rrc_ratio: Tuple[float, float]
  eval_resize: int                   # 0: images already have image_shape
  mean: Tuple[float, ...]
  std: Tuple[float, ...]

  @property
  def per_example(self) -> bool:
    """Whether images go through PIL one by one (resizing) instead of as a batch."""
    return self.eval_resize > 0

  @property
  def flips(self) -> bool:
    return self.augment.endswith("flip")


def preprocessing(info, *, image_size: int = 0, augment: str = "auto",
                  crop_padding: int = 4, rrc_scale: Sequence[float] = (0.08, 1.0),
                  rrc_ratio: Sequence[float] = (3 / 4, 4 / 3), eval_resize: int = 0,
                  mean: Sequence[float] = (), std: Sequence[float] = ()) -> Preprocessing:
  """The preprocessing of a dataset (``info``: :class:`l0jax.data.DatasetInfo`).

  Defaults follow ``info.family``: ``"gray"`` no augmentation; ``"small"`` pad-4
  crop + flip; ``"large"`` random-resized crop to ``image_size`` (224 when 0) + flip
  and eval resize to ``round(image_size * 256 / 224)`` + centre crop. ``mean`` /
  ``std`` default to ``info.mean`` / ``info.std``.

  Raises:
    PreprocessingError: a setting that cannot apply to this dataset.
  """
  h, w, c = info.image_shape
  fixed = h is not None and w is not None
  if augment not in AUGMENTS:
    raise PreprocessingError(f"augment={augment!r}; allowed: {', '.join(AUGMENTS)}")
  if not isinstance(image_size, int) or image_size < 0:
    raise PreprocessingError(f"image_size={image_size!r} must be an int >= 0 "
                             "(0: the dataset's own size, 224 for variable sizes)")
  if augment == "auto":
    augment = {"gray": "none", "small": "pad_crop_flip",
               "large": "random_resized_crop_flip"}[info.family]
  if image_size == 0:
    image_size = h if fixed and h == w else (0 if fixed else 224)
  resize = not fixed or augment.startswith("random_resized_crop") or (
      image_size and (image_size, image_size) != (h, w))
  if resize:
    if not image_size:
      raise PreprocessingError(f"{info.name} has {h}x{w} images: set image_size "
                               "to resize them to a square")
    if augment.startswith("pad_crop"):
      raise PreprocessingError(
          f"augment={augment!r} needs images kept at one fixed size, but {info.name} "
          f"images are resized to {image_size} (variable sizes or image_size != "
          "their size); use 'random_resized_crop_flip' or 'flip'")
    eval_resize = eval_resize or max(image_size, round(image_size * 256 / 224))
    if eval_resize < image_size:
      raise PreprocessingError(f"eval_resize={eval_resize} must be >= image_size="
                               f"{image_size}")
    shape = (image_size, image_size, c)
  else:
    eval_resize, shape = 0, (h, w, c)
  mean = tuple(float(v) for v in (mean or info.mean))
  std = tuple(float(v) for v in (std or info.std))
  for field, values in (("mean", mean), ("std", std)):
    if len(values) not in (1, c):
      raise PreprocessingError(f"{field}={values} needs 1 or {c} values (channels)")
  if any(not s > 0 for s in std):
    raise PreprocessingError(f"std={std} must be > 0")
  lo, hi = (float(v) for v in rrc_scale)
  if not 0 < lo <= hi <= 1:
    raise PreprocessingError(f"rrc_scale={tuple(rrc_scale)} must satisfy 0 < lo <= hi <= 1")
  r_lo, r_hi = (float(v) for v in rrc_ratio)
  if not 0 < r_lo <= r_hi:
    raise PreprocessingError(f"rrc_ratio={tuple(rrc_ratio)} must satisfy 0 < lo <= hi")
  if not isinstance(crop_padding, int) or crop_padding < 0:
    raise PreprocessingError(f"crop_padding={crop_padding!r} must be an int >= 0")
  return Preprocessing(shape, augment, crop_padding, (lo, hi), (r_lo, r_hi),
                       int(eval_resize), mean * (c // len(mean)), std * (c // len(std)))


# ------------------------------------------------------------------------------------
# Decoding (OpenCV: 2x faster than PIL on small PNGs, 3x on resizing; one thread per
# process, since grain's worker processes are the parallelism)
# ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _cv2():
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  return cv2


def _is_jpeg(blob) -> bool:
  return bytes(blob[:2]) == b"\xff\xd8"


def _decode_bytes(blob, channels: int, reduce: int = 1, bgr: bool = False) -> np.ndarray:
  """uint8 ``[H / reduce, W / reduce, channels]``; ``reduce`` in 1, 2, 4, 8 decodes a
  JPEG at that DCT scale (other formats ignore it); ``bgr`` leaves colour images in
  OpenCV's channel order (the caller reverses it later, on fewer pixels)."""
  cv2 = _cv2()
  if channels == 1:
    flag = cv2.IMREAD_GRAYSCALE
  else:
    flag = cv2.IMREAD_COLOR
  if reduce > 1 and _is_jpeg(blob):
    flag = {(1, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2, (1, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
            (1, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8, (3, 2): cv2.IMREAD_REDUCED_COLOR_2,
            (3, 4): cv2.IMREAD_REDUCED_COLOR_4, (3, 8): cv2.IMREAD_REDUCED_COLOR_8
            }[(channels, reduce)]
  array = cv2.imdecode(np.frombuffer(blob, np.uint8), flag)
  if array is None:
    raise PreprocessingError("an image could not be decoded (not a valid PNG/JPEG)")
  if channels == 1:
    return array[..., None]
  return array if bgr else cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def _image_size(image: Image) -> Tuple[int, int]:
  """(height, width) without decoding the pixels."""
  if isinstance(image, np.ndarray):
    return image.shape[0], image.shape[1]
  from PIL import Image as PILImage  # pylint: disable=g-import-not-at-top
  width, height = PILImage.open(io.BytesIO(image)).size  # reads the header only
  return height, width


def _channels(array: np.ndarray, channels: int) -> np.ndarray:
  """An already decoded ``[H, W]`` / ``[H, W, 1 or 3]`` image with ``channels``."""
  if array.ndim == 2:
    array = array[..., None]
  if array.shape[-1] == channels:
    return array
  if channels == 3:
    return np.repeat(array, 3, axis=-1)
  # ITU-R 601 luma, as PIL's and OpenCV's RGB -> gray.
  return np.rint(array.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))[
      ..., None].astype(np.uint8)


def decode_image(image: Image, channels: int) -> np.ndarray:
  """uint8 ``[H, W, channels]`` of a PNG/JPEG (or an already decoded array)."""
  if isinstance(image, np.ndarray):
    return _channels(image, channels)
  return _decode_bytes(image, channels)


def decode_batch(images: Sequence[Image], shape: Tuple[int, int, int]) -> np.ndarray:
  """uint8 ``[N, H, W, C]`` of same-size images (encoded or decoded)."""
  out = np.empty((len(images),) + tuple(shape), np.uint8)
  for i, image in enumerate(images):
    array = decode_image(image, shape[-1])
    if array.shape != tuple(shape):
      raise PreprocessingError(f"image {i} has shape {array.shape}, expected {shape}")
    out[i] = array
  return out


# ------------------------------------------------------------------------------------
# The batch path: fixed-size images
# ------------------------------------------------------------------------------------
def augment_batch(images: np.ndarray, draws: np.ndarray, prep: Preprocessing) -> np.ndarray:
  """Pad-crop and / or flip a uint8 ``[B, H, W, C]`` batch (``draws``: ``[B, NUM_DRAWS]``).

  Example ``b`` is shifted by ``floor(draws[b, 0] * (2p + 1)) - p`` rows and
  ``floor(draws[b, 1] * (2p + 1)) - p`` columns (zeros enter at the border) and
  flipped when ``draws[b, NUM_DRAWS - 1] < 0.5``; all in one gather.
  """
  if prep.augment == "none":
    return images
  b, h, w, _ = images.shape
  rows = np.broadcast_to(np.arange(h), (b, h))
  cols = np.broadcast_to(np.arange(w), (b, w))
  if prep.flips:
    flip = draws[:, _FLIP_DRAW] < 0.5
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
  if prep.augment.startswith("pad_crop") and prep.crop_padding:
    p = prep.crop_padding
    images = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    dy = np.floor(draws[:, 0] * (2 * p + 1)).astype(np.int64)
    dx = np.floor(draws[:, 1] * (2 * p + 1)).astype(np.int64)
    rows, cols = rows + dy[:, None], cols + dx[:, None]
  return images[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


# ------------------------------------------------------------------------------------
# The per-example path: resizing with PIL
# ------------------------------------------------------------------------------------
def random_resized_crop_box(height: int, width: int, draws: np.ndarray,
                            scale: Tuple[float, float], ratio: Tuple[float, float]
                            ) -> Tuple[int, int, int, int]:
  """``(top, left, crop_height, crop_width)`` of the Inception crop (module doc)."""
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for t in range(_RRC_TRIES):
    u_scale, u_ratio, u_top, u_left = draws[4 * t: 4 * t + 4]
    target = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
    aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(math.floor(u_top * (height - h + 1)))
      left = int(math.floor(u_left * (width - w + 1)))
      return top, left, h, w
  aspect = width / height  # fall back to the centre crop of an in-range aspect
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def _crop_resize(image: Image, box_fn, size: int, channels: int, flip: bool) -> np.ndarray:
  """Crops ``box_fn(H, W)`` out of ``image`` and resizes it to ``size x size``.

  A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still leaves the
  crop at least ``size`` pixels on each side: the same crop for far less decoding,
  and the remaining shrink factor stays below 2, where bilinear interpolation (what
  tf.image.resize does by default) does not alias; larger shrinks (decoded arrays)
  average over pixel areas.
  """
  cv2 = _cv2()
  height, width = _image_size(image)
  top, left, h, w = box_fn(height, width)
  bgr = False
  if isinstance(image, np.ndarray):
    array = _channels(image, channels)
  else:
    reduce = 1
    while reduce < 8 and min(h, w) >= 2 * reduce * size:
      reduce *= 2
    bgr = channels == 3
    array = _decode_bytes(image, channels, reduce if _is_jpeg(image) else 1, bgr=bgr)
  sy, sx = array.shape[0] / height, array.shape[1] / width
  y0, x0 = int(round(top * sy)), int(round(left * sx))
  y1 = max(y0 + 1, min(array.shape[0], int(round((top + h) * sy))))
  x1 = max(x0 + 1, min(array.shape[1], int(round((left + w) * sx))))
  crop = array[y0:y1, x0:x1]
  shrink = min(crop.shape[0], crop.shape[1]) / size
  out = cv2.resize(crop, (size, size),
                   interpolation=cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR)
  if out.ndim == 2:
    out = out[..., None]
  # Reversed views (no copy): the batch that receives the image copies it once.
  return out[:, ::-1 if flip else 1, ::-1 if bgr else 1]


def train_example(image: Image, draws: np.ndarray, prep: Preprocessing) -> np.ndarray:
  """The training view of one image on the per-example path: uint8 ``image_shape``."""
  size, channels = prep.image_shape[0], prep.image_shape[-1]
  flip = prep.flips and draws[_FLIP_DRAW] < 0.5
  if prep.augment.startswith("random_resized_crop"):
    box_fn = lambda h, w: random_resized_crop_box(h, w, draws, prep.rrc_scale,
                                                  prep.rrc_ratio)
  else:  # "none" / "flip": the eval view
    box_fn = lambda h, w: _center_box(h, w, size, prep.eval_resize)
  return _crop_resize(image, box_fn, size, channels, flip)


def _center_box(height: int, width: int, size: int, resize: int):
  """The box that resizing the shorter side to ``resize`` then cropping ``size`` takes."""
  crop = size * min(height, width) / resize  # the crop's side in source pixels
  h, w = min(height, crop), min(width, crop)
  return (height - h) / 2, (width - w) / 2, h, w


def eval_example(image: Image, prep: Preprocessing) -> np.ndarray:
  """The eval view of one image on the per-example path: uint8 ``image_shape``."""
  size = prep.image_shape[0]
  return _crop_resize(image, lambda h, w: _center_box(h, w, size, prep.eval_resize),
                      size, prep.image_shape[-1], flip=False)


# ------------------------------------------------------------------------------------
# Scaling
# ------------------------------------------------------------------------------------
def normalize(images: np.ndarray, prep: Preprocessing) -> np.ndarray:
  """float32 ``(x / 255 - mean) / std`` of uint8 images ``[..., W, C]``, in float32 ops.

  With mean 0 and std 1 this is exactly ``x.astype(float32) / 255``. The per-channel
  constants are tiled over the width, so numpy's inner loops run over ``W * C``
  elements instead of ``C`` (10x faster for RGB).
  """
  width, channels = images.shape[-2], images.shape[-1]
  mean = np.tile(np.asarray(prep.mean, np.float32), width)
  std = np.tile(np.asarray(prep.std, np.float32), width)
  out = images.reshape(-1, width * channels).astype(np.float32)
  out /= np.float32(255)
  out -= mean
  out /= std
  return out.reshape(images.shape)
