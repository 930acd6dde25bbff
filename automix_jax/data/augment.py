"""CIFAR augmentations: host (numpy, vectorised) and on-device (JAX) versions.

The OpenMixup CIFAR recipe (``_base_/datasets/cifar100/sz32_bs100.py`` in
github.com/Westlake-AI/openmixup): RandomCrop 32 with 4-pixel *reflect* padding,
horizontal flip (p=0.5), then ``(x / 255 - mean) / std`` with
mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).

An ``Augment`` has two halves, run by ``TrainIterator`` / ``eval_batches``:

* ``host(images_uint8 [b, H, W, C], rng)`` -> uint8 ``[b, H, W, C]``: random
  geometry in numpy on this process's slice, driven by a
  ``np.random.Generator`` seeded from ``(seed, epoch, step, process)``, so a
  resumed run gets identical batches.
* ``device(x [B, H, W, C], seed, epoch, step)`` -> float32 ``[B, S, S, C]``:
  jitted on the global sharded batch; casts, normalises, optionally resizes
  (224-px recipes) and, for ``backend="jax"``, does the crop/flip itself with a
  key folded from ``(seed, epoch, step)``. Transferring uint8 instead of
  float32 moves 4x fewer bytes to the device.

``backend="jax"`` is the default for the CIFAR crop/flip: on this 2-core CPU
it was 2x (batch 100) to 5x (batch 256) faster end to end than the numpy host
version (``results/bench_augment.md``), and on an accelerator it keeps the
scarce host CPU free. ``backend="numpy"`` (vectorised host version, same
semantics, different random draws) stays available; RandAugment is host-only.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
KINDS = ("cifar", "none", "randaugment")
RESIZE_METHODS = ("bilinear", "nearest")


def _check_uint8_batch(images, arg="images"):
  if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(
        f"`{arg}` must be a uint8 numpy array [B, H, W, C]; got "
        f"{type(images).__name__} shape {getattr(images, 'shape', None)} dtype "
        f"{getattr(images, 'dtype', None)}.")


def _check_mean_std(mean, std, channels=None):
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  if mean.shape != std.shape or mean.size == 0:
    raise ValueError(
        f"`mean` and `std` must be per-channel sequences of equal length; got "
        f"{mean.tolist()} and {std.tolist()}.")
  if np.any(std <= 0):
    raise ValueError(f"`std` must be positive, got {std.tolist()}.")
  if channels is not None and mean.size not in (1, channels):
    raise ValueError(
        f"`mean`/`std` have {mean.size} entries but images have {channels} "
        "channels.")
  return mean, std


# ----------------------------------------------------------------- numpy host
def normalize_np(images: np.ndarray, mean=CIFAR_MEAN, std=CIFAR_STD) -> np.ndarray:
  """uint8 ``[B, H, W, C]`` -> float32 ``(x / 255 - mean) / std``."""
  _check_uint8_batch(images)
  mean, std = _check_mean_std(mean, std, images.shape[-1])
  scale = (1.0 / (255.0 * std)).astype(np.float32)
  return images.astype(np.float32) * scale - (mean / std).astype(np.float32)


def random_crop_flip_np(images: np.ndarray, rng: np.random.Generator, *,
                        padding: int = 4, flip: bool = True) -> np.ndarray:
  """Random crop (reflect padding) and horizontal flip, vectorised.

  Output ``[i]`` is the ``H x W`` window at offset ``(oy[i], ox[i])`` in
  ``[0, 2 * padding]`` of the reflect-padded image (numpy ``"reflect"`` =
  torch ``padding_mode="reflect"``: the edge pixel is not repeated), mirrored
  left-right with probability 0.5. One gather does crop and flip together.

  Args:
    images: uint8 ``[B, H, W, C]``.
    rng: numpy Generator; draws ``B x 2`` offsets then ``B`` flip coins.
    padding: pixels of reflect padding on each side (< H and < W).
    flip: whether to flip.

  Returns:
    uint8 ``[B, H, W, C]``.
  """
  _check_uint8_batch(images)
  b, h, w, _ = images.shape
  if not isinstance(padding, (int, np.integer)) or padding < 0 or padding >= min(h, w):
    raise ValueError(
        f"`padding` must be an int in [0, {min(h, w)}) for {h}x{w} images; got "
        f"{padding!r}.")
  off = rng.integers(0, 2 * padding + 1, size=(b, 2))
  flips = rng.random(b) < 0.5 if flip else np.zeros(b, bool)
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding),
                           (0, 0)), mode="reflect") if padding else images
  rows = off[:, :1] + np.arange(h)[None]                      # [B, H]
  ar = np.arange(w)[None]
  cols = off[:, 1:] + np.where(flips[:, None], w - 1 - ar, ar)  # [B, W]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


# RandAugment (Cubuk et al. 2020), host version with Pillow, timm-style
# magnitudes (level = M / 10, random sign for signed ops).
_FILL = (128, 128, 128)


def _ra_ops():
  from PIL import Image, ImageEnhance, ImageOps

  def affine(img, m):
    return img.transform(img.size, Image.AFFINE, m, resample=Image.BILINEAR,
                         fillcolor=_FILL)

  return {
      "Identity": lambda img, lv: img,
      "AutoContrast": lambda img, lv: ImageOps.autocontrast(img),
      "Equalize": lambda img, lv: ImageOps.equalize(img),
      "Rotate": lambda img, lv: img.rotate(30.0 * lv, resample=Image.BILINEAR,
                                           fillcolor=_FILL),
      "Solarize": lambda img, lv: ImageOps.solarize(img, 256 - int(256 * abs(lv))),
      "Posterize": lambda img, lv: ImageOps.posterize(img, max(1, 8 - int(4 * abs(lv)))),
      "Color": lambda img, lv: ImageEnhance.Color(img).enhance(1 + 0.9 * lv),
      "Contrast": lambda img, lv: ImageEnhance.Contrast(img).enhance(1 + 0.9 * lv),
      "Brightness": lambda img, lv: ImageEnhance.Brightness(img).enhance(1 + 0.9 * lv),
      "Sharpness": lambda img, lv: ImageEnhance.Sharpness(img).enhance(1 + 0.9 * lv),
      "ShearX": lambda img, lv: affine(img, (1, 0.3 * lv, 0, 0, 1, 0)),
      "ShearY": lambda img, lv: affine(img, (1, 0, 0, 0.3 * lv, 1, 0)),
      "TranslateX": lambda img, lv: affine(img, (1, 0, 0.45 * lv * img.size[0], 0, 1, 0)),
      "TranslateY": lambda img, lv: affine(img, (1, 0, 0, 0, 1, 0.45 * lv * img.size[1])),
  }


RANDAUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize",
                   "Posterize", "Color", "Contrast", "Brightness", "Sharpness",
                   "ShearX", "ShearY", "TranslateX", "TranslateY")


def randaugment_np(images: np.ndarray, rng: np.random.Generator, *,
                   num_ops: int = 2, magnitude: float = 9) -> np.ndarray:
  """RandAugment: ``num_ops`` ops from ``RANDAUGMENT_OPS`` per image.

  Each op is applied at level ``magnitude / 10`` (timm convention) with a random
  sign for signed ops; fill for geometric ops is grey 128. No magnitude noise.

  Args:
    images: uint8 ``[B, H, W, 3]``.
    rng: numpy Generator (draws ``[B, num_ops]`` op ids and signs).
    num_ops: N (2 for the DeiT/Swin recipes).
    magnitude: M in [0, 10] (9 for the DeiT/Swin recipes).

  Returns:
    uint8 ``[B, H, W, 3]``.
  """
  from PIL import Image

  _check_uint8_batch(images)
  if images.shape[-1] != 3:
    raise ValueError(f"randaugment needs RGB images [B, H, W, 3]; got {images.shape}.")
  if not 0 <= magnitude <= 10 or num_ops < 0:
    raise ValueError(
        f"`magnitude` must be in [0, 10] and `num_ops` >= 0; got {magnitude}, "
        f"{num_ops}.")
  ops = _ra_ops()
  b = images.shape[0]
  choice = rng.integers(0, len(RANDAUGMENT_OPS), size=(b, num_ops))
  signs = np.where(rng.random((b, num_ops)) < 0.5, -1.0, 1.0)
  level = magnitude / 10.0
  out = np.empty_like(images)
  for i in range(b):
    img = Image.fromarray(images[i])
    for j in range(num_ops):
      img = ops[RANDAUGMENT_OPS[choice[i, j]]](img, level * signs[i, j])
    out[i] = np.asarray(img, np.uint8)
  return out


# ------------------------------------------------------------------ JAX device
def augment_jax(key: jax.Array, images_uint8: jax.Array, *, mean=CIFAR_MEAN,
                std=CIFAR_STD, padding: int = 4, flip: bool = True) -> jax.Array:
  """On-device CIFAR augmentation: reflect-pad crop, flip, normalise.

  Args:
    key: PRNG key.
    images_uint8: uint8 ``[B, H, W, C]``.
    mean, std: per-channel normalisation (of ``x / 255``).
    padding: reflect padding per side.
    flip: random horizontal flip with probability 0.5.

  Returns:
    float32 ``[B, H, W, C]``.
  """
  shape = getattr(images_uint8, "shape", None)
  if shape is None or len(shape) != 4 or images_uint8.dtype != jnp.uint8:
    raise ValueError(
        f"`images_uint8` must be uint8 [B, H, W, C]; got shape {shape} dtype "
        f"{getattr(images_uint8, 'dtype', None)}.")
  b, h, w, c = shape
  mean, std = _check_mean_std(mean, std, c)
  x = _crop_flip_jax(key, images_uint8, padding=padding, flip=flip)
  return _normalize_jax(x, mean, std)


def _batch_sharded_like(a, x):
  """Reshards per-example ``a`` [B, ...] along the batch axis of explicit ``x``."""
  sh = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sh, "mesh", None)
  if mesh is None or mesh.empty or not sh.spec or sh.spec[0] is None:
    return a
  return jax.sharding.reshard(
      a, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sh.spec[0])))


def _crop_flip_jax(key, x, *, padding, flip):
  b, h, w, c = x.shape
  k_off, k_flip = jax.random.split(key)
  off = jax.random.randint(k_off, (b, 2), 0, 2 * padding + 1)
  flips = (jax.random.uniform(k_flip, (b,)) < 0.5) if flip else jnp.zeros(b, bool)
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                mode="reflect")

  off, flips = _batch_sharded_like(off, x), _batch_sharded_like(flips, x)

  # Per-example dynamic_slice under vmap (rather than one fancy-index gather)
  # keeps the batch sharding of `x` with explicit mesh axes.
  def one(img, o, f):
    win = jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    return jnp.where(f, win[:, ::-1], win)

  return jax.vmap(one)(x, off, flips)


def _normalize_jax(x, mean, std):
  scale = jnp.asarray(1.0 / (255.0 * np.asarray(std)), jnp.float32)
  shift = jnp.asarray(np.asarray(mean) / np.asarray(std), jnp.float32)
  return x.astype(jnp.float32) * scale - shift


def resize_jax(x: jax.Array, size: int, method: str = "bilinear") -> jax.Array:
  """``[B, H, W, C]`` -> ``[B, size, size, C]`` (``jax.image.resize``)."""
  if method not in RESIZE_METHODS:
    raise ValueError(f"`method` must be one of {RESIZE_METHODS}, got {method!r}.")
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, size, size, c), method=method,
                          antialias=False)


# ------------------------------------------------------------------ Augment
class Augment:
  """A host half (numpy, uint8) and a jitted device half; see module doc.

  Attributes:
    name: e.g. ``"cifar"``, ``"none"``, ``"randaugment"``.
    backend: ``"numpy"`` (geometry on the host) or ``"jax"`` (on device).
    image_size: output side length, 0 = unchanged.
  """

  def __init__(self, name: str = "cifar", *, mean=CIFAR_MEAN, std=CIFAR_STD,
               padding: int = 4, flip: bool = True, image_size: int = 0,
               resize_method: str = "bilinear", backend: str = "jax",
               randaugment_num_ops: int = 2, randaugment_magnitude: float = 9):
    if name not in KINDS:
      raise ValueError(f"augment name must be one of {KINDS}, got {name!r}.")
    if backend not in ("numpy", "jax"):
      raise ValueError(f"`backend` must be 'numpy' or 'jax', got {backend!r}.")
    if name == "randaugment":
      backend = "numpy"  # RandAugment (PIL) is host-only.
    if not isinstance(image_size, (int, np.integer)) or image_size < 0:
      raise ValueError(
          f"`image_size` must be an int >= 0 (0 = native), got {image_size!r}.")
    if resize_method not in RESIZE_METHODS:
      raise ValueError(
          f"`resize_method` must be one of {RESIZE_METHODS}, got {resize_method!r}.")
    if not isinstance(padding, (int, np.integer)) or padding < 0:
      raise ValueError(f"`padding` must be an int >= 0, got {padding!r}.")
    self.name = name
    self.mean, self.std = _check_mean_std(mean, std)
    self.padding = int(padding)
    self.flip = bool(flip)
    self.image_size = int(image_size)
    self.resize_method = resize_method
    self.backend = backend
    self.ra_num_ops = int(randaugment_num_ops)
    self.ra_magnitude = float(randaugment_magnitude)
    self._jitted = {}

  def __repr__(self):
    return (f"Augment({self.name!r}, backend={self.backend!r}, image_size="
            f"{self.image_size}, mean={self.mean.tolist()}, std={self.std.tolist()})")

  def output_shape(self, image_shape: Sequence[int]):
    h, w, c = image_shape
    return (self.image_size, self.image_size, c) if self.image_size else (h, w, c)

  def host(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[b, H, W, C]`` -> uint8 ``[b, H, W, C]`` (random geometry)."""
    _check_uint8_batch(images)
    if self.name == "none" or self.backend == "jax":
      return images
    x = random_crop_flip_np(images, rng, padding=self.padding, flip=self.flip)
    if self.name == "randaugment":
      x = randaugment_np(x, rng, num_ops=self.ra_num_ops,
                         magnitude=self.ra_magnitude)
    return x

  def _device_fn(self, x, seed, epoch, step):
    if self.backend == "jax" and self.name == "cifar":
      key = jax.random.fold_in(jax.random.fold_in(
          jax.random.key(seed), epoch), step)
      x = _crop_flip_jax(key, x, padding=self.padding, flip=self.flip)
    x = _normalize_jax(x, self.mean, self.std)
    if self.image_size:
      x = resize_jax(x, self.image_size, self.resize_method)
    return x

  def device(self, x: jax.Array, seed: int = 0, epoch: int = 0, step: int = 0, *,
             sharding=None) -> jax.Array:
    """Global uint8 ``[B, H, W, C]`` -> float32 ``[B, S, S, C]`` (jitted)."""
    fn = self._jitted.get(sharding)
    if fn is None:
      fn = jax.jit(self._device_fn, out_shardings=sharding)
      self._jitted[sharding] = fn
    return fn(x, np.uint32(seed % (1 << 32)), np.int32(epoch), np.int32(step))


