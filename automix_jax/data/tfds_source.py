"""TFDS datasets as random-access sources, without TensorFlow.

``tfds.data_source`` reads ArrayRecord files with random access and decodes
images to numpy (Pillow), so no TensorFlow is needed. The dataset must have been
prepared in the ``array_record`` format::

    tfds build <name> --file_format=array_record --data_dir=<data_dir>

For multi-host training each process opens only its own part of the split
(``tfds.split_for_jax_process``), as the flax gemma example does.

Datasets whose images vary in size (``imagenet2012``, ``caltech_birds2011``,
``cars196``, ...: image feature ``(None, None, 3)``) report ``image_shape``
``(None, None, C)`` and read as a *list* of uint8 ``[H_i, W_i, C]``; the
train / eval crops to ``data.image_size`` make the batch
(``Augment.for_variable_size``).
"""

from __future__ import annotations

import logging
import zlib
from typing import Dict, Optional

import numpy as np

from automix_jax.data.offline import check_indices


def _build_hint(name: str, data_dir: Optional[str]) -> str:
  dd = f" --data_dir={data_dir}" if data_dir else ""
  return (f"Prepare it with `tfds build {name} --file_format=array_record{dd}` "
          "(or set config key `data.tfds_data_dir` to the folder that holds "
          "it).")


class TfdsSource:
  """A ``tfds.data_source`` wrapped in the data source protocol.

  ``len(source)`` (examples of *this process* when ``process_local``),
  ``num_classes``, ``image_shape`` ``(H, W, C)`` and
  ``source[indices] -> {"image": uint8 [n, H, W, C], "label": int32 [n]}``.
  With images of varying size ``image_shape`` is ``(None, None, C)`` and
  ``"image"`` a list of n uint8 ``[H_i, W_i, C]``.
  ``num_examples_global`` is the size of the whole split (all processes), or
  None when TFDS does not know it.
  """

  def __init__(self, data_source, *, name: str, split, num_classes: int,
               image_shape, image_key: str = "image", label_key: str = "label",
               process_local: bool = False,
               num_examples_global: Optional[int] = None,
               global_split: Optional[str] = None,
               subset: Optional[np.ndarray] = None):
    self._ds = data_source
    self.name = name
    self.split = split
    # The split all processes share (``split`` is this process's part).
    self.global_split = split if global_split is None else global_split
    self.num_classes = int(num_classes)
    self.image_shape = tuple(None if d is None else int(d)
                             for d in image_shape)
    self.variable_size = None in self.image_shape[:2]
    # Indices into the split (``subset``), or None for all of it.
    self._subset = None if subset is None else np.asarray(subset, np.int64)
    self.image_key = image_key
    self.label_key = label_key
    self.process_local = bool(process_local)
    # None when the split info is unavailable (e.g. under tfds mocking).
    self.num_examples_global = (None if num_examples_global is None
                                else int(num_examples_global))
    self._batched = hasattr(data_source, "__getitems__")

  def fingerprint(self) -> str:
    """Dataset name, split and size (TFDS versions its data itself).

    The same on every process (the whole split, not this process's part), so
    that all processes agree when a resume compares it with the checkpoint's.
    """
    size = self.num_examples_global
    if size is None:  # unknown split size: only this process's part is known
      size = "?" if self.process_local else len(self._ds)
    out = f"tfds:{self.name}:{self.global_split}:{size}"
    if self._subset is not None:
      crc = zlib.crc32(np.ascontiguousarray(self._subset).data)
      out += f":subset{len(self._subset)}:{crc & 0xFFFFFFFF:08x}"
    return out

  def subset(self, indices) -> "TfdsSource":
    """The examples ``indices`` of this source (e.g. an ``images_per_class``
    subset), read from the same TFDS files."""
    if self.process_local:
      raise ValueError("A subset of a process-local TFDS source is not "
                       "supported (the subset must be drawn over the whole "
                       "split).")
    idx = self._split_indices(indices)
    return TfdsSource(self._ds, name=self.name, split=self.split,
                      global_split=self.global_split,
                      num_classes=self.num_classes,
                      image_shape=self.image_shape, image_key=self.image_key,
                      label_key=self.label_key, process_local=False,
                      num_examples_global=self.num_examples_global,
                      subset=idx)

  def __len__(self) -> int:
    return len(self._ds) if self._subset is None else len(self._subset)

  def _read(self, keys):
    if self._batched:
      try:
        return self._ds.__getitems__(keys)
      except TypeError:
        # tfds.testing.mock_data (tfds 4.9.x) installs an unbound
        # `__getitems__` that raises TypeError; single reads work. A genuine
        # TypeError is raised again by the single reads below.
        self._batched = False
    return [self._ds[k] for k in keys]

  def _split_indices(self, indices) -> np.ndarray:
    """Checked ``indices`` (negative from the end) -> indices into the split."""
    idx = check_indices(indices, len(self))
    idx = np.where(idx < 0, idx + len(self), idx)
    return idx if self._subset is None else self._subset[idx]

  def __getitem__(self, indices) -> Dict[str, np.ndarray]:
    idx = self._split_indices(indices)
    records = self._read([int(i) for i in idx])
    if not records:
      return {"image": ([] if self.variable_size else
                        np.zeros((0, *self.image_shape), np.uint8)),
              "label": np.zeros((0,), np.int32)}
    try:
      images = [np.asarray(r[self.image_key]) for r in records]
      labels = np.asarray([r[self.label_key] for r in records])
    except KeyError as e:
      raise ValueError(
          f"TFDS {self.name!r} examples have keys {sorted(records[0])}; "
          f"`image_key`={self.image_key!r} / `label_key`={self.label_key!r} "
          "must be among them.") from e
    for im in images:
      if (im.dtype != np.uint8 or im.ndim != 3 or 0 in im.shape
          or any(d is not None and d != e
                 for d, e in zip(self.image_shape, im.shape))):
        raise ValueError(
            f"TFDS {self.name!r}: image of shape {im.shape} dtype {im.dtype}, "
            f"expected uint8 {self.image_shape} (None: any size).")
    if self.variable_size:  # one crop per image makes the batch (augment)
      return {"image": images, "label": labels.astype(np.int32)}
    return {"image": np.stack(images), "label": labels.astype(np.int32)}

  def __repr__(self) -> str:
    sub = "" if self._subset is None else ", subset"
    return (f"TfdsSource({self.name!r}, split={self.split!r}{sub}, n={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes}, "
            f"process_local={self.process_local})")


