"""``Mixup``: timm's ``timm.data.Mixup`` as one pure, key-first JAX call.

``Mixup(mixup_alpha=.8, cutmix_alpha=1., label_smoothing=.1, num_classes=1000)``
has timm's hyperparameters, defaults and draws (``timm/data/mixup.py``, installed
timm 1.0.x): the partner of sample i is ``B - 1 - i`` (``x.flip(0)``), a ``prob``
gate, a ``switch_prob`` choice between MixUp and CutMix, ``cutmix_minmax``
boxes, ``correct_lam``, smoothed one-hot targets, and the three modes:

* ``"batch"``: one gate, one choice, one λ and one box for the batch;
* ``"elem"``: a gate, choice, λ and box per sample;
* ``"pair"``: one per pair ``(i, B - 1 - i)``; both members share λ and box,
  so the pair swaps the same region.

The call is ``images, targets = mixup(key, images, int_labels)``; JAX's PRNG
cannot replay NumPy's stream, so the draws are the same *distribution*, and the
overrides ``lam``, ``use_cutmix``, ``center`` and ``box`` replay timm's draws
exactly (``tests/mixers/test_timm_mixup.py``). Deliberate differences from timm
are listed in the README.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _common as C
from automix_jax.mixers import _cutmix as B_

Array = jax.Array

MODES = ("batch", "pair", "elem")


def _non_negative(value: Any, arg: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not 0 <= value < float("inf")):
    raise ValueError(f"`{arg}` must be a finite number >= 0 (0 turns it "
                     f"off); got {value!r}.")
  return float(value)


def _draw_shape(value: Any, n: int, arg: str, dtype) -> Array:
  """An override given per draw: a scalar or ``[n]``, returned as ``[n]``."""
  shape = tuple(jnp.shape(value))
  if shape not in ((), (n,)):
    raise ValueError(
        f"`{arg}` must be a scalar or one value per draw, shape [{n}] (one per "
        f"batch, sample or pair for mode batch, elem or pair); got {shape}.")
  return jnp.broadcast_to(jnp.asarray(value, dtype), (n,))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mixup:
  """timm's ``Mixup`` / CutMix switch with its defaults; a pure function object.

  Attributes (timm's names and defaults):
    mixup_alpha: Beta concentration of MixUp's λ; 0 turns MixUp off.
    cutmix_alpha: Beta concentration of CutMix's λ; 0 turns CutMix off.
    cutmix_minmax: optional ``(min, max)`` box side ratios; as in timm it
      turns CutMix on with ``cutmix_alpha = 1`` (the Beta draw then only
      gates) and boxes of ``randint(int(S min), int(S max))`` pixels per side
      that never clip.
    prob: probability of mixing a batch / sample / pair at all.
    switch_prob: probability of CutMix rather than MixUp when both are on.
    mode: ``"batch"``, ``"pair"`` or ``"elem"`` (see the module docstring).
    correct_lam: CutMix λ = 1 - box area / (H W) after clipping (always with
      ``cutmix_minmax``).
    label_smoothing: targets ``(1 - s) one_hot + s / K`` before mixing.
    num_classes: K.
    box_rule: ``"exact"`` (installed timm: an unclipped box is exactly
      ``cut`` pixels) or ``"symmetric"`` (older timm, torchvision:
      ``2 (cut // 2)``); see ``cutmix``.
    data_format: ``None``/``"NHWC"`` or ``"NCHW"`` (timm's layout; the output
      keeps it), as for every mixer.
  """
  mixup_alpha: float = 1.0
  cutmix_alpha: float = 0.0
  cutmix_minmax: Any = None
  prob: float = 1.0
  switch_prob: float = 0.5
  mode: str = "batch"
  correct_lam: bool = True
  label_smoothing: float = 0.1
  num_classes: int = 1000
  box_rule: str = "exact"
  data_format: Any = None

  def __post_init__(self):
    _non_negative(self.mixup_alpha, "mixup_alpha")
    _non_negative(self.cutmix_alpha, "cutmix_alpha")
    if self.cutmix_minmax is not None:
      lo, hi = C.check_range(self.cutmix_minmax, arg="cutmix_minmax")
      if not 0 < lo < hi:
        raise ValueError(f"`cutmix_minmax` must satisfy 0 < min < max <= 1; "
                         f"got {(lo, hi)}.")
      object.__setattr__(self, "cutmix_minmax", (lo, hi))
      object.__setattr__(self, "cutmix_alpha", 1.0)  # timm forces it.
    if not (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
      raise ValueError("one of `mixup_alpha` > 0, `cutmix_alpha` > 0 or "
                       "`cutmix_minmax` must turn mixing on.")
    C.check_probability(self.prob, arg="prob")
    C.check_probability(self.switch_prob, arg="switch_prob")
    C.check_choice(self.mode, MODES, arg="mode")
    C.check_static_bool(self.correct_lam, arg="correct_lam")
    if (isinstance(self.label_smoothing, bool) or
        not isinstance(self.label_smoothing, numbers.Real) or
        not 0 <= self.label_smoothing < 1):
      raise ValueError(f"`label_smoothing` must be a number in [0, 1); got "
                       f"{self.label_smoothing!r}.")
    C.check_positive_int(self.num_classes, arg="num_classes")
    C.check_choice(self.box_rule, B_.BOX_RULES, arg="box_rule")
    C.check_data_format(self.data_format)

  def _draws(self, batch_size: int) -> int:
    return {"batch": 1, "elem": batch_size, "pair": batch_size // 2}[self.mode]

  def __call__(self, key: Array, images: Any, labels: Any, *, lam: Any = None,
               use_cutmix: Any = None, center: Any = None, box: Any = None,
               return_aux: bool = False):
    """Mixes ``images`` with their flipped batch; returns ``(images, targets)``.

    Args:
      key: PRNG key.
      images: ``[B, H, W, C]`` floating (``[B, C, H, W]`` with
        ``data_format="NCHW"``), B even (timm asserts it).
      labels: ``[B]`` integer class ids in ``[0, num_classes)``.
      lam: optional λ draws before any box correction, one per draw (scalar,
        or ``[n]`` with n = 1, B or B/2 for mode batch, elem or pair); 1 means
        "not mixed" (timm's ``prob`` gate).
      use_cutmix: optional bool per draw (scalar or ``[n]``).
      center: optional integer box centres ``(cy, cx)``, ``[2]`` or ``[n, 2]``
        (the ``rand_bbox`` path).
      box: optional boxes ``(y1, y2, x1, x2)``, ``[4]`` or ``[n, 4]``, used as
        is (the ``cutmix_minmax`` path).
      return_aux: also return ``aux`` with ``lam`` ``[B]`` (own-label weight
        after correction), ``index`` ``[B]`` (the flip), ``use_cutmix``
        ``[B]`` and ``box`` ``[B, 4]``.

    Returns:
      ``(mixed_images, targets)`` with targets ``[B, num_classes]`` float32;
      ``(mixed_images, targets, aux)`` with ``return_aux``.
    """
    images = C.channels_last(images, self.data_format)
    C.check_images(images, ranks=(4,))
    batch_size, height, width, _ = images.shape
    if batch_size % 2:
      raise ValueError(f"`images` batch size must be even (sample i mixes with "
                       f"B - 1 - i, as in timm); got {batch_size}.")
    targets = C.one_hot(labels, self.num_classes,
                        smoothing=self.label_smoothing)
    C.check_labels(targets, batch_size)
    use_cut = self.cutmix_alpha > 0
    if use_cut:
      B_.check_box_room(height, width, 2 if self.box_rule == "exact" else 3,
                        mixer="Mixup's CutMix", why="its box is never "
                        "non-empty at this size")
    n = self._draws(batch_size)
    k_gate, k_switch, k_cut, k_mix, k_box = jax.random.split(key, 5)

    if use_cutmix is None:
      if use_cut and self.mixup_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch, (n,)) < self.switch_prob
      else:
        use_cutmix = jnp.full((n,), use_cut)
    use_cutmix = _draw_shape(use_cutmix, n, "use_cutmix", bool)
    if lam is None:
      draws = []
      if use_cut:
        draws.append(jax.random.beta(k_cut, self.cutmix_alpha,
                                     self.cutmix_alpha, (n,), jnp.float32))
      if self.mixup_alpha > 0:
        draws.append(jax.random.beta(k_mix, self.mixup_alpha,
                                     self.mixup_alpha, (n,), jnp.float32))
      lam = jnp.where(use_cutmix, draws[0], draws[-1])
      lam = jnp.where(jax.random.uniform(k_gate, (n,)) < self.prob, lam, 1.0)
    else:
      lam = C.check_lam(_draw_shape(lam, n, "lam", jnp.float32), n)
    mixed_here = lam != 1.0                       # timm skips λ == 1 entirely

    if box is not None:
      box = B_.check_box(box, n, height, width)
    elif self.cutmix_minmax is not None:
      box = self._minmax_box(k_box, n, height, width)
    else:
      if center is None:
        center = B_.draw_center(k_box, n, height, width, "sample")
      else:
        center = B_.check_center(center, n, height, width)
      box = B_.box_from_center(center[:, 0], center[:, 1],
                               B_.cut_size(lam, height),
                               B_.cut_size(lam, width), height, width,
                               self.box_rule)
    cut_here = use_cutmix & mixed_here
    box = jnp.where(cut_here[:, None], box, 0)    # no box where nothing mixes
    if self.correct_lam or self.cutmix_minmax is not None:
      lam = jnp.where(cut_here, B_.box_area_lam(box, height, width), lam)

    if self.mode == "pair":  # pair i and B - 1 - i share the draw
      lam, cut_here, box = (jnp.concatenate([v, v[::-1]]) for v in
                            (lam, cut_here, box))
    else:
      lam, cut_here, box = (jnp.broadcast_to(v, (batch_size,) + v.shape[1:])
                            for v in (lam, cut_here, box))
    index = jnp.arange(batch_size, dtype=jnp.int32)[::-1]
    inside = B_.box_inside(box, height, width)[..., None]
    weight = jnp.where(cut_here[:, None, None, None], ~inside,
                       C.per_sample(lam, 4))
    mixed = C.blend(images, C.take(images, index), weight)
    mixed, targets, aux = C.restore_layout(
        mixed, C.mix_labels(targets, lam, index),
        {"lam": lam, "index": index, "use_cutmix": cut_here, "box": box},
        self.data_format)
    return (mixed, targets, aux) if return_aux else (mixed, targets)

  def _minmax_box(self, key: Array, n: int, height: int, width: int) -> Array:
    """timm's ``rand_bbox_minmax``: side ``randint(int(S lo), int(S hi))``,
    top-left ``randint(0, S - side + 1)``; never clipped."""
    lo, hi = self.cutmix_minmax
    k_h, k_w, k_y, k_x = jax.random.split(key, 4)
    sides = []
    for k, size in ((k_h, height), (k_w, width)):
      low, high = int(size * lo), int(size * hi)
      if low >= high:
        raise ValueError(
            f"`cutmix_minmax` {(lo, hi)} gives no box side on {size} pixels "
            f"(randint({low}, {high}) is empty); widen it or use larger "
            "images.")
      sides.append(jax.random.randint(k, (n,), low, high, jnp.int32))
    cut_h, cut_w = sides
    y1 = jax.random.randint(k_y, (n,), 0, height - cut_h + 1, jnp.int32)
    x1 = jax.random.randint(k_x, (n,), 0, width - cut_w + 1, jnp.int32)
    return jnp.stack([y1, y1 + cut_h, x1, x1 + cut_w], axis=1)
