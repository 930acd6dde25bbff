"""ImageNet-style transforms for the 224-px recipes (torchvision / timm semantics).

* RandomResizedCrop (Szegedy et al., "Going Deeper with Convolutions", CVPR
  2015; torchvision ``transforms.RandomResizedCrop`` in
  github.com/pytorch/vision, ``torchvision/transforms/transforms.py``): up to
  10 attempts of ``area * U(scale)`` and ``exp(U(log ratio))``, the first whose
  rounded ``w x h`` fits is cropped at a uniform offset; otherwise the centre
  crop of the image clamped to the ratio range. The crop is resized to
  ``size x size`` with an *antialiased* bilinear or bicubic filter (PIL's
  resampling, which torchvision's tensor ``antialias=True`` reproduces).
* Horizontal flip with probability 0.5 (after the crop, as torchvision).
* ColorJitter (torchvision ``ColorJitter``, tensor semantics on ``[0, 1]``
  floats): brightness, contrast, saturation factors ``U[max(0, 1 - v), 1 + v]``,
  hue ``U[-v, v]``, applied in a random order per image.
* Eval (timm ``crop_pct``, github.com/huggingface/pytorch-image-models
  ``timm/data/transforms_factory.py``): resize the shorter side to
  ``floor(size / crop_pct)`` (256 for 224 at 0.875) then centre crop ``size``.
* RandomErasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020;
  timm ``timm/data/random_erasing.py``) on the *normalised* batch: with
  probability ``prob`` one box of area ``U(min_area, max_area)`` and aspect
  ``exp(U(log aspect))`` (10 attempts, ``w < W`` and ``h < H``) is filled
  with per-pixel N(0, 1) noise (``mode="pixel"``), one N(0, 1) colour
  (``"rand"``) or zeros (``"const"``).

Where each runs (``results/bench_augment.md``): the crop has a host version
(``random_resized_crop_np``: the PIL crop + resize torchvision runs on PIL
images, uint8 out, needed before the PIL RandAugment) and a device version
(``random_resized_crop_jax``: each resize is two batched matmuls with
per-example weight matrices, so one jitted program serves every crop size).
Jitter and erasing run on device only: they act on floats after the
normalisation, which is the device half's job. The host crops also take a list
of images of different sizes (TFDS ``imagenet2012``): each box is drawn from
its own image's size, and ``center_crop_np`` is the eval transform on the host.

The samplers turn uniforms into boxes with the same code for NumPy (host,
float64) and ``jax.numpy`` (device, float32), so the host and device crops
follow one rule.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

INTERPOLATIONS = ("bilinear", "bicubic")
ERASING_MODES = ("const", "rand", "pixel")
IMAGENET_SCALE = (0.08, 1.0)
IMAGENET_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_ATTEMPTS = 10
# Uniforms per image for one crop: 10 scales, 10 log-ratios, 2 offsets.
_RRC_UNIFORMS = 2 * _ATTEMPTS + 2
# For one erasing box: the coin, 10 areas, 10 log-aspects, 2 offsets.
_ERASE_UNIFORMS = 1 + 2 * _ATTEMPTS + 2


# ---------------------------------------------------------------- checks
def check_range(value, arg, *, low_open=0.0, high=None):
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"`{arg}` must be a pair (min, max); got {value!r}.") from None
  if not (low_open < lo <= hi) or (high is not None and hi > high):
    bound = f" <= {high}" if high is not None else ""
    raise ValueError(
        f"`{arg}` must satisfy {low_open} < min <= max{bound}; got {value!r}.")
  return lo, hi


def _check_interpolation(interpolation):
  if interpolation not in INTERPOLATIONS:
    raise ValueError(
        f"`interpolation` must be one of {INTERPOLATIONS}, got {interpolation!r}.")


def _check_size(size, arg="size"):
  if not isinstance(size, (int, np.integer)) or size <= 0:
    raise ValueError(f"`{arg}` must be a positive int, got {size!r}.")
  return int(size)


def _check_batch(images, arg="images", *, uint8=False, channels=None):
  shape = getattr(images, "shape", None)
  dtype = getattr(images, "dtype", None)
  ok = shape is not None and len(shape) == 4
  if uint8:
    ok = ok and dtype == np.uint8
  if channels is not None:
    ok = ok and shape[-1] in channels
  if not ok:
    want = "uint8 " if uint8 else ""
    chans = f" with C in {channels}" if channels is not None else ""
    raise ValueError(
        f"`{arg}` must be a {want}array [B, H, W, C]{chans}; got shape {shape} "
        f"dtype {dtype}.")
  return shape


# ------------------------------------------------------- crop box sampling
def _crop_fallback(height: int, width: int, ratio) -> Tuple[int, int, int, int]:
  """torchvision's fallback: the centre crop clamped to the ratio range."""
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def _pick(xp, a, idx):
  return xp.take_along_axis(a, idx[:, None], axis=-1)[:, 0]


