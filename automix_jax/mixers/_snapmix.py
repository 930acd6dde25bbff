"""SnapMix (Huang et al., "SnapMix: Semantically Proportional Mixing for
Augmenting Fine-grained Data", AAAI 2021, arXiv 2012.04846).

Two boxes are drawn as in CutMix, one in the sample (side from λ ~ Beta(α, α))
and one in its partner (side from an independent λ' ~ Beta(α, α)); the
partner's box is resized (bilinear, ``align_corners=True``) into the sample's
box. The label weights are *semantic*: with ``S`` a sample's class activation
map for its own label, upsampled (bilinear) to the image, shifted to min 0 and
normalised to sum 1,

  w_a = 1 - S_own[own box].sum(),   w_b = S_partner[partner box].sum().

Follows the authors' code (github.com/Shaoli-Huang/SnapMix,
``utils/mixmethod.py:snapmix`` and ``get_spm``), including its corner cases:

* a pair with the same label gets ``w_a = w_b = w_a + w_b``;
* a constant map (sum 0 after the shift; NaN in the reference) falls back to
  the box areas, ``w_a = 1 - area/HW`` and ``w_b = area/HW`` of the own box
  (for both weights of a same-label pair, as the NaN spreads through the sum);
* nothing is mixed (``w_a = 1, w_b = 0``) when either box is empty or, with
  probability ``1 - prob``, for the whole batch (the reference's ``prob``);
* one λ, one λ' and one pair of boxes per batch (``lam_scope="batch"``) and a
  random permutation as partner; defaults ``alpha = 1`` and ``prob = 1`` are
  its argparse defaults (its README fine-tunes with ``--beta 5`` and trains
  from scratch with ``--prob 0.5``).

Deviation, on purpose: the reference's loss is ``w_a CE(y_a) + w_b CE(y_b)``
with ``w_a + w_b != 1`` in general, while every mixer here returns label rows
summing to 1 (docs/interfaces.md). By default (``normalize=True``) the rows
are ``λ y_a + (1 - λ) y_b`` with ``λ = w_a / (w_a + w_b)`` (the area λ where
both weights are 0); ``normalize=False`` returns ``w_a y_a + w_b y_b``, which
makes the soft-target CE exactly the reference's loss.

OpenMixup's ``snapmix`` (``openmixup/models/augments/snapmix.py``) is not
followed: its feature extractor returns a ``(features, weight, bias)`` tuple
that the mixer then indexes as a CAM tensor, which looks broken.

The CAM is a model input (need ``"cam"``, docs/interfaces.md): the trainer
passes ``cam`` ``[B, h, w]`` from ``models.class_activation_map``; no gradient
flows into it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _common as C
from automix_jax.mixers import _cutmix as B_

Array = jax.Array

CHECKS = {"prob": functools.partial(C.check_probability, arg="prob"),
          "normalize": functools.partial(C.check_static_bool,
                                         arg="normalize")}


def check_cam(cam: Any, batch_size: int, height: int, width: int) -> Array:
  """``cam`` ``[B, h, w]`` floating with ``h <= H``, ``w <= W``."""
  shape = getattr(cam, "shape", None)
  dtype = getattr(cam, "dtype", None)
  if (shape is None or len(shape) != 3 or shape[0] != batch_size or
      min(shape) < 1 or shape[1] > height or shape[2] > width or
      dtype is None or not jnp.issubdtype(dtype, jnp.floating)):
    got = (f"shape {tuple(shape)}, dtype {dtype}" if shape is not None
           else type(cam).__name__)
    raise ValueError(
        f"`cam` must be floating class activation maps [B, h, w] with B = "
        f"{batch_size} and 1 <= h <= {height}, 1 <= w <= {width} (each "
        "image's map for its own label, models.class_activation_map); got "
        f"{got}.")
  return cam


def _bilinear_axis(out_lo: Array, out_hi: Array, src_lo: Array,
                   src_hi: Array, size: int) -> tuple[Array, Array, Array]:
  """Sources of a 1-D bilinear resize (``align_corners=True``) between boxes.

  Output position ``p`` of ``[out_lo, out_hi)`` reads source position
  ``t = (p - out_lo) (n_src - 1) / (n_out - 1)`` (0 when ``n_out = 1``) of
  ``[src_lo, src_hi)``, as PyTorch's ``upsample_bilinear2d`` computes it in
  float32: ``i0 = floor(t)``, ``i1 = min(i0 + 1, n_src - 1)``, weight
  ``t - i0`` on ``i1``. Returns ``(i0, i1, frac)`` ``[B, size]`` as absolute
  indices (clipped, unused outside the box).
  """
  n_out = (out_hi - out_lo)[:, None]
  n_src = (src_hi - src_lo)[:, None]
  scale = jnp.where(n_out > 1, (n_src - 1).astype(jnp.float32) /
                    jnp.maximum(n_out - 1, 1).astype(jnp.float32), 0.0)
  pos = jnp.arange(size, dtype=jnp.int32)[None, :] - out_lo[:, None]
  t = jnp.maximum(pos, 0).astype(jnp.float32) * scale
  i0 = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, jnp.maximum(n_src - 1, 0))
  i1 = jnp.minimum(i0 + 1, jnp.maximum(n_src - 1, 0))
  frac = t - i0.astype(jnp.float32)
  clip = lambda i: jnp.clip(src_lo[:, None] + i, 0, size - 1)
  return clip(i0), clip(i1), frac


def resize_box_into_box(source: Array, src_box: Array, dst_box: Array
                        ) -> Array:
  """``source[b]``'s ``src_box`` resized (bilinear, ``align_corners=True``)
  onto ``dst_box`` of a ``[B, H, W, C]`` canvas; values outside ``dst_box``
  are unspecified (mask them). Boxes ``[B, 4]`` ``(y1, y2, x1, x2)``."""
  _, height, width, _ = source.shape
  y0, y1, fy = _bilinear_axis(dst_box[:, 0], dst_box[:, 1], src_box[:, 0],
                              src_box[:, 1], height)
  x0, x1, fx = _bilinear_axis(dst_box[:, 2], dst_box[:, 3], src_box[:, 2],
                              src_box[:, 3], width)
  f32 = source.astype(jnp.float32)
  rows = lambda i: jnp.take_along_axis(f32, i[:, :, None, None], axis=1)
  fy = fy[:, :, None, None]
  out = (1 - fy) * rows(y0) + fy * rows(y1)
  cols = lambda i: jnp.take_along_axis(out, i[:, None, :, None], axis=2)
  fx = fx[:, None, :, None]
  return ((1 - fx) * cols(x0) + fx * cols(x1)).astype(source.dtype)


def semantic_maps(cam: Array, height: int, width: int) -> tuple[Array, Array]:
  """SnapMix's ``get_spm`` maps: ``cam`` upsampled (bilinear, half-pixel
  centres as ``align_corners=False``) to ``[B, H, W]``, shifted to min 0 and
  normalised to sum 1; and ``[B]`` bool, False where the map was constant
  (the reference divides 0 by 0 there)."""
  maps = jax.image.resize(cam.astype(jnp.float32),
                          (cam.shape[0], height, width), "bilinear")
  maps = maps - jnp.min(maps, axis=(1, 2), keepdims=True)
  total = jnp.sum(maps, axis=(1, 2), keepdims=True)
  valid = total[:, 0, 0] > 0
  return maps / jnp.where(total > 0, total, 1.0), valid


def snapmix(key: Array, images: Array, labels: Array, *, cam: Array,
            alpha: float = 1.0, prob: float = 1.0, normalize: bool = True,
            lam_scope: str = "batch", partner: str = "permutation",
            index: Any = None, data_format: Any = None
            ) -> tuple[Array, Array, dict[str, Array]]:
  """SnapMix: a resized partner box, labels by class-activation mass.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    cam: ``[B, h, w]`` each image's class activation map for its own label,
      un-normalised (``models.class_activation_map``), at most the images'
      resolution. Keyword-only model input, never bound by ``mixers.get``.
    alpha: Beta(alpha, alpha) concentration of both box draws.
    prob: probability that the batch is mixed at all.
    normalize: label rows summing to 1 (default) or the reference's raw
      weights (see the module docstring).
    lam_scope: ``"batch"`` (the reference: one pair of boxes) or
      ``"sample"`` (a pair per sample).
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    index: optional explicit partner indices ``[B]``.
    data_format: ``None``/``"NHWC"`` or ``"NCHW"`` (see ``_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux`` holds ``lam`` ``[B]`` (the
    own label's weight in ``mixed_labels``), ``index`` ``[B]``, ``mask``
    ``[B, H, W, 1]`` (1 where the own pixel is kept), ``box`` and
    ``box_partner`` ``[B, 4]`` int32 ``(y1, y2, x1, x2)``, and ``weights``
    ``[B, 2]`` float32, the reference's ``(w_a, w_b)``.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels)
  _, height, width, _ = images.shape
  cam = check_cam(cam, batch_size, height, width)
  alpha = C.check_alpha(alpha)
  prob = C.check_probability(prob, arg="prob")
  normalize = C.check_static_bool(normalize, arg="normalize")
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)

  k_apply, k_lam, k_lam_p, k_index, k_c, k_c_p = jax.random.split(key, 6)
  index = C.resolve_index(k_index, batch_size, partner, index)

  def draw_box(k_l, k_center):
    lam = C.draw_lam(k_l, alpha, batch_size, lam_scope)
    center = B_.draw_center(k_center, batch_size, height, width, lam_scope)
    return B_.box_from_center(center[:, 0], center[:, 1],
                              B_.cut_size(lam, height),
                              B_.cut_size(lam, width), height, width)
  box, box_p = draw_box(k_lam, k_c), draw_box(k_lam_p, k_c_p)
  area_lam = B_.box_area_lam(box, height, width)
  non_empty = lambda b: (b[:, 1] > b[:, 0]) & (b[:, 3] > b[:, 2])
  applied = (jax.random.bernoulli(k_apply, prob) & non_empty(box) &
             non_empty(box_p))

  inside = B_.box_inside(box, height, width) & applied[:, None, None]
  resized = resize_box_into_box(C.take(images, index), box_p, box)
  mixed = jnp.where(inside[..., None], resized, images)

  # Label weights from the maps: data, not differentiated.
  maps, valid = semantic_maps(jax.lax.stop_gradient(cam), height, width)
  mass = lambda m, b: jnp.sum(m * B_.box_inside(b, height, width), (1, 2))
  total = jnp.sum(maps, axis=(1, 2))
  w_a = 1.0 - mass(maps, box) / (total + 1e-8)
  maps_p, valid_p = C.take(maps, index), C.take(valid, index)
  w_b = mass(maps_p, box_p) / (C.take(total, index) + 1e-8)
  same = jnp.all(labels == C.take(labels, index), axis=-1)
  w_a, w_b = (jnp.where(same, w_a + w_b, w_a), jnp.where(same, w_b + w_a, w_b))
  # The reference's NaN (constant map) spreads through the same-label sum
  # before it is replaced by the area weights.
  ok_a = valid & (~same | valid_p)
  ok_b = valid_p & (~same | valid)
  w_a = jnp.where(applied, jnp.where(ok_a, w_a, area_lam), 1.0)
  w_b = jnp.where(applied, jnp.where(ok_b, w_b, 1.0 - area_lam), 0.0)

  mixed_labels, lam = C.weighted_labels(labels, w_a, w_b, index,
                                        normalize=normalize, fallback=area_lam)
  aux = {"lam": lam.astype(jnp.float32), "index": index,
         "mask": (~inside).astype(jnp.float32)[..., None], "box": box,
         "box_partner": box_p,
         "weights": jnp.stack([w_a, w_b], axis=1).astype(jnp.float32)}
  return C.restore_layout(mixed, mixed_labels, aux, data_format)
