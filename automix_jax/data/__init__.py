"""Data: random-access sources, CIFAR / ImageNet-style augmentation, sharded
batch iterators.

A *source* has ``len(source)``, ``source.num_classes``, ``source.image_shape``
``(H, W, C)`` and ``source[indices] -> {"image": uint8 [n, H, W, C],
"label": int32 [n]}``; a source whose images vary in size (e.g. TFDS
``imagenet2012``) has ``image_shape`` ``(None, None, C)`` and reads a list of
uint8 ``[H_i, W_i, C]``, which the crop augmentations make into
``[n, image_size, image_size, C]`` batches. See docs/interfaces.md ("Data").

Typical use::

  train_src, test_src = data.build_sources(config.data)
  it = data.TrainIterator(train_src, global_batch_size=config.batch_size,
                          seed=config.seed,
                          augment=data.augment_from_config(config.data, train=True),
                          sharding=NamedSharding(mesh, P("data")))
  for batch in data.eval_batches(test_src, batch_size=..., sharding=...,
                                 normalize=data.augment_from_config(
                                     config.data, train=False)):
    ...
"""

from __future__ import annotations

import logging

import numpy as np

from automix_jax.data.augment import (CIFAR_MEAN, CIFAR_STD, KINDS, Augment,
                                      augment_jax, eval_transform,
                                      normalize_np, random_crop_flip_np,
                                      resize_jax)
from automix_jax.data.augment import from_config as augment_from_config
from automix_jax.data.offline import (CIFAR10_CLASSES, ArraySource,
                                      distinct_class_indices,
                                      load_cifar10_archive, subset_per_class)
from automix_jax.data.pipeline import TrainIterator, eval_batches, variable_size
from automix_jax.data.randaugment import randaugment_np
from automix_jax.data.tfds_source import TfdsSource, open_tfds
from automix_jax.data.transforms import (center_crop_jax, center_crop_np,
                                         color_jitter_jax,
                                         random_erasing_jax,
                                         random_resized_crop_jax,
                                         random_resized_crop_np,
                                         resized_crop_jax, resized_crop_np)

ARCHIVE_NAME = "cifar10_archive"
_LABEL_CHUNK = 1024  # examples read at a time to find a per-class subset

__all__ = [
    "ArraySource", "Augment", "CIFAR10_CLASSES", "CIFAR_MEAN", "CIFAR_STD",
    "KINDS", "TfdsSource", "TrainIterator", "augment_from_config",
    "augment_jax", "build_sources", "center_crop_jax", "center_crop_np",
    "color_jitter_jax",
    "distinct_class_indices",
    "eval_batches", "eval_transform", "fingerprint", "load_cifar10_archive",
    "normalize_np", "open_tfds", "randaugment_np", "random_crop_flip_np",
    "random_erasing_jax", "random_resized_crop_jax", "random_resized_crop_np",
    "resize_jax", "resized_crop_jax", "resized_crop_np", "subset_per_class",
    "variable_size",
]


def _get(cfg, key, default=None):
  if hasattr(cfg, "get"):
    return cfg.get(key, default)
  return getattr(cfg, key, default)


def build_sources(data_config):
  """``(train_source, test_source)`` from a config ``data`` block.

  Keys: ``name`` ("cifar10_archive" or a TFDS name), ``archive_path``,
  ``cache_dir``, ``tfds_data_dir``, ``train_split``, ``test_split``,
  ``images_per_class`` (0 = all; > 0: a fixed subset of the *training* set
  drawn with ``subset_seed``; in memory, or for images of varying size a
  ``TfdsSource.subset`` of indices), ``subset_seed``.

  Raises:
    FileNotFoundError: missing archive / unprepared TFDS data.
    ValueError: bad keys or values.
  """
  name = _get(data_config, "name")
  if not isinstance(name, str) or not name:
    raise ValueError(
        f"config data.name must be '{ARCHIVE_NAME}' or a TFDS name, got "
        f"{name!r}.")
  ipc = int(_get(data_config, "images_per_class", 0) or 0)
  if ipc < 0:
    raise ValueError(f"config data.images_per_class must be >= 0, got {ipc}.")
  subset_seed = int(_get(data_config, "subset_seed", 0) or 0)
  if name == ARCHIVE_NAME:
    path = _get(data_config, "archive_path")
    if not path:
      raise ValueError(
          "config data.archive_path must point to cifar10-jpeg.tar.gz when "
          f"data.name == '{ARCHIVE_NAME}'.")
    arrays = load_cifar10_archive(path,
                                  cache_dir=_get(data_config, "cache_dir") or None)
    x_tr, y_tr = arrays["train"]
    x_te, y_te = arrays["test"]
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    if ipc:
      x_tr, y_tr = subset_per_class(x_tr, y_tr, ipc, subset_seed,
                                    num_classes=num_classes)
    train = ArraySource(x_tr, y_tr, num_classes=num_classes)
    test = ArraySource(x_te, y_te, num_classes=num_classes)
  else:
    data_dir = _get(data_config, "tfds_data_dir") or None
    train_split = _get(data_config, "train_split", "train") or "train"
    test_split = _get(data_config, "test_split", "test") or "test"
    train = open_tfds(name, train_split, data_dir=data_dir)
    test = open_tfds(name, test_split, data_dir=data_dir)
    if ipc:
      if train.process_local:
        raise ValueError(
            "config data.images_per_class > 0 with a multi-process TFDS source "
            "is not supported (the subset must be drawn over the whole split).")
      if variable_size(train):
        # Images of different sizes cannot be one array: keep the subset's
        # indices and read from the TFDS files. Labels are read in chunks so
        # that the images are not all held at once.
        n = len(train)
        labels = np.concatenate([
            train[np.arange(i, min(i + _LABEL_CHUNK, n))]["label"]
            for i in range(0, n, _LABEL_CHUNK)])
        keep, _ = subset_per_class(np.arange(n), labels, ipc, subset_seed,
                                   num_classes=train.num_classes)
        train = train.subset(keep)
      else:
        everything = train[list(range(len(train)))]
        x_tr, y_tr = subset_per_class(everything["image"], everything["label"],
                                      ipc, subset_seed,
                                      num_classes=train.num_classes)
        train = ArraySource(x_tr, y_tr, num_classes=train.num_classes)
  logging.info("build_sources(%s): train %r, test %r", name, train, test)
  return train, test


def fingerprint(*sources) -> str:
  """Identifies the examples behind ``sources`` (train, test, ...).

  A resumed run compares it with the checkpoint's, so that a changed
  ``data.archive_path`` (which may legitimately move) cannot silently continue
  on other images. Sources without a ``fingerprint()`` method are described by
  their type, length, image shape and class count.
  """
  parts = []
  for src in sources:
    fn = getattr(src, "fingerprint", None)
    parts.append(fn() if callable(fn) else
                 f"{type(src).__name__}:{len(src)}:{tuple(src.image_shape)}:"
                 f"{src.num_classes}")
  return "|".join(parts)
