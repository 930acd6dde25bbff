"""MixUp (Zhang et al., ICLR 2018, arXiv 1710.09412)."""

from __future__ import annotations

from typing import Any

import jax

from automix_jax.mixers import _common as C


def mixup(key: jax.Array, images: jax.Array, labels: jax.Array, *,
          alpha: float = 1.0, lam_scope: str = "batch",
          partner: str = "permutation", lam: Any = None, index: Any = None,
          data_format: Any = None
          ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """MixUp: ``x̃ = λ x + (1 - λ) x[index]``, ``ỹ = λ y + (1 - λ) y[index]``.

  Args:
    key: PRNG key.
    images: ``[B, ...]`` floating images of any rank >= 2 (``[B, H, W, C]``,
      sequences ``[B, L, C]``, volumes ``[B, T, H, W, C]``).
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration (OpenMixup's CIFAR default is 1).
    lam_scope: ``"batch"`` (one λ, OpenMixup / timm batch mode) or
      ``"sample"`` (one λ per sample, timm elem mode).
    partner: ``"permutation"``, ``"flip"`` (timm) or ``"roll"`` (torchvision).
    lam: optional explicit λ, scalar or ``[B]``; used as is.
    index: optional explicit partner indices ``[B]``; used as is.
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it). ``None``
      refuses a batch that looks NCHW (``automix_jax/mixers/_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)`` with ``aux = {'lam': [B] float32,
    'index': [B] int32}``.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels, ranks=(2, 3, 4, 5))
  alpha = C.check_alpha(alpha)
  k_lam, k_index = jax.random.split(key)
  lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)
  mixed = C.blend(images, C.take(images, index), C.per_sample(lam, images.ndim))
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index),
                          {"lam": lam, "index": index}, data_format)
