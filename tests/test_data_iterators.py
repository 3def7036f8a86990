"""l0jax.data.iterators: deterministic, topology-independent, resumable batches.

The datasets are written by real TFDS builders in tests/conftest.py: CIFAR-shaped PNGs
(pad-crop + flip by default) and odd-size JPEGs (random-resized crop + flip).
"""

import numpy as np
import pytest

from l0jax import data
from l0jax.data import transforms

CIFAR, PHOTOS = "l0jax_test_cifar", "l0jax_test_photos"


@pytest.fixture(scope="module")
def cifar(image_datasets):
  return data.load_split(CIFAR, "train", data_dir=image_datasets[0])


@pytest.fixture(scope="module")
def photos(image_datasets):
  source = data.load_split(PHOTOS, "train", data_dir=image_datasets[0])
  return source, data.preprocessing(source.info, image_size=24)


def _all_hosts(source, steps, process_count, local_device_count, **kw):
  """Per step: the hosts' batches concatenated along the example axis, and indices."""
  iters = [data.train_iterator(source, process_index=h, process_count=process_count,
                               local_device_count=local_device_count, **kw)
           for h in range(process_count)]
  out = []
  for _ in range(steps):
    step = iters[0].step
    batches = [next(it) for it in iters]
    for b in batches:
      d = local_device_count
      assert b["image"].shape[:2] == (d, kw["global_batch_size"] // (process_count * d))
      assert b["label"].shape == b["image"].shape[:2]
    merged = {k: np.concatenate([b[k].reshape((-1,) + b[k].shape[2:]) for b in batches])
              for k in ("image", "label")}
    merged["indices"] = np.concatenate([it.host_indices(step) for it in iters])
    out.append(merged)
  return out


def _single_example_view(source, prep, seed, epoch, index):
  """The augmented, scaled view of one example computed on its own."""
  draws = data.example_uniforms(seed, epoch, [index], transforms.NUM_DRAWS)
  raw, label = source.read([index])
  if prep.per_example:
    image = transforms.train_example(raw[0], draws[0], prep)[None]
  else:
    image = transforms.decode_batch(raw, prep.image_shape) if not isinstance(
        raw, np.ndarray) else raw
    image = transforms.augment_batch(image, draws, prep)
  return transforms.normalize(image, prep)[0], int(label[0])


@pytest.mark.parametrize("topology", [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2)])
def test_every_example_once_per_epoch_and_each_a_function_of_its_index(cifar, topology):
  processes, devices = topology
  steps_per_epoch = 200 // 40
  batches = _all_hosts(cifar, 2 * steps_per_epoch, processes, devices,
                       global_batch_size=40, seed=4)
  prep = data.preprocessing(cifar.info)
  for epoch in range(2):
    seen = np.concatenate([b["indices"] for b in
                           batches[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]])
    assert sorted(seen.tolist()) == list(range(200))  # each example exactly once
  for step in (0, 7):
    b = batches[step]
    for row in (0, 13, 39):
      image, label = _single_example_view(cifar, prep, 4, step // steps_per_epoch,
                                          int(b["indices"][row]))
      np.testing.assert_array_equal(b["image"][row], image)
      assert b["label"][row] == label
  assert not np.array_equal(batches[0]["indices"], batches[steps_per_epoch]["indices"])


@pytest.mark.parametrize("processes,devices", [(2, 1), (2, 2), (1, 4)])
def test_augmented_batches_do_not_depend_on_topology(cifar, photos, processes, devices):
  photo_source, photo_prep = photos
  for source, prep, batch in ((cifar, None, 16), (photo_source, photo_prep, 8)):
    kw = dict(global_batch_size=batch, seed=7, start_step=3, prep=prep)
    single = _all_hosts(source, 6, 1, 1, **kw)
    multi = _all_hosts(source, 6, processes, devices, **kw)
    for a, b in zip(single, multi):
      for key in ("image", "label", "indices"):
        np.testing.assert_array_equal(a[key], b[key])


def test_augmentation_differs_between_epochs_and_seeds(cifar):
  it = data.train_iterator(cifar, global_batch_size=50, seed=1)
  index = int(it.host_indices(0)[0])
  prep = data.preprocessing(cifar.info)
  views = {(seed, epoch): _single_example_view(cifar, prep, seed, epoch, index)[0].tobytes()
           for seed in (1, 2) for epoch in range(4)}
  assert len(set(views.values())) >= 6  # 2 x 4 views, a few may coincide (9 x 9 x 2)


def test_remainder_is_dropped_each_epoch(cifar):
  it = data.train_iterator(cifar, global_batch_size=48, seed=1)
  assert it.steps_per_epoch == 200 // 48
  for epoch in range(3):
    ids = np.concatenate([it.global_indices(epoch * it.steps_per_epoch + k)
                          for k in range(it.steps_per_epoch)])
    assert len(set(ids.tolist())) == len(ids) == 48 * (200 // 48)
    np.testing.assert_array_equal(ids, data.epoch_permutation(200, 1, epoch)[:len(ids)])


def test_host_reads_only_its_contiguous_slice(cifar):
  full = data.train_iterator(cifar, global_batch_size=12, seed=2)
  host = data.train_iterator(cifar, global_batch_size=12, seed=2, process_index=1,
                             process_count=3)
  for step in (0, 4, 5, 11):
    np.testing.assert_array_equal(host.host_indices(step), full.global_indices(step)[4:8])


@pytest.mark.parametrize("which", ["cifar", "photos"])
def test_resume_mid_epoch_equals_uninterrupted_tail(cifar, photos, which):
  source, prep = (cifar, None) if which == "cifar" else photos
  kw = dict(global_batch_size=8, seed=3, process_index=1, process_count=2,
            local_device_count=2, prep=prep)
  it = data.train_iterator(source, **kw)
  stream = [next(it) for _ in range(9)]
  assert it.step == 9
  resumed = data.train_iterator(source, start_step=5, **kw)  # mid-epoch (3 steps/epoch)
  for expected in stream[5:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])
  assert resumed.step == 9
  finite = data.train_iterator(source, start_step=7, num_steps=2, **kw)
  assert [b["label"].tolist() for b in finite] == [b["label"].tolist() for b in stream[7:]]


