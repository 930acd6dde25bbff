"""MaskMix, the image mixer of MixPro (Zhao et al., ICLR 2023, arXiv 2304.12043).

A coarse grid of equal cells; each sample keeps a random subset of its own
cells and takes the others from its partner.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C


CHECKS = {"mask_patch": lambda v: C.check_positive_int(v, arg="mask_patch"),
          "grid": lambda v: C.check_grid(v, arg="grid")}


def _grid(height: int, width: int, mask_patch: Any, grid: Any
          ) -> tuple[int, int]:
  """``(gh, gw)`` from ``grid``, ``ceil(side / mask_patch)`` or the default."""
  if grid is not None:
    gh, gw = C.check_grid(grid, arg="grid")
    source = f"`grid` = {(gh, gw)}"
  elif mask_patch is not None:
    patch = C.check_positive_int(mask_patch, arg="mask_patch")
    gh, gw = math.ceil(height / patch), math.ceil(width / patch)
    source = f"`mask_patch` = {patch} (grid ceil(side / mask_patch) = {(gh, gw)})"
  else:
    gh, gw = C.default_cells(height), C.default_cells(width)
    source = f"the default grid {(gh, gw)} (4, 3 or 2 cells per side)"
  if height % gh or width % gw:
    raise ValueError(
        f"{source} must split the image (H, W) = {(height, width)} into equal "
        "cells (H % gh == 0 and W % gw == 0), so that λ = kept cells / cells "
        "is the exact pixel fraction; pass a `grid` that divides the image.")
  if gh * gw < 2:
    raise ValueError(
        f"{source} gives a single cell for the image (H, W) = "
        f"{(height, width)}, so maskmix would never mix (λ = 1 or a whole-"
        "image swap); pass `grid` with at least 2 cells (e.g. grid=4) or a "
        "smaller `mask_patch`.")
  return gh, gw


def maskmix(key: jax.Array, images: jax.Array, labels: jax.Array, *,
            alpha: float = 1.0, mask_patch: Any = None, grid: Any = None,
            lam_scope: str = "batch", partner: str = "permutation",
            lam: Any = None, index: Any = None,
            data_format: Any = None
            ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """MaskMix: keep ``ceil(n·λ)`` random cells of an ``n = gh·gw`` cell grid.

  λ is corrected to ``kept / n``. MixPro's grid has ``ceil(H / 64)`` rows (its
  64-px ``mask_patch``: 4×4 at 224 px, but a single cell, i.e. no mixing, on
  32-px CIFAR). The default here is a 4×4 grid at every size (MixPro's 224-px
  grid; 8-px cells at 32 px), or 3 or 2 cells along a side that 4 does not
  divide; ``mask_patch=64`` gives MixPro's rule. Deviation: cells are equal
  blocks ``H/gh × W/gw`` that tile the image (MixPro cuts 64-px cells and crops
  the overhanging last row and column, so its corrected λ is not the pixel
  fraction); a grid that does not divide the image, or a single cell, is an
  error.

  Cells are chosen by ranking uniform noise, so the kept count may be traced.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating.
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration (MixPro: 1).
    mask_patch: optional cell size in pixels, giving ``ceil(H / mask_patch)``
      × ``ceil(W / mask_patch)`` cells (MixPro: 64); ignored when ``grid`` is
      given.
    grid: optional ``n`` or ``(gh, gw)`` cells; overrides ``mask_patch``. With
      neither, 4 cells per side (3 or 2 where 4 does not divide the side).
    lam_scope: ``"batch"`` (one λ and one cell layout for the batch) or
      ``"sample"`` (one each).
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    lam: optional explicit λ, scalar or ``[B]`` (per-sample counts are honoured
      with either scope).
    index: optional explicit partner indices ``[B]``.
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it). ``None``
      refuses a batch that looks NCHW (``automix_jax/mixers/_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)`` with ``aux = {'lam': [B] float32,
    'index': [B] int32, 'mask': [B, H, W, 1] float32}``.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels, ranks=(4,))
  alpha = C.check_alpha(alpha)
  height, width = images.shape[1:3]
  gh, gw = _grid(height, width, mask_patch, grid)
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  k_lam, k_index, k_cells = jax.random.split(key, 3)
  lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)

  n = gh * gw
  # ceil of a float32 product: 0.1 * 10 = 1.0000000149 must count 1, not 2.
  guard = min(2.0 * n * float(np.finfo(np.float32).eps), 0.25)
  count = jnp.clip(jnp.ceil(lam * n - guard), 0, n)
  # A uniformly random subset of `count` cells: give the cells random ranks
  # (the argsort of iid uniforms is a uniform permutation) and keep the cells
  # ranked below the count.
  num = 1 if lam_scope == "batch" else batch_size
  rank = jnp.argsort(jax.random.uniform(k_cells, (num, n)), axis=-1)
  cells = (rank < count[:, None]).astype(jnp.float32).reshape(-1, gh, gw)
  mask = C.cells_to_mask(cells, height, width)

  lam = C.mask_to_lam(mask)
  mixed = C.apply_mask(images, mask, index)
  aux = {"lam": lam, "index": index, "mask": mask}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
