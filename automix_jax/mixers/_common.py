"""Shared pieces of every mixer: input validation, λ and partner draws, labels.

Every mixer in this package follows one contract::

    mixed_images, mixed_labels, aux = mixer(key, images, labels, *, ...)

* ``images``: ``[B, H, W, C]`` floating point (some mixers also take ``[B, L, C]``
  sequences or ``[B, T, H, W, C]`` volumes). The output keeps shape and dtype.
* ``labels``: ``[B, K]`` dense (soft) targets. ``one_hot`` builds them.
* ``aux['lam']``: ``[B]`` float32, the weight of each sample's *own* label.
* ``aux['index']``: ``[B]`` int32, each sample's partner.
* ``aux['mask']`` (mask mixers): ``[B, *spatial, 1]`` float32, the weight of the
  sample's own image at every position (in the images' layout: ``[B, 1, H, W]``
  with ``data_format="NCHW"``).

For two-image mixers ``mixed_labels[i] = lam[i] * labels[i] + (1 - lam[i]) *
labels[index[i]]``.

Layout: images are channels-last. ``data_format="NCHW"`` (channels on axis 1,
also for ``[B, C, L]`` and ``[B, C, T, H, W]``) is accepted by every mixer and
transposed in and out. With the default ``data_format=None`` a rank-4/5 batch
whose axis 1 has 1 or 3 entries while axis 2 and the last axis have more than
4 (``[B, 3, 32, 32]``) is refused as probably NCHW; pass ``data_format="NHWC"``
to mix such a batch as channels-last anyway.

Validation. Shapes, dtypes and Python hyperparameters are checked at trace time,
before any compute, and raise ``ValueError`` naming the argument. *Values* of
array arguments (explicit ``lam``, ``index``, ``center``, ``tau``; class ids in
``one_hot``) are checked the same way when they are concrete. Under ``jax.jit``
they are tracers and cannot raise: the checks are then ``checkify`` checks that
plain ``jit`` removes (no cost) and that ``checkify.checkify`` turns on::

    from jax.experimental import checkify
    checked = checkify.checkify(jax.jit(fn), errors=checkify.user_checks)
    err, out = checked(key, images, labels)
    err.throw()      # ValueError-like JaxRuntimeError naming the argument

or validate on the host before the jitted step (``one_hot`` / ``check_class_ids``
on NumPy labels, a concrete ``lam`` / ``index``).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Array = jax.Array

PARTNERS = ("permutation", "flip", "roll")
LAM_SCOPES = ("batch", "sample")
DATA_FORMATS = ("NHWC", "NCHW")


def _is_concrete(x: Any) -> bool:
  """True when ``x``'s value is known at trace time (not a tracer)."""
  return not isinstance(x, jax.core.Tracer)


def check_value(arrays: tuple, predicate: Callable, message: str) -> None:
  """A value check: ``ValueError`` now if concrete, else a ``checkify`` check.

  ``predicate(xp, *arrays)`` returns ``(ok, fmt)``: a boolean array and the
  fields of the ``str.format`` template ``message``, computed with ``xp``
  (NumPy for concrete arrays, ``jax.numpy`` for tracers). Concrete values that
  fail raise ``ValueError`` at once. Traced ones (under ``jit``/``vmap``) get
  ``checkify.check(..., debug=True)``: removed by plain ``jit``, active under
  ``checkify.checkify`` (see the module docstring).
  """
  if all(_is_concrete(a) for a in arrays):
    ok, fmt = predicate(np, *(np.asarray(a) for a in arrays))
    if not np.all(ok):
      raise ValueError(message.format(**fmt))
    return
  ok, fmt = predicate(jnp, *arrays)
  checkify.check(jnp.all(ok), message, debug=True, **fmt)


def check_in_range(x: Any, low: float, high: float, message: str, *,
                   closed: bool = True) -> None:
  """Values in ``[low, high]`` (``[low, high)`` if not ``closed``); ``message``
  may use ``{lo}`` and ``{hi}``, the observed extremes (see ``check_value``)."""
  if not np.size(x):
    return

  def predicate(xp, v):
    ok = (v >= low) & ((v <= high) if closed else (v < high))
    return ok, {"lo": xp.min(v), "hi": xp.max(v)}
  check_value((x,), predicate, message)


def check_weight_rows(weights: Any, *, arg: str, axis: int = -1) -> None:
  """Weights non-negative and summing to 1 along ``axis`` (``check_value``)."""
  def predicate(xp, w):
    total = xp.sum(w, axis=axis)
    ok = xp.all(w >= 0) & xp.all(xp.abs(total - 1) <= 1e-5)
    return ok, {"lo": xp.min(w), "s_lo": xp.min(total), "s_hi": xp.max(total)}
  check_value((weights,), predicate,
              f"`{arg}` must be non-negative and sum to 1 over the N images; "
              "got min {lo}, sums in [{s_lo}, {s_hi}].")