def open_tfds(name: str, split: str, *, data_dir: Optional[str] = None,
              process_split: bool = True, image_key: str = "image",
              label_key: str = "label", process_index: Optional[int] = None,
              process_count: Optional[int] = None) -> TfdsSource:
  """Opens a prepared TFDS dataset split as a random-access source.

  Args:
    name: TFDS name, e.g. ``"cifar10"``, ``"cifar100"``.
    split: TFDS split string, e.g. ``"train"``, ``"test"``, ``"train[:90%]"``.
    data_dir: TFDS data dir (config ``data.tfds_data_dir``); None = default.
    process_split: when True and there are several JAX processes, open only
      this process's part (``tfds.split_for_jax_process``; sizes differ by at
      most one example, see ``TrainIterator`` for how that is handled).
    image_key: feature key of the uint8 ``[H, W, C]`` image; H and W may be
      None (images of varying size, e.g. ``imagenet2012``).
    label_key: feature key of the ``ClassLabel``.
    process_index: default ``jax.process_index()`` (override for tests).
    process_count: default ``jax.process_count()``.

  Returns:
    A ``TfdsSource``.

  Raises:
    ValueError: unknown dataset, or missing/unsuitable feature keys.
    FileNotFoundError: the dataset is not prepared (in array_record format) in
      ``data_dir``.
  """
  import tensorflow_datasets as tfds  # Heavy import, only for TFDS runs.

  if not isinstance(name, str) or not name:
    raise ValueError(f"`name` must be a TFDS dataset name, got {name!r}.")
  if not isinstance(split, str) or not split:
    raise ValueError(f"`split` must be a TFDS split string, got {split!r}.")
  data_dir = data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"Unknown TFDS dataset {name!r} (config key `data.name`). "
        + _build_hint(name, data_dir)) from e
  features = builder.info.features
  for key, what in ((image_key, "image_key"), (label_key, "label_key")):
    if key not in features:
      raise ValueError(
          f"TFDS {name!r} has features {sorted(features.keys())}; `{what}`="
          f"{key!r} is not one of them.")
  num_classes = getattr(features[label_key], "num_classes", None)
  if num_classes is None:
    raise ValueError(
        f"TFDS {name!r} feature {label_key!r} is not a ClassLabel; cannot "
        "infer num_classes.")
  image_shape = tuple(features[image_key].shape)
  if len(image_shape) != 3 or image_shape[2] is None:
    raise ValueError(
        f"TFDS {name!r} image feature {image_key!r} has shape {image_shape}; "
        "only [H, W, C] images with a known C are supported (H, W may be "
        "None: images of varying size).")

  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  read_split = split
  process_local = bool(process_split and process_count > 1)
  if process_local:
    read_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count)
  try:
    ds = tfds.data_source(name, split=read_split, data_dir=data_dir,
                          download=False)
  except (NotImplementedError, AssertionError, FileNotFoundError, OSError) as e:
    raise FileNotFoundError(
        f"TFDS dataset {name!r} split {split!r} is not available for random "
        f"access in data_dir={data_dir or tfds.core.constants.DATA_DIR!r}. "
        + _build_hint(name, data_dir) + f" Cause: {e}") from e
  num_global = None
  try:
    num_global = builder.info.splits[split].num_examples
  except Exception:  # pylint: disable=broad-except
    # Mocked / unusual split dicts: fall back on this process's length.
    num_global = len(ds) if not process_local else None
  source = TfdsSource(ds, name=name, split=read_split, global_split=split,
                      num_classes=num_classes,
                      image_shape=image_shape, image_key=image_key,
                      label_key=label_key, process_local=process_local,
                      num_examples_global=num_global)
  logging.info("Opened %r", source)
  return source
