"""GridMix (Baek et al., Pattern Recognition 2021), OpenMixup's variant.

A crop of the own image is tiled by an ``n x ny`` grid of patches; the top-left
``hole_h x hole_w`` corner of every patch is replaced by the partner, so the
partner shows through a regular lattice of square holes.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _common as C
from automix_jax.mixers import _cutmix as B_

Array = jax.Array


def _pair(value: Any, *, arg: str, integer: bool = False,
          upper: float | None = None) -> tuple[float, float]:
  """A number or ``(lo, hi)`` with ``0 < lo <= hi (<= upper)``."""
  kind = numbers.Integral if integer else numbers.Real
  items = value if isinstance(value, (tuple, list)) else (value, value)
  form = f"a positive {'int' if integer else 'number'} or a pair (lo, hi)"
  if (len(items) != 2 or
      any(isinstance(v, bool) or not isinstance(v, kind) for v in items)):
    raise ValueError(f"`{arg}` must be {form}; got {value!r}.")
  lo, hi = items
  if not 0 < lo <= hi or (upper is not None and hi > upper):
    bound = f" <= {upper}" if upper is not None else ""
    raise ValueError(
        f"`{arg}` must satisfy 0 < lo <= hi{bound}; got {(lo, hi)}.")
  return (int(lo), int(hi)) if integer else (float(lo), float(hi))


CHECKS = {
    "n_holes": functools.partial(_pair, arg="n_holes", integer=True),
    "hole_aspect_ratio": functools.partial(_pair, arg="hole_aspect_ratio"),
    "cut_area_ratio": functools.partial(_pair, arg="cut_area_ratio",
                                        upper=1.0),
    "cut_aspect_ratio": functools.partial(_pair, arg="cut_aspect_ratio"),
}


def _floor_i32(x: Array) -> Array:
  return jnp.floor(x).astype(jnp.int32)


def gridmix(key: Array, images: Array, labels: Array, *, alpha: float = 1.0,
            n_holes: Any = (2, 6), hole_aspect_ratio: Any = 1.0,
            cut_area_ratio: Any = (0.5, 1.0), cut_aspect_ratio: Any = (0.5, 2.0),
            lam_scope: str = "batch", partner: str = "permutation",
            lam: Any = None, index: Any = None,
            data_format: Any = None
            ) -> tuple[Array, Array, dict[str, Array]]:
  """GridMix with OpenMixup's sampling (defaults = its CIFAR config).

  Per draw (one per batch, or one per sample with ``lam_scope="sample"``):
  ``n ~ U{n_lo..n_hi}``, hole aspect ``a ~ U(hole_aspect_ratio)``, crop area
  ratio ``s ~ U(cut_area_ratio)``, crop aspect ``q ~ U(cut_aspect_ratio)``::

    cut_w = int(sqrt(int(H W s) / q)),  cut_h = int(cut_w q)
    crop top-left = (int((H - cut_h) u), int((W - cut_w) v)),  u, v ~ U[0, 1)
    patch_w = ceil(cut_w / n),  patch_h = int(patch_w a)
    hole_w = clip(int(patch_w sqrt(1 - λ)), 1, patch_w - 1)   (same for h)

  A pixel at crop offset ``(dy, dx)`` comes from the partner when
  ``dy mod patch_h < hole_h`` and ``dx mod patch_w < hole_w``; λ is corrected to
  ``1 - holes / (H W)`` (so λ = 1 still leaves 1-pixel holes: OpenMixup's rule).
  Masks come from comparisons, so shapes are static and every draw jits once.

  Deliberate deviations from OpenMixup (github.com/Westlake-AI/openmixup,
  ``openmixup/models/utils/augments/gridmix.py``):

  * OpenMixup lets ``cut_h`` exceed H (aspect > 1) and ``cut_w`` exceed W
    (aspect < 1); the crop origin ``int((H - cut_h) u)`` then goes negative and
    torch's negative slice start silently produces a wrong (often empty) mask.
    Here ``cut_h <= H`` and ``cut_w <= W`` are enforced by clipping.
  * OpenMixup asserts ``n <= cut_w // 2``; here ``n`` is clipped into
    ``[1, max(cut_w // 2, 1)]`` per draw, so small images never crash.
  * Sizes are computed in float32 (timm/OpenMixup: float64); an ``int()`` can
    differ by one pixel when a product is within an ulp of an integer.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration (OpenMixup CIFAR: 0.2).
    n_holes: int or ``(lo, hi)`` inclusive, holes along x.
    hole_aspect_ratio: number or ``(lo, hi)``, patch height / patch width.
    cut_area_ratio: number or ``(lo, hi)`` in (0, 1], crop area / image area.
    cut_aspect_ratio: number or ``(lo, hi)``, crop height / crop width.
    lam_scope: ``"batch"`` (one grid for the batch, OpenMixup) or ``"sample"``.
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    lam: optional explicit λ (scalar or ``[B]``) that sets the hole size.
    index: optional explicit partner indices ``[B]``.
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it). ``None``
      refuses a batch that looks NCHW (``automix_jax/mixers/_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux`` holds ``lam``, ``index``,
    ``mask`` ``[B, H, W, 1]`` float32 (own weight, binary), ``crop``
    ``[B, 4]`` int32 ``(y1, y2, x1, x2)``, ``patch`` ``[B, 2]`` int32
    ``(patch_h, patch_w)``, ``hole`` ``[B, 2]`` int32 ``(hole_h, hole_w)``
    and ``n_holes`` ``[B]`` int32.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels)
  alpha = C.check_alpha(alpha)
  n_lo, n_hi = _pair(n_holes, arg="n_holes", integer=True)
  har = _pair(hole_aspect_ratio, arg="hole_aspect_ratio")
  car = _pair(cut_area_ratio, arg="cut_area_ratio", upper=1.0)
  asp = _pair(cut_aspect_ratio, arg="cut_aspect_ratio")
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  _, height, width, _ = images.shape
  B_.check_box_room(height, width, 3, mixer="gridmix", why=(
      "a hole is at most patch - 1 pixels per side, which leaves 2x2 images "
      "unmixed in over 90 % of draws"))

  k_lam, k_index, k_n, k_har, k_car, k_asp, k_pos = jax.random.split(key, 7)
  lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)
  m = 1 if lam_scope == "batch" else batch_size

  def uniform(k, bounds, shape=(m,)):
    return jax.random.uniform(k, shape, jnp.float32, bounds[0], bounds[1])

  def per_batch(x):
    return jnp.broadcast_to(x, (batch_size,) + x.shape[1:])

  n = per_batch(jax.random.randint(k_n, (m,), n_lo, n_hi + 1, jnp.int32))
  hole_ar = per_batch(uniform(k_har, har))
  area_ratio = per_batch(uniform(k_car, car))
  aspect = per_batch(uniform(k_asp, asp))
  pos = per_batch(uniform(k_pos, (0.0, 1.0), (m, 2)))

  cut_area = _floor_i32(jnp.float32(height * width) * area_ratio)
  cut_w = _floor_i32(jnp.sqrt(cut_area.astype(jnp.float32) / aspect))
  cut_h = _floor_i32(cut_w.astype(jnp.float32) * aspect)
  # OpenMixup's overflow: keep the crop inside the image.
  cut_w = jnp.clip(cut_w, 1, width)
  cut_h = jnp.clip(cut_h, 1, height)
  y1 = _floor_i32((height - cut_h).astype(jnp.float32) * pos[:, 0])
  x1 = _floor_i32((width - cut_w).astype(jnp.float32) * pos[:, 1])
  n = jnp.clip(n, 1, jnp.maximum(cut_w // 2, 1))

  patch_w = (cut_w + n - 1) // n
  patch_h = _floor_i32(patch_w.astype(jnp.float32) * hole_ar)
  ratio = jnp.sqrt(1.0 - lam)
  # clip(x, 1, p - 1) = min(max(x, 1), p - 1): a patch of side 1 gets no hole.
  hole_w = jnp.minimum(jnp.maximum(
      _floor_i32(patch_w.astype(jnp.float32) * ratio), 1), patch_w - 1)
  hole_h = jnp.minimum(jnp.maximum(
      _floor_i32(patch_h.astype(jnp.float32) * ratio), 1), patch_h - 1)

  def axis_holes(size, lo, extent, patch, hole):
    pos_ = jnp.arange(size, dtype=jnp.int32)[None, :] - lo[:, None]
    in_crop = (pos_ >= 0) & (pos_ < extent[:, None])
    # A zero patch height (patch_w * a < 1) means no holes, as in OpenMixup.
    off = pos_ % jnp.maximum(patch, 1)[:, None]
    return in_crop & (off < hole[:, None])

  holes = (axis_holes(height, y1, cut_h, patch_h, hole_h)[:, :, None] &
           axis_holes(width, x1, cut_w, patch_w, hole_w)[:, None, :])
  mask = (~holes).astype(jnp.float32)[..., None]
  n_kept = height * width - jnp.sum(holes, axis=(1, 2), dtype=jnp.int32)
  lam = B_.kept_fraction(n_kept, height * width)
  mixed = C.apply_mask(images, mask, index)
  aux = {"lam": lam, "index": index, "mask": mask,
         "crop": jnp.stack([y1, y1 + cut_h, x1, x1 + cut_w], 1),
         "patch": jnp.stack([patch_h, patch_w], 1),
         "hole": jnp.stack([hole_h, hole_w], 1), "n_holes": n}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
