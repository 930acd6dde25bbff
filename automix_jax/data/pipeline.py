"""Training iterator and eval batches: global sharded ``jax.Array`` batches.

Order and randomness are pure functions of ``(seed, epoch, step)``:

* the epoch permutation is ``np.random.default_rng([seed, epoch])
  .permutation(N)`` (per-process sources: ``[seed, epoch, process_index]``);
* the host augmentation of step ``s`` uses
  ``np.random.default_rng([seed, epoch, s, process_index])`` and the device half
  folds ``(seed, epoch, s)`` into a key,

so ``get_state()`` / ``set_state()`` (two ints) restore exactly the same
batches, whatever the prefetch depth.

Multi-host: every process computes the same permutation of the global source
and takes its contiguous slice ``[p * B / P, (p + 1) * B / P)`` of each global
batch; ``jax.make_array_from_process_local_data`` assembles the global array.
A process-local source (``source.process_local``, e.g. ``open_tfds`` with
several processes) is permuted and batched per process instead.

A source whose images vary in size (``image_shape`` ``(None, None, C)``, its
reads a list of uint8 ``[H_i, W_i, C]``) runs ``augment.for_variable_size()``:
the crop to ``image_size`` happens on the host, per image of this process's
slice, before the batch is stacked; the batch shape is
``augment.output_shape(source.image_shape)``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from typing import Dict, Iterator, Optional

import jax
import numpy as np

from automix_jax.data.augment import Augment, as_augment

Batch = Dict[str, jax.Array]


def _check_source(source, arg="source"):
  for attr in ("num_classes", "image_shape", "__len__", "__getitem__"):
    if not hasattr(source, attr):
      raise ValueError(
          f"`{arg}` must follow the data source protocol (len, num_classes, "
          f"image_shape, __getitem__(indices)); {type(source).__name__} lacks "
          f"{attr!r}.")
  shape = tuple(source.image_shape)
  if (len(shape) != 3 or shape[2] is None
      or any(d is not None and int(d) <= 0 for d in shape)):
    raise ValueError(
        f"`{arg}.image_shape` must be (H, W, C) with H and W positive ints or "
        f"None (images of varying size), C a positive int; got {shape}.")
  if len(source) == 0:
    raise ValueError(f"`{arg}` is empty.")


def variable_size(source) -> bool:
  """Whether ``source``'s images vary in size (``image_shape`` H or W None)."""
  h, w, _ = source.image_shape
  return h is None or w is None


def _for_source(augment: Augment, source) -> Augment:
  """``augment``, or its host-cropping version for a variable-size source."""
  if not variable_size(source):
    return augment
  out = augment.for_variable_size()
  if out is not augment:
    logging.info("Images vary in size %s: %r runs its crop on the host, per "
                 "image.", tuple(source.image_shape), out)
  return out


def _num_devices(sharding) -> int:
  mesh = getattr(sharding, "mesh", None)
  if mesh is not None and hasattr(mesh, "size"):
    return int(mesh.size)
  devices = getattr(sharding, "device_set", None)
  if devices is None:
    raise ValueError(
        f"`sharding` must be a jax.sharding.Sharding (e.g. NamedSharding(mesh, "
        f"P('data'))); got {sharding!r}.")
  return len(devices)


