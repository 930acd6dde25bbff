"""Train / eval augmentations: host (numpy, uint8) and on-device (JAX) halves.

Kinds (``Augment(name)``, config key ``data.augment``):

* ``"cifar"``: the OpenMixup CIFAR recipe (``_base_/datasets/cifar100/
  sz32_bs100.py`` in github.com/Westlake-AI/openmixup): RandomCrop 32 with
  4-pixel *reflect* padding, horizontal flip (p=0.5), then ``(x / 255 - mean)
  / std`` with mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).
* ``"randaugment"``: ``"cifar"`` then timm RandAugment (host).
* ``"none"``: normalisation (+ resize or centre crop) only; the eval transform.
* ``"imagenet"``: RandomResizedCrop to ``image_size`` (torchvision's sampling
  rule, antialiased bilinear/bicubic), horizontal flip, optional colour
  jitter (``automix_jax.data.transforms``); eval: resize the shorter side to
  ``image_size / crop_pct`` then centre crop.
* ``"deit"``: ``"imagenet"`` with bicubic resampling + timm RandAugment
  ``rand-m9-mstd0.5-inc1`` (host) + random erasing (p 0.25, per-pixel noise,
  after normalisation, on device), the DeiT recipe (Touvron et al., ICML
  2021, github.com/facebookresearch/deit ``main.py``); as in timm, no colour
  jitter unless asked for (timm switches it off under RandAugment).

An ``Augment`` has two halves, run by ``TrainIterator`` / ``eval_batches``:

* ``host(images_uint8 [b, H, W, C], rng)`` -> uint8 ``[b, H', W', C]``:
  random geometry in numpy / Pillow on this process's slice, driven by a
  ``np.random.Generator`` seeded from ``(seed, epoch, step, process)``, so a
  resumed run gets identical batches.
* ``device(x [B, H', W', C], seed, epoch, step)`` -> float32 ``[B, S, S, C]``:
  jitted on the global sharded batch; crops / flips for ``backend="jax"``,
  colour jitter, normalisation, resize or centre crop, random erasing, with
  keys folded from ``(seed, epoch, step)``. Transferring uint8 instead of
  float32 moves 4x fewer bytes to the device.

``backend="jax"`` is the default for the geometry of ``"cifar"`` and
``"imagenet"``: on this 2-core CPU it was 2x (batch 100) to 5x (batch 256)
faster end to end than the numpy host version for CIFAR, and on an
accelerator it keeps the scarce host CPU free (``results/bench_augment.md``
has the 224-px numbers). ``backend="numpy"`` (same semantics, different
random draws) stays available. The kinds with RandAugment (Pillow) are
host-only: their crop must come before it.

Variable-size images (a source whose ``image_shape`` is ``(None, None, C)``,
e.g. TFDS ``imagenet2012``, read as a list of uint8 ``[H_i, W_i, C]``) go
through ``Augment.for_variable_size()``: the numpy backend, so that the
geometry that makes every image ``image_size`` square runs on the host, per
image, before the batch is stacked, as in timm / big_vision input pipelines.
Only the crop kinds can train on them (RandomResizedCrop's box is drawn
relative to each image's own height and width); the eval transform resizes
each image's shorter side to ``image_size / crop_pct`` and centre crops.
"""

from __future__ import annotations

import copy
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.data import transforms as T
from automix_jax.data.randaugment import (DEFAULT_POLICY, parse_policy,
                                          randaugment_np)
