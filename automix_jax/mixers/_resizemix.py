"""ResizeMix (Qin et al., arXiv 2012.11101), with OpenMixup's sampling of τ.

The whole partner image is shrunk (nearest neighbour) into a box of side
``int(S τ)`` at a random centre of the own image, so the partner's object is
kept rather than cropped. λ is the own image's remaining area.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C
from automix_jax.mixers import _cutmix as B_

Array = jax.Array


@functools.lru_cache(maxsize=None)
def _linear_thresholds(size: int) -> np.ndarray:
  """``U[c-1]`` = the smallest float32 ``>= c / size`` for c = 1..size."""
  out = np.empty((size,), np.float32)
  for c in range(1, size + 1):
    t = Fraction(c, size)
    f = np.float32(float(t))
    while Fraction(float(f)) < t:
      f = np.nextafter(f, np.float32(np.inf), dtype=np.float32)
    while Fraction(float(np.nextafter(f, np.float32(-np.inf),
                                      dtype=np.float32))) >= t:
      f = np.nextafter(f, np.float32(-np.inf), dtype=np.float32)
    out[c - 1] = f
  return out


def scaled_size(tau: Array, size: int) -> Array:
  """``floor(size * tau)`` as ``[B]`` int32, exact for float32 ``tau`` in [0, 1].

  Counts the ``c`` with ``tau >= c / size`` against host-computed float32
  thresholds, so it agrees with OpenMixup's float64 ``int(S * tao)`` where a
  float32 product could round up across an integer (e.g. τ = 0.3, S = 10).
  """
  thresholds = jnp.asarray(_linear_thresholds(int(size)))
  return jnp.sum(tau.astype(jnp.float32)[:, None] >= thresholds[None, :],
                 axis=1, dtype=jnp.int32)


def draw_tau(key: Array, n: int, *, alpha: float, scope: tuple[float, float],
             use_alpha: bool) -> Array:
  """τ ``[n]`` float32 as OpenMixup draws it.

  ``use_alpha=True``: τ ~ Beta(α, α); a draw outside ``scope`` is replaced by a
  fresh τ ~ U(scope) (OpenMixup's rule; not a clip, and not a rejection loop).
  ``use_alpha=False``: τ ~ U(scope), the ResizeMix paper's setting.
  """
  k_beta, k_unif = jax.random.split(key)
  lo, hi = scope
  unif = jax.random.uniform(k_unif, (n,), jnp.float32, lo, hi)
  if not use_alpha:
    return unif
  beta = jax.random.beta(k_beta, alpha, alpha, (n,), dtype=jnp.float32)
  return jnp.where((beta < lo) | (beta > hi), unif, beta)


NEAREST_RULES = ("exact", "torch")
CHECKS = {"scope": functools.partial(C.check_range, arg="scope"),
          "use_alpha": functools.partial(C.check_static_bool, arg="use_alpha"),
          "nearest": C.choice_check(NEAREST_RULES, "nearest")}


def nearest_source(box: Array, height: int, width: int, rule: str = "exact"
                   ) -> tuple[Array, Array]:
  """Source rows ``[B, H]`` and columns ``[B, W]`` of a nearest resize into ``box``.

  Output row ``i`` of the box ``[y1, y2)`` (height ``h = y2 - y1``) reads
  partner row

  * ``rule="exact"``: ``floor((i - y1) H / h)`` in exact integer arithmetic;
  * ``rule="torch"``: ``min(floor(f32(i - y1) * (f32(H) / f32(h))), H - 1)``,
    PyTorch's legacy ``F.interpolate(mode="nearest")`` (OpenMixup) bit for bit.
    Its float32 scale rounds, so for some sizes (e.g. H = 224, h = 46) a row
    reads the pixel one before the exact one.

  Columns likewise. Positions outside the box get clipped, unused indices.
  """
  def axis_source(lo, hi, size):
    pos = jnp.arange(size, dtype=jnp.int32)[None, :] - lo[:, None]
    extent = jnp.maximum(hi - lo, 1)[:, None]  # empty box: masked out anyway
    if rule == "exact":
      src = (pos * size) // extent
    else:
      scale = jnp.float32(size) / extent.astype(jnp.float32)
      src = jnp.floor(pos.astype(jnp.float32) * scale).astype(jnp.int32)
    return jnp.clip(src, 0, size - 1)
  return (axis_source(box[:, 0], box[:, 1], height),
          axis_source(box[:, 2], box[:, 3], width))


def resizemix(key: Array, images: Array, labels: Array, *, alpha: float = 1.0,
              scope: tuple[float, float] = (0.1, 0.8), use_alpha: bool = True,
              lam_scope: str = "batch", partner: str = "permutation",
              tau: Any = None, index: Any = None, center: Any = None,
              nearest: str = "exact", data_format: Any = None
              ) -> tuple[Array, Array, dict[str, Array]]:
  """ResizeMix: the partner image, resized, pasted into a box of the own image.

  Semantics of OpenMixup's ``resizemix`` (github.com/Westlake-AI/openmixup,
  ``openmixup/models/utils/augments/resizemix.py``): box side ``int(S τ)`` per axis, centre uniform on the pixel grid, half
  side ``cut // 2`` on both sides, clipped to the image; the *whole* partner is
  resized (nearest) to the clipped box; ``λ = 1 - box_area / (H W)``.

  With ``lam_scope="sample"`` every sample has its own τ, centre and box, so the
  resize target differs per sample. It is done as a gather with static shapes:
  inside the box, ``out[b, i, j] = x[index[b], r(i), c(j)]`` with
  ``r(i) = floor((i - y1) H / (y2 - y1))`` (``nearest_source``).

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration for τ when ``use_alpha``.
    scope: ``(lo, hi)`` in [0, 1], the allowed range of τ.
    use_alpha: draw τ from Beta(α, α), redrawn from U(scope) when outside it
      (OpenMixup's CIFAR config); False: τ ~ U(scope) (the paper).
    lam_scope: ``"batch"`` (one τ and box for the batch, OpenMixup) or
      ``"sample"`` (one each).
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    tau: optional explicit side ratio, scalar or ``[B]`` in [0, 1], used as is
      (OpenMixup clips a given ``lam`` into ``scope``; clip it yourself).
    index: optional explicit partner indices ``[B]``.
    center: optional integer box centre ``(cy, cx)``, ``[2]`` or ``[B, 2]``.
    nearest: ``"exact"`` (integer source rule, default) or ``"torch"``
      (PyTorch's float32 rule, to match OpenMixup bit for bit); see
      ``nearest_source``.
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it). ``None``
      refuses a batch that looks NCHW (``automix_jax/mixers/_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux`` holds ``lam`` ``[B]``,
    ``index`` ``[B]``, ``mask`` ``[B, H, W, 1]`` float32 (1 where the own
    pixel is kept, 0 inside the box), ``box`` ``[B, 4]`` int32
    ``(y1, y2, x1, x2)`` and ``tau`` ``[B]`` float32.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels)
  alpha = C.check_alpha(alpha)
  scope = C.check_range(scope, arg="scope")
  use_alpha = C.check_static_bool(use_alpha, arg="use_alpha")
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  C.check_choice(nearest, NEAREST_RULES, arg="nearest")
  _, height, width, _ = images.shape
  # The box spans [c - cut//2, c + cut//2) with cut = floor(side·τ): it is
  # empty unless cut >= 2, i.e. side·τ >= 2 for the largest τ that can occur.
  tau_max = 1.0 if tau is not None else scope[1]
  if int(min(height, width) * tau_max + 1e-9) < 2:
    B_.check_box_room(
        height, width, math.ceil(2 / tau_max - 1e-9) if tau_max > 0 else
        10 ** 9, mixer="resizemix", why=(
            f"its box side floor(side·τ) with τ <= {tau_max} stays below "
            "the 2 pixels a box [c - cut//2, c + cut//2) needs"))
  if tau is not None:
    tau = C.check_lam(tau, batch_size, arg="tau")
  if center is not None:
    center = B_.check_center(center, batch_size, height, width)

  k_tau, k_index, k_center = jax.random.split(key, 3)
  if tau is None:
    n = 1 if lam_scope == "batch" else batch_size
    tau = jnp.broadcast_to(
        draw_tau(k_tau, n, alpha=alpha, scope=scope, use_alpha=use_alpha),
        (batch_size,))
  index = C.resolve_index(k_index, batch_size, partner, index)
  if center is None:
    center = B_.draw_center(k_center, batch_size, height, width, lam_scope)

  box = B_.box_from_center(center[:, 0], center[:, 1],
                           scaled_size(tau, height), scaled_size(tau, width),
                           height, width, "symmetric")
  inside = B_.box_inside(box, height, width)[..., None]
  rows, cols = nearest_source(box, height, width, nearest)
  # resized[b, i, j] = partner[b, rows[b, i], cols[b, j]]: two batched
  # takes (a vmap would need rows/cols sharded like the images).
  resized = jnp.take_along_axis(C.take(images, index),
                                rows[:, :, None, None], axis=1)
  resized = jnp.take_along_axis(resized, cols[:, None, :, None], axis=2)
  mixed = jnp.where(inside, resized, images)
  lam = B_.box_area_lam(box, height, width)
  aux = {"lam": lam, "index": index,
         "mask": (~inside).astype(jnp.float32), "box": box, "tau": tau}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
