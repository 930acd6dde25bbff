"""Shared helpers of the learned generators and `apply_masks` (masks -> mixer contract).

Kept free of optax/tfds so that ``automix_jax.generators`` imports with flax alone.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

UPSAMPLE_MODES = ("nearest", "bilinear")

# Both reference generators initialise every 1x1 conv N(0, 0.01) with bias 0
# (OpenMixup `init_weights(init_linear='normal', std=0.01)`).
KERNEL_INIT = jax.nn.initializers.normal(stddev=0.01)
BIAS_INIT = jax.nn.initializers.zeros


def check_features(features: Any, *, arg: str = "features") -> tuple[int, ...]:
  """Raises unless ``features`` is a floating ``[B, h, w, C]`` array."""
  shape = getattr(features, "shape", None)
  dtype = getattr(features, "dtype", None)
  if shape is None or dtype is None:
    raise ValueError(f"`{arg}` must be an array of shape [B, h, w, C]; got "
                     f"{type(features).__name__}.")
  if len(shape) != 4:
    raise ValueError(f"`{arg}` must be an NHWC feature map [B, h, w, C] (e.g. the "
                     f"stage-3 output of the backbone); got shape {tuple(shape)}.")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"`{arg}` must be floating point; got dtype {dtype}.")
  if min(shape) < 1:
    raise ValueError(f"`{arg}` has an empty dimension: {tuple(shape)}.")
  return tuple(int(s) for s in shape)


def check_scale(scale: Any, *, arg: str = "scale") -> int:
  if (isinstance(scale, bool) or not isinstance(scale, numbers.Integral)
      or scale < 1):
    raise ValueError(f"`{arg}` must be a positive integer upsampling factor "
                     f"(4 for 32-px CIFAR stage-3 maps, 16 for 224 px); got "
                     f"{scale!r}.")
  return int(scale)


def check_upsample(mode: Any) -> str:
  if mode not in UPSAMPLE_MODES:
    raise ValueError(f"`upsample` must be one of {UPSAMPLE_MODES}; got {mode!r}.")
  return mode


def check_reduction(reduction: Any, channels: int) -> int:
  if (isinstance(reduction, bool) or not isinstance(reduction, numbers.Integral)
      or reduction < 1):
    raise ValueError(f"`reduction` must be a positive integer (C -> C/reduction "
                     f"query/key channels); got {reduction!r}.")
  return max(channels // int(reduction), 1)


def check_image_size(image_size: Optional[Sequence[int]], h: int, w: int,
                     scale: int) -> None:
  """Raises unless ``scale`` maps the ``h x w`` feature map onto ``image_size``."""
  if image_size is None:
    return
  try:
    ih, iw = (int(s) for s in image_size)
  except (TypeError, ValueError):
    raise ValueError(f"`image_size` must be a pair (H, W); got {image_size!r}."
                     ) from None
  if (h * scale, w * scale) != (ih, iw):
    hint = (f" (scale={ih // h} would fit)" if ih % h == 0 and iw % w == 0
            and ih // h == iw // w else "")
    raise ValueError(
        f"`scale`={scale} maps the {h}x{w} feature map to "
        f"{h * scale}x{w * scale}, but the images are {ih}x{iw}; the mask must "
        f"cover the image exactly{hint}.")


def check_index_vector(index: Any, batch_size: int, *, arg: str) -> None:
  shape = getattr(index, "shape", None)
  if shape is None or tuple(shape) != (batch_size,):
    raise ValueError(f"`{arg}` must be an integer array of shape [B] = "
                     f"({batch_size},); got "
                     f"{tuple(shape) if shape is not None else type(index).__name__}.")
  if not jnp.issubdtype(index.dtype, jnp.integer):
    raise ValueError(f"`{arg}` must be integer; got dtype {index.dtype}.")
  if not isinstance(index, jax.core.Tracer):
    idx = np.asarray(index)
    if idx.min() < 0 or idx.max() >= batch_size:
      raise ValueError(f"`{arg}` values must lie in [0, {batch_size}); got "
                       f"[{idx.min()}, {idx.max()}].")


def upsample(x: jax.Array, scale: int, mode: str) -> jax.Array:
  """``[B, h, w, C]`` -> ``[B, h*scale, w*scale, C]``.

  ``nearest`` is a block repeat (PyTorch's legacy floor-nearest for an integer
  factor); ``bilinear`` is ``jax.image.resize``, whose half-pixel centres with edge
  clamping equal ``F.interpolate(..., mode='bilinear', align_corners=False)`` for
  upsampling (verified to 4e-7, reference doc §7.3).
  """
  if scale == 1:
    return x
  if mode == "nearest":
    return jnp.repeat(jnp.repeat(x, scale, axis=1), scale, axis=2)
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, h * scale, w * scale, c), method="bilinear",
                          antialias=False)


def flatten_hw(x: jax.Array) -> jax.Array:
  """``[..., h, w, C]`` -> ``[..., h*w, C]`` in row-major (h, w) order."""
  return x.reshape(x.shape[:-3] + (x.shape[-3] * x.shape[-2], x.shape[-1]))


# ----------------------------------------------------------------------------
# Masks -> mixed batch, in the static mixers' contract.
# ----------------------------------------------------------------------------


def _check_lam_nway(lam: Any, batch_size: int, n: int) -> jax.Array:
  shape = getattr(lam, "shape", None)
  if shape is None or tuple(shape) not in ((n,), (batch_size, n)):
    raise ValueError(f"`lam` must have shape [N] = ({n},) or [B, N] = "
                     f"({batch_size}, {n}) for N-way masks; got "
                     f"{tuple(shape) if shape is not None else type(lam).__name__}.")
  return jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (batch_size, n))


def _check_lam_2way(lam: Any, batch_size: int) -> jax.Array:
  if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
    lam = np.float32(lam)
  shape = getattr(lam, "shape", None)
  if shape is None or tuple(shape) not in ((), (batch_size,)):
    raise ValueError(f"`lam` must be a scalar or [B] = ({batch_size},) for "
                     f"two-way masks; got "
                     f"{tuple(shape) if shape is not None else type(lam).__name__}.")
  return jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (batch_size,))


def nway_labels(labels: jax.Array, lam: jax.Array, index: jax.Array
                ) -> jax.Array:
  """``Σ_i lam[b, i] * labels[index[b, i]]``: ``[B, K]`` from lam/index ``[B, N]``."""
  return jnp.einsum("bn,bnk->bk", lam.astype(jnp.float32),
                    labels[index].astype(jnp.float32)).astype(labels.dtype)


def nway_blend(images: jax.Array, weights: jax.Array, index: jax.Array
               ) -> jax.Array:
  """``Σ_i weights[:, i] ⊙ images[index[:, i]]``, summed in the order i = 0..N-1.

  Args:
    images: ``[B, H, W, C]``.
    weights: ``[B, N, H, W]`` per-pixel masks or ``[B, N]`` per-sample weights
      (plain N-way mixup).
    index: ``[B, N]`` int, the source sample of channel i.
  """
  out = None
  for i in range(index.shape[1]):
    w = weights[:, i]
    w = w[..., None] if w.ndim == 3 else w.reshape(-1, 1, 1, 1)
    term = w.astype(images.dtype) * images[index[:, i]]
    out = term if out is None else out + term
  return out


def apply_masks(images: Any, labels: Any, masks: Any, lam: Any, index: Any
                ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Mixes a batch under generator masks, returning the mixers' contract.

  Two-way (AutoMix, Liu et al., ECCV 2022, arXiv 2103.13027), ``index`` ``[B]``:
    ``masks`` ``[B, H, W, 1]`` is the weight of each sample's *own* image (for the
    :class:`PixelMixBlock` output ``s`` that is ``1 - s``); ``lam`` a scalar or
    ``[B]`` is the own-label weight. ``x̃ = m ⊙ x + (1 - m) ⊙ x[index]``.

  N-way (AdAutoMix, Qin et al., ICLR 2024, arXiv 2312.11954), ``index`` ``[B, N]``:
    ``masks`` ``[B, N, H, W]`` (channel i weights ``x[index[:, i]]``; the
    :class:`AdaptiveMask` output), ``lam`` ``[N]`` or ``[B, N]``.
    ``x̃ = Σ_i M_i ⊙ x[index[:, i]]``, ``ỹ = Σ_i λ_i y[index[:, i]]``.

  Labels are mixed with λ, not with the mask areas, as both reference methods do.

  Args:
    images: ``[B, H, W, C]`` floating.
    labels: ``[B, K]`` dense targets.
    masks: see above.
    lam: see above.
    index: ``[B]`` (two-way) or ``[B, N]`` (N-way) int.

  Returns:
    ``(mixed_images, mixed_labels, aux)``; two-way ``aux = {'mask': [B, H, W, 1],
    'lam': [B], 'index': [B]}``; N-way ``aux = {'mask': [B, H, W, N],
    'lam': [B, N], 'index': [B, N]}``.
  """
  from automix_jax.mixers import _common as mc  # jax + numpy only.
  batch_size = mc.check_batch(images, labels)
  _, h, w, _ = images.shape
  ishape = getattr(index, "shape", None)
  if ishape is None or len(ishape) not in (1, 2) or ishape[0] != batch_size:
    raise ValueError(f"`index` must be [B] (two-way) or [B, N] (N-way) with B = "
                     f"{batch_size}; got "
                     f"{tuple(ishape) if ishape is not None else type(index).__name__}.")
  if not jnp.issubdtype(index.dtype, jnp.integer):
    raise ValueError(f"`index` must be integer; got dtype {index.dtype}.")
  mshape = tuple(getattr(masks, "shape", ()))
  if len(ishape) == 1:
    if mshape != (batch_size, h, w, 1):
      raise ValueError(f"`masks` must be the own-image weight [B, H, W, 1] = "
                       f"{(batch_size, h, w, 1)} for two-way mixing; got {mshape}.")
    index = mc.check_index(index, batch_size)
    lam = _check_lam_2way(lam, batch_size)
    mixed = mc.apply_mask(images, masks, index)
    return mixed, mc.mix_labels(labels, lam, index), {
        "mask": masks.astype(jnp.float32), "lam": lam, "index": index}
  n = ishape[1]
  if n < 2:
    raise ValueError(f"`index` [B, N] needs N >= 2 sources; got N = {n}.")
  if mshape != (batch_size, n, h, w):
    raise ValueError(f"`masks` must be [B, N, H, W] = {(batch_size, n, h, w)} for "
                     f"N-way mixing; got {mshape}.")
  lam = _check_lam_nway(lam, batch_size, n)
  index = jnp.asarray(index, jnp.int32)
  mixed = nway_blend(images, masks, index)
  return mixed, nway_labels(labels, lam, index), {
      "mask": jnp.moveaxis(masks, 1, -1).astype(jnp.float32), "lam": lam,
      "index": index}