from automix_jax.data.transforms import _batch_sharded_like

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
KINDS = ("cifar", "none", "randaugment", "imagenet", "deit")
CROP_KINDS = ("imagenet", "deit")  # RandomResizedCrop to image_size
RESIZE_METHODS = ("bilinear", "bicubic", "nearest")


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
  """A host half (numpy / Pillow, uint8) and a jitted device half; see module doc.

  Attributes:
    name: one of ``KINDS``.
    backend: ``"numpy"`` (geometry on the host) or ``"jax"`` (on device).
    image_size: output side length, 0 = unchanged (crop kinds need > 0).
    resize_method: filter of every resize ("bilinear", "bicubic"; "nearest"
      only for the plain resize of the non-crop kinds).
    crop_pct: eval centre-crop fraction (None: the eval resizes to
      ``image_size`` without cropping).
  """

  def __init__(self, name: str = "cifar", *, mean=CIFAR_MEAN, std=CIFAR_STD,
               padding: int = 4, flip: bool = True, image_size: int = 0,
               resize_method: str | None = None, backend: str = "jax",
               randaugment: str = DEFAULT_POLICY,
               crop_scale=T.IMAGENET_SCALE, crop_ratio=T.IMAGENET_RATIO,
               crop_pct: float | None = None, color_jitter=0.0,
               erasing_prob: float | None = None, erasing_mode: str = "pixel"):
    """Validates and stores the settings (nothing is compiled until used).

    Args:
      name: one of ``KINDS``.
      mean, std: per-channel normalisation of ``x / 255``.
      padding: reflect padding of the CIFAR crop.
      flip: random horizontal flip (p = 0.5).
      image_size: output side; required (> 0) for "imagenet" / "deit".
      resize_method: None = the kind's default ("bicubic" for "deit", else
        "bilinear").
      backend: "jax" or "numpy" (forced to "numpy" with RandAugment).
      randaugment: timm RandAugment string ("randaugment" / "deit").
      crop_scale, crop_ratio: RandomResizedCrop ranges (area fraction, w/h).
      crop_pct: eval centre crop; None = 0.875 for the crop kinds and no
        crop (plain resize) for the others.
      color_jitter: float ``v`` or ``(brightness, contrast, saturation[,
        hue])``; 0 = off (torchvision ``ColorJitter`` on device).
      erasing_prob: random erasing probability; None = 0.25 for "deit", else
        0.
      erasing_mode: "pixel" | "rand" | "const" (timm's modes).
    """
    if name not in KINDS:
      raise ValueError(f"augment name must be one of {KINDS}, got {name!r}.")
    if backend not in ("numpy", "jax"):
      raise ValueError(f"`backend` must be 'numpy' or 'jax', got {backend!r}.")
    if name in ("randaugment", "deit"):
      backend = "numpy"  # RandAugment (PIL) is host-only; the crop precedes it.
    if not isinstance(image_size, (int, np.integer)) or image_size < 0:
      raise ValueError(
          f"`image_size` must be an int >= 0 (0 = native), got {image_size!r}.")
    if name in CROP_KINDS and image_size == 0:
      raise ValueError(
          f"augment {name!r} crops to `image_size` (config key "
          "`data.image_size`): it must be > 0 (e.g. 224).")
    if resize_method is None:
      resize_method = "bicubic" if name == "deit" else "bilinear"
    if resize_method not in RESIZE_METHODS:
      raise ValueError(
          f"`resize_method` must be one of {RESIZE_METHODS}, got {resize_method!r}.")
    if crop_pct is None and name in CROP_KINDS:
      crop_pct = 0.875
    if crop_pct is not None:
      if not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise ValueError(f"`crop_pct` must be in (0, 1] or None, got {crop_pct!r}.")
      if image_size == 0:
        raise ValueError("`crop_pct` needs `image_size` > 0.")
    if (name in CROP_KINDS or crop_pct is not None) and (
        resize_method not in T.INTERPOLATIONS):
      raise ValueError(
          f"`resize_method` must be one of {T.INTERPOLATIONS} for the "
          f"antialiased crops; got {resize_method!r}.")
    if not isinstance(padding, (int, np.integer)) or padding < 0:
      raise ValueError(f"`padding` must be an int >= 0, got {padding!r}.")
    if erasing_prob is None:
      erasing_prob = 0.25 if name == "deit" else 0.0
    if not isinstance(erasing_prob, (int, float)) or not 0 <= erasing_prob <= 1:
      raise ValueError(f"`erasing_prob` must be in [0, 1], got {erasing_prob!r}.")
    if erasing_mode not in T.ERASING_MODES:
      raise ValueError(
          f"`erasing_mode` must be one of {T.ERASING_MODES}, got {erasing_mode!r}.")
    self.name = name
    self.mean, self.std = _check_mean_std(mean, std)
    self.padding = int(padding)
    self.flip = bool(flip)
    self.image_size = int(image_size)
    self.resize_method = resize_method
    self.backend = backend
    parse_policy(randaugment)  # validates
    self.randaugment = randaugment
    self.crop_scale = T.check_range(crop_scale, "crop_scale")
    self.crop_ratio = T.check_range(crop_ratio, "crop_ratio")
    self.crop_pct = None if crop_pct is None else float(crop_pct)
    self.color_jitter = T.jitter_strengths(color_jitter)
    self.jitter = any(self.color_jitter)
    self.erasing_prob = float(erasing_prob)
    self.erasing_mode = erasing_mode
    # RandAugment's fill: timm's round(255 * mean).
    fill = [min(255, round(255 * float(m))) for m in self.mean]
    self.fill = tuple(fill * 3 if len(fill) == 1 else fill)
    self._jitted = {}

  def __repr__(self):
    extra = ""
    if self.name in CROP_KINDS:
      extra += (f", crop_scale={self.crop_scale}, crop_ratio={self.crop_ratio}")
    if self.name in ("randaugment", "deit"):
      extra += f", randaugment={self.randaugment!r}"
    if self.jitter:
      extra += f", color_jitter={self.color_jitter!r}"
    if self.erasing_prob:
      extra += f", erasing=({self.erasing_prob}, {self.erasing_mode!r})"
    return (f"Augment({self.name!r}, backend={self.backend!r}, image_size="
            f"{self.image_size}, resize_method={self.resize_method!r}, "
            f"crop_pct={self.crop_pct}{extra}, mean={self.mean.tolist()}, "
            f"std={self.std.tolist()})")

  def output_shape(self, image_shape: Sequence[int]):
    """The batch's ``(S, S, C)`` for source images of ``image_shape``
    (``(None, None, C)`` for variable-size sources)."""
    h, w, c = image_shape
    if self.image_size:
      return (self.image_size, self.image_size, c)
    if h is None or w is None:
      raise ValueError(
          f"Images of varying size {tuple(image_shape)} need config key "
          "`data.image_size` > 0 (the size every image is cropped to).")
    return (h, w, c)

  def _eval_crop(self) -> bool:
    """The eval resize + centre crop ("none" with ``crop_pct``)."""
    return self.name == "none" and self.crop_pct is not None

  def _crops_to_size(self) -> bool:
    """Whether every image comes out ``image_size`` square whatever its size:
    a crop kind or the eval centre crop."""
    return self.name in CROP_KINDS or self._eval_crop()

  def host_geometry(self) -> bool:
    """Whether ``host`` makes the images ``image_size`` square (so that it can
    take variable-size images): a crop kind, or the eval centre crop, on the
    numpy backend."""
    return self.backend == "numpy" and self._crops_to_size()

  def for_variable_size(self) -> "Augment":
    """This augment for a source whose images vary in size.

    The same transform with its geometry on the host (``backend="numpy"``):
    RandomResizedCrop ("imagenet", "deit") or the eval resize + centre crop
    ("none" with ``crop_pct``) per image. Random draws come from the same
    ``host`` Generator as for fixed-size images (the numpy backend's draws).

    Raises:
      ValueError: any other kind (a crop to ``image_size`` is what makes a
        batch of different-size images one array).
    """
    if not self._crops_to_size():
      if self.name == "none":
        raise ValueError(
            "The eval transform of a dataset whose images vary in size needs "
            "config keys `data.image_size` > 0 and `data.crop_pct` (resize "
            "the shorter side to image_size / crop_pct, centre crop); got "
            f"image_size={self.image_size}, crop_pct={self.crop_pct}.")
      raise ValueError(
          f"config key `data.augment`={self.name!r} cannot take images that "
          f"vary in size (e.g. TFDS imagenet2012): only the crop kinds "
          f"{CROP_KINDS} accept them (RandomResizedCrop to `data.image_size` "
          "on the host, per image).")
    if self.backend == "numpy":
      return self
    other = copy.copy(self)
    other.backend = "numpy"
    other._jitted = {}  # pylint: disable=protected-access
    return other

  def eval_version(self) -> "Augment":
    """The deterministic eval transform with this augment's mean, std, size,
    filter and ``crop_pct``."""
    return eval_transform(mean=self.mean, std=self.std,
                          image_size=self.image_size,
                          resize_method=self.resize_method,
                          crop_pct=self.crop_pct)

  def host(self, images, rng: np.random.Generator | None) -> np.ndarray:
    """uint8 ``[b, H, W, C]`` -> uint8 ``[b, H', W', C]`` (random geometry).

    When ``host_geometry()`` (see ``for_variable_size``), ``images`` may also
    be a list of uint8 ``[H_i, W_i, C]`` of different sizes; the result is
    ``[b, image_size, image_size, C]``. ``rng`` may be None for "none" (no
    random draws).
    """
    if isinstance(images, np.ndarray) and images.dtype != object:
      _check_uint8_batch(images)
    elif not self.host_geometry():
      raise ValueError(
          f"`images` of varying size (a {type(images).__name__}) need the host "
          f"crop of `Augment.for_variable_size()`; this is {self!r}.")
    # else: a list of [H_i, W_i, C], checked image by image in `transforms`.
    if self.backend == "jax":
      return images
    if self.name == "none":
      if self.crop_pct is None:
        return images
      return T.center_crop_np(images, size=self.image_size,
                              crop_pct=self.crop_pct,
                              interpolation=self.resize_method)
    if self.name in CROP_KINDS:
      x = T.random_resized_crop_np(
          images, rng, size=self.image_size, scale=self.crop_scale,
          ratio=self.crop_ratio, interpolation=self.resize_method,
          flip=self.flip)
    else:
      x = random_crop_flip_np(images, rng, padding=self.padding, flip=self.flip)
    if self.name in ("randaugment", "deit"):
      x = randaugment_np(x, rng, policy=self.randaugment, fill=self.fill,
                         interpolation=self.resize_method)
    return x

  def _device_fn(self, x, seed, epoch, step):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch),
                             step)
    center_crop = self._eval_crop() and self.backend == "jax"  # numpy: `host`
    if self.backend == "jax" and self.name == "cifar":
      x = _crop_flip_jax(key, x, padding=self.padding, flip=self.flip)
    elif self.backend == "jax" and self.name == "imagenet":
      x = T.random_resized_crop_jax(
          key, x, size=self.image_size, scale=self.crop_scale,
          ratio=self.crop_ratio, interpolation=self.resize_method,
          flip=self.flip)
    elif center_crop:
      x = T.center_crop_jax(x, size=self.image_size, crop_pct=self.crop_pct,
                            interpolation=self.resize_method)
    if self.jitter:  # torchvision's ColorJitter works on [0, 1] floats
      x = 255.0 * T.color_jitter_jax(
          jax.random.fold_in(key, 1), x.astype(jnp.float32) / 255.0,
          color_jitter=self.color_jitter)
    x = _normalize_jax(x, self.mean, self.std)
    if self.image_size and not self._crops_to_size():
      x = resize_jax(x, self.image_size, self.resize_method)
    if self.erasing_prob:
      x = T.random_erasing_jax(jax.random.fold_in(key, 2), x,
                               prob=self.erasing_prob, mode=self.erasing_mode)
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
                   resize_method: str = "bilinear",
                   crop_pct: float | None = None) -> Augment:
  """The eval-time ``Augment``: normalisation, plus a resize to ``image_size``
  or, with ``crop_pct``, timm's resize-shorter-side-then-centre-crop."""
  return Augment("none", mean=mean, std=std, image_size=image_size,
                 resize_method=resize_method, crop_pct=crop_pct)