def eval_transform(*, mean=CIFAR_MEAN, std=CIFAR_STD, image_size: int = 0,
                   resize_method: str = "bilinear") -> Augment:
  """Normalisation (+ resize) only: the eval-time ``Augment``."""
  return Augment("none", mean=mean, std=std, image_size=image_size,
                 resize_method=resize_method)


def from_config(data_config, *, train: bool, backend: str = "jax") -> Augment:
  """The train (``data.augment``) or eval ``Augment`` of a config ``data`` block.

  Reads ``augment`` ("cifar" | "none" | "randaugment"), ``image_size``, ``mean``,
  ``std`` (missing keys take the CIFAR defaults).
  """
  get = (data_config.get if hasattr(data_config, "get")
         else lambda k, d=None: getattr(data_config, k, d))
  mean = tuple(get("mean", CIFAR_MEAN))
  std = tuple(get("std", CIFAR_STD))
  image_size = int(get("image_size", 0) or 0)
  if not train:
    return eval_transform(mean=mean, std=std, image_size=image_size)
  name = get("augment", "cifar")
  if name not in KINDS:
    raise ValueError(f"config data.augment must be one of {KINDS}, got {name!r}.")
  return Augment(name, mean=mean, std=std, image_size=image_size,
                 backend=backend)


def as_augment(augment, *, arg: str = "augment") -> Augment:
  """Accepts an ``Augment``, a kind name, or a ``(mean, std)`` pair."""
  if isinstance(augment, Augment):
    return augment
  if isinstance(augment, str):
    return Augment(augment)
  if isinstance(augment, (tuple, list)) and len(augment) == 2:
    return eval_transform(mean=augment[0], std=augment[1])
  raise ValueError(
      f"`{arg}` must be an automix_jax.data.Augment, one of {KINDS}, or a "
      f"(mean, std) pair; got {augment!r}.")