def _offset(xp, u, n):
  """``torch.randint(0, n)`` from a uniform ``u`` in [0, 1) (float32-safe)."""
  return xp.minimum(xp.floor(u * n), n - 1)


def rrc_boxes(xp, u, *, height: int, width: int, scale=IMAGENET_SCALE,
              ratio=IMAGENET_RATIO):
  """RandomResizedCrop boxes from uniforms, torchvision's rule.

  Args:
    xp: ``numpy`` (host) or ``jax.numpy`` (device).
    u: ``[B, 22]`` uniforms in [0, 1): 10 scales, 10 log-ratios, then the two
      offsets (row, column) used by the accepted attempt.
    height, width: the source image size.
    scale, ratio: torchvision's ``scale`` and ``ratio`` ranges.

  Returns:
    int32 ``[B, 4]`` boxes ``(top, left, h, w)``.
  """
  area = float(height * width)
  lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
  s = scale[0] + (scale[1] - scale[0]) * u[:, :_ATTEMPTS]
  aspect = xp.exp(lr0 + (lr1 - lr0) * u[:, _ATTEMPTS:2 * _ATTEMPTS])
  target = area * s
  # Python's round() and np/jnp.round all round half to even.
  w = xp.round(xp.sqrt(target * aspect))
  h = xp.round(xp.sqrt(target / aspect))
  ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = xp.argmax(ok, axis=-1)  # the first accepted attempt (0 if none)
  found = xp.any(ok, axis=-1)
  h, w = _pick(xp, h, first), _pick(xp, w, first)
  top = _offset(xp, u[:, -2], height - h + 1)
  left = _offset(xp, u[:, -1], width - w + 1)
  fb = _crop_fallback(height, width, ratio)
  boxes = [xp.where(found, v, d) for v, d in zip((top, left, h, w), fb)]
  return xp.stack(boxes, axis=-1).astype(xp.int32)


def erasing_boxes(xp, u, *, height: int, width: int, prob: float,
                  area=(0.02, 1.0 / 3.0), aspect=(0.3, 1.0 / 0.3)):
  """timm RandomErasing boxes (one box per image) from uniforms.

  Args:
    xp: ``numpy`` or ``jax.numpy``.
    u: ``[B, 23]`` uniforms in [0, 1): the erase coin, 10 areas, 10
      log-aspects, then the offsets (row, column) of the accepted attempt.
    height, width: image size.
    prob: erase when the coin is below ``prob``.
    area: box area range as fractions of ``height * width``.
    aspect: ``h / w`` range (sampled log-uniformly).

  Returns:
    ``(boxes, erase)``: int32 ``[B, 4]`` ``(top, left, h, w)`` and bool
    ``[B]`` (False: no box, either by the coin or after 10 failed attempts).
  """
  n = float(height * width)
  la0, la1 = math.log(aspect[0]), math.log(aspect[1])
  target = n * (area[0] + (area[1] - area[0]) * u[:, 1:1 + _ATTEMPTS])
  asp = xp.exp(la0 + (la1 - la0) * u[:, 1 + _ATTEMPTS:1 + 2 * _ATTEMPTS])
  h = xp.round(xp.sqrt(target * asp))
  w = xp.round(xp.sqrt(target / asp))
  ok = (w < width) & (h < height)  # timm's test (strict, no lower bound)
  first = xp.argmax(ok, axis=-1)  # the first accepted attempt (0 if none)
  h, w = _pick(xp, h, first), _pick(xp, w, first)
  # random.randint(0, H - h) is inclusive: H - h + 1 values.
  top = _offset(xp, u[:, -2], height - h + 1)
  left = _offset(xp, u[:, -1], width - w + 1)
  erase = (u[:, 0] < prob) & xp.any(ok, axis=-1)
  return xp.stack([top, left, h, w], axis=-1).astype(xp.int32), erase


