"""Shared helpers of the learned generators and `apply_masks` (masks -> mixer contract).

Kept free of optax/tfds so that ``automix_jax.generators`` imports with flax alone.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from automix_jax.mixers import _common as mc  # jax + numpy only.
# The blend lives with the mixers (Co-Mixup uses it); re-exported here.
from automix_jax.mixers._common import nway_blend  # noqa: F401

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
  if shape[2] == shape[3] and shape[1] > 4 * shape[3]:
    raise ValueError(
        f"`{arg}` of shape {tuple(shape)} looks channels-first (NCHW [B, C, h, "
        f"w] with C = {shape[1]}); the generators take NHWC [B, h, w, C] "
        f"feature maps: pass `jnp.moveaxis({arg}, 1, -1)`.")
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
        f"cover the image exactly{hint}. (Features must be NHWC [B, h, w, C]; "
        f"move the channels of an NCHW map last with jnp.moveaxis(x, 1, -1).)")


def check_logit_bound(bound: Any, *, arg: str = "logit_bound"
                      ) -> Optional[float]:
  """None (off) or a finite number > 0."""
  if bound is None:
    return None
  if (isinstance(bound, bool) or not isinstance(bound, numbers.Real)
      or not math.isfinite(bound) or bound <= 0):
    raise ValueError(f"`{arg}` must be None (off) or a finite number > 0, the "
                     f"largest |logit| before the sigmoid / softmax (e.g. 6.0); "
                     f"got {bound!r}.")
  return float(bound)


def bound_logits(z: jax.Array, bound: Optional[float]) -> jax.Array:
  """Soft-clips mask logits to ``(-bound, bound)``: ``z / sqrt(1 + (z/b)^2)``.

  An opt-in guard against a saturated sigmoid / softmax, whose gradient is
  (numerically) zero for large logits so that the generator stops learning.
  Bounded logits keep every mask weight away from 0 and 1 (``sigmoid(±b)``), so
  the sigmoid's own derivative is at least ``sigmoid'(b)``; the soft clip's
  derivative ``(1 + (z/b)^2)^(-3/2)`` decays only polynomially and stays a
  normal float32 for ``|z| < ~1e12 b``, so the product never vanishes.
  ``b·tanh(z/b)`` would not do: its derivative ``1 - tanh^2`` rounds to exactly
  0 in float32 once ``|z| > ~9 b``, the failure it is meant to prevent. Close to
  the identity for ``|z| << b`` (``z - z^3 / (2 b^2)``). The form is the
  inverse square root unit (Carlile et al., "Improving Deep Learning by
  Inverse Square Root Linear Units", arXiv 1710.09967, 2017). ``bound=None``
  returns ``z`` itself (no operation: the reference behaviour).
  """
  if bound is None:
    return z
  return _soft_clip(z, float(bound))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _soft_clip(z: jax.Array, bound: float) -> jax.Array:
  return z * jax.lax.rsqrt(1.0 + jnp.square(z / jnp.asarray(bound, z.dtype)))


@_soft_clip.defjvp
def _soft_clip_jvp(bound, primals, tangents):
  # The analytic derivative r^3, r = (1 + (z/b)^2)^(-1/2): autodiff of the
  # product z·r subtracts two nearly equal terms and loses it in float32 for
  # |z| >> b (even its sign, at |z| = 1e6 b).
  (z,), (dz,) = primals, tangents
  r = jax.lax.rsqrt(1.0 + jnp.square(z / jnp.asarray(bound, z.dtype)))
  return z * r, dz * r * r * r


def check_index_vector(index: Any, batch_size: int, *, arg: str) -> None:
  """``[B]`` integer indices into the batch (values as in the mixers)."""
  shape = getattr(index, "shape", None)
  if shape is None or tuple(shape) != (batch_size,):
    raise ValueError(f"`{arg}` must be an integer array of shape [B] = "
                     f"({batch_size},); got "
                     f"{tuple(shape) if shape is not None else type(index).__name__}.")
  mc.check_index(index, batch_size, arg=arg)


def upsample(x: jax.Array, scale: int, mode: str) -> jax.Array:
  """``[B, h, w, C]`` -> ``[B, h*scale, w*scale, C]``.

  ``nearest`` is a block repeat (PyTorch's legacy floor-nearest for an integer
  factor); ``bilinear`` is ``jax.image.resize``, whose half-pixel centres with edge
  clamping equal ``F.interpolate(..., mode='bilinear', align_corners=False)`` for
  upsampling (verified to 4e-7 against the authors' code).
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
  mc.check_weight_rows(lam, arg="lam")
  return jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (batch_size, n))


def nway_labels(labels: jax.Array, lam: jax.Array, index: jax.Array
                ) -> jax.Array:
  """``Σ_i lam[b, i] * labels[index[b, i]]``: ``[B, K]`` from lam/index ``[B, N]``."""
  return jnp.einsum("bn,bnk->bk", lam.astype(jnp.float32),
                    mc.take(labels, index).astype(jnp.float32)
                    ).astype(labels.dtype)


def _check_masks(masks: Any, shape: tuple[int, ...], what: str) -> None:
  """Masks of ``shape`` with values in [0, 1] (and, N-way, summing to 1)."""
  got = tuple(getattr(masks, "shape", ()))
  if got != shape:
    raise ValueError(f"`masks` must be {what} {list(shape)}; got {got}.")
  if not jnp.issubdtype(masks.dtype, jnp.floating):
    raise ValueError(f"`masks` must be floating point; got {masks.dtype}.")
  two_way = shape[-1] == 1

  def predicate(xp, m):
    total = m[..., 0] if two_way else xp.sum(m, axis=-1)
    ok = (xp.all((m >= 0) & (m <= 1)) &
          (two_way or xp.all(xp.abs(total - 1) <= 1e-4)))
    return ok, {"lo": xp.min(m), "hi": xp.max(m), "s_lo": xp.min(total),
                "s_hi": xp.max(total)}
  rule = ("lie in [0, 1]" if two_way else
          "lie in [0, 1] and sum to 1 over the N images at every pixel")
  mc.check_value((masks,), predicate,
                 f"`masks` must {rule}; got values in [{{lo}}, {{hi}}]"
                 + ("" if two_way else ", sums in [{s_lo}, {s_hi}]") + ".")


def apply_masks(images: Any, labels: Any, masks: Any, lam: Any, index: Any
                ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Mixes a batch under generator masks, returning the mixers' contract.

  One layout (docs/interfaces.md): masks are channels-last ``[B, H, W, N]``
  with channel i the per-pixel weight of ``x[index[:, i]]``; indices are
  ``[B, N]``; what goes in comes back in ``aux``.

  Two-way (AutoMix, Liu et al., ECCV 2022, arXiv 2103.13027), ``index`` ``[B]``:
    ``masks`` ``[B, H, W, 1]`` is the weight of each sample's *own* image (the
    :class:`PixelMixBlock` output), in [0, 1]; ``lam`` a scalar or ``[B]`` in
    [0, 1] is the own-label weight. ``x̃ = m ⊙ x + (1 - m) ⊙ x[index]``.

  N-way (AdAutoMix, Qin et al., ICLR 2024, arXiv 2312.11954), ``index`` ``[B, N]``:
    ``masks`` ``[B, H, W, N]`` summing to 1 over N (the :class:`AdaptiveMask`
    output for the same ``index``), ``lam`` ``[N]`` or ``[B, N]`` with rows
    summing to 1. ``x̃ = Σ_i M_i ⊙ x[index[:, i]]``,
    ``ỹ = Σ_i λ_i y[index[:, i]]``.

  Labels are mixed with λ, not with the mask areas, as both reference methods do.
  Values (index range, masks in [0, 1] summing to 1, λ) are checked as in the
  mixers: ``ValueError`` when concrete, ``checkify`` checks under ``jit``.

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
  batch_size = mc.check_batch(images, labels)
  _, h, w, _ = images.shape
  ishape = getattr(index, "shape", None)
  if ishape is None or len(ishape) not in (1, 2) or ishape[0] != batch_size:
    raise ValueError(f"`index` must be [B] (two-way) or [B, N] (N-way) with B = "
                     f"{batch_size}; got "
                     f"{tuple(ishape) if ishape is not None else type(index).__name__}.")
  if len(ishape) == 1:
    _check_masks(masks, (batch_size, h, w, 1), "the own-image weight [B, H, W, 1] =")
    index = mc.check_index(index, batch_size)
    lam = mc.check_lam(lam, batch_size)
    mixed = mc.apply_mask(images, masks, index)
    return mixed, mc.mix_labels(labels, lam, index), {
        "mask": masks.astype(jnp.float32), "lam": lam, "index": index}
  n = mc.check_index_matrix(index, batch_size, arg="index")
  _check_masks(masks, (batch_size, h, w, n), "[B, H, W, N] =")
  lam = _check_lam_nway(lam, batch_size, n)
  index = jnp.asarray(index, jnp.int32)
  mixed = nway_blend(images, masks, index)
  return mixed, nway_labels(labels, lam, index), {
      "mask": masks.astype(jnp.float32), "lam": lam, "index": index}