def check_data_format(data_format: Any) -> str | None:
  if data_format is not None:
    check_choice(data_format, DATA_FORMATS, arg="data_format")
  return data_format


def channels_last(images: Any, data_format: Any) -> Any:
  """``images`` in the mixers' channels-last layout.

  ``data_format="NCHW"`` moves axis 1 last; ``"NHWC"`` leaves the batch as it
  is; ``None`` (the default) also leaves it, but refuses a rank-4/5 batch that
  looks channels-first: axis 1 of size 1 or 3, axis 2 and the last axis above 4
  (``[B, 3, H, W]``, ``[B, 1, H, W]``), which a channels-last mixer would cut
  over (C, H) instead of (H, W).
  """
  check_data_format(data_format)
  shape = getattr(images, "shape", None)
  if shape is None or len(shape) < 2:
    return images  # check_images names the problem.
  if data_format == "NCHW":
    return jnp.moveaxis(images, 1, -1)
  if (data_format is None and len(shape) in (4, 5) and shape[1] in (1, 3)
      and shape[2] > 4 and shape[-1] > 4):
    raise ValueError(
        f"`images` of shape {tuple(shape)} looks channels-first (NCHW: "
        f"{shape[1]} channels on axis 1); the mixers expect channels-last "
        f"[B, H, W, C]. Pass `data_format=\"NCHW\"` (the output keeps your "
        f"layout), transpose with `jnp.moveaxis(images, 1, -1)`, or pass "
        f"`data_format=\"NHWC\"` if axis 1 really is a spatial axis of size "
        f"{shape[1]}.")
  return images


def restore_layout(mixed: Array, mixed_labels: Array, aux: dict,
                   data_format: str | None) -> tuple[Array, Array, dict]:
  """Moves the channel axis of ``mixed`` (and ``aux['mask']``) back for NCHW."""
  if data_format == "NCHW":
    mixed = jnp.moveaxis(mixed, -1, 1)
    if "mask" in aux:
      aux = {**aux, "mask": jnp.moveaxis(aux["mask"], -1, 1)}
  return mixed, mixed_labels, aux


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


def check_positive_int(value: Any, *, arg: str) -> int:
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or
      value < 1):
    raise ValueError(f"`{arg}` must be a positive int; got {value!r}.")
  return int(value)


def check_grid(grid: Any, *, arg: str) -> tuple[int, int]:
  """A cell grid: ``n`` or ``(gh, gw)`` positive ints -> ``(gh, gw)``."""
  if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
    grid = (grid, grid)
  try:
    gh, gw = grid
  except (TypeError, ValueError):
    raise ValueError(
        f"`{arg}` must be an int n or a pair (gh, gw); got {grid!r}.") from None
  return check_positive_int(gh, arg=arg), check_positive_int(gw, arg=arg)


def default_cells(side: int) -> int:
  """Grid cells along a side by default: 4, else the largest of 3, 2 dividing
  it (1 if none does)."""
  return next((n for n in (4, 3, 2) if side % n == 0), 1)


def check_static_bool(value: Any, *, arg: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"`{arg}` must be a Python bool; got {value!r}.")
  return bool(value)


def choice_check(choices, arg: str) -> Callable[[Any], Any]:
  """A one-argument validator of ``arg`` against ``choices`` (for ``get``)."""
  return functools.partial(check_choice, choices=choices, arg=arg)


# Validators of the hyperparameters many mixers share, by name: the mixers call
# the same functions, and `mixers.get` runs them when it binds a value.
HYPERPARAMETER_CHECKS = {
    "alpha": check_alpha,
    "lam_scope": choice_check(LAM_SCOPES, "lam_scope"),
    "partner": choice_check(PARTNERS, "partner"),
    "data_format": check_data_format,
}


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
  _check_batch_ids(index, batch_size, arg)
  return jnp.asarray(index, jnp.int32)


def _check_batch_ids(index: Array, batch_size: int, arg: str) -> None:
  """Integer dtype and values in ``[0, B)`` (``check_value``)."""
  if not jnp.issubdtype(index.dtype, jnp.integer):
    raise ValueError(f"`{arg}` must be integer; got dtype {index.dtype}.")
  check_in_range(index, 0, batch_size,
                 f"`{arg}` values must lie in [0, {batch_size}); got range "
                 "[{lo}, {hi}].", closed=False)


