"""Shared pieces of every mixer: input validation, λ and partner draws, labels.

Every mixer in this package follows one contract::

    mixed_images, mixed_labels, aux = mixer(key, images, labels, *, ...)

* ``images``: ``[B, H, W, C]`` floating point (some mixers also take ``[B, L, C]``
  sequences or ``[B, T, H, W, C]`` volumes). The output keeps shape and dtype.
* ``labels``: ``[B, K]`` dense (soft) targets. ``one_hot`` builds them.
* ``aux['lam']``: ``[B]`` float32, the weight of each sample's *own* label.
* ``aux['index']``: ``[B]`` int32, each sample's partner.
* ``aux['mask']`` (mask mixers): ``[B, *spatial, 1]`` float32, the weight of the
  sample's own image at every position.

For two-image mixers ``mixed_labels[i] = lam[i] * labels[i] + (1 - lam[i]) *
labels[index[i]]``. All validation happens on static shapes and Python values, so a
bad call raises ``ValueError`` at trace time, before any compute.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

PARTNERS = ("permutation", "flip", "roll")
LAM_SCOPES = ("batch", "sample")


def _is_concrete(x: Any) -> bool:
  """True when ``x``'s value is known at trace time (not a tracer)."""
  return not isinstance(x, jax.core.Tracer)


def check_images(images: Any, *, ranks=(4,), arg: str = "images") -> None:
  """Raises ``ValueError`` unless ``images`` is a floating array of a given rank."""
  shape = getattr(images, "shape", None)
  dtype = getattr(images, "dtype", None)
  if shape is None or dtype is None:
    raise ValueError(f"`{arg}` must be an array, got {type(images).__name__}.")
  forms = {3: "[B, L, C]", 4: "[B, H, W, C]", 5: "[B, T, H, W, C]"}
  expected = " or ".join(forms.get(r, f"rank {r}") for r in ranks)
  if len(shape) not in ranks:
    raise ValueError(
        f"`{arg}` must have shape {expected}; got shape {tuple(shape)}.")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"`{arg}` must be floating point (convert integer images first, e.g. "
        f"`images.astype(jnp.float32) / 255`); got dtype {dtype}.")
  if shape[0] < 2:
    raise ValueError(
        f"`{arg}` must hold at least 2 samples to mix; got batch size "
        f"{shape[0]}.")


def check_labels(labels: Any, batch_size: int, *, arg: str = "labels") -> None:
  """Raises ``ValueError`` unless ``labels`` is ``[B, K]`` floating."""
  shape = getattr(labels, "shape", None)
  if shape is None or len(shape) != 2:
    raise ValueError(
        f"`{arg}` must be dense targets of shape [B, K] (use "
        f"`automix_jax.mixers.one_hot` for integer labels); got "
        f"{'shape ' + str(tuple(shape)) if shape is not None else type(labels).__name__}.")
  if shape[0] != batch_size:
    raise ValueError(
        f"`{arg}` has batch size {shape[0]} but `images` has {batch_size}; they "
        "must match.")
  if not jnp.issubdtype(labels.dtype, jnp.floating):
    raise ValueError(
        f"`{arg}` must be floating point [B, K] targets; got dtype "
        f"{labels.dtype}. Use `automix_jax.mixers.one_hot` for integer labels.")


def check_batch(images: Any, labels: Any, *, ranks=(4,)) -> int:
  """Validates an (images, labels) pair; returns the batch size."""
  check_images(images, ranks=ranks)
  batch_size = images.shape[0]
  check_labels(labels, batch_size)
  return batch_size


def check_alpha(alpha: Any, *, arg: str = "alpha") -> float:
  """Raises unless ``alpha`` is a static positive number; returns it as float."""
  if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
    if _is_concrete(alpha) and np.ndim(alpha) == 0:
      alpha = float(alpha)
    else:
      raise ValueError(
          f"`{arg}` must be a static positive Python number (the Beta "
          f"concentration); got {type(alpha).__name__}.")
  if not alpha > 0 or not np.isfinite(alpha):
    raise ValueError(f"`{arg}` must be > 0 (Beta(alpha, alpha)); got {alpha}.")
  return float(alpha)