# --------------------------------------------------------------- resampling
def _kernel(xp, x, method):
  ax = xp.abs(x)
  if method == "bilinear":
    return xp.maximum(0.0, 1.0 - ax)
  a = -0.5  # PIL's bicubic (torch's antialiased bicubic uses it too)
  near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
  far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
  return xp.where(ax < 1.0, near, xp.where(ax < 2.0, far, 0.0))


def resample_weights(xp, start, length, *, in_size: int, out_size: int,
                     scaled_size, offset=0, method: str = "bilinear"):
  """Antialiased 1-D resampling weights, PIL's ``precompute_coeffs`` rule.

  Output pixel ``i`` of an image whose window ``[start, start + length)`` is
  resized to ``scaled_size`` pixels, shifted by ``offset`` (a centre crop of
  the resized image), is ``sum_j W[i, j] x[j]`` with centre ``c = start + (i +
  offset + 0.5) * length / scaled_size``, ``W[i, j] ∝ k((j + 0.5 - c) / s)``,
  ``s = max(length / scaled_size, 1)`` (the filter widens when shrinking:
  antialiasing), restricted to the window and normalised to sum 1.

  Args:
    xp: ``numpy`` or ``jax.numpy``.
    start, length: window start and length, scalars or ``[B]``.
    in_size: input pixels along the axis.
    out_size: output pixels.
    scaled_size: size the window is resized to (== ``out_size`` for a crop).
    offset: pixels of the resized window skipped before output pixel 0.
    method: "bilinear" or "bicubic" (a = -0.5).

  Returns:
    float32 ``[..., out_size, in_size]`` (leading axes of ``start``).
  """
  ft = xp.float32 if xp is jnp else xp.float64  # host weights in float64
  start = xp.asarray(start, ft)[..., None, None]
  length = xp.asarray(length, ft)[..., None, None]
  scaled = xp.asarray(scaled_size, ft)
  i = xp.arange(out_size, dtype=ft)[:, None]
  j = xp.arange(in_size, dtype=ft)[None, :]
  step = length / scaled
  support_scale = xp.maximum(step, 1.0)
  center = start + (i + offset + 0.5) * step
  w = _kernel(xp, (j + 0.5 - center) / support_scale, method)
  w = xp.where((j >= start) & (j < start + length), w, 0.0)
  return (w / xp.sum(w, axis=-1, keepdims=True)).astype(xp.float32)


def _apply_weights(images, wy, wx):
  """``[B, H, W, C]`` x ``[(B,) S, H]`` x ``[(B,) T, W]`` -> ``[B, S, T, C]``."""
  hp = jax.lax.Precision.HIGHEST  # TF32 would cost ~0.3 of a grey level
  b = "b" if wy.ndim == 3 else ""
  x = images.astype(jnp.float32)
  x = jnp.einsum(f"{b}sh,bhwc->bswc", wy, x, precision=hp)
  return jnp.einsum(f"{b}tw,bswc->bstc", wx, x, precision=hp)


def _batch_sharded_like(a, x):
  """Reshards per-example ``a`` [B, ...] along the batch axis of explicit ``x``."""
  sh = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sh, "mesh", None)
  if mesh is None or mesh.empty or not sh.spec or sh.spec[0] is None:
    return a
  return jax.sharding.reshard(
      a, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sh.spec[0])))


