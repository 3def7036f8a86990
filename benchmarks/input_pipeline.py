"""Input-pipeline speed: images/s of l0jax.data against tf.data doing the same work.

    python benchmarks/input_pipeline.py [--tf-python=PYTHON] [--order]

Every measurement runs in a fresh subprocess pinned to one CPU core and counts images
per CPU-second of that process (all its threads): per-core throughput, which l0jax
multiplies with grain worker processes (``config.data_workers``), and a figure that
other load on the machine barely moves. All use the same encoded images and produce
float32 batches normalised per channel:

* CIFAR-shaped: 5,000 32x32x3 PNGs, decode + pad-4 random crop + flip, batch 128;
* ImageNet-shaped: 512 JPEGs of 400x350 (quality 90), decode + random-resized crop
  (scale 0.08-1, ratio 3/4-4/3) to 224 + flip, batch 64. tf.data uses
  ``sample_distorted_bounding_box`` + ``decode_and_crop_jpeg`` + bilinear resize, the
  usual TF ImageNet preprocessing;
* Fashion-MNIST-shaped: 20,000 28x28x1 PNGs, batch 100.

Fixed-size images are timed twice: decoded every batch (l0jax's path when several
processes each read their own records) and decoded once, then augmented from memory
(what train.py does on one host; tf.data with the decoded tensors in memory).

The tf.data side needs TensorFlow, which l0jax does not depend on: pass an interpreter
that has it with ``--tf-python`` (e.g. a venv with ``pip install tensorflow-cpu``);
without one, a plain per-image PIL/numpy loop is the reference. ``--order`` also times
the epoch order (``l0jax.data.randomness``) against grain's ``MapDataset.shuffle``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CASES = {  # name: (count, batch, shape, encoding)
    "cifar": (5000, 128, (32, 32, 3), "png"),
    "imagenet": (512, 64, (350, 400, 3), "jpeg"),
    "fashion": (20000, 100, (28, 28, 1), "png"),
}


# ------------------------------------------------------------------------------------
# The images (made once by the driver, read by every worker)
# ------------------------------------------------------------------------------------
def _photo_like(h, w, c, rng):
  """Smooth shapes plus mild noise: JPEG sizes and decode costs like real photos."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  image = np.zeros((h, w, c), np.float32)
  for _ in range(6):
    cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, max(h, w) / 2)
    blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    image += blob[..., None] * rng.uniform(-120, 120, size=c)
  image += 128 + rng.normal(0, 6, size=image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def make_images(case: str):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  count, _, (h, w, c), encoding = CASES[case]
  rng = np.random.default_rng(0)
  out = []
  for _ in range(count):
    array = _photo_like(h, w, c, rng)
    buffer = io.BytesIO()
    pil = Image.fromarray(array[..., 0] if c == 1 else array)
    if encoding == "jpeg":
      pil.save(buffer, "JPEG", quality=90)
    else:
      pil.save(buffer, "PNG")
    out.append(buffer.getvalue())
  return out


# ------------------------------------------------------------------------------------
# Workers: one pipeline, one core, images/s
# ------------------------------------------------------------------------------------
class _BytesSource:
  """A source (l0jax.data.sources protocol) of encoded images held in memory."""

  def __init__(self, info, images):
    self.info, self.images = info, images
    self.labels = np.arange(len(images), dtype=np.int32) % 10

  def __len__(self):
    return len(self.images)

  def read(self, indices):
    return [self.images[i] for i in indices], self.labels[np.asarray(indices)]


def _rate(batches, count: int, batch: int, rounds: int = 3) -> float:
  """Images per CPU-second (all threads of the process) of the best of ``rounds``
  passes over ``count`` images: the per-core cost, robust to other load on the
  machine (wall time is not)."""
  steps = count // batch
  best = 0.0
  for _ in range(rounds):
    start = time.process_time()
    for _ in range(steps):
      next(batches)
    best = max(best, steps * batch / (time.process_time() - start))
  return best


def run_l0jax(case: str, images, cached: bool) -> float:
  from l0jax import data  # pylint: disable=g-import-not-at-top
  from l0jax.data import sources  # pylint: disable=g-import-not-at-top
  count, batch, shape, _ = CASES[case]
  name = {"cifar": "cifar10", "imagenet": "imagenet2012", "fashion": "fashion_mnist"}[case]
  info = data.dataset_info(name)
  source = _BytesSource(info, images)
  if cached:  # decode once, as train.py does for fixed-size images
    from l0jax.data import transforms  # pylint: disable=g-import-not-at-top
    source = sources.ArraySource(info, transforms.decode_batch(images, shape),
                                 source.labels)
  prep = data.preprocessing(info, image_size=224 if case == "imagenet" else 0)
  batches = data.train_iterator(source, prep=prep, global_batch_size=batch, seed=0,
                                cache=False)
  next(batches)
  return _rate(batches, count, batch)


def run_tf(case: str, images, cached: bool) -> float:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  count, batch, (h, w, c), _ = CASES[case]
  mean, std = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar": (CIFAR_MEAN, CIFAR_STD),
               "fashion": ((0.0,), (1.0,))}[case]
  if case == "imagenet":

    def fn(blob):
      shape = tf.io.extract_jpeg_shape(blob)
      begin, size, _ = tf.image.sample_distorted_bounding_box(
          shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
          min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
          area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
      y, x, _ = tf.unstack(begin)
      ch, cw, _ = tf.unstack(size)
      image = tf.image.decode_and_crop_jpeg(blob, tf.stack([y, x, ch, cw]), channels=3)
      image = tf.image.resize(image, [224, 224], method="bilinear")
      image = tf.image.random_flip_left_right(image)
      return (image / 255.0 - mean) / std
  else:

    def augment(image):
      if case == "cifar":
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
        image = tf.image.random_crop(image, [h, w, c])
        image = tf.image.random_flip_left_right(image)
      return (tf.cast(image, tf.float32) / 255.0 - mean) / std

    fn = augment if cached else (lambda blob: augment(tf.io.decode_png(blob, channels=c)))
  if cached:
    images = tf.stack([tf.io.decode_png(b, channels=c) for b in images])
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  ds = tf.data.Dataset.from_tensor_slices(images).shuffle(len(images)).repeat()
  ds = ds.map(fn).batch(batch).prefetch(1).with_options(options)
  it = iter(ds)
  next(it)
  return _rate((x.numpy() for x in it), count, batch)


def run_pil(case: str, images, cached: bool) -> float:
  """A plain per-image PIL + numpy loop doing the same work (no tf.data at hand)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  count, batch, (h, w, c), _ = CASES[case]
  rng = np.random.default_rng(0)
  mean, std = ((IMAGENET_MEAN, IMAGENET_STD) if case == "imagenet"
               else (CIFAR_MEAN, CIFAR_STD) if case == "cifar" else ((0.0,), (1.0,)))
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  decode = lambda blob: np.asarray(Image.open(io.BytesIO(blob))).reshape(h, w, c)
  if cached:
    images = [decode(blob) for blob in images]

  def one(item):
    if case == "imagenet":
      pil = Image.open(io.BytesIO(item))
      width, height = pil.size
      area = width * height * rng.uniform(0.08, 1.0)
      aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      cw = min(width, int(round(np.sqrt(area * aspect))))
      ch = min(height, int(round(np.sqrt(area / aspect))))
      top, left = rng.integers(0, height - ch + 1), rng.integers(0, width - cw + 1)
      array = np.asarray(pil.convert("RGB").resize((224, 224), Image.BILINEAR,
                                                   box=(left, top, left + cw, top + ch)))
    else:
      array = item if cached else decode(item)
      if case == "cifar":
        padded = np.pad(array, ((4, 4), (4, 4), (0, 0)))
        dy, dx = rng.integers(0, 9, size=2)
        array = padded[dy:dy + 32, dx:dx + 32]
    if case != "fashion" and rng.uniform() < 0.5:
      array = array[:, ::-1]
    return (array.astype(np.float32) / 255.0 - mean) / std

  def batches():
    order = rng.permutation(len(images))
    k = 0
    while True:
      start = k % (len(images) - batch)
      k += batch
      yield np.stack([one(images[i]) for i in order[start:start + batch]])

  it = batches()
  next(it)
  return _rate(it, count, batch)


def run_order() -> dict:
  import grain  # pylint: disable=g-import-not-at-top
  from l0jax.data import randomness  # pylint: disable=g-import-not-at-top
  n = 60000
  start = time.perf_counter()
  randomness.epoch_permutation(n, 0, 1)
  ours = time.perf_counter() - start
  shuffled = grain.MapDataset.range(n).shuffle(seed=0)
  start = time.perf_counter()
  _ = [shuffled[i] for i in range(n)]
  theirs = time.perf_counter() - start
  return {"l0jax_ms": 1e3 * ours, "grain_ms": 1e3 * theirs}


def worker(args) -> None:
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
  if args.worker == "order":
    print(json.dumps(run_order()))
    return
  with open(args.images, "rb") as f:
    images = pickle.load(f)
  name, _, cached = args.worker.partition("_")
  run = {"l0jax": run_l0jax, "tf": run_tf, "pil": run_pil}[name]
  fn = lambda: run(args.case, images, cached == "cached")
  print(json.dumps({"images_per_sec": fn()}))


# ------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------
def _measure(python: str, worker_name: str, case: str = "", images: str = "") -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
      [python, os.path.abspath(__file__), f"--worker={worker_name}", f"--case={case}",
       f"--images={images}"], capture_output=True, text=True, env=env, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{worker_name} {case} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _has_tensorflow(python: str) -> bool:
  return subprocess.run([python, "-c", "import tensorflow"], capture_output=True,
                        check=False).returncode == 0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tf-python", default=sys.executable,
                      help="an interpreter with TensorFlow for the tf.data rows")
  parser.add_argument("--order", action="store_true")
  parser.add_argument("--cases", default="cifar,imagenet,fashion")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  parser.add_argument("--case", default="", help=argparse.SUPPRESS)
  parser.add_argument("--images", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  tf_python = args.tf_python if _has_tensorflow(args.tf_python) else None
  reference = "tf.data" if tf_python else "PIL/numpy loop"
  print(f"images per CPU-second, one core each; reference: {reference}"
        + (f" ({tf_python})" if tf_python else " (no TensorFlow: pass --tf-python)"))
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for case in args.cases.split(","):
      path = os.path.join(tmp, f"{case}.pkl")
      with open(path, "wb") as f:
        pickle.dump(make_images(case), f)
      for variant in ("", "_cached") if case != "imagenet" else ("",):
        ours = _measure(sys.executable, "l0jax" + variant, case, path)["images_per_sec"]
        ref = (_measure(tf_python, "tf" + variant, case, path) if tf_python
               else _measure(sys.executable, "pil" + variant, case, path))["images_per_sec"]
        rows.append((case, "decoded once, as train.py" if variant
                     else "decoded every batch", ours, ref))
  print(f"\n| images | l0jax path | l0jax img/CPU-s | {reference} img/CPU-s | ratio |")
  print("|---|---|---|---|---|")
  labels = {"cifar": "CIFAR-shaped 32x32x3 PNG, pad-crop + flip",
            "imagenet": "ImageNet-shaped 400x350 JPEG, RRC 224 + flip",
            "fashion": "Fashion-MNIST-shaped 28x28x1 PNG"}
  for case, path, ours, ref in rows:
    print(f"| {labels[case]} | {path} | {ours:,.0f} | {ref:,.0f} | {ours / ref:.2f}x |")
  if args.order:
    order = _measure(sys.executable, "order")
    print(f"\nepoch order of 60,000 examples: l0jax {order['l0jax_ms']:.1f} ms, grain "
          f"MapDataset.shuffle {order['grain_ms']:.0f} ms "
          f"({order['grain_ms'] / order['l0jax_ms']:.0f}x)")


if __name__ == "__main__":
  main()
