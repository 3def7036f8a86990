"""Deterministic, topology-independent, resumable batches for training and evaluation.

Training order is a pure function of (seed, epoch, step): epoch ``e`` uses the
permutation ``epoch_permutation(N, seed, e)`` of all N examples, global batch ``k`` of
the epoch is ``perm[k*B:(k+1)*B]`` (the remainder ``N % B`` is dropped, so
``steps_per_epoch = N // B``) and global step ``s`` is batch ``s % steps_per_epoch`` of
epoch ``s // steps_per_epoch``. Process ``h`` of ``P`` reads only the contiguous slice
``[h*B/P, (h+1)*B/P)`` of each global batch. Augmentation draws are a function of
(seed, epoch, example index) (:mod:`l0jax.data.randomness`). So global batches are the
same for every process and device count, and an iterator started at ``start_step``
yields exactly what an uninterrupted one yields from that step (resume = remember the
step).

Each global batch is split per process here rather than by grain's sharding, which
splits the *dataset* over processes: the global batches would then depend on the
process count.

Batches are computed ahead by grain: in ``workers`` processes (``mp_prefetch``, for
decoding and resizing, which the GIL would serialise in threads) or ``threads``
threads, in step order, ``prefetch`` batches deep. With neither, in the caller's
thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Dict, Optional

import numpy as np

from l0jax.data import randomness, sources, transforms

__all__ = ["TrainIterator", "train_iterator", "eval_iterator", "num_eval_batches",
           "check_topology"]


def check_topology(global_batch_size: int, process_index: int, process_count: int,
                   local_device_count: int) -> None:
  for arg, value in (("global_batch_size", global_batch_size),
                     ("process_count", process_count),
                     ("local_device_count", local_device_count)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{arg} must be a positive int, got {value!r}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in "
                     f"[0, process_count={process_count}).")
  if global_batch_size % (process_count * local_device_count):
    raise ValueError(
        f"global_batch_size={global_batch_size} is not divisible by process_count * "
        f"local_device_count = {process_count} * {local_device_count} = "
        f"{process_count * local_device_count}.")


def _images_of(source, indices, prep, draws=None) -> np.ndarray:
  """uint8 ``[n, *prep.image_shape]``: the train view (``draws`` given) or eval view."""
  raw, labels = source.read(indices)
  if prep.per_example:
    fn = ((lambda i, im: transforms.train_example(im, draws[i], prep)) if draws is not None
          else (lambda i, im: transforms.eval_example(im, prep)))
    out = np.empty((len(labels),) + tuple(prep.image_shape), np.uint8)
    for i, image in enumerate(raw):
      out[i] = fn(i, image)
    return out, labels
  images = raw if isinstance(raw, np.ndarray) else transforms.decode_batch(
      raw, prep.image_shape)
  if draws is not None:
    images = transforms.augment_batch(images, draws, prep)
  return images, labels


def _device_batch(images, labels, devices: int, prep) -> Dict[str, np.ndarray]:
  per_device = len(labels) // devices
  return {"image": transforms.normalize(images, prep).reshape(
              (devices, per_device) + tuple(prep.image_shape)),
          "label": labels.astype(np.int32).reshape(devices, per_device)}


def _grain_iter(dataset, workers: int, threads: int, prefetch: int):
  import grain  # pylint: disable=g-import-not-at-top
  it_ds = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=max(threads, 1), prefetch_buffer_size=max(prefetch, 1)))
  if workers > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (defaults here)
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(prefetch // workers, 1)))
  return iter(it_ds)


class TrainIterator(Iterator[Dict[str, np.ndarray]]):
  """Infinite (or ``num_steps``-long) iterator over this process's training batches.

  Deterministic, resumable and topology-independent (module doc). Yields
  ``{"image": float32 [D, b, *prep.image_shape], "label": int32 [D, b]}`` with
  ``D = local_device_count`` and ``b = global_batch_size / (process_count * D)``.
  ``step`` is the global step of the next batch to be returned; to resume, build a
  new iterator with ``start_step=step``. ``batch(step)`` gives any step's batch
  directly (random access, no state).

  Args:
    source: a source of :mod:`l0jax.data.sources` (``load_split``).
    prep: the :class:`~l0jax.data.transforms.Preprocessing` (default: the dataset's).
    global_batch_size: B, summed over all processes and devices.
    seed: the order's and the augmentation's seed (the same on every process).
    start_step: global step of the first batch (resume).
    process_index, process_count, local_device_count: this process's place in the
      topology (``jax.process_index()``, ``jax.process_count()``,
      ``jax.local_device_count()``).
    cache: decode a whole split of fixed-size images into memory once (fast
      batches); False reads this process's records of each batch from the source.
    num_steps: stop after that many batches (None: never stop).
    workers: grain worker processes computing batches ahead (0: none).
    threads: grain threads computing batches ahead when ``workers == 0``.
    prefetch: batches computed ahead.
  """

  def __init__(self, source, *, global_batch_size: int, seed: int, prep=None,
               start_step: int = 0, process_index: int = 0, process_count: int = 1,
               local_device_count: int = 1, cache: bool = True,
               num_steps: Optional[int] = None, workers: int = 0, threads: int = 0,
               prefetch: int = 2):
    check_topology(global_batch_size, process_index, process_count, local_device_count)
    if not isinstance(start_step, (int, np.integer)) or start_step < 0:
      raise ValueError(f"start_step must be an int >= 0, got {start_step!r}.")
    if num_steps is not None and num_steps < 0:
      raise ValueError(f"num_steps must be >= 0 or None, got {num_steps!r}.")
    if workers < 0 or threads < 0:
      raise ValueError(f"workers and threads must be >= 0, got {workers}, {threads}.")
    self.num_examples = len(source)
    if self.num_examples < global_batch_size:
      raise ValueError(f"global_batch_size={global_batch_size} exceeds the "
                       f"{self.num_examples} examples of the source.")
    self.prep = prep if prep is not None else transforms.preprocessing(source.info)
    self.source = (sources.cache_source(source)
                   if cache and sources.cacheable(source) else source)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.local_device_count = int(local_device_count)
    self.steps_per_epoch = self.num_examples // self.global_batch_size
    self.step = int(start_step)
    self._stop = None if num_steps is None else self.step + int(num_steps)
    self._workers, self._threads, self._prefetch = int(workers), int(threads), int(prefetch)
    self._ahead = None  # grain iterator over steps, when computing ahead
    self._perm = (None, None)  # (epoch, permutation), swapped atomically

  def __getstate__(self):  # what grain's worker processes need: no iterator state
    state = dict(self.__dict__)
    state["_ahead"], state["_perm"] = None, (None, None)
    return state

  def _permutation(self, epoch: int) -> np.ndarray:
    cached_epoch, perm = self._perm
    if cached_epoch != epoch:
      perm = randomness.epoch_permutation(self.num_examples, self.seed, epoch)
      self._perm = (epoch, perm)
    return perm

  def global_indices(self, step: int) -> np.ndarray:
    """Source indices of the whole global batch of `step` (all processes)."""
    epoch, k = divmod(int(step), self.steps_per_epoch)
    b = self.global_batch_size
    return self._permutation(epoch)[k * b : (k + 1) * b]

  def host_indices(self, step: int) -> np.ndarray:
    """Source indices this process reads at `step`: its contiguous slice."""
    per_host = self.global_batch_size // self.process_count
    start = self.process_index * per_host
    return self.global_indices(step)[start : start + per_host]

  def batch(self, step: int) -> Dict[str, np.ndarray]:
    """This process's batch of global step `step`."""
    indices = self.host_indices(step)
    draws = None
    if self.prep.augment != "none":
      draws = randomness.example_uniforms(self.seed, int(step) // self.steps_per_epoch,
                                          indices, transforms.NUM_DRAWS)
    images, labels = _images_of(self.source, indices, self.prep, draws)
    return _device_batch(images, labels, self.local_device_count, self.prep)

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._stop is not None and self.step >= self._stop:
      raise StopIteration
    if self._workers or self._threads:
      if self._ahead is None:
        import grain  # pylint: disable=g-import-not-at-top
        stop = self._stop if self._stop is not None else self.step + (1 << 62)
        steps = grain.MapDataset.range(self.step, stop).map(self.batch)
        self._ahead = _grain_iter(steps, self._workers, self._threads, self._prefetch)
      out = next(self._ahead)
    else:
      out = self.batch(self.step)
    self.step += 1
    return out

  def __iter__(self):
    return self

  def close(self) -> None:
    """Stops the grain threads / worker processes computing batches ahead (a later
    ``next`` starts them again from ``step``)."""
    ahead, self._ahead = self._ahead, None
    if ahead is not None and hasattr(ahead, "close"):
      ahead.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# The public constructor: ``train_iterator(source, global_batch_size=..., seed=...)``.
train_iterator = TrainIterator


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Number of (padded) eval batches: ceil(num_examples / global_batch_size)."""
  return -(-num_examples // global_batch_size)


class _EvalBatch:
  """``k -> this process's padded eval batch k`` (picklable for grain's workers)."""

  def __init__(self, source, prep, global_batch_size, process_index, process_count,
               local_device_count):
    self.source, self.prep = source, prep
    self.per_host = global_batch_size // process_count
    self.offset = process_index * self.per_host
    self.global_batch_size, self.devices = global_batch_size, local_device_count

  def __call__(self, k: int) -> Dict[str, np.ndarray]:
    start = int(k) * self.global_batch_size + self.offset
    real = max(0, min(self.per_host, len(self.source) - start))
    images = np.zeros((self.per_host,) + tuple(self.prep.image_shape), np.uint8)
    labels = np.zeros((self.per_host,), np.int32)
    if real:
      images[:real], labels[:real] = _images_of(self.source,
                                                np.arange(start, start + real), self.prep)
    out = _device_batch(images, labels, self.devices, self.prep)
    # Padding is zero pixels *after* scaling (it is masked out anyway).
    out["image"].reshape((self.per_host, -1))[real:] = 0.0
    mask = np.zeros((self.per_host,), np.float32)
    mask[:real] = 1.0
    out["mask"] = mask.reshape(self.devices, -1)
    return out


def eval_iterator(source, *, global_batch_size: int, prep=None, process_index: int = 0,
                  process_count: int = 1, local_device_count: int = 1,
                  cache: bool = True, workers: int = 0, threads: int = 0,
                  prefetch: int = 2) -> Iterator[Dict[str, np.ndarray]]:
  """All examples once, in source order (eval view); the last global batch is padded.

  Global batch k covers indices [k*B, (k+1)*B); process h takes the slice
  [h*B/P, (h+1)*B/P) of it. Every process yields the same number of batches
  (``num_eval_batches``). Each batch adds "mask": float32 [D, b], 1 for a real
  example and 0 for padding (padding has zero images and label 0).
  """
  check_topology(global_batch_size, process_index, process_count, local_device_count)
  prep = prep if prep is not None else transforms.preprocessing(source.info)
  if cache and sources.cacheable(source):
    source = sources.cache_source(source)
  fn = _EvalBatch(source, prep, global_batch_size, process_index, process_count,
                  local_device_count)
  count = num_eval_batches(len(source), global_batch_size)
  if workers or threads:
    import grain  # pylint: disable=g-import-not-at-top
    return _grain_iter(grain.MapDataset.range(count).map(fn), workers, threads, prefetch)
  return (fn(k) for k in range(count))