def test_seed_determines_order(cifar):
  def order(seed):
    it = data.train_iterator(cifar, global_batch_size=20, seed=seed)
    return [it.global_indices(step).tolist() for step in range(6)]

  assert order(0) == order(0) and order(0) != order(1)
  perm = data.epoch_permutation(1000, 123, 5)
  assert sorted(perm.tolist()) == list(range(1000))
  assert not np.array_equal(perm, data.epoch_permutation(1000, 123, 6))
  assert not np.array_equal(perm, data.epoch_permutation(1000, 124, 5))
  assert not np.array_equal(data.epoch_permutation(1000, 1, 0),
                            data.epoch_permutation(1000, 0, 1))  # seeds do not shift
  np.testing.assert_array_equal(perm, data.epoch_permutation(1000, 123, 5))
  # Pinned: the order must not change silently between versions/platforms.
  assert data.epoch_permutation(10, 0, 0).tolist() == [7, 0, 8, 2, 3, 1, 6, 9, 4, 5]


def test_cache_threads_and_worker_processes_agree(cifar, photos):
  kw = dict(global_batch_size=12, seed=9, start_step=2, process_index=1, process_count=2,
            local_device_count=2, num_steps=5)
  ref = list(data.train_iterator(cifar, cache=True, **kw))
  for other in (data.train_iterator(cifar, cache=False, **kw),
                data.train_iterator(cifar, cache=False, threads=2, **kw),
                data.train_iterator(cifar, cache=False, workers=2, **kw)):
    got = list(other)
    assert len(got) == 5
    for a, b in zip(ref, got):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  source, prep = photos
  ev_ref = list(data.eval_iterator(source, prep=prep, global_batch_size=10))
  ev_mp = list(data.eval_iterator(source, prep=prep, global_batch_size=10, workers=2))
  assert len(ev_ref) == len(ev_mp) == 3
  for a, b in zip(ev_ref, ev_mp):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_bad_batch_arguments_raise_one_line_errors(cifar):
  with pytest.raises(ValueError) as err:
    data.train_iterator(cifar, global_batch_size=10, seed=0, process_count=2,
                        local_device_count=3)
  message = str(err.value)
  assert "\n" not in message
  assert "global_batch_size=10" in message and "process_count" in message
  with pytest.raises(ValueError, match="process_index"):
    data.train_iterator(cifar, global_batch_size=12, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="exceeds"):
    data.train_iterator(cifar, global_batch_size=400, seed=0)
  with pytest.raises(ValueError, match="start_step"):
    data.train_iterator(cifar, global_batch_size=12, seed=0, start_step=-1)
  with pytest.raises(ValueError, match="global_batch_size"):
    data.eval_iterator(cifar, global_batch_size=0)
  with pytest.raises(ValueError, match="global_batch_size=9"):
    data.eval_iterator(cifar, global_batch_size=9, process_count=2)


@pytest.mark.parametrize("which", ["cifar", "photos"])
def test_eval_counts_every_example_once_with_padding_masked(image_datasets, which):
  data_dir, written = image_datasets
  name = CIFAR if which == "cifar" else PHOTOS
  source = data.load_split(name, "test", data_dir=data_dir)
  prep = data.preprocessing(source.info, image_size=0 if which == "cifar" else 24)
  n, global_batch, hosts, devices = len(source), 8, 2, 2
  per_host = [list(data.eval_iterator(source, prep=prep, global_batch_size=global_batch,
                                      process_index=h, process_count=hosts,
                                      local_device_count=devices)) for h in range(hosts)]
  count = data.num_eval_batches(n, global_batch)
  images, labels, masks = [], [], []
  for k in range(count):  # global batch k = host 0's slice then host 1's
    for h in range(hosts):
      b = per_host[h][k]
      assert b["image"].shape == (devices, 2) + prep.image_shape
      assert b["mask"].shape == b["label"].shape == (devices, 2)
      images.append(b["image"].reshape((-1,) + prep.image_shape))
      labels.append(b["label"].reshape(-1))
      masks.append(b["mask"].reshape(-1))
  images, labels, masks = map(np.concatenate, (images, labels, masks))
  np.testing.assert_array_equal(masks, (np.arange(count * global_batch) < n).astype(np.float32))
  assert not images[n:].any() and not labels[n:].any()
  raw, want_labels = source.read(range(n))  # in order, no augmentation
  if prep.per_example:
    want = np.stack([transforms.eval_example(r, prep) for r in raw])
  else:
    want = transforms.decode_batch(raw, prep.image_shape)
  np.testing.assert_array_equal(images[:n], transforms.normalize(want, prep))
  np.testing.assert_array_equal(labels[:n], want_labels)
