"""SaliencyMix (Uddin et al., ICLR 2021, arXiv 2006.01791).

A CutMix box centred on the most salient pixel of the partner image, so the
pasted patch is likely to hold the partner's object. Saliency is computed in
JAX with the spectral residual of Hou & Zhang (CVPR 2007), the method of
OpenCV's ``StaticSaliencySpectralResidual``.

Deviations from OpenMixup (github.com/Westlake-AI/openmixup,
``openmixup/models/utils/augments/saliencymix.py``), on purpose:

* OpenMixup computes OpenCV's *fine-grained* saliency of one image,
  ``x[π[0]]``, and uses its box for the whole batch. Here every sample's box is
  centred on the argmax of *its own partner's* saliency (per sample), which is
  what the SaliencyMix paper describes for a pair.
* The saliency is the spectral residual (no OpenCV in JAX), or any map the
  caller passes as ``saliency``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C
from automix_jax.mixers import _cutmix as B_

Array = jax.Array

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what OpenCV's RGB->gray uses.


def _filter_1d(x: Array, taps: np.ndarray, axis: int) -> Array:
  """Correlates ``x`` with ``taps`` along ``axis`` (reflect-101 borders)."""
  r = len(taps) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  # numpy's "reflect" omits the edge sample: OpenCV's BORDER_REFLECT_101.
  xp = jnp.pad(x, pad, mode="reflect")
  n = x.shape[axis]
  out = 0.0
  for t, w in enumerate(taps):
    out = out + float(w) * jax.lax.slice_in_dim(xp, t, t + n, axis=axis)
  return out


def _separable(x: Array, taps: np.ndarray) -> Array:
  return _filter_1d(_filter_1d(x, taps, -2), taps, -1)


def spectral_residual_saliency(images: Array, *, working_size: int = 64,
                               sigma: float = 3.0) -> Array:
  """Spectral-residual saliency maps (Hou & Zhang, CVPR 2007), ``[B, H, W]``.

  Steps, as in OpenCV's ``StaticSaliencySpectralResidual``: grayscale, bilinear
  downsizing to at most ``working_size`` per side (OpenCV resizes to exactly
  64x64, also upwards; we never upsample), ``F = FFT(gray)``, log amplitude ``L = log|F|``,
  spectral residual ``R = L - box3x3(L)``, saliency ``|IFFT(exp(R + i∠F))|²``,
  Gaussian blur, resize back to ``H x W``, scale to max 1.

  Args:
    images: ``[B, H, W, C]`` floating images (C = 3 is taken as RGB; other C
      are averaged over channels).
    working_size: largest side of the grid the spectrum is computed on (64 in
      OpenCV and the paper; it sets the scale of what counts as salient).
    sigma: Gaussian blur σ in working-grid pixels.

  Returns:
    ``[B, H, W]`` float32 maps in [0, 1].
  """
  shape = getattr(images, "shape", None)
  if (shape is None or len(shape) != 4 or
      not jnp.issubdtype(images.dtype, jnp.floating)):
    raise ValueError(
        "`images` must be floating point of shape [B, H, W, C]; got "
        f"{tuple(shape) if shape is not None else type(images).__name__}.")
  batch_size, height, width, channels = images.shape
  x = images.astype(jnp.float32)
  if channels == 3:
    gray = jnp.tensordot(x, jnp.asarray(_LUMA, jnp.float32), axes=[[-1], [0]])
  else:
    gray = jnp.mean(x, axis=-1)
  # Never upsample: OpenCV resizes to 64x64 even from 32x32, but upsampling
  # adds no information and its replicated edges break the periodicity the
  # FFT assumes, so the image border then outshines any object.
  work = (min(height, int(working_size)), min(width, int(working_size)))
  small = gray
  if work != (height, width):
    small = jax.image.resize(gray, (batch_size,) + work, "linear",
                             antialias=False)
  spectrum = jnp.fft.fft2(small)
  log_amp = jnp.log(jnp.abs(spectrum) + 1e-12)
  smooth = _separable(log_amp, np.full((3,), 1.0 / 3.0))
  # exp(R + i∠F) with R = L - smooth(L) equals F * exp(-smooth(L)), since
  # exp(L) = |F|: the same spectrum without atan2/cos/sin per frequency.
  recon = jnp.fft.ifft2(spectrum * jnp.exp(-smooth))
  sal = jnp.abs(recon) ** 2
  radius = max(1, int(math.ceil(3 * sigma)))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  sal = _separable(sal, taps / taps.sum())
  if work != (height, width):
    sal = jax.image.resize(sal, (batch_size, height, width), "linear",
                           antialias=False)
  sal = sal / jnp.maximum(jnp.max(sal, axis=(1, 2), keepdims=True), 1e-30)
  return sal.astype(jnp.float32)


def saliency_peak(saliency: Array) -> Array:
  """Row-major first argmax of each ``[B, H, W]`` map, as ``[B, 2]`` (cy, cx)."""
  _, _, width = saliency.shape
  flat = jnp.argmax(saliency.reshape(saliency.shape[0], -1), axis=1)
  return jnp.stack([flat // width, flat % width], axis=1).astype(jnp.int32)


def saliencymix(key: Array, images: Array, labels: Array, *,
                alpha: float = 1.0, lam_scope: str = "batch",
                partner: str = "permutation", saliency: Any = None,
                lam: Any = None, index: Any = None,
                data_format: Any = None
                ) -> tuple[Array, Array, dict[str, Array]]:
  """SaliencyMix: a CutMix-sized box around the partner's saliency peak.

  Box as in CutMix (``r = sqrt(1 - λ)``, side ``floor(S r)``, half side
  ``cut // 2`` on both sides, clipped) but centred on the argmax of the
  partner's saliency map; pixels inside come from the partner; λ is always
  corrected to ``1 - box_area / (H W)`` (as OpenMixup does).

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration (OpenMixup CIFAR: 0.2).
    lam_scope: ``"batch"`` (one λ, so one box size) or ``"sample"``.
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    saliency: optional ``[B, H, W]`` saliency maps, ``saliency[b]`` being the
      map of ``images[b]``; computed with ``spectral_residual_saliency`` when
      None. Sample ``i`` uses ``saliency[index[i]]``.
    lam: optional explicit λ, scalar or ``[B]``.
    index: optional explicit partner indices ``[B]``.
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it). ``None``
      refuses a batch that looks NCHW (``automix_jax/mixers/_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux`` holds ``lam``, ``index``,
    ``mask`` ``[B, H, W, 1]`` (own weight, binary), ``box`` ``[B, 4]`` int32
    ``(y1, y2, x1, x2)`` and ``center`` ``[B, 2]`` int32 (the peak used).
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels)
  alpha = C.check_alpha(alpha)
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  _, height, width, _ = images.shape
  B_.check_box_room(height, width, 3, mixer="saliencymix", why=(
      "its box spans [c - cut//2, c + cut//2), empty unless "
      "cut = floor(side·sqrt(1-λ)) >= 2"))
  if saliency is not None:
    # Only its argmax is used, so any real-valued map will do.
    C.check_saliency(saliency, batch_size, height, width, nonnegative=False)

  k_lam, k_index = jax.random.split(key)
  lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)
  if saliency is None:
    # Only the partners' maps are needed; the saliency is a fixed function of
    # the pixels and never differentiated through.
    partner_saliency = spectral_residual_saliency(
        jax.lax.stop_gradient(C.take(images, index)))
  else:
    partner_saliency = C.take(saliency, index)
  center = saliency_peak(partner_saliency)
  box = B_.box_from_center(center[:, 0], center[:, 1],
                           B_.cut_size(lam, height), B_.cut_size(lam, width),
                           height, width, "symmetric")
  mask = (~B_.box_inside(box, height, width)).astype(jnp.float32)[..., None]
  lam = B_.box_area_lam(box, height, width)
  mixed = C.apply_mask(images, mask, index)
  aux = {"lam": lam, "index": index, "mask": mask, "box": box,
         "center": center}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
