"""Attentive grid mixing (AttentiveMix, Walawalkar et al., ICASSP 2020,
arXiv 2003.13048), with OpenMixup's AttentiveMix+ semantics.

The per-cell scores are the paper's: the channel mean of a frozen, pretrained
network's last feature map (OpenMixup: a 7×7 ResNet-18 map), passed per call as
``scores`` or computed by a bound ``scorer`` function. Without either (plain
``get("attentivemix")``, a config) the cells are scored by the mean of the
model-free spectral-residual saliency of SaliencyMix, so the mixer works out of
the box and stays a pure function of its inputs.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C
from automix_jax.mixers import _saliencymix


def check_scorer(scorer: Any) -> Any:
  if scorer is not None and not callable(scorer):
    raise ValueError(
        "`scorer` must be a function images [B, H, W, C] -> scores [B, gh, "
        f"gw] (e.g. a frozen network's channel-mean feature map); got "
        f"{scorer!r}.")
  return scorer


def _check_top_k(top_k: Any, n: int | None = None) -> int:
  bound = "gh·gw" if n is None else f"gh·gw = {n}"
  if (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or
      top_k < 0 or (n is not None and top_k > n)):
    raise ValueError(
        f"`top_k` must be a static int in [0, {bound}]; got {top_k!r}.")
  return int(top_k)


CHECKS = {"scorer": check_scorer, "top_k": _check_top_k,
          "grid_size": lambda v: C.check_grid(v, arg="grid_size")}


def saliency_scores(images: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Mean spectral-residual saliency per cell: ``[B, H, W, C]`` ->
  ``[B, gh, gw]`` (the default scorer; no gradient flows through it)."""
  sal = _saliencymix.spectral_residual_saliency(jax.lax.stop_gradient(images))
  return C.block_mean(sal, *grid)


def _default_scores(images: jax.Array, scorer: Any, grid_size: Any
                    ) -> jax.Array:
  """Scores from ``scorer``, or the saliency scores on ``grid_size``."""
  if scorer is not None:
    return check_scorer(scorer)(jax.lax.stop_gradient(images))
  height, width = images.shape[1:3]
  if grid_size is None:
    grid = (C.default_cells(height), C.default_cells(width))
  else:
    grid = C.check_grid(grid_size, arg="grid_size")
  if height % grid[0] or width % grid[1] or grid[0] * grid[1] < 2:
    raise ValueError(
        f"the score grid (gh, gw) = {grid} must split the image (H, W) = "
        f"{(height, width)} into at least 2 equal cells; pass `grid_size` "
        "that divides the image, or `scores`.")
  return saliency_scores(images, grid)


def _check_scores(scores: Any, batch_size: int, grid_size: Any
                  ) -> tuple[int, int]:
  shape = getattr(scores, "shape", None)
  dtype = getattr(scores, "dtype", None)
  if shape is None or len(shape) != 3 or shape[0] != batch_size:
    got = (f"shape {tuple(shape)}" if shape is not None
           else type(scores).__name__)
    raise ValueError(
        f"`scores` must be a per-cell score map of shape [B, gh, gw] with "
        f"B = {batch_size}; got {got}.")
  if not (jnp.issubdtype(dtype, jnp.floating) or
          jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"`scores` must be real-valued; got dtype {dtype}.")
  grid = (int(shape[1]), int(shape[2]))
  if grid_size is not None:
    if isinstance(grid_size, numbers.Integral):
      grid_size = (grid_size, grid_size)
    if tuple(grid_size) != grid:
      raise ValueError(
          f"`grid_size` {grid_size!r} does not match `scores` of grid {grid}; "
          "pass scores of shape [B, gh, gw] = [B, *grid_size] or leave "
          "`grid_size` as None.")
  return grid


def attentive_grid_mix(key: jax.Array, images: jax.Array, labels: jax.Array,
                       *, scores: Any = None, scorer: Any = None,
                       grid_size: Any = None,
                       top_k: int | None = None, alpha: float = 2.0,
                       lam_scope: str = "batch", partner: str = "permutation",
                       lam: Any = None, index: Any = None,
                       data_format: Any = None
                       ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """AttentiveMix+: each sample keeps its own ``k`` top-scored grid cells.

  The image is cut into a ``gh × gw`` grid of equal pixel blocks. Sample ``i``
  keeps the ``k`` cells with the largest ``scores[i]`` (its *own* scores) and
  takes every other cell from ``images[index[i]]``; as in OpenMixup's
  ``attentivemix``, ``k = int(gh·gw·λ)`` with ``λ ~ Beta(α, α)`` unless ``top_k``
  fixes it, and the returned ``λ = k / (gh·gw)`` exactly. Ties among scores go
  to the lower flat cell index.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating; ``H % gh == 0`` and ``W % gw == 0``.
    labels: ``[B, K]`` dense targets.
    scores: optional ``[B, gh, gw]`` real per-cell scores, larger = more
      important (per call; e.g. a frozen pretrained network's channel-mean
      feature map, as in the paper).
    scorer: optional function ``images [B, H, W, C] -> scores [B, gh, gw]``
      used when ``scores`` is None (bind it with ``get``); it sees the images
      under ``stop_gradient``. With neither, cells are scored by their mean
      spectral-residual saliency (``saliency_scores``, model-free).
    grid_size: optional ``g`` or ``(gh, gw)``; checked against ``scores``.
      For the saliency default it sets the grid (default 4 cells per side,
      or 3 or 2 where 4 does not divide the side).
    top_k: optional static number of kept cells in ``[0, gh·gw]``; then λ is
      not drawn and ``lam`` must be None.
    alpha: Beta(alpha, alpha) concentration (OpenMixup's AttentiveMix+ uses 2).
    lam_scope: ``"batch"`` (one λ, the reference) or ``"sample"`` (one λ,
      hence one ``k``, per sample).
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    lam: optional explicit λ, scalar or ``[B]``; ``k = int(gh·gw·λ)``.
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
  if scores is None:
    scores = _default_scores(images, scorer, grid_size)
  gh, gw = _check_scores(scores, batch_size, grid_size)
  height, width = images.shape[1:3]
  if height % gh or width % gw:
    raise ValueError(
        f"the score grid (gh, gw) = {(gh, gw)} must divide the image size "
        f"(H, W) = {(height, width)} so that every cell is a whole pixel "
        "block; resize `scores` or `images`.")
  n = gh * gw
  if top_k is not None:
    top_k = _check_top_k(top_k, n)
    if lam is not None:
      raise ValueError("give at most one of `top_k` and `lam`.")
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  k_lam, k_index = jax.random.split(key)
  index = C.resolve_index(k_index, batch_size, partner, index)
  if top_k is None:
    lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
    # int() of a float32 product: snap values a couple of ulps below an
    # integer (0.7 * 10 = 6.9999998) up, as float64 would.
    guard = min(2.0 * n * float(np.finfo(np.float32).eps), 0.25)
    k = jnp.clip(jnp.floor(lam * n + guard), 0, n)
  else:
    k = jnp.full((batch_size,), top_k, jnp.float32)

  # Top-k with a traced k: rank each cell (0 = highest score), keep rank < k.
  flat = scores.reshape(batch_size, n)
  order = jnp.argsort(flat, axis=-1, stable=True, descending=True)
  rank = jnp.argsort(order, axis=-1)
  cells = (rank < k[:, None]).astype(jnp.float32).reshape(batch_size, gh, gw)
  mask = C.cells_to_mask(cells, height, width)

  lam = C.mask_to_lam(mask)
  mixed = C.apply_mask(images, mask, index)
  aux = {"lam": lam, "index": index, "mask": mask}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