def resized_crop_jax(images: jax.Array, boxes: jax.Array, *, size: int,
                     interpolation: str = "bilinear",
                     flip: jax.Array | None = None) -> jax.Array:
  """Crops ``boxes`` and resizes them to ``size x size`` (antialiased), on device.

  ``torchvision.transforms.functional.resized_crop(img, top, left, h, w,
  [size, size], interpolation, antialias=True)`` per image: pixels outside the
  box never contribute. Then a horizontal flip where ``flip``.

  Args:
    images: ``[B, H, W, C]`` uint8 or float.
    boxes: int ``[B, 4]`` ``(top, left, h, w)`` inside the image.
    size: output side.
    interpolation: "bilinear" or "bicubic".
    flip: optional bool ``[B]``.

  Returns:
    float32 ``[B, size, size, C]``; for uint8 input clipped to [0, 255] (as
    the uint8 results of PIL / torchvision, but not rounded).
  """
  b, h, w, _ = _check_batch(images)
  size = _check_size(size)
  _check_interpolation(interpolation)
  if getattr(boxes, "shape", None) != (b, 4):
    raise ValueError(f"`boxes` must be int [B, 4] = [{b}, 4] (top, left, h, w); "
                     f"got shape {getattr(boxes, 'shape', None)}.")
  boxes = _batch_sharded_like(jnp.asarray(boxes), images)
  wy = resample_weights(jnp, boxes[:, 0], boxes[:, 2], in_size=h,
                        out_size=size, scaled_size=size, method=interpolation)
  wx = resample_weights(jnp, boxes[:, 1], boxes[:, 3], in_size=w,
                        out_size=size, scaled_size=size, method=interpolation)
  if flip is not None:
    flip = _batch_sharded_like(jnp.asarray(flip, bool), images)
    wx = jnp.where(flip[:, None, None], wx[:, ::-1], wx)
  out = _apply_weights(images, wy, wx)
  if images.dtype == jnp.uint8:
    out = jnp.clip(out, 0.0, 255.0)
  return out


def random_resized_crop_jax(key: jax.Array, images: jax.Array, *, size: int,
                            scale=IMAGENET_SCALE, ratio=IMAGENET_RATIO,
                            interpolation: str = "bilinear",
                            flip: bool = True) -> jax.Array:
  """RandomResizedCrop + horizontal flip (p = 0.5) on device.

  Args:
    key: PRNG key.
    images: uint8 ``[B, H, W, C]``.
    size: output side (224).
    scale, ratio: torchvision's ranges (area fraction, w / h).
    interpolation: "bilinear" (torchvision's default) or "bicubic" (DeiT).
    flip: random horizontal flip.

  Returns:
    float32 ``[B, size, size, C]`` in [0, 255].
  """
  b, h, w, _ = _check_batch(images, uint8=True)
  scale = check_range(scale, "scale")
  ratio = check_range(ratio, "ratio")
  k_box, k_flip = jax.random.split(key)
  u = jax.random.uniform(k_box, (b, _RRC_UNIFORMS))
  boxes = rrc_boxes(jnp, u, height=h, width=w, scale=scale, ratio=ratio)
  flips = (jax.random.uniform(k_flip, (b,)) < 0.5) if flip else None
  return resized_crop_jax(images, boxes, size=size, interpolation=interpolation,
                          flip=flips)


def _pil_resample(interpolation):
  from PIL import Image
  return {"bilinear": Image.Resampling.BILINEAR,
          "bicubic": Image.Resampling.BICUBIC,
          "nearest": Image.Resampling.NEAREST}[interpolation]


def _uint8_images(images, arg="images"):
  """``(n, heights, widths, C)`` of a uint8 batch ``[B, H, W, C]`` or a
  sequence of uint8 ``[H_i, W_i, C]`` images (variable-size sources), C in
  (1, 3)."""
  if isinstance(images, np.ndarray) and images.dtype != object:
    b, h, w, c = _check_batch(images, arg, uint8=True, channels=(1, 3))
    return b, [h] * b, [w] * b, c
  if not isinstance(images, (list, tuple, np.ndarray)):
    raise ValueError(
        f"`{arg}` must be a uint8 array [B, H, W, C] or a sequence of uint8 "
        f"[H_i, W_i, C] arrays; got {type(images).__name__}.")
  shapes = []
  for i, im in enumerate(images):
    shape = getattr(im, "shape", None)
    if (not isinstance(im, np.ndarray) or im.dtype != np.uint8
        or im.ndim != 3 or shape[-1] not in (1, 3) or 0 in shape):
      raise ValueError(
          f"`{arg}[{i}]` must be a non-empty uint8 array [H_i, W_i, C] with C "
          f"in (1, 3); got shape {shape} dtype {getattr(im, 'dtype', None)}.")
    shapes.append(shape)
  if len({s[-1] for s in shapes}) > 1:
    raise ValueError(f"`{arg}` mixes channel counts {sorted({s[-1] for s in shapes})}.")
  c = shapes[0][-1] if shapes else 3
  return len(shapes), [s[0] for s in shapes], [s[1] for s in shapes], c


def _to_pil(image):
  from PIL import Image
  return Image.fromarray(image if image.shape[-1] == 3 else image[..., 0])


