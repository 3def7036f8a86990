"""l0jax.data.sources: datasets written by real TFDS builders, fake data, mock data."""

import os
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
import io

from l0jax import data
from l0jax.data import catalog, sources, transforms
from l0jax.errors import UserError


def test_info_comes_from_the_builder_not_from_constants(image_datasets):
  data_dir, _ = image_datasets
  cifar = data.dataset_info("l0jax_test_cifar", data_dir)
  assert cifar.image_shape == (32, 32, 3) and cifar.num_classes == 10
  assert cifar.split_sizes == {"train": 200, "test": 60}
  assert (cifar.family, cifar.encoding) == ("small", "png")
  assert cifar.mean == (0.5,) * 3  # not in the catalog: [-1, 1] scaling
  photos = data.dataset_info("l0jax_test_photos", data_dir)
  assert photos.image_shape == (None, None, 3) and photos.family == "large"
  assert (photos.encoding, photos.split_sizes) == ("jpeg", {"train": 24, "test": 9})


def test_records_read_back_exactly_png_and_closely_jpeg(image_datasets):
  data_dir, written = image_datasets
  source = data.load_split("l0jax_test_cifar", "test", data_dir=data_dir)
  assert isinstance(source, data.TfdsSource) and len(source) == 60
  images, labels = source.read(range(60))
  decoded = transforms.decode_batch(images, (32, 32, 3))
  table = {im.tobytes(): int(l) for im, l in zip(*written["l0jax_test_cifar"]["test"])}
  assert sorted(table.items()) == sorted(
      (im.tobytes(), int(l)) for im, l in zip(decoded, labels))
  photos = data.load_split("l0jax_test_photos", "train", data_dir=data_dir)
  raw, labels = photos.read(range(len(photos)))
  sizes = {(im.shape, int(l)): im for im, l in zip(*written["l0jax_test_photos"]["train"])}
  for blob, label in zip(raw, labels):
    image = transforms.decode_image(blob, 3)
    match = sizes[(image.shape, int(label))]  # same odd size and label
    blocks = lambda a: a[:a.shape[0] // 4 * 4, :a.shape[1] // 4 * 4].reshape(
        a.shape[0] // 4, 4, a.shape[1] // 4, 4, 3).mean((1, 3))
    assert np.abs(blocks(image) - blocks(match)).mean() < 4  # JPEG keeps the low frequencies


def test_split_strings_and_unknown_splits(image_datasets):
  data_dir, _ = image_datasets
  assert len(data.load_split("l0jax_test_cifar", "train[:25%]+test[10:20]",
                             data_dir=data_dir)) == 60
  with pytest.raises(UserError, match="validation"):
    data.load_split("l0jax_test_cifar", "validation", data_dir=data_dir)


def test_not_prepared_datasets_say_how_to_prepare_them(tmp_path):
  for name, phrase in (
      ("cifar10", "tfds build cifar10 --file_format=array_record"),
      ("imagenet2012", "--manual_dir=MANUAL_DIR"),
      ("tiny_imagenet", "prepare_tiny_imagenet"),
      ("my_own_dataset", "tfds build my_own_dataset"),
  ):
    with pytest.raises(data.DatasetNotPrepared) as err:
      data.load_split(name, "train", data_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message and phrase in message and str(tmp_path) in message
    assert "fake_data=True" in message
  assert not os.listdir(tmp_path)  # nothing created, nothing downloaded


def test_corrupt_record_file_fails_naming_the_dataset_folder(image_datasets, tmp_path):
  data_dir, _ = image_datasets
  copy = tmp_path / "tfds"
  shutil.copytree(os.path.join(data_dir, "l0jax_test_cifar"), copy / "l0jax_test_cifar")
  folder = copy / "l0jax_test_cifar" / "1.0.0"
  record = next(p for p in folder.iterdir() if "train.array_record" in p.name)
  blob = bytearray(record.read_bytes())
  blob[len(blob) // 3: len(blob) // 3 + 64] = bytes(64)
  record.write_bytes(bytes(blob))
  source = data.load_split("l0jax_test_cifar", "train", data_dir=str(copy))
  with pytest.raises(data.DataFileError) as err:
    source.read(range(len(source)))
  assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_cache_equals_reading_and_is_memoised(image_datasets):
  data_dir, _ = image_datasets
  source = data.load_split("l0jax_test_cifar", "train", data_dir=data_dir)
  cached = data.cache_source(source)
  order = np.random.default_rng(0).permutation(len(source))
  raw, labels = source.read(order)
  np.testing.assert_array_equal(cached.read(order)[0],
                                transforms.decode_batch(raw, (32, 32, 3)))
  np.testing.assert_array_equal(cached.read(order)[1], labels)
  again = data.load_split("l0jax_test_cifar", "train", data_dir=data_dir)
  assert data.cache_source(again) is cached


# --- fake data ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(catalog.CATALOG))
def test_fake_data_works_for_every_catalog_dataset(name, tmp_path):
  known = catalog.CATALOG[name]
  eval_split = "validation" if "validation" in known.split_sizes else "test"
  train = data.load_split(name, "train", data_dir=tmp_path, fake=True)
  test = data.load_split(name, f"{eval_split}[:5]", data_dir=tmp_path, fake=True)
  assert len(train) == known.split_sizes["train"] and len(test) == 5
  prep = data.preprocessing(train.info, image_size=32 if known.family == "large" else 0)
  batch = next(data.train_iterator(train, prep=prep, global_batch_size=4, seed=1))
  assert batch["image"].shape == (1, 4) + prep.image_shape
  assert batch["image"].dtype == np.float32 and np.isfinite(batch["image"]).all()
  assert ((0 <= batch["label"]) & (batch["label"] < known.num_classes)).all()
  evals = list(data.eval_iterator(test, prep=prep, global_batch_size=4))
  assert len(evals) == 2 and evals[1]["mask"].sum() == 1
  raw, _ = train.read([3])
  assert raw[0][:4] == (b"\xff\xd8\xff\xe0" if known.encoding == "jpeg" else b"\x89PNG")
  assert not os.listdir(tmp_path)


def test_fake_examples_are_deterministic_learnable_and_seeded(tmp_path):
  a = data.load_split("cifar100", "train", data_dir=tmp_path, fake=True)
  b = data.load_split("cifar100", "train", data_dir=tmp_path, fake=True)
  other = data.load_split("cifar100", "train", data_dir=tmp_path, fake=True, seed=1)
  np.testing.assert_array_equal(a.example(123)[0], b.example(123)[0])
  assert not np.array_equal(a.example(123)[0], other.example(123)[0])
  labels = np.array([a.example(i)[1] for i in range(2000)])
  assert len(set(labels)) == 100  # every class occurs
  # Learnable: the class mean images differ far more than the noise within a class.
  images = np.stack([a.example(i)[0] for i in range(400)]).astype(np.float64)
  labels = labels[:400]
  c0, c1 = (images[labels == c].mean(0) for c in np.unique(labels)[:2])
  assert np.abs(c0 - c1).max() > 100
  sizes = {data.load_split("imagenet2012", "train", data_dir=tmp_path,
                           fake=True).example(i)[0].shape for i in range(6)}
  assert len(sizes) > 1  # variable-size images


def test_fake_data_of_an_unknown_dataset_needs_it_prepared(tmp_path, image_datasets):
  with pytest.raises(UserError, match="fake_data needs"):
    data.load_split("my_own_dataset", "train", data_dir=tmp_path, fake=True)
  data_dir, _ = image_datasets  # prepared: its real shape is used
  fake = data.load_split("l0jax_test_cifar", "train", data_dir=data_dir, fake=True)
  assert isinstance(fake, data.FakeSource) and len(fake) == 200
  assert fake.example(0)[0].shape == (32, 32, 3)


# --- a registered TFDS builder under tfds.testing.mock_data --------------------------


def test_registered_builder_under_tfds_mock_data_flows_through_the_pipeline(tmp_path):
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    info = sources.info_from_builder("cifar10", builder)
    assert (info.image_shape, info.num_classes, info.family) == ((32, 32, 3), 10, "small")
    assert info.mean == catalog.CATALOG["cifar10"].mean
    source = data.TfdsSource(info, "train", str(tmp_path), builder, skip_decoding=False)
    assert len(source) == 12
    prep = data.preprocessing(info)
    batches = data.train_iterator(source, prep=prep, global_batch_size=6, seed=0,
                                  cache=False, num_steps=4)
    seen = np.concatenate([b["label"].ravel() for b in batches])
  assert seen.shape == (24,) and ((0 <= seen) & (seen < 10)).all()
  assert "tensorflow" not in sys.modules


def test_tiny_imagenet_is_prepared_from_its_official_folder(tmp_path):
  root = tmp_path / "tiny-imagenet-200"
  wnids = ["n01443537", "n01629819", "n01641577"]
  rng = np.random.default_rng(0)
  (root / "val" / "images").mkdir(parents=True)
  (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
  pixels = {}
  for c, wnid in enumerate(wnids):
    folder = root / "train" / wnid / "images"
    folder.mkdir(parents=True)
    for k in range(4):
      array = np.full((64, 64, 3), 40 + 60 * c, np.uint8) + rng.integers(0, 9, (64, 64, 3),
                                                                          dtype=np.uint8)
      Image.fromarray(array).save(folder / f"{wnid}_{k}.JPEG", quality=95)
  rows = []
  for k in range(5):
    c = k % 3
    Image.fromarray(np.full((64, 64), 40 + 60 * c, np.uint8)).save(  # a gray JPEG
        root / "val" / "images" / f"val_{k}.JPEG")
    rows.append(f"val_{k}.JPEG\t{wnids[c]}\t0\t0\t63\t63")
  (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
  folder = data.prepare_tiny_imagenet(root, tmp_path / "tfds")
  assert folder == str(tmp_path / "tfds" / "tiny_imagenet" / "1.0.0")
  info = data.dataset_info("tiny_imagenet", tmp_path / "tfds")
  assert (info.image_shape, info.num_classes, info.family) == ((64, 64, 3), 3, "small")
  assert info.split_sizes == {"train": 12, "validation": 5}
  for split in ("train", "validation"):
    source = data.load_split("tiny_imagenet", split, data_dir=tmp_path / "tfds")
    raw, labels = source.read(range(len(source)))
    images = transforms.decode_batch(raw, (64, 64, 3))
    # Each class has its own brightness: the label says which.
    np.testing.assert_allclose(images.reshape(len(labels), -1).mean(1),
                               40 + 60 * labels + (4 if split == "train" else 0), atol=3)
  assert data.prepare_tiny_imagenet(root, tmp_path / "tfds") == folder  # reused
  with pytest.raises(data.DataFileError, match="wnids.txt"):
    data.prepare_tiny_imagenet(tmp_path, tmp_path / "other")