def check_index_matrix(indices: Any, batch_size: int,
                       num_images: int | None = None, *, arg: str = "indices"
                       ) -> int:
  """``[B, N]`` integer sources (column i = image i of every sample); returns N.

  The one layout of every N-way function (``nway_mixup``; the generators'
  ``AdaptiveMask``, ``apply_masks``, ``nway_blend``).
  """
  shape = getattr(indices, "shape", None)
  if shape is None or len(shape) != 2 or shape[0] != batch_size:
    got = tuple(shape) if shape is not None else type(indices).__name__
    raise ValueError(f"`{arg}` must be [B, N] = ({batch_size}, N) int, column "
                     f"i the source of image i (docs/interfaces.md); got {got}.")
  n = int(shape[1])
  if num_images is not None and n != num_images:
    raise ValueError(f"`{arg}` must be [B, N] = ({batch_size}, {num_images}); "
                     f"got {tuple(shape)}.")
  if not 2 <= n <= batch_size:
    raise ValueError(f"`{arg}` [B, N] must hold 2 <= N <= B = {batch_size} "
                     f"images per mix; got N = {n}.")
  _check_batch_ids(indices, batch_size, arg)
  return n


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
  if not jnp.issubdtype(jnp.result_type(lam), jnp.floating):
    lam = jnp.asarray(lam, jnp.float32)
  check_in_range(lam, 0, 1, f"`{arg}` values must lie in [0, 1]; got range "
                 "[{lo}, {hi}].")
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


def check_class_ids(labels: Any, num_classes: int, *, arg: str = "labels"
                    ) -> Array:
  """Validates integer class ids ``[B]`` in ``[0, num_classes)``; returns them.

  Use it on the host (NumPy or concrete arrays raise ``ValueError`` at once),
  e.g. where batches leave the data pipeline. Traced ids get a ``checkify``
  check (module docstring): ``jax.nn.one_hot`` would silently give an all-zero
  row for an id outside the range.
  """
  if getattr(labels, "shape", None) is None and isinstance(labels,
                                                           (list, tuple)):
    labels = np.asarray(labels)
  shape = getattr(labels, "shape", None)
  if shape is None or len(shape) != 1:
    raise ValueError(f"`{arg}` must be integer class ids of shape [B]; got "
                     f"{tuple(shape) if shape is not None else type(labels)}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"`{arg}` must be integer class ids; got dtype "
                     f"{labels.dtype}.")
  if (isinstance(num_classes, bool) or
      not isinstance(num_classes, numbers.Integral) or num_classes < 1):
    raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}.")
  check_in_range(labels, 0, num_classes,
                 f"`{arg}` must be class ids in [0, num_classes) = [0, "
                 f"{num_classes}); got range [{{lo}}, {{hi}}].", closed=False)
  return labels


def one_hot(labels: Any, num_classes: int, *, smoothing: float = 0.0,
            dtype=jnp.float32) -> Array:
  """Integer labels ``[B]`` -> dense targets ``[B, K]``.

  With label smoothing ``s`` the on value is ``1 - s + s/K`` and the off value
  ``s/K`` (timm's convention), so rows still sum to 1. Ids outside
  ``[0, num_classes)`` raise ``ValueError`` (concrete labels) or fail a
  ``checkify`` check (traced labels; see ``check_class_ids``).
  """
  labels = check_class_ids(labels, num_classes)
  if (isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Real)
      or not 0 <= smoothing < 1):
    raise ValueError(f"`smoothing` must be a number in [0, 1); got "
                     f"{smoothing!r}.")
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return (hot * (on - off) + off).astype(dtype)


def explicit_mesh(x: Any) -> Any:
  """The mesh of ``x``'s sharding if it has Explicit axes, else None."""
  mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
  if (mesh is None or getattr(mesh, "empty", True) or
      jax.sharding.AxisType.Explicit not in tuple(mesh.axis_types)):
    return None
  return mesh


def take(x: Any, index: Array) -> Array:
  """``x[index]``: rows of ``x`` along the batch axis, on any mesh.

  On a mesh with Explicit axes (``jax.make_mesh``'s default in jax 0.10) a
  gather of a batch-sharded array has no unambiguous output sharding; the
  rows then keep ``x``'s batch sharding (``.at[index].get(out_sharding=)``).
  Elsewhere (no mesh, Auto axes, inside ``shard_map``) this is ``x[index]``.
  """
  mesh = explicit_mesh(x)
  if mesh is None:
    return x[index]
  spec = tuple(jax.typeof(x).sharding.spec)
  spec = spec + (None,) * (x.ndim - len(spec))
  out = jax.P(spec[0], *((None,) * (index.ndim - 1)), *spec[1:])
  return x.at[index].get(out_sharding=jax.sharding.NamedSharding(mesh, out))