def _label_sharding(sharding):
  """The sharding of rank-1 per-example arrays: the batch axis of ``sharding``."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    spec = tuple(sharding.spec)
    return jax.sharding.NamedSharding(sharding.mesh,
                                      jax.sharding.PartitionSpec(*spec[:1]))
  return sharding


def _check_batch_size(batch_size, sharding, process_count, arg):
  if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
    raise ValueError(f"`{arg}` must be a positive int, got {batch_size!r}.")
  ndev = _num_devices(sharding)
  if batch_size % ndev:
    raise ValueError(
        f"`{arg}`={batch_size} must be divisible by the number of devices in "
        f"the sharding's mesh ({ndev}).")
  if batch_size % process_count:
    raise ValueError(
        f"`{arg}`={batch_size} must be divisible by the process count "
        f"({process_count}).")


class _Error:

  def __init__(self, exc):
    self.exc = exc


class TrainIterator:
  """Infinite, resumable iterator over augmented global training batches.

  Yields ``{"image": float32 [B, H', W', C] normalised, "label": int32 [B]}``
  as global ``jax.Array`` s with ``sharding`` (labels sharded along the batch
  axis of ``sharding``), ``B = global_batch_size``.

  Each epoch uses the first ``steps_per_epoch * B`` examples of its
  permutation, ``steps_per_epoch = N // B``; the other
  ``examples_dropped_per_epoch`` (< B, a different set each epoch) are unused
  and this is logged at construction.

  Use as a context manager, or call ``close()``, to stop the prefetch thread.
  """

  def __init__(self, source, *, global_batch_size: int, seed: int,
               augment, sharding, prefetch: int = 2,
               process_index: Optional[int] = None,
               process_count: Optional[int] = None):
    """Creates the iterator (no data is read until the first ``next``).

    Args:
      source: a data source (``len``, ``num_classes``, ``image_shape``,
        ``source[indices]``).
      global_batch_size: B, divisible by the mesh's device count and by the
        process count.
      seed: data seed (permutations and augmentation).
      augment: an ``Augment`` (e.g. ``augment.from_config(cfg.data,
        train=True)``) or one of ``augment.KINDS``.
      sharding: ``jax.sharding.Sharding`` of the image batch, e.g.
        ``NamedSharding(mesh, P("data"))``.
      prefetch: host batches (source reads + host augmentation) prepared ahead
        in a background thread (0 = none); the device half runs in the
        calling thread.
      process_index: default ``jax.process_index()`` (override only to test
        the host slicing with ``local_batch``).
      process_count: default ``jax.process_count()``.
    """
    _check_source(source)
    self.process_index = (jax.process_index() if process_index is None
                          else int(process_index))
    self.process_count = (jax.process_count() if process_count is None
                          else int(process_count))
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(
          f"`process_index`={self.process_index} must be in [0, "
          f"process_count={self.process_count}).")
    _check_batch_size(global_batch_size, sharding, self.process_count,
                      "global_batch_size")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"`seed` must be an int >= 0, got {seed!r}.")
    if not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
      raise ValueError(f"`prefetch` must be an int >= 0, got {prefetch!r}.")
    self.source = source
    self.global_batch_size = int(global_batch_size)
    self.local_batch_size = self.global_batch_size // self.process_count
    self.seed = int(seed)
    self.augment: Augment = _for_source(as_augment(augment), source)
    self.sharding = sharding
    self.label_sharding = _label_sharding(sharding)
    self.prefetch = int(prefetch)
    self.process_local = bool(getattr(source, "process_local", False))

    n_local = len(source)
    if self.process_local:
      n_global = getattr(source, "num_examples_global", None)
      if n_global is None:
        logging.warning(
            "Process-local source without num_examples_global: steps per "
            "epoch are computed from this process's %d examples; processes "
            "with fewer examples would disagree.", n_local)
        usable = n_local
      else:
        # even_splits gives every process floor(N/P) or ceil(N/P) examples;
        # all processes must run the same number of steps.
        usable = min(n_local, n_global // self.process_count)
      self.steps_per_epoch = usable // self.local_batch_size
      self.examples_dropped_per_epoch = n_local - (self.steps_per_epoch *
                                                   self.local_batch_size)
    else:
      self.steps_per_epoch = n_local // self.global_batch_size
      self.examples_dropped_per_epoch = n_local - (self.steps_per_epoch *
                                                   self.global_batch_size)
    if self.steps_per_epoch == 0:
      raise ValueError(
          f"`global_batch_size`={global_batch_size} is larger than the "
          f"dataset ({n_local} examples{' on this process' if self.process_local else ''}).")
    logging.info(
        "TrainIterator: %d examples, global batch %d -> %d steps/epoch; %d "
        "examples per epoch%s are not used (last partial batch dropped, a "
        "different set each epoch).", n_local, self.global_batch_size,
        self.steps_per_epoch, self.examples_dropped_per_epoch,
        " on this process" if self.process_local else "")

    self._epoch, self._position = 0, 0
    self._perm_cache = (None, None)
    self._thread = None
    self._queue = None
    self._stop = None
    self._closed = False

  # ------------------------------------------------------------------ state
  def get_state(self) -> Dict[str, int]:
    """``{"epoch", "position"}`` of the next batch ``next()`` will return."""
    return {"epoch": self._epoch, "position": self._position}

  def set_state(self, state) -> None:
    """Resumes at ``state`` (from ``get_state``); discards prefetched batches."""
    try:
      epoch, position = state["epoch"], state["position"]
    except (TypeError, KeyError) as e:
      raise ValueError(
          f"`state` must be a dict {{'epoch': int, 'position': int}}, got "
          f"{state!r}.") from e
    epoch, position = int(np.asarray(epoch)), int(np.asarray(position))
    if epoch < 0 or not 0 <= position <= self.steps_per_epoch:
      raise ValueError(
          f"`state` has epoch={epoch}, position={position}; need epoch >= 0 "
          f"and 0 <= position <= steps_per_epoch={self.steps_per_epoch}.")
    if position == self.steps_per_epoch:
      epoch, position = epoch + 1, 0
    self._stop_thread()
    self._epoch, self._position = epoch, position

  @property
  def step(self) -> int:
    """Global step index of the next batch (``epoch * steps_per_epoch + position``)."""
    return self._epoch * self.steps_per_epoch + self._position

  # ------------------------------------------------------------------ batches
  def _permutation(self, epoch: int) -> np.ndarray:
    if self._perm_cache[0] != epoch:
      key = ([self.seed, epoch, self.process_index] if self.process_local
             else [self.seed, epoch])
      self._perm_cache = (epoch, np.random.default_rng(key).permutation(
          len(self.source)))
    return self._perm_cache[1]

  def local_indices(self, epoch: int, position: int) -> np.ndarray:
    """Source indices of this process's slice of batch ``(epoch, position)``."""
    perm = self._permutation(epoch)
    lb = self.local_batch_size
    if self.process_local:
      start = position * lb
    else:
      start = position * self.global_batch_size + self.process_index * lb
    return perm[start:start + lb]

  def local_batch(self, epoch: int, position: int) -> Dict[str, np.ndarray]:
    """This process's host batch: ``{"image": uint8 [B/P, H, W, C], "label"}``.

    The image is after the host half of the augmentation (before the device
    half: normalisation, resize, and the JAX-backend crop/flip); for a
    variable-size source, ``(H, W)`` is ``augment.image_size`` squared.
    """
    data = self.source[self.local_indices(epoch, position)]
    rng = np.random.default_rng([self.seed, epoch, position, self.process_index])
    images = data["image"]
    if not variable_size(self.source):
      images = np.asarray(images)
    return {"image": self.augment.host(images, rng),
            "label": np.asarray(data["label"], np.int32)}

  def _global_batch(self, epoch: int, position: int, local) -> Batch:
    """The global batch from this process's host batch (main thread only)."""
    x = jax.make_array_from_process_local_data(self.sharding, local["image"])
    y = jax.make_array_from_process_local_data(self.label_sharding,
                                               local["label"])
    x = self.augment.device(x, self.seed, epoch, position,
                            sharding=self.sharding)
    return {"image": x, "label": y}

  def _advance(self, epoch, position):
    position += 1
    if position == self.steps_per_epoch:
      return epoch + 1, 0
    return epoch, position

  # ------------------------------------------------------------------ thread
  def _producer(self, epoch, position, q, stop):
    try:
      while not stop.is_set():
        # Host work only: device computations on global arrays must be
        # dispatched by one thread in the same order on every process (a
        # background thread's augmentation racing the main thread's step or
        # eval deadlocks the cross-process collectives).
        item = ((epoch, position), self.local_batch(epoch, position))
        while not stop.is_set():
          try:
            q.put(item, timeout=0.05)
            break
          except queue.Full:
            continue
        epoch, position = self._advance(epoch, position)
    except BaseException as e:  # pylint: disable=broad-except
      # Re-raised in the consumer by __next__.
      while not stop.is_set():
        try:
          q.put(_Error(e), timeout=0.05)
          break
        except queue.Full:
          continue

  def _start_thread(self):
    self._queue = queue.Queue(maxsize=self.prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(
        target=self._producer, args=(self._epoch, self._position, self._queue,
                                     self._stop),
        name="TrainIterator-prefetch", daemon=True)
    self._thread.start()

  def _stop_thread(self):
    if self._thread is None:
      return
    self._stop.set()
    while self._thread.is_alive():
      try:  # Unblock a producer waiting on a full queue.
        while True:
          self._queue.get_nowait()
      except queue.Empty:
        pass
      self._thread.join(timeout=0.05)
    self._thread = self._queue = self._stop = None

  def close(self) -> None:
    """Stops the prefetch thread; the iterator cannot be used afterwards."""
    self._stop_thread()
    self._closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self._stop_thread()
    except Exception:  # pylint: disable=broad-except
      pass

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    if self._closed:
      raise RuntimeError("TrainIterator is closed.")
    if self.prefetch == 0:
      batch = self._global_batch(
          self._epoch, self._position,
          self.local_batch(self._epoch, self._position))
    else:
      if self._thread is None:
        self._start_thread()
      item = self._queue.get()
      if isinstance(item, _Error):
        self._stop_thread()
        raise item.exc
      (epoch, position), local = item
      assert (epoch, position) == (self._epoch, self._position), (
          (epoch, position), (self._epoch, self._position))
      batch = self._global_batch(epoch, position, local)
    self._epoch, self._position = self._advance(self._epoch, self._position)
    return batch


def eval_batches(source, *, batch_size: int, sharding, normalize,
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> Iterator[Batch]:
  """One full pass over ``source`` in order, the last batch padded.

  Arguments are checked when called (not at the first batch).

  Yields:
    ``{"image": float32 [B, H', W', C], "label": int32 [B], "mask": bool [B]}``
    global ``jax.Array`` s; ``mask`` is False on padding (zero images, label
    0). ``ceil(N / B)`` batches (per-process sources: ``ceil(ceil(N / P) /
    (B / P))`` on every process, so all processes run the same count).

  Args:
    source: a data source; images of varying size (``image_shape`` ``(None,
      None, C)``) are resized and centre-cropped on the host, per image.
    batch_size: global B, divisible by device and process counts.
    sharding: sharding of the image batch.
    normalize: an ``Augment`` (its ``eval_version()`` runs: mean/std, size,
      filter and centre crop, never random geometry) or a ``(mean, std)``
      pair.
    process_index, process_count: defaults from jax.

  Raises:
    ValueError: bad arguments; a variable-size source without
      ``image_size`` > 0 and ``crop_pct`` in ``normalize``.
  """
  _check_source(source)
  pi = jax.process_index() if process_index is None else int(process_index)
  pc = jax.process_count() if process_count is None else int(process_count)
  _check_batch_size(batch_size, sharding, pc, "batch_size")
  ev = _for_source(as_augment(normalize, arg="normalize").eval_version(),
                   source)
  return _eval_batches(source, batch_size, sharding, ev, pi, pc)


def _eval_batches(source, batch_size, sharding, ev, pi, pc):
  lb = batch_size // pc
  n = len(source)
  label_sharding = _label_sharding(sharding)
  if getattr(source, "process_local", False):
    n_global = getattr(source, "num_examples_global", None) or n * pc
    num_batches = math.ceil(math.ceil(n_global / pc) / lb)
    offset = 0
  else:
    num_batches = math.ceil(n / batch_size)
    offset = pi * lb
  shape = (ev.output_shape(source.image_shape) if variable_size(source)
           else tuple(source.image_shape))
  for k in range(num_batches):
    start = k * (lb if getattr(source, "process_local", False) else batch_size)
    idx = np.arange(start + offset, start + offset + lb)
    mask = idx < n
    data = source[idx[mask]]
    images = np.zeros((lb, *shape), np.uint8)
    labels = np.zeros((lb,), np.int32)
    if variable_size(source):
      if mask.any():  # the eval resize + centre crop, deterministic
        images[mask] = ev.host(data["image"], None)
    else:
      images[mask] = data["image"]
    labels[mask] = data["label"]
    x = jax.make_array_from_process_local_data(sharding, images)
    yield {"image": ev.device(x, sharding=sharding),
           "label": jax.make_array_from_process_local_data(label_sharding, labels),
           "mask": jax.make_array_from_process_local_data(label_sharding, mask)}