def random_resized_crop_np(images, rng: np.random.Generator, *,
                           size: int, scale=IMAGENET_SCALE, ratio=IMAGENET_RATIO,
                           interpolation: str = "bilinear",
                           flip: bool = True) -> np.ndarray:
  """RandomResizedCrop + horizontal flip on the host, with Pillow.

  Per image ``PIL.Image.crop(box).resize((size, size), filter)``: what
  torchvision's ``RandomResizedCrop`` runs on PIL images (the DeiT / OpenMixup
  pipelines), so the uint8 result is PIL's to the bit. Each box is drawn
  relative to its own image's height and width, so images of different sizes
  (a list, e.g. TFDS ``imagenet2012``) are cropped as torchvision crops the
  decoded image, and an image gets the same crop alone as in a batch.

  Args:
    images: uint8 ``[B, H, W, C]``, or a sequence of B uint8 ``[H_i, W_i, C]``;
      C in (1, 3).
    rng: numpy Generator; draws ``[B, 22]`` crop uniforms then ``B`` flip
      coins.
    size, scale, ratio, interpolation, flip: as ``random_resized_crop_jax``.

  Returns:
    uint8 ``[B, size, size, C]``.
  """
  b, hs, ws, _ = _uint8_images(images)
  size = _check_size(size)
  scale = check_range(scale, "scale")
  ratio = check_range(ratio, "ratio")
  _check_interpolation(interpolation)
  u = rng.random((b, _RRC_UNIFORMS))
  if isinstance(images, np.ndarray) and images.dtype != object:
    boxes = rrc_boxes(np, u, height=hs[0], width=ws[0], scale=scale,
                      ratio=ratio)
  else:  # the same elementwise rule, one image's size at a time
    boxes = np.concatenate(
        [rrc_boxes(np, u[i:i + 1], height=hs[i], width=ws[i], scale=scale,
                   ratio=ratio) for i in range(b)]).reshape(b, 4)
  flips = rng.random(b) < 0.5 if flip else np.zeros(b, bool)
  return resized_crop_np(images, boxes, size=size, interpolation=interpolation,
                         flip=flips)


def resized_crop_np(images, boxes: np.ndarray, *, size: int,
                    interpolation: str = "bilinear",
                    flip: np.ndarray | None = None) -> np.ndarray:
  """Host (Pillow) crop of ``boxes`` resized to ``size``, flipped where ``flip``.

  Args:
    images: uint8 ``[B, H, W, C]``, or a sequence of B uint8 ``[H_i, W_i,
      C]``; C in (1, 3).
    boxes: int ``[B, 4]`` ``(top, left, h, w)``, each inside its image.
    size, interpolation: output side and filter.
    flip: optional bool ``[B]``.

  Returns:
    uint8 ``[B, size, size, C]``.
  """
  b, _, _, c = _uint8_images(images)
  size = _check_size(size)
  _check_interpolation(interpolation)
  resample = _pil_resample(interpolation)
  out = np.empty((b, size, size, c), np.uint8)
  for i in range(b):
    top, left, bh, bw = (int(v) for v in boxes[i])
    img = _to_pil(images[i]).crop((left, top, left + bw, top + bh))
    a = np.asarray(img.resize((size, size), resample), np.uint8).reshape(
        size, size, c)
    out[i] = a[:, ::-1] if flip is not None and flip[i] else a
  return out


# ---------------------------------------------------------------- eval crop
def center_crop_boxes(height: int, width: int, *, size: int,
                      crop_pct: float) -> Tuple[int, int, int, int]:
  """``(resized_h, resized_w, top, left)`` of timm's eval transform.

  ``Resize(floor(size / crop_pct))`` on the shorter side (the longer side
  ``int(short * long / short_in)``, torchvision's rule) then
  ``CenterCrop(size)`` (offset ``int(round((resized - size) / 2))``).
  """
  scale_size = math.floor(size / crop_pct)
  if height <= width:
    new_h, new_w = scale_size, int(scale_size * width / height)
  else:
    new_w, new_h = scale_size, int(scale_size * height / width)
  return (new_h, new_w, int(round((new_h - size) / 2.0)),
          int(round((new_w - size) / 2.0)))


