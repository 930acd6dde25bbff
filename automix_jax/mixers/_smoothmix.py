"""SmoothMix (Lee et al., CVPR Workshops 2020): a soft Gaussian blend mask."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _common as C


def gaussian_mask(centre: jax.Array, sigma: jax.Array, height: int,
                  width: int) -> jax.Array:
  """``k = exp(-((y - cy)² / σy² + (x - cx)² / σx²) / 2)`` as ``[m, H, W]``.

  Args:
    centre: ``[m, 2]`` (cy, cx) in pixel coordinates (pixel centres at integers).
    sigma: ``[m, 2]`` (σy, σx) in pixels.
    height, width: mask size.
  """
  ys = jnp.arange(height, dtype=jnp.float32)[None, :, None]
  xs = jnp.arange(width, dtype=jnp.float32)[None, None, :]
  dy = (ys - centre[:, 0, None, None]) / sigma[:, 0, None, None]
  dx = (xs - centre[:, 1, None, None]) / sigma[:, 1, None, None]
  return jnp.exp(-0.5 * (dy * dy + dx * dx))


def check_sigma_scope(sigma_scope: Any) -> tuple[float, float]:
  lo, hi = C.check_range(sigma_scope, arg="sigma_scope", high=float("inf"))
  if not lo > 0 or hi == float("inf"):
    raise ValueError(
        f"`sigma_scope` must be a finite pair (lo, hi) with 0 < lo <= hi "
        f"(σ as a fraction of the image side); got {tuple(sigma_scope)}.")
  return lo, hi


CHECKS = {"sigma_scope": check_sigma_scope}


def smoothmix(key: jax.Array, images: jax.Array, labels: jax.Array, *,
              alpha: float = 0.2, sigma_scope: Any = (0.25, 0.5),
              lam_scope: str = "batch", partner: str = "permutation",
              index: Any = None, data_format: Any = None
              ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """SmoothMix: ``x̃ = (1 - k) ⊙ x + k ⊙ x[index]`` with a Gaussian ``k``.

  ``k`` is a Gaussian bump of the partner: ``σ = s · H`` (``s · W`` across)
  with ``s ~ U(sigma_scope)``, i.e. OpenMixup's ``σ = (U/4 + 0.25) · H`` by
  default, and a centre uniform over the image (OpenMixup draws it on a
  half-pixel lattice over the same range by rolling a ``2H`` grid). The
  reference handles square images only; here σ scales with each side.

  Label convention (a deliberate fix): ``aux['lam']`` is the *own* image's
  mean weight ``mean(1 - k)``, so ``ỹ = λ y + (1 - λ) y[index]`` matches the
  pixels. OpenMixup's ``smoothmix`` returns ``mean(k)`` — the partner's share —
  as the weight of the own label, which swaps the two label weights.

  As in OpenMixup the mask does not depend on a Beta draw: ``alpha`` is
  validated for a uniform config surface but otherwise unused (the reference
  draws λ and discards it), so there is no ``lam`` override.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating.
    labels: ``[B, K]`` dense targets.
    alpha: accepted for config compatibility (OpenMixup's CIFAR value 0.2);
      must be > 0; unused.
    sigma_scope: ``(lo, hi)`` with ``0 < lo <= hi``: σ as a fraction of the
      image side is drawn from U(lo, hi).
    lam_scope: ``"batch"``: one centre and σ for the batch (the reference);
      ``"sample"``: one each.
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    index: optional explicit partner indices ``[B]``.
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it). ``None``
      refuses a batch that looks NCHW (``automix_jax/mixers/_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)`` with ``aux = {'lam': [B] float32,
    'index': [B] int32, 'mask': [B, H, W, 1] float32 own weight 1 - k}``.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels, ranks=(4,))
  C.check_alpha(alpha)
  lo, hi = check_sigma_scope(sigma_scope)
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  k_index, k_centre, k_sigma = jax.random.split(key, 3)
  index = C.resolve_index(k_index, batch_size, partner, index)

  height, width = images.shape[1:3]
  num = 1 if lam_scope == "batch" else batch_size
  size = jnp.asarray([height, width], jnp.float32)
  centre = jax.random.uniform(k_centre, (num, 2)) * size - 0.5
  scale = jax.random.uniform(k_sigma, (num, 1), minval=lo, maxval=hi)
  k = gaussian_mask(centre, scale * size, height, width)
  own = jnp.broadcast_to(1.0 - k, (batch_size, height, width))[..., None]

  lam = C.mask_to_lam(own)
  mixed = C.apply_mask(images, own, index)
  aux = {"lam": lam, "index": index, "mask": own}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
