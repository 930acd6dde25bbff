"""Summary statistics of learned mixing masks, cheap enough for every train step.

Used inside the jitted AutoMix / AdAutoMix steps (logged as ``train/mask_*``) and
by ``scripts/visualize_masks.py`` on test images. They show the two ways a learned
generator can stop learning: *saturation* (the sigmoid / softmax that makes the
mask is flat where every weight is within ``saturation`` of 0 or 1, so little
gradient reaches the generator) and *collapse to whole-image picks* (one source
covers almost the whole mixed image, i.e. the mix degenerates to choosing an
image).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def mask_statistics(masks: Any, lam: Any, *, saturation: float = 0.01,
                    whole_image_area: float = 0.9, xp: Any = jnp
                    ) -> dict[str, Any]:
  """Scalars describing N-way masks ``[B, H, W, N]`` (summing to 1 over N).

  Two-way masks (AutoMix's own weight ``m``) are passed as ``[m, 1 - m]``.
  Every value is a scalar (a mean over samples or pixels):

  * ``dominance``: mean over pixels of ``max_i M_i``; 1/N for a uniform blend,
    1 for a hard per-pixel pick.
  * ``spatial_std``: std over (H, W) of each ``M_i``, averaged over samples
    and i; 0 when every mask is constant over the image (a global blend or a
    whole-image pick).
  * ``saturated_frac``: fraction of pixels with ``max_i M_i > 1 - saturation``,
    i.e. every weight within ``saturation`` of 0 or 1 (two-way: ``m < 0.01``
    or ``m > 0.99``), where the sigmoid / softmax passes little gradient.
  * ``whole_image_frac``: fraction of samples in which one source covers more
    than ``whole_image_area`` of the mixed image (the mean of its mask).
  * ``area_lam_gap``: mean ``|area_i - λ_i|``, how far the pixel shares are from
    the label weights (0 when the label describes the pixels).

  Args:
    masks: ``[B, H, W, N]`` float, N >= 2.
    lam: ``[N]`` or ``[B, N]`` label weights.
    saturation: threshold of ``saturated_frac``, in (0, 0.5).
    whole_image_area: threshold of ``whole_image_frac``, in (0.5, 1).
    xp: ``jax.numpy`` (default; float32, no gradient, usable under ``jit``) or
      ``numpy`` (in the input's precision, e.g. float64 for offline analysis).

  Returns:
    ``{"dominance", "spatial_std", "saturated_frac", "whole_image_frac",
    "area_lam_gap"}``, scalars of ``xp``.
  """
  shape = tuple(getattr(masks, "shape", ()))
  if len(shape) != 4 or shape[-1] < 2:
    raise ValueError(f"`masks` must be [B, H, W, N] with N >= 2 (pass a two-way "
                     f"own weight m as [m, 1 - m]); got shape {shape}.")
  b, n = shape[0], shape[-1]
  lam_shape = tuple(getattr(lam, "shape", ()))
  if lam_shape not in ((n,), (b, n)):
    raise ValueError(f"`lam` must be [N] = ({n},) or [B, N] = ({b}, {n}); got "
                     f"{lam_shape}.")
  if not 0.0 < saturation < 0.5:
    raise ValueError(f"`saturation` must be in (0, 0.5); got {saturation!r}.")
  if not 0.5 < whole_image_area < 1.0:
    raise ValueError(f"`whole_image_area` must be in (0.5, 1); got "
                     f"{whole_image_area!r}.")
  masks, lam = xp.asarray(masks), xp.asarray(lam)
  if xp is jnp:  # Statistics only: no gradient flows through them.
    masks = jax.lax.stop_gradient(masks.astype(jnp.float32))
    lam = jax.lax.stop_gradient(lam.astype(jnp.float32))
  lam = xp.broadcast_to(lam, (b, n))
  top = xp.max(masks, axis=-1)                                   # [B, H, W]
  area = xp.mean(masks, axis=(1, 2))                             # [B, N]
  return {
      "dominance": xp.mean(top),
      "spatial_std": xp.mean(xp.std(masks, axis=(1, 2))),
      "saturated_frac": xp.mean((top > 1.0 - saturation).astype(masks.dtype)),
      "whole_image_frac": xp.mean(
          (xp.max(area, axis=-1) > whole_image_area).astype(masks.dtype)),
      "area_lam_gap": xp.mean(xp.abs(area - lam)),
  }
