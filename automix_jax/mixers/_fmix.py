"""FMix (Harris et al., 2020, arXiv 2002.12047): masks from low-frequency noise.

A grey map is drawn from a random complex spectrum whose amplitude decays as
``1 / |f|^d``; the positions holding its largest values form the binary mask of
the sample's own image. Works on sequences ``[B, L, C]`` (``spatial_dims=1``),
images ``[B, H, W, C]``, grey images ``[B, H, W]`` (``spatial_dims=2``) and
volumes ``[B, T, H, W, C]``.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C


def _frequencies(shape: Sequence[int]) -> np.ndarray:
  """``|f|`` on the ``rfftn`` grid of ``shape`` (half spectrum on the last axis).

  The reference builds the same magnitudes from ``fftfreq`` and lets ``irfftn``
  drop the surplus half of the last axis; building the half grid directly gives
  identical values for 1D and 2D.
  """
  axes = [np.fft.fftfreq(n) for n in shape[:-1]]
  axes.append(np.fft.rfftfreq(shape[-1]))
  grids = np.meshgrid(*axes, indexing="ij")
  return np.sqrt(sum(g * g for g in grids))


def low_freq_noise(key: jax.Array, shape: Sequence[int], num: int,
                   decay_power: float) -> jax.Array:
  """``num`` real grey maps ``[num, *shape]`` float32 with a ``1/|f|^d`` spectrum.

  Real and imaginary parts of every frequency are N(0, 1), scaled by
  ``1 / max(|f|, 1 / max(shape)) ** decay_power`` (FMix eq. for the spectrum,
  the clamp keeps the DC term finite), then inverse real FFT. The reference's
  min-max rescaling is skipped: only the ranking of the values is used.
  """
  shape = tuple(int(s) for s in shape)
  freqs = _frequencies(shape)
  scale = 1.0 / np.maximum(freqs, 1.0 / max(shape)) ** decay_power
  scale = jnp.asarray(scale, jnp.float32)
  param = jax.random.normal(key, (num, *freqs.shape, 2), jnp.float32)
  spectrum = jax.lax.complex(param[..., 0] * scale, param[..., 1] * scale)
  axes = tuple(range(1, len(shape) + 1))
  return jnp.fft.irfftn(spectrum, s=shape, axes=axes).real.astype(jnp.float32)


def _guard(n: int) -> float:
  # λ arrives in float32: 0.1 * 10 evaluates to 1.0000000149, whose ceil would
  # be 2. Counts within two float32 ulps of an integer snap to it.
  return min(2.0 * n * float(np.finfo(np.float32).eps), 0.25)


def binarise_by_rank(grey: jax.Array, lam: jax.Array, round_up: jax.Array,
                     max_soft: float = 0.0) -> jax.Array:
  """Mask keeping the top ``ceil`` or ``floor(λ·n)`` values of each grey map.

  Jit-friendly top-k with a traced count: rank every position (``argsort`` of
  the descending order) and compare ranks with the count.

  Args:
    grey: ``[m, n]`` flattened grey maps, ``m`` = 1 (shared) or ``B``.
    lam: ``[B]`` target own-image fractions.
    round_up: ``[B]`` bool, ceil (True) or floor (False) of ``λ·n``, the
      reference's coin flip.
    max_soft: the reference's soft edge: ``soft = int(n · min(max_soft, λ,
      1 - λ))`` positions either side of the cut ramp linearly from 1 to 0
      (``np.linspace(1, 0, 2·soft)``), which keeps the mask's mean at
      ``count / n``.

  Returns:
    ``[B, n]`` float32 mask, 1 where the own image is kept.
  """
  n = grey.shape[-1]
  order = jnp.argsort(grey, axis=-1, descending=True)  # by decreasing value
  rank = jnp.argsort(order, axis=-1)       # rank of every position
  rank = jnp.broadcast_to(rank, (lam.shape[0], n)).astype(jnp.float32)
  x = lam.astype(jnp.float32) * n
  tol = _guard(n)
  num = jnp.where(round_up, jnp.ceil(x - tol), jnp.floor(x + tol))
  num = jnp.clip(num, 0, n)[:, None]
  if max_soft <= 0:
    return (rank < num).astype(jnp.float32)
  # The reference clamps an over-large soft width to min(λ, 1 - λ).
  lam = lam.astype(jnp.float32)
  eff = jnp.where((max_soft > lam) | (max_soft > 1 - lam),
                  jnp.minimum(lam, 1 - lam), max_soft)
  soft = jnp.floor(n * eff + tol)[:, None]
  low, high = num - soft, num + soft
  # linspace(1, 0, 2·soft) over ranks [low, high); written so that both ends
  # are exact (XLA may turn the division into a reciprocal multiply).
  ramp = (high - 1 - rank) / jnp.maximum(2 * soft - 1, 1)
  mask = jnp.where(rank <= low, 1.0, jnp.where(rank >= high, 0.0, ramp))
  return jnp.clip(mask, 0.0, 1.0)


def check_decay_power(decay_power: Any) -> float:
  if (isinstance(decay_power, bool) or
      not isinstance(decay_power, numbers.Real) or
      not 0 <= decay_power < np.inf):
    raise ValueError(
        f"`decay_power` must be a static finite number >= 0 (the spectrum "
        f"decays as 1/|f|^decay_power); got {decay_power!r}.")
  return float(decay_power)


def check_spatial_dims(spatial_dims: Any) -> int:
  if (isinstance(spatial_dims, bool) or
      not isinstance(spatial_dims, numbers.Integral) or
      spatial_dims not in (1, 2, 3)):
    raise ValueError(f"`spatial_dims` must be 1, 2 or 3 (or None to infer it "
                     f"from a rank-4/5 batch); got {spatial_dims!r}.")
  return int(spatial_dims)


CHECKS = {"decay_power": check_decay_power,
          "max_soft": functools.partial(C.check_probability, arg="max_soft"),
          "spatial_dims": check_spatial_dims}


def _channel_axis(images: Any, spatial_dims: Any, data_format: Any
                  ) -> tuple[Any, bool]:
  """``(images with a channel axis, whether one was added)`` for FMix."""
  shape = tuple(getattr(images, "shape", ()))
  ndim = len(shape)
  if spatial_dims is None:
    if ndim == 3:
      raise ValueError(
          f"`images` of shape {shape} is ambiguous for fmix: "
          "pass `spatial_dims=1` for a [B, L, C] sequence (1-D mask over L) "
          "or `spatial_dims=2` for grey [B, H, W] images without a channel "
          "axis (2-D mask).")
    return images, False
  spatial_dims = check_spatial_dims(spatial_dims)
  if ndim == spatial_dims + 1:
    if data_format == "NCHW":
      raise ValueError(
          f"`images` of shape {shape} has no channel axis "
          f"(spatial_dims={spatial_dims}), so `data_format=\"NCHW\"` does "
          "not apply; leave it None.")
    return images[..., None], True
  if ndim != spatial_dims + 2:
    raise ValueError(
        f"`images` must be [B, *spatial, C] or [B, *spatial] with "
        f"spatial_dims={spatial_dims} spatial axes (rank {spatial_dims + 2} "
        f"or {spatial_dims + 1}); got shape {shape}.")
  return images, False


def fmix(key: jax.Array, images: jax.Array, labels: jax.Array, *,
         alpha: float = 1.0, decay_power: float = 3.0, max_soft: float = 0.0,
         lam_scope: str = "batch", partner: str = "permutation",
         lam: Any = None, index: Any = None,
         spatial_dims: Any = None, data_format: Any = None
         ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """FMix: ``x̃ = m ⊙ x + (1 - m) ⊙ x[index]`` with a Fourier-sampled mask.

  The mask keeps the top ``ceil(λ·n)`` or ``floor(λ·n)`` positions (a fair
  coin, as the reference) of a grey map with a ``1/|f|^decay_power`` spectrum,
  ``n`` being the number of positions (``L``, ``H·W`` or ``T·H·W``).

  Unlike the reference, which returns the drawn λ (off by less than ``1/n``),
  ``aux['lam']`` is the exact mean of the mask, so the labels match the pixels.

  Args:
    key: PRNG key.
    images: ``[B, L, C]``, ``[B, H, W, C]`` or ``[B, T, H, W, C]`` floating.
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration for λ (OpenMixup: 0.2 on CIFAR
      CNNs, 1 for ViTs and ImageNet).
    decay_power: ``d`` in the ``1/|f|^d`` spectrum; larger means smoother,
      blobbier masks (reference default 3).
    max_soft: width of the reference's soft edge as a fraction of ``n``, in
      [0, 1]; 0 (default) gives binary masks. Implemented: positions around
      the cut ramp linearly, and the mask's mean is still the kept fraction.
    lam_scope: ``"batch"``: one grey map, one λ and one coin for the batch (the
      reference); ``"sample"``: each sample draws its own.
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    lam: optional explicit target λ, scalar or ``[B]``. A ``[B]`` λ is honoured
      per sample even with ``lam_scope="batch"`` (one shared grey map cut at
      each sample's own count).
    index: optional explicit partner indices ``[B]``.
    spatial_dims: how many axes after the batch are spatial: 1, 2 or 3. Rank
      4 and 5 batches default to 2 and 3 (the last axis is channels). A rank-3
      batch is ambiguous and needs it: ``spatial_dims=1`` reads ``[B, L, C]``
      as a sequence (a 1-D mask over L), ``spatial_dims=2`` reads ``[B, H,
      W]`` as grey images without a channel axis (a 2-D mask; the output and
      ``aux['mask']`` are ``[B, H, W]``). In general the batch is ``[B,
      *spatial, C]`` or, without channels, ``[B, *spatial]``.
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it). ``None``
      refuses a batch that looks NCHW (``automix_jax/mixers/_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)`` with ``aux = {'lam': [B] float32,
    'index': [B] int32, 'mask': [B, *spatial, 1] float32}``.
  """
  images, no_channels = _channel_axis(images, spatial_dims, data_format)
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels, ranks=(3, 4, 5))
  alpha = C.check_alpha(alpha)
  decay_power = check_decay_power(decay_power)
  max_soft = C.check_probability(max_soft, arg="max_soft")
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  k_lam, k_index, k_noise, k_coin = jax.random.split(key, 4)
  lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)

  spatial = tuple(images.shape[1:-1])
  num_maps = 1 if lam_scope == "batch" else batch_size
  grey = low_freq_noise(k_noise, spatial, num_maps, float(decay_power))
  round_up = jax.random.bernoulli(k_coin, 0.5, (num_maps,))
  round_up = jnp.broadcast_to(round_up, (batch_size,))
  mask = binarise_by_rank(grey.reshape(num_maps, -1), lam, round_up, max_soft)
  mask = mask.reshape((batch_size,) + spatial + (1,))

  lam = C.mask_to_lam(mask)
  mixed = C.apply_mask(images, mask, index)
  aux = {"lam": lam, "index": index, "mask": mask}
  if no_channels:
    mixed, aux["mask"] = mixed[..., 0], mask[..., 0]
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