def check_choice(value: Any, choices, *, arg: str) -> str:
  if value not in choices:
    raise ValueError(f"`{arg}` must be one of {tuple(choices)}; got {value!r}.")
  return value


def check_probability(p: Any, *, arg: str) -> float:
  if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
    raise ValueError(f"`{arg}` must be a number in [0, 1]; got {p!r}.")
  return float(p)


def check_range(scope: Any, *, arg: str, low: float = 0.0,
                high: float = 1.0) -> tuple[float, float]:
  """Checks a ``(lo, hi)`` pair with ``low <= lo <= hi <= high``."""
  try:
    lo, hi = (float(v) for v in scope)
  except (TypeError, ValueError):
    raise ValueError(f"`{arg}` must be a pair (lo, hi); got {scope!r}.") from None
  if not low <= lo <= hi <= high:
    raise ValueError(
        f"`{arg}` must satisfy {low} <= lo <= hi <= {high}; got {(lo, hi)}.")
  return lo, hi


# ----------------------------------------------------------------------------
# Partners and λ.
# ----------------------------------------------------------------------------


def check_partner(partner: str, batch_size: int) -> str:
  check_choice(partner, PARTNERS, arg="partner")
  if partner == "flip" and batch_size % 2:
    # With an odd batch the middle sample would be paired with itself and stay
    # unmixed while its λ says otherwise.
    raise ValueError(
        f'`partner="flip"` needs an even batch size (sample i pairs with '
        f"B-1-i); got batch size {batch_size}. Use \"roll\" or "
        '"permutation" for odd batches.')
  return partner


def draw_partner(key: Array, batch_size: int, partner: str = "permutation"
                 ) -> Array:
  """Partner indices ``[B]`` int32.

  * ``"permutation"``: a uniform random permutation (OpenMixup, AutoMix).
  * ``"flip"``: ``B - 1 - i`` (timm).
  * ``"roll"``: ``(i - 1) mod B`` (torchvision v2, big_vision).
  """
  check_partner(partner, batch_size)
  if partner == "permutation":
    return jax.random.permutation(key, batch_size).astype(jnp.int32)
  ids = jnp.arange(batch_size, dtype=jnp.int32)
  if partner == "flip":
    return ids[::-1]
  return jnp.roll(ids, 1)


def check_index(index: Any, batch_size: int, *, arg: str = "index") -> Array:
  shape = getattr(index, "shape", None)
  if shape is None or tuple(shape) != (batch_size,):
    raise ValueError(
        f"`{arg}` must be an integer array of shape [B] = ({batch_size},); got "
        f"{tuple(shape) if shape is not None else type(index).__name__}.")
  if not jnp.issubdtype(index.dtype, jnp.integer):
    raise ValueError(f"`{arg}` must be integer; got dtype {index.dtype}.")
  if _is_concrete(index):
    idx = np.asarray(index)
    if idx.min() < 0 or idx.max() >= batch_size:
      raise ValueError(
          f"`{arg}` values must lie in [0, {batch_size}); got range "
          f"[{idx.min()}, {idx.max()}].")
  return jnp.asarray(index, jnp.int32)


def resolve_index(key: Array, batch_size: int, partner: str,
                  index: Any = None) -> Array:
  """The explicit ``index`` if given (validated), else a drawn partner."""
  if index is not None:
    check_choice(partner, PARTNERS, arg="partner")
    return check_index(index, batch_size)
  return draw_partner(key, batch_size, partner)


def draw_lam(key: Array, alpha: float, batch_size: int,
             lam_scope: str = "batch") -> Array:
  """λ ~ Beta(alpha, alpha) as ``[B]`` float32: one value shared or one each."""
  check_choice(lam_scope, LAM_SCOPES, arg="lam_scope")
  n = 1 if lam_scope == "batch" else batch_size
  lam = jax.random.beta(key, alpha, alpha, (n,), dtype=jnp.float32)
  return jnp.broadcast_to(lam, (batch_size,))