def center_crop_np(images, *, size: int, crop_pct: float = 0.875,
                   interpolation: str = "bilinear") -> np.ndarray:
  """The eval transform on the host (Pillow), per image: resize the shorter
  side to ``floor(size / crop_pct)``, then centre crop ``size``.

  torchvision ``Resize(floor(size / crop_pct))`` + ``CenterCrop(size)`` on PIL
  images, box for box (``center_crop_boxes``), so images of any size (e.g.
  TFDS ``imagenet2012``) come out as one ``[B, size, size, C]`` batch.

  Args:
    images: uint8 ``[B, H, W, C]``, or a sequence of B uint8 ``[H_i, W_i,
      C]``; C in (1, 3).
    size: output side.
    crop_pct: in (0, 1].
    interpolation: "bilinear" or "bicubic".

  Returns:
    uint8 ``[B, size, size, C]``.
  """
  b, hs, ws, c = _uint8_images(images)
  size = _check_size(size)
  _check_interpolation(interpolation)
  if not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
    raise ValueError(f"`crop_pct` must be in (0, 1], got {crop_pct!r}.")
  resample = _pil_resample(interpolation)
  out = np.empty((b, size, size, c), np.uint8)
  for i in range(b):
    new_h, new_w, top, left = center_crop_boxes(hs[i], ws[i], size=size,
                                                crop_pct=crop_pct)
    img = _to_pil(images[i]).resize((new_w, new_h), resample)
    out[i] = np.asarray(img.crop((left, top, left + size, top + size)),
                        np.uint8).reshape(size, size, c)
  return out


def center_crop_jax(images: jax.Array, *, size: int, crop_pct: float = 0.875,
                    interpolation: str = "bilinear") -> jax.Array:
  """The eval transform: resize shorter side to ``size / crop_pct``, centre crop.

  One antialiased resampling (the rows of the resize that the crop keeps), so
  it equals torchvision ``Resize(floor(size / crop_pct), antialias=True)`` then
  ``CenterCrop(size)``. ``crop_pct=1`` resizes a square image to ``size``.

  Args:
    images: ``[B, H, W, C]`` uint8 or float.
    size: output side.
    crop_pct: in (0, 1].
    interpolation: "bilinear" or "bicubic".

  Returns:
    float32 ``[B, size, size, C]`` (clipped to [0, 255] for uint8 input).
  """
  _, h, w, _ = _check_batch(images)
  size = _check_size(size)
  _check_interpolation(interpolation)
  if not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
    raise ValueError(f"`crop_pct` must be in (0, 1], got {crop_pct!r}.")
  new_h, new_w, top, left = center_crop_boxes(h, w, size=size, crop_pct=crop_pct)
  wy = resample_weights(np, 0, h, in_size=h, out_size=size, scaled_size=new_h,
                        offset=top, method=interpolation)
  wx = resample_weights(np, 0, w, in_size=w, out_size=size, scaled_size=new_w,
                        offset=left, method=interpolation)
  out = _apply_weights(images, jnp.asarray(wy), jnp.asarray(wx))
  if images.dtype == jnp.uint8:
    out = jnp.clip(out, 0.0, 255.0)
  return out


# ------------------------------------------------------------- colour jitter
_JITTER_NAMES = ("brightness", "contrast", "saturation", "hue")


def jitter_strengths(color_jitter) -> Tuple[float, float, float, float]:
  """``(brightness, contrast, saturation, hue)`` strengths, validated.

  A float ``v`` means ``(v, v, v, 0)`` (timm's scalar colour jitter); a
  3-tuple has no hue. 0 switches an op off.
  """
  if isinstance(color_jitter, (int, float)):
    color_jitter = (float(color_jitter),) * 3
  try:
    vals = tuple(float(v) for v in color_jitter)
  except (TypeError, ValueError):
    vals = ()
  if len(vals) not in (3, 4) or any(v < 0 for v in vals) or (
      len(vals) == 4 and vals[3] > 0.5):
    raise ValueError(
        "`color_jitter` must be a float >= 0 or (brightness, contrast, "
        f"saturation[, hue]) with values >= 0 and hue <= 0.5; got "
        f"{color_jitter!r}.")
  return vals + (0.0,) * (4 - len(vals))


