"""Image-classification data for l0jax: any TFDS dataset (array_record, no TensorFlow),
offline preparation, per-dataset preprocessing and deterministic batches.

* :mod:`~l0jax.data.catalog`: known datasets (shapes, classes, split sizes,
  normalisation, how to prepare each) for ``fake_data`` and defaults;
* :mod:`~l0jax.data.sources`: TFDS / in-memory / fake random-access sources;
* :mod:`~l0jax.data.idx`: MNIST-format IDX files and the offline (Fashion-)MNIST
  preparation; :mod:`~l0jax.data.tiny_imagenet`: Tiny ImageNet's;
* :mod:`~l0jax.data.transforms`: decoding, augmentation, eval crops, scaling;
* :mod:`~l0jax.data.randomness`: the epoch order and augmentation draws as pure
  functions of (seed, epoch, example index);
* :mod:`~l0jax.data.iterators`: per-process, per-device train / eval batches, computed
  ahead by grain.

Typical use (what ``l0jax.train_lib`` does)::

    from l0jax import data
    source = data.load_split("cifar10", "train", data_dir="~/tensorflow_datasets")
    prep = data.preprocessing(source.info)            # pad-4 crop + flip, mean/std
    batches = data.train_iterator(source, prep=prep, global_batch_size=128, seed=0)
    batch = next(batches)   # {"image": float32 [1, 128, 32, 32, 3], "label": int32 [1, 128]}
"""

from l0jax.data.catalog import CATALOG
from l0jax.data.idx import (DataFileError, IDX_DATASETS, default_idx_dir,
                            prepare_idx_dataset, read_idx, write_idx)
from l0jax.data.iterators import (TrainIterator, eval_iterator, num_eval_batches,
                                  train_iterator)
from l0jax.data.randomness import epoch_permutation, example_uniforms
from l0jax.data.tiny_imagenet import prepare_tiny_imagenet
from l0jax.data.sources import (ArraySource, DatasetInfo, DatasetNotPrepared, FakeSource,
                                TfdsSource, cache_source, dataset_info, is_prepared,
                                load_split)
from l0jax.data.transforms import AUGMENTS, Preprocessing, preprocessing

__all__ = [
    "AUGMENTS", "ArraySource", "CATALOG", "DataFileError", "DatasetInfo",
    "DatasetNotPrepared", "FakeSource", "IDX_DATASETS", "Preprocessing", "TfdsSource",
    "TrainIterator", "cache_source", "dataset_info", "default_idx_dir",
    "epoch_permutation", "eval_iterator", "example_uniforms", "is_prepared",
    "load_split", "num_eval_batches", "prepare_idx_dataset", "prepare_tiny_imagenet",
    "preprocessing",
    "read_idx", "train_iterator", "write_idx",
]