def mix_labels(labels: Array, lam: Array, index: Array) -> Array:
  """``lam[i] * labels[i] + (1 - lam[i]) * labels[index[i]]``, ``[B, K]``."""
  lam = lam.astype(jnp.float32)[:, None]
  out = lam * labels.astype(jnp.float32) + (1.0 - lam) * take(labels, index).astype(
      jnp.float32)
  return out.astype(labels.dtype)


def weighted_labels(labels: Array, w_own: Array, w_partner: Array,
                    index: Array, *, normalize: bool, fallback: Array
                    ) -> tuple[Array, Array]:
  """Labels from a weight of the own and of the partner's label, ``[B]`` each.

  ``normalize``: rows summing to 1, ``λ y + (1 - λ) y[index]`` with ``λ =
  w_own / (w_own + w_partner)`` (``fallback`` ``[B]`` where both are 0);
  else the raw ``w_own y + w_partner y[index]`` (SnapMix's and TokenMix's
  authors' unnormalised targets). Returns ``(mixed_labels, own weight)``.
  """
  if normalize:
    total = w_own + w_partner
    lam = jnp.where(total > 0, w_own / jnp.where(total > 0, total, 1.0),
                    fallback)
    lam = jnp.clip(lam, 0.0, 1.0)
    return mix_labels(labels, lam, index), lam
  raw = (w_own[:, None] * labels.astype(jnp.float32) +
         w_partner[:, None] * take(labels, index).astype(jnp.float32))
  return raw.astype(labels.dtype), w_own


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
  return blend(images, take(images, index), mask)


def nway_blend(images: jax.Array, weights: jax.Array, index: jax.Array
               ) -> jax.Array:
  """``Σ_i weights[..., i] ⊙ images[index[:, i]]``, summed in the order i = 0..N-1.

  Args:
    images: ``[B, H, W, C]``.
    weights: ``[B, H, W, N]`` per-pixel masks (channel i weights image i) or
      ``[B, N]`` per-sample weights (plain N-way mixup).
    index: ``[B, N]`` int, the source sample of image i.
  """
  out = None
  for i in range(index.shape[1]):
    w = weights[..., i]
    w = w[..., None] if w.ndim == 3 else w.reshape(-1, 1, 1, 1)
    term = w.astype(images.dtype) * take(images, index[:, i])
    out = term if out is None else out + term
  return out


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


def block_mean(x: Array, gh: int, gw: int) -> Array:
  """Means over a ``gh x gw`` grid of equal blocks: ``[B, H, W, ...]`` ->
  ``[B, gh, gw, ...]`` (the caller checks divisibility; avg-pooling with
  kernel = stride = the block)."""
  batch_size, height, width = x.shape[:3]
  return x.reshape(batch_size, gh, height // gh, gw, width // gw,
                   *x.shape[3:]).mean(axis=(2, 4))


def block_shares(saliency: Array, grid: int) -> Array:
  """Each block's share of an image's saliency: ``[B, H, W]`` -> ``[B, g, g]``
  block means summing to 1 per image (PuzzleMix's and Co-Mixup's unary; a map
  that is 0 everywhere gives equal shares rather than 0/0)."""
  pooled = block_mean(saliency, grid, grid)
  total = pooled.sum((1, 2), keepdims=True)
  return jnp.where(total > 0, pooled / jnp.where(total > 0, total, 1.0),
                   1.0 / (grid * grid))


def check_saliency(saliency: Any, batch_size: int, height: int, width: int,
                   *, arg: str = "saliency", nonnegative: bool = True) -> None:
  """Raises unless ``saliency`` is float ``[B, H, W]`` maps, >= 0 if
  ``nonnegative`` (the model-aware mixers' ``saliency``, docs/interfaces.md;
  values are checked as in ``check_value``: at once if concrete, by
  ``checkify`` under jit)."""
  shape = getattr(saliency, "shape", None)
  if shape is None or tuple(shape) != (batch_size, height, width):
    raise ValueError(
        f"`{arg}` must be maps of shape [B, H, W] = ({batch_size}, {height}, "
        f"{width}) on the images' grid; got "
        f"{tuple(shape) if shape is not None else type(saliency).__name__}.")
  if not jnp.issubdtype(saliency.dtype, jnp.floating):
    raise ValueError(f"`{arg}` must be floating point; got dtype "
                     f"{saliency.dtype}.")
  if nonnegative:
    check_in_range(saliency, 0, np.inf,
                   f"`{arg}` must be >= 0 everywhere (e.g. the input-gradient "
                   "norm); got range [{lo}, {hi}].")


def mask_to_lam(mask: Array) -> Array:
  """Mean own-image weight per sample: ``[B, ..., 1]`` -> ``[B]`` float32."""
  return jnp.mean(mask.astype(jnp.float32), axis=tuple(range(1, mask.ndim)))