def from_config(data_config, *, train: bool, backend: str = "jax") -> Augment:
  """The train (``data.augment``) or eval ``Augment`` of a config ``data`` block.

  Reads ``augment`` (one of ``KINDS``), ``image_size``, ``mean``, ``std``,
  ``resize_method``, ``crop_scale``, ``crop_ratio``, ``crop_pct``,
  ``color_jitter``, ``randaugment``, ``erasing_prob``, ``erasing_mode`` and
  ``augment_backend`` (overrides ``backend``) (docs/config_schema.md);
  missing keys (or None) take the kind's defaults. The eval transform is
  ``Augment.eval_version()`` of the train one.
  """
  get = (data_config.get if hasattr(data_config, "get")
         else lambda k, d=None: getattr(data_config, k, d))
  name = get("augment", "cifar")
  if name not in KINDS:
    raise ValueError(f"config data.augment must be one of {KINDS}, got {name!r}.")

  def opt(key, default):
    v = get(key, None)
    return default if v is None else v

  if opt("augment_backend", backend) not in ("numpy", "jax"):
    raise ValueError("config data.augment_backend must be 'jax' or 'numpy', "
                     f"got {get('augment_backend')!r}.")

  aug = Augment(
      name, mean=tuple(opt("mean", CIFAR_MEAN)), std=tuple(opt("std", CIFAR_STD)),
      image_size=int(opt("image_size", 0)),
      backend=opt("augment_backend", backend),
      resize_method=get("resize_method", None),
      crop_scale=tuple(opt("crop_scale", T.IMAGENET_SCALE)),
      crop_ratio=tuple(opt("crop_ratio", T.IMAGENET_RATIO)),
      crop_pct=get("crop_pct", None),
      color_jitter=opt("color_jitter", 0.0),
      randaugment=opt("randaugment", DEFAULT_POLICY),
      erasing_prob=get("erasing_prob", None),
      erasing_mode=opt("erasing_mode", "pixel"))
  return aug if train else aug.eval_version()


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