def jitter_ranges(color_jitter) -> Tuple[Tuple[float, float], ...]:
  """torchvision's factor ranges: ``U[max(0, 1 - v), 1 + v]`` for brightness,
  contrast and saturation, ``U[-v, v]`` for hue (``jitter_strengths``)."""
  vals = jitter_strengths(color_jitter)
  return tuple((max(0.0, 1.0 - v), 1.0 + v) for v in vals[:3]) + (
      (-vals[3], vals[3]),)


def _gray(x):
  return 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _blend(a, b, f):
  return jnp.clip(f * a + (1.0 - f) * b, 0.0, 1.0)


def _rgb_to_hsv(x):
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc, minc = jnp.max(x, axis=-1), jnp.min(x, axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  s = cr / jnp.where(eqc, 1.0, maxc)
  div = jnp.where(eqc, 1.0, cr)
  rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
  # torchvision's tie order: red, then green, then blue.
  h = jnp.where(maxc == r, bc - gc,
                jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.fmod(h / 6.0 + 1.0, 1.0)
  return h, s, maxc


def _hsv_to_rgb(h, s, v):
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  table = jnp.stack([jnp.stack(c, -1) for c in (
      (v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], -2)
  return jnp.take_along_axis(table, i[..., None, None], axis=-1)[..., 0]


def _adjust(x, op, f):
  """One torchvision tensor op on ``[H, W, 3]`` floats in [0, 1]."""
  if op == 0:  # brightness: blend with black
    return jnp.clip(x * f, 0.0, 1.0)
  if op == 1:  # contrast: blend with the mean grey level
    return _blend(x, jnp.mean(_gray(x)), f)
  if op == 2:  # saturation: blend with the grey image
    return _blend(x, _gray(x)[..., None], f)
  h, s, v = _rgb_to_hsv(x)
  return _hsv_to_rgb(jnp.mod(h + f, 1.0), s, v)


def jitter_apply(images: jax.Array, order: jax.Array, factors: jax.Array, *,
                 ops: Sequence[int] = (0, 1, 2, 3)) -> jax.Array:
  """Applies colour-jitter ``ops`` per image in ``order`` with ``factors``.

  Args:
    images: float ``[B, H, W, 3]`` in [0, 1].
    order: int ``[B, len(ops)]``: the op ids (0 brightness, 1 contrast, 2
      saturation, 3 hue) of each image, in the order they are applied.
    factors: float ``[B, 4]``: the factor of each op id.
    ops: the op ids that are on (static).

  Returns:
    float ``[B, H, W, 3]``.
  """
  ops = tuple(ops)

  def one(x, o, f):
    for step in range(len(ops)):
      outs = [_adjust(x, op, f[op]) for op in ops]
      x = jnp.select([o[step] == op for op in ops], outs, x)
    return x

  return jax.vmap(one)(images, order, factors)


def color_jitter_jax(key: jax.Array, images: jax.Array, *,
                     color_jitter=0.4) -> jax.Array:
  """torchvision ``ColorJitter`` per image (random factors and order), on device.

  Args:
    key: PRNG key.
    images: float ``[B, H, W, 3]`` in [0, 1].
    color_jitter: float ``v`` (= ``(v, v, v, 0)``) or ``(brightness,
      contrast, saturation[, hue])`` strengths; see ``jitter_ranges``.

  Returns:
    float ``[B, H, W, 3]`` in [0, 1].
  """
  b, _, _, c = _check_batch(images)
  if c != 3:
    raise ValueError(f"color jitter needs RGB images [B, H, W, 3]; got {images.shape}.")
  ranges = jitter_ranges(color_jitter)
  ops = tuple(i for i, v in enumerate(jitter_strengths(color_jitter)) if v > 0)
  if not ops:
    return images
  k_order, k_fac = jax.random.split(key)
  lo = jnp.asarray([r[0] for r in ranges], jnp.float32)
  hi = jnp.asarray([r[1] for r in ranges], jnp.float32)
  factors = lo + (hi - lo) * jax.random.uniform(k_fac, (b, 4))
  # A uniform random order of the ops that are on = torchvision's randperm(4)
  # with the disabled ops skipped.
  perm = jnp.argsort(jax.random.uniform(k_order, (b, len(ops))), axis=-1)
  order = jnp.asarray(ops, jnp.int32)[perm]
  order = _batch_sharded_like(order, images)
  factors = _batch_sharded_like(factors, images)
  return jitter_apply(images, order, factors, ops=ops)


# ------------------------------------------------------------ random erasing
def erase_boxes_jax(images: jax.Array, boxes: jax.Array, erase: jax.Array,
                    fill: jax.Array) -> jax.Array:
  """``images`` with ``fill`` inside ``boxes`` where ``erase``.

  Args:
    images: ``[B, H, W, C]``.
    boxes: int ``[B, 4]`` ``(top, left, h, w)``.
    erase: bool ``[B]``.
    fill: broadcastable to ``images`` (``[B, H, W, C]`` noise, ``[B, 1, 1,
      C]`` colours or a scalar).
  """
  _, h, w, _ = images.shape
  rows = jnp.arange(h)[None, :]
  cols = jnp.arange(w)[None, :]
  top, left, bh, bw = (boxes[:, i:i + 1] for i in range(4))
  in_r = (rows >= top) & (rows < top + bh)                    # [B, H]
  in_c = (cols >= left) & (cols < left + bw)                  # [B, W]
  mask = in_r[:, :, None] & in_c[:, None, :] & erase[:, None, None]
  return jnp.where(mask[..., None], fill, images)


def _box_noise(key, boxes, h, w, c, max_area, dtype):
  """Per-pixel N(0, 1) noise for the boxes: ``[B, H, W, C]``, fresh inside each.

  Draws only as many normals as the largest box can hold and lays them out
  row-major inside the box: a box of ``round(sqrt(t a)) x round(sqrt(t / a))``
  pixels with ``t <= max_area H W`` has at most ``t + (H + W) / 2 + 3 / 4``
  (rounding adds at most half a row and half a column). Whole-image noise
  made the op 2.4x slower on the benchmark CPU (``results/bench_augment.md``).
  """
  b = boxes.shape[0]
  n = min(h * w, int(math.floor(max_area * h * w + 0.5 * (h + w) + 1)))
  noise = jax.random.normal(key, (b, n, c), dtype)
  top, left, _, bw = (boxes[:, i, None, None] for i in range(4))
  r = jnp.arange(h)[None, :, None]
  col = jnp.arange(w)[None, None, :]
  idx = jnp.clip((r - top) * bw + (col - left), 0, n - 1)     # [B, H, W]
  idx = _batch_sharded_like(idx.reshape(b, h * w, 1), noise)
  return jnp.take_along_axis(noise, idx, axis=1).reshape(b, h, w, c)


def random_erasing_jax(key: jax.Array, images: jax.Array, *, prob: float = 0.25,
                       mode: str = "pixel", area=(0.02, 1.0 / 3.0),
                       aspect=(0.3, 1.0 / 0.3)) -> jax.Array:
  """timm ``RandomErasing(prob, mode, max_count=1)`` on a normalised batch.

  Args:
    key: PRNG key.
    images: float ``[B, H, W, C]`` (after mean/std normalisation).
    prob: probability of erasing one box per image.
    mode: "pixel" (per-pixel N(0, 1)), "rand" (one N(0, 1) colour per box)
      or "const" (zeros).
    area, aspect: box area fraction and ``h / w`` ranges (timm's defaults).

  Returns:
    ``[B, H, W, C]``, same dtype.
  """
  b, h, w, c = _check_batch(images)
  if mode not in ERASING_MODES:
    raise ValueError(f"`mode` must be one of {ERASING_MODES}, got {mode!r}.")
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f"`prob` must be in [0, 1], got {prob!r}.")
  area = check_range(area, "area", high=1.0)
  aspect = check_range(aspect, "aspect")
  if prob == 0.0:
    return images
  k_box, k_fill = jax.random.split(key)
  u = jax.random.uniform(k_box, (b, _ERASE_UNIFORMS))
  boxes, erase = erasing_boxes(jnp, u, height=h, width=w, prob=prob, area=area,
                               aspect=aspect)
  if mode == "pixel":
    fill = _box_noise(k_fill, boxes, h, w, c, area[1], images.dtype)
  elif mode == "rand":
    fill = jax.random.normal(k_fill, (b, 1, 1, c), images.dtype)
  else:
    fill = jnp.zeros((), images.dtype)
  boxes = _batch_sharded_like(boxes, images)
  erase = _batch_sharded_like(erase, images)
  if mode != "const":
    fill = _batch_sharded_like(fill, images)
  return erase_boxes_jax(images, boxes, erase, fill)
