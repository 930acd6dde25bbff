"""CutMix (Yun et al., ICCV 2019, arXiv 1905.04899) and shared box helpers.

The box follows timm / torchvision / OpenMixup exactly (timm ``timm/data/mixup.py``,
torchvision ``transforms.v2.CutMix``, OpenMixup ``cutmix``)::

  r = sqrt(1 - λ);  cut_h = floor(H r);  cut_w = floor(W r)
  rows [clip(cy - cut_h // 2, 0, H), clip(cy + cut_h // 2, 0, H))

and likewise for columns, with the centre ``(cy, cx)`` uniform on the integer
grid ``[0, H) x [0, W)``. Pixels inside the box come from the partner.

The helpers here (``cut_size``, ``box_from_center``, ``box_inside``,
``check_center``) are shared by the other box mixers (SaliencyMix, ResizeMix).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C

Array = jax.Array

BOX_RULES = ("symmetric", "exact")
CHECKS = {"correct_lam": functools.partial(C.check_static_bool,
                                          arg="correct_lam"),
          "box_rule": C.choice_check(BOX_RULES, "box_rule")}


@functools.lru_cache(maxsize=None)
def _sqrt_thresholds(size: int) -> np.ndarray:
  """``T[c-1]`` = the largest float32 ``<= 1 - c² / size²`` for c = 1..size.

  For a float32 ``lam``, ``c <= size * sqrt(1 - lam)`` holds exactly when
  ``lam <= 1 - c²/size²``, and since ``lam`` is itself a float32 that is the same
  as ``lam <= T[c-1]``. The thresholds are found with exact rational arithmetic
  on the host, once per image size.
  """
  out = np.empty((size,), np.float32)
  denom = size * size
  for c in range(1, size + 1):
    t = Fraction(denom - c * c, denom)
    f = np.float32(float(t))
    # float(t) is correctly rounded to float64, and the cast to float32 rounds
    # again: step to the largest float32 that does not exceed t.
    while Fraction(float(f)) > t:
      f = np.nextafter(f, np.float32(-np.inf), dtype=np.float32)
    while Fraction(float(np.nextafter(f, np.float32(np.inf),
                                      dtype=np.float32))) <= t:
      f = np.nextafter(f, np.float32(np.inf), dtype=np.float32)
    out[c - 1] = f
  return out


def cut_size(lam: Array, size: int) -> Array:
  """``floor(size * sqrt(1 - lam))`` as ``[B]`` int32, exact for float32 ``lam``.

  timm and torchvision evaluate ``int(size * np.sqrt(1 - lam))`` in float64 (timm's
  elem mode in float32). A plain float32 ``floor(size * sqrt(1 - lam))`` lands
  one pixel off whenever the product is within an ulp of an integer (it does for
  60 of the 225 values λ = f32(1 - (c/224)²)). Here the result is the exact
  real-number floor for the given float32 λ: it counts the integers ``c`` with
  ``lam <= 1 - c²/size²`` against host-computed float32 thresholds, a
  ``[B, size]`` comparison with static shapes. It agrees with float64
  evaluation except where float64 rounding itself errs (never seen in 600k
  random draws at sizes 7, 32, 224).

  Args:
    lam: ``[B]`` float λ in [0, 1].
    size: static image side (H or W).
  """
  thresholds = jnp.asarray(_sqrt_thresholds(int(size)))
  lam = lam.astype(jnp.float32)
  return jnp.sum(lam[:, None] <= thresholds[None, :], axis=1,
                 dtype=jnp.int32)


def box_from_center(cy: Array, cx: Array, cut_h: Array, cut_w: Array,
                    height: int, width: int, rule: str = "symmetric"
                    ) -> Array:
  """The clipped box ``[B, 4]`` int32 ``(y1, y2, x1, x2)``, half-open.

  ``rule="symmetric"`` (torchvision, OpenMixup, the CutMix paper's code, and
  older timm releases): ``[c - cut//2, c + cut//2)``, so an
  unclipped box has an even side ``2 (cut // 2)``. ``rule="exact"`` (the
  installed timm 1.0.31 ``rand_bbox``): ``[c - cut//2, c + (cut+1)//2)``, so an
  unclipped side is exactly ``cut``.
  """
  cut_h = cut_h.astype(jnp.int32)
  cut_w = cut_w.astype(jnp.int32)
  lo_h, lo_w = cut_h // 2, cut_w // 2
  if rule == "symmetric":
    hi_h, hi_w = lo_h, lo_w
  else:
    hi_h, hi_w = cut_h - lo_h, cut_w - lo_w
  cy = cy.astype(jnp.int32)
  cx = cx.astype(jnp.int32)
  y1 = jnp.clip(cy - lo_h, 0, height)
  y2 = jnp.clip(cy + hi_h, 0, height)
  x1 = jnp.clip(cx - lo_w, 0, width)
  x2 = jnp.clip(cx + hi_w, 0, width)
  return jnp.stack([y1, y2, x1, x2], axis=1).astype(jnp.int32)


def box_inside(box: Array, height: int, width: int) -> Array:
  """``[B, H, W]`` bool, True inside each half-open box ``(y1, y2, x1, x2)``.

  Built from broadcast comparisons (no dynamic slicing), so it jits and vmaps.
  """
  rows = jnp.arange(height, dtype=jnp.int32)[None, :]
  cols = jnp.arange(width, dtype=jnp.int32)[None, :]
  in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 1:2])
  in_cols = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])
  return in_rows[:, :, None] & in_cols[:, None, :]


def box_area_lam(box: Array, height: int, width: int) -> Array:
  """``1 - box_area / (H W)`` as ``[B]`` float32 (the corrected λ)."""
  area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
  return kept_fraction(height * width - area, height * width)


def kept_fraction(kept: Array, total: int) -> Array:
  """``kept / total`` as float32 in [0, 1], exactly 0 and 1 at the ends.

  XLA rewrites a division by a constant into a multiplication by its rounded
  reciprocal, so ``1 - area / HW`` came out as -3e-8 for a full box. The
  integer numerator keeps 0 exact; 1 is selected explicitly, and the clip
  keeps any other ``kept * (1 / HW)`` inside [0, 1].
  """
  frac = kept.astype(jnp.float32) / jnp.float32(total)
  return jnp.where(kept >= total, 1.0, jnp.clip(frac, 0.0, 1.0))


def check_center(center: Any, batch_size: int, height: int, width: int,
                 *, arg: str = "center") -> Array:
  """An explicit box centre: integer ``(cy, cx)`` ``[2]`` or ``[B, 2]`` -> ``[B, 2]``."""
  shape = getattr(center, "shape", None)
  if shape is None:
    try:
      center = np.asarray(center)
    except (TypeError, ValueError):
      center = None
    shape = getattr(center, "shape", None)
  if shape is None or tuple(shape) not in ((2,), (batch_size, 2)):
    raise ValueError(
        f"`{arg}` must be integer (cy, cx) of shape [2] or [B, 2] = "
        f"({batch_size}, 2); got "
        f"{tuple(shape) if shape is not None else type(center).__name__}.")
  if not jnp.issubdtype(center.dtype, jnp.integer):
    raise ValueError(
        f"`{arg}` must be integer pixel coordinates (cy, cx); got dtype "
        f"{center.dtype}.")
  def predicate(xp, c):
    c = c.reshape(-1, 2)
    ok = ((c[:, 0] >= 0) & (c[:, 0] < height) & (c[:, 1] >= 0) &
          (c[:, 1] < width))
    return ok, {"y0": xp.min(c[:, 0]), "y1": xp.max(c[:, 0]),
                "x0": xp.min(c[:, 1]), "x1": xp.max(c[:, 1])}
  C.check_value((center,), predicate,
                f"`{arg}` must lie inside the image: 0 <= cy < {height} and "
                f"0 <= cx < {width}; got cy in [{{y0}}, {{y1}}], cx in "
                "[{x0}, {x1}].")
  return jnp.broadcast_to(jnp.asarray(center, jnp.int32), (batch_size, 2))


def check_box(box: Any, n: int, height: int, width: int, *,
              arg: str = "box") -> Array:
  """An explicit box ``(y1, y2, x1, x2)``: integer ``[4]`` or ``[n, 4]``, half-open
  and inside the image -> ``[n, 4]`` int32."""
  shape = tuple(jnp.shape(box))
  if shape not in ((4,), (n, 4)):
    raise ValueError(f"`{arg}` must be integer (y1, y2, x1, x2) of shape [4] "
                     f"or [n, 4] = ({n}, 4); got {shape}.")
  box = jnp.asarray(box) if not hasattr(box, "dtype") else box
  if not jnp.issubdtype(box.dtype, jnp.integer):
    raise ValueError(f"`{arg}` must be integer pixel coordinates; got dtype "
                     f"{box.dtype}.")

  def predicate(xp, b):
    b = b.reshape(-1, 4)
    ok = ((0 <= b[:, 0]) & (b[:, 0] <= b[:, 1]) & (b[:, 1] <= height) &
          (0 <= b[:, 2]) & (b[:, 2] <= b[:, 3]) & (b[:, 3] <= width))
    return ok, {"first": b[0]}
  C.check_value((box,), predicate,
                f"`{arg}` rows must satisfy 0 <= y1 <= y2 <= {height} and "
                f"0 <= x1 <= x2 <= {width}; got e.g. {{first}}.")
  return jnp.broadcast_to(jnp.asarray(box, jnp.int32), (n, 4))


def draw_center(key: Array, batch_size: int, height: int, width: int,
                lam_scope: str) -> Array:
  """Uniform integer centres ``[B, 2]``: one shared (batch scope) or one each."""
  n = 1 if lam_scope == "batch" else batch_size
  k_y, k_x = jax.random.split(key)
  cy = jax.random.randint(k_y, (n,), 0, height, dtype=jnp.int32)
  cx = jax.random.randint(k_x, (n,), 0, width, dtype=jnp.int32)
  return jnp.broadcast_to(jnp.stack([cy, cx], axis=1), (batch_size, 2))


def check_box_room(height: int, width: int, smallest: int, *, mixer: str,
                   why: str) -> None:
  """Refuses images too small for a box mixer ever to mix (λ would stay 1)."""
  if min(height, width) < smallest:
    raise ValueError(
        f"`images` of {height}x{width} pixels are too small for {mixer}: "
        f"{why}, so λ would (almost) always stay 1 with nothing mixed. Use "
        f"images of at least {smallest}x{smallest} pixels, or mixup.")


def cutmix(key: Array, images: Array, labels: Array, *, alpha: float = 1.0,
           lam_scope: str = "batch", partner: str = "permutation",
           correct_lam: bool = True, lam: Any = None, index: Any = None,
           center: Any = None, box_rule: str = "symmetric",
           data_format: Any = None
           ) -> tuple[Array, Array, dict[str, Array]]:
  """CutMix: paste a box of the partner image; labels by box area.

  ``x̃ = M ⊙ x + (1 - M) ⊙ x[index]`` with ``M`` zero inside the box and one
  outside; ``ỹ = λ y + (1 - λ) y[index]``.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration (OpenMixup CIFAR: 0.2; timm/DeiT: 1).
    lam_scope: ``"batch"`` (one λ and one box for the batch: OpenMixup, timm
      batch mode, torchvision) or ``"sample"`` (a λ and a box per sample: timm
      elem mode).
    partner: ``"permutation"``, ``"flip"`` (timm) or ``"roll"`` (torchvision).
    correct_lam: if True (default; OpenMixup and torchvision always do), λ is
      recomputed per sample as ``1 - box_area / (H W)`` so that it equals the
      mean of the mask even when the box is clipped at the border.
    lam: optional explicit λ (scalar or ``[B]``) that sets the box size.
    index: optional explicit partner indices ``[B]``.
    center: optional integer box centre ``(cy, cx)``, ``[2]`` or ``[B, 2]``;
      must lie inside the image. Drawn uniformly when None.
    box_rule: ``"symmetric"`` (default; torchvision, OpenMixup, the paper: the
      upper edge is ``c + cut // 2``) or ``"exact"`` (installed timm 1.0.31:
      the upper edge is ``c + (cut + 1) // 2``). See ``box_from_center``.
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it). ``None``
      refuses a batch that looks NCHW (``automix_jax/mixers/_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux`` holds ``lam`` ``[B]``
    float32, ``index`` ``[B]`` int32, ``mask`` ``[B, H, W, 1]`` float32 (own
    image weight, binary) and ``box`` ``[B, 4]`` int32 ``(y1, y2, x1, x2)``.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels)
  alpha = C.check_alpha(alpha)
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  correct_lam = C.check_static_bool(correct_lam, arg="correct_lam")
  C.check_choice(box_rule, BOX_RULES, arg="box_rule")
  _, height, width, _ = images.shape
  check_box_room(height, width, 2 if box_rule == "exact" else 3,
                 mixer=f'cutmix (box_rule="{box_rule}")', why=(
                     "the box spans [c - cut//2, c + (cut+1)//2)"
                     if box_rule == "exact" else
                     "the box spans [c - cut//2, c + cut//2), empty unless "
                     "cut = floor(side·sqrt(1-λ)) >= 2"))
  if center is not None:
    center = check_center(center, batch_size, height, width)

  k_lam, k_index, k_center = jax.random.split(key, 3)
  lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)
  if center is None:
    center = draw_center(k_center, batch_size, height, width, lam_scope)

  box = box_from_center(center[:, 0], center[:, 1], cut_size(lam, height),
                        cut_size(lam, width), height, width, box_rule)
  mask = (~box_inside(box, height, width)).astype(jnp.float32)[..., None]
  if correct_lam:
    lam = box_area_lam(box, height, width)
  mixed = C.apply_mask(images, mask, index)
  aux = {"lam": lam, "index": index, "mask": mask, "box": box}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
