"""l0jax.data.transforms and randomness: preprocessing against independent references."""

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from l0jax import data
from l0jax.data import catalog, transforms
from l0jax.data.randomness import example_uniforms

CIFAR = data.dataset_info("cifar10")
IMAGENET = data.dataset_info("imagenet2012")
FASHION = data.dataset_info("fashion_mnist")


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, "PNG")
  return buffer.getvalue()


def _jpeg(array, quality=95):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, "JPEG", quality=quality)
  return buffer.getvalue()


def _smooth_image(h, w, seed=0):
  """A smooth RGB image (gradients + blobs): resampling differences stay small."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  rng = np.random.default_rng(seed)
  channels = []
  for _ in range(3):
    a, b, c = rng.uniform(0.5, 3, size=3)
    channels.append(127.5 + 100 * np.sin(a * x / w * math.pi + c) * np.cos(b * y / h * math.pi))
  return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


# --- defaults and checks ------------------------------------------------------------


def test_defaults_follow_the_dataset_family():
  gray = data.preprocessing(FASHION)
  assert (gray.augment, gray.image_shape, gray.eval_resize) == ("none", (28, 28, 1), 0)
  assert (gray.mean, gray.std) == ((0.0,), (1.0,))
  small = data.preprocessing(CIFAR)
  assert (small.augment, small.crop_padding, small.image_shape) == (
      "pad_crop_flip", 4, (32, 32, 3))
  assert small.mean == catalog.CATALOG["cifar10"].mean and not small.per_example
  large = data.preprocessing(IMAGENET)
  assert (large.augment, large.image_shape, large.eval_resize) == (
      "random_resized_crop_flip", (224, 224, 3), 256)
  assert large.rrc_scale == (0.08, 1.0) and large.per_example
  assert data.preprocessing(IMAGENET, image_size=112).eval_resize == 128
  resized = data.preprocessing(CIFAR, augment="random_resized_crop", image_size=24)
  assert resized.per_example and resized.image_shape == (24, 24, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(augment="mixup"), "augment='mixup'"),
    (dict(augment="pad_crop_flip"), "needs images kept at one fixed size"),
    (dict(mean=(0.1, 0.2)), "mean="),
    (dict(std=(0.0,)), "std="),
    (dict(rrc_scale=(0.5, 0.2)), "rrc_scale="),
    (dict(image_size=-3), "image_size="),
    (dict(eval_resize=100), "eval_resize=100"),
])
def test_bad_settings_raise_one_line_naming_the_field(kwargs, match):
  with pytest.raises(transforms.PreprocessingError, match=match) as err:
    data.preprocessing(IMAGENET, **kwargs)
  assert "\n" not in str(err.value)


# --- scaling -------------------------------------------------------------------------


def test_normalize_matches_float64_formula_and_gray_is_exactly_x_over_255():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(5, 7, 6, 3), dtype=np.uint8)
  prep = data.preprocessing(CIFAR)
  want = (images / 255.0 - np.asarray(prep.mean)) / np.asarray(prep.std)
  got = transforms.normalize(images, prep)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
  gray = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  out = transforms.normalize(gray, data.preprocessing(FASHION))
  np.testing.assert_array_equal(out, gray.astype(np.float32) / np.float32(255))


# --- the batch path ------------------------------------------------------------------


def _reference_pad_crop_flip(image, dy, dx, flip, p):
  padded = np.pad(image, ((p, p), (p, p), (0, 0)))
  h, w = image.shape[:2]
  out = padded[dy:dy + h, dx:dx + w]
  return out[:, ::-1] if flip else out


@pytest.mark.parametrize("augment", ["pad_crop_flip", "pad_crop", "flip", "none"])
def test_augment_batch_equals_per_image_reference(augment):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(64, 9, 11, 3), dtype=np.uint8)
  prep = data.preprocessing(CIFAR, augment=augment, crop_padding=3)
  draws = example_uniforms(5, 2, np.arange(64), transforms.NUM_DRAWS)
  got = transforms.augment_batch(images, draws, prep)
  offsets, flips = set(), 0
  for b in range(64):
    crop = augment.startswith("pad_crop")
    dy = int(draws[b, 0] * 7) if crop else 3
    dx = int(draws[b, 1] * 7) if crop else 3
    flip = augment.endswith("flip") and draws[b, -1] < 0.5
    offsets.add((dy, dx))
    flips += flip
    np.testing.assert_array_equal(got[b], _reference_pad_crop_flip(images[b], dy, dx, flip, 3))
  if augment.startswith("pad_crop"):
    assert len(offsets) > 20 and {o for pair in offsets for o in pair} == set(range(7))
  if augment.endswith("flip"):
    assert 16 < flips < 48


# --- the per-example path ------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 600), w=st.integers(1, 600),
       draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=41, max_size=41),
       lo=st.floats(0.01, 1.0), span=st.floats(0.0, 1.0))
def test_random_resized_crop_box_lies_inside_with_its_area_and_aspect(h, w, draws, lo, span):
  scale = (lo, min(1.0, lo + span))
  ratio = (3 / 4, 4 / 3)
  draws = np.asarray(draws)
  top, left, ch, cw = transforms.random_resized_crop_box(h, w, draws, scale, ratio)
  assert 0 <= top and 0 <= left and 0 < ch and 0 < cw
  assert top + ch <= h and left + cw <= w
  # The first try that fits decides (an independent restatement of the rule).
  for t in range(10):
    u_scale, u_ratio = draws[4 * t], draws[4 * t + 1]
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u_scale)
    aspect = math.exp(math.log(ratio[0]) + math.log(ratio[1] / ratio[0]) * u_ratio)
    tw, th = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 0 < tw <= w and 0 < th <= h:
      assert (ch, cw) == (th, tw)
      assert top <= h - th and left <= w - tw
      return
  # Fallback: a centred crop whose aspect is as close to the image's as allowed.
  assert (top, left) == ((h - ch) // 2, (w - cw) // 2)
  assert ch == h or cw == w


def _bilinear(image, size):
  """float64 bilinear resize to ``size x size``, pixel centres at +0.5, edges clamped."""
  h, w = image.shape[:2]
  def axis(n_in):
    x = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), x - lo
  y0, y1, fy = axis(h)
  x0, x1, fx = axis(w)
  image = image.astype(np.float64)
  rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
  return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def test_train_example_crops_resizes_and_flips_like_the_bilinear_formula():
  image = _smooth_image(150, 200)
  prep = data.preprocessing(IMAGENET, image_size=64)
  draws = example_uniforms(0, 0, [7], transforms.NUM_DRAWS)[0]
  draws[0], draws[-1] = 0.1, 0.2  # a crop of about 13% of the area; flip
  top, left, h, w = transforms.random_resized_crop_box(150, 200, draws, prep.rrc_scale,
                                                       prep.rrc_ratio)
  assert min(h, w) < 128  # shrink < 2: plain bilinear
  reference = _bilinear(image[top:top + h, left:left + w], 64)[:, ::-1]
  for encoded in (_png(image), image):  # encoded or already decoded: the same
    got = transforms.train_example(encoded, draws, prep)
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    assert np.abs(got - reference).max() <= 1.0  # fixed-point rounding only


def test_jpeg_decoded_at_reduced_scale_stays_close_to_full_decoding():
  image = _smooth_image(480, 640, seed=3)
  jpeg = _jpeg(image)
  prep = data.preprocessing(IMAGENET, image_size=56, augment="random_resized_crop")
  draws = np.full(transforms.NUM_DRAWS, 0.99)  # a large crop: decoded at 1/4 scale
  top, left, h, w = transforms.random_resized_crop_box(480, 640, draws, prep.rrc_scale,
                                                       prep.rrc_ratio)
  assert min(h, w) >= 4 * 56
  full = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
  reference = np.asarray(Image.fromarray(full).resize(  # PIL: antialiased, full decode
      (56, 56), Image.BILINEAR, box=(left, top, left + w, top + h)))
  got = transforms.train_example(jpeg, draws, prep)
  assert np.abs(got.astype(int) - reference).mean() < 3.0


def test_eval_example_is_shorter_side_resize_then_centre_crop():
  image = _smooth_image(90, 160, seed=5)
  prep = data.preprocessing(IMAGENET, image_size=48)  # eval_resize 55
  resized = Image.fromarray(image).resize((round(160 * 55 / 90), 55), Image.BILINEAR)
  x0, y0 = (resized.width - 48) // 2, (55 - 48) // 2
  reference = np.asarray(resized)[y0:y0 + 48, x0:x0 + 48]
  got = transforms.eval_example(_png(image), prep)
  assert got.shape == (48, 48, 3)
  assert np.abs(got.astype(int) - reference).mean() < 2.0


def test_gray_images_decode_to_one_channel_and_color_to_three():
  gray = np.arange(30 * 20, dtype=np.int64).reshape(30, 20, 1).astype(np.uint8)
  np.testing.assert_array_equal(transforms.decode_image(_png(gray), 1), gray)
  rgb = transforms.decode_image(_png(gray), 3)
  assert rgb.shape == (30, 20, 3) and (rgb == gray).all()


# --- randomness ----------------------------------------------------------------------


def test_example_uniforms_depend_only_on_seed_epoch_and_index():
  a = example_uniforms(3, 1, [5, 9, 2], 41)
  assert a.shape == (3, 41) and a.dtype == np.float64
  assert (0 <= a).all() and (a < 1).all()
  np.testing.assert_array_equal(example_uniforms(3, 1, [2, 5], 41), a[[2, 0]])
  assert not np.array_equal(example_uniforms(3, 2, [5], 41)[0], a[0])  # epoch
  assert not np.array_equal(example_uniforms(4, 1, [5], 41)[0], a[0])  # seed
  many = example_uniforms(0, 0, np.arange(20000), 2)
  # Uniform and uncorrelated enough: mean, variance and lag correlations.
  assert abs(many.mean() - 0.5) < 0.01 and abs(many.var() - 1 / 12) < 0.003
  assert abs(np.corrcoef(many[:, 0], many[:, 1])[0, 1]) < 0.03
  assert abs(np.corrcoef(many[:-1, 0], many[1:, 0])[0, 1]) < 0.03