def check_lam(lam: Any, batch_size: int, *, arg: str = "lam") -> Array:
  """An explicit λ: a scalar or ``[B]`` in [0, 1]; returned as ``[B]`` float32."""
  if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
    lam = np.float32(lam)
  shape = getattr(lam, "shape", None)
  if shape is None or tuple(shape) not in ((), (batch_size,)):
    raise ValueError(
        f"`{arg}` must be a scalar or an array of shape [B] = ({batch_size},); "
        f"got {tuple(shape) if shape is not None else type(lam).__name__}.")
  if _is_concrete(lam):
    val = np.asarray(lam, np.float64)
    if not np.all((val >= 0) & (val <= 1)):
      raise ValueError(f"`{arg}` values must lie in [0, 1]; got {val}.")
  return jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (batch_size,))


def resolve_lam(key: Array, alpha: float, batch_size: int, lam_scope: str,
                lam: Any = None) -> Array:
  check_choice(lam_scope, LAM_SCOPES, arg="lam_scope")
  if lam is not None:
    return check_lam(lam, batch_size)
  return draw_lam(key, alpha, batch_size, lam_scope)


# ----------------------------------------------------------------------------
# Labels and masks.
# ----------------------------------------------------------------------------


def one_hot(labels: Any, num_classes: int, *, smoothing: float = 0.0,
            dtype=jnp.float32) -> Array:
  """Integer labels ``[B]`` -> dense targets ``[B, K]``.

  With label smoothing ``s`` the on value is ``1 - s + s/K`` and the off value
  ``s/K`` (timm's convention), so rows still sum to 1.
  """
  shape = getattr(labels, "shape", None)
  if shape is None or len(shape) != 1:
    raise ValueError(f"`labels` must be integer class ids of shape [B]; got "
                     f"{tuple(shape) if shape is not None else type(labels)}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"`labels` must be integer class ids; got dtype "
                     f"{labels.dtype}.")
  if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}.")
  if not 0 <= smoothing < 1:
    raise ValueError(f"`smoothing` must lie in [0, 1); got {smoothing}.")
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return (hot * (on - off) + off).astype(dtype)


def mix_labels(labels: Array, lam: Array, index: Array) -> Array:
  """``lam[i] * labels[i] + (1 - lam[i]) * labels[index[i]]``, ``[B, K]``."""
  lam = lam.astype(jnp.float32)[:, None]
  out = lam * labels.astype(jnp.float32) + (1.0 - lam) * labels[index].astype(
      jnp.float32)
  return out.astype(labels.dtype)


def blend(images: Array, partner_images: Array, weight: Array) -> Array:
  """``weight * images + (1 - weight) * partner_images`` in the images' dtype.

  ``weight`` broadcasts against ``images`` (a per-sample λ ``[B, 1, 1, 1]`` or a
  mask ``[B, H, W, 1]``). The written form is exact for binary weights: a weight of
  1 returns the own pixel bit for bit, 0 the partner's.
  """
  w = weight.astype(images.dtype)
  return w * images + (1 - w) * partner_images


def apply_mask(images: Array, mask: Array, index: Array) -> Array:
  """Mixes ``images`` with ``images[index]`` under ``mask`` (own-image weight)."""
  return blend(images, images[index], mask)


def per_sample(lam: Array, ndim: int) -> Array:
  """``[B]`` -> ``[B, 1, ..., 1]`` with ``ndim`` dims, for broadcasting."""
  return lam.reshape(lam.shape[:1] + (1,) * (ndim - 1))


def cells_to_mask(cells: Array, height: int, width: int) -> Array:
  """Grid-cell weights ``[B, gh, gw]`` -> pixel mask ``[B, H, W, 1]`` (each cell
  an ``H/gh x W/gw`` block; the caller checks divisibility)."""
  gh, gw = cells.shape[1:3]
  mask = jnp.repeat(jnp.repeat(cells, height // gh, axis=1), width // gw,
                    axis=2)
  return mask[..., None]


def mask_to_lam(mask: Array) -> Array:
  """Mean own-image weight per sample: ``[B, ..., 1]`` -> ``[B]`` float32."""
  return jnp.mean(mask.astype(jnp.float32), axis=tuple(range(1, mask.ndim)))
