"""ManifoldMix (Verma et al., "Manifold Mixup: Better Representations by
Interpolating Hidden States", ICML 2019, arXiv 1806.05236).

MixUp of hidden states: one stage k is drawn per batch among ``stages``, and
the model's features after stage k are mixed, ``h̃ = λ h + (1 - λ) h[index]``
(k = 0 is the input image, i.e. plain MixUp), with ``ỹ = λ y + (1 - λ)
y[index]``. The authors' code is github.com/vikasverma1077/manifold_mixup; the
defaults here are OpenMixup's (github.com/Westlake-AI/openmixup,
``openmixup/models/classifiers/mixup_classification.py:_manifoldmix`` with
``backbones/resnet_mmcls.py:ResNet_Mix_CIFAR._feature_mixup``): λ ~ Beta(2, 2)
once per batch, a random permutation as partner, and k uniform on
``range(*layer)`` with ``layer=(0, 3)``, i.e. k in {0, 1, 2}: the input, after
stage 1, after stage 2.

The mixer is model-aware with need ``"feature_mix"`` (docs/interfaces.md): it
returns ``(feature_mix, mixed_labels, aux)`` and the model calls
``feature_mix(stage, x)`` on its input and after every stage. The chosen stage
is a traced value, so one trace serves every draw: each candidate stage
computes the blend and keeps it where ``stage == chosen`` (``jnp.where``).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C

Array = jax.Array


def check_stages(stages: Any, *, arg: str = "stages") -> tuple[int, ...]:
  """A non-empty tuple of distinct stage numbers >= 0 (0 = the input)."""
  if isinstance(stages, numbers.Integral) and not isinstance(stages, bool):
    stages = (stages,)
  try:
    stages = tuple(stages)
  except TypeError:
    stages = None
  if (not stages or len(set(stages)) != len(stages) or any(
      isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0
      for s in stages)):
    raise ValueError(
        f"`{arg}` must be a non-empty tuple of distinct stage numbers >= 0 "
        "(0 the input, s the output of stage s; ResNets have 1..4, WRN 1..3, "
        f"ViT the blocks 1..depth), e.g. (0, 1, 2); got {stages!r}.")
  return tuple(int(s) for s in stages)


def check_stage(stage: Any, *, arg: str = "stage") -> int:
  """One stage number >= 0 as a Python int."""
  if (isinstance(stage, bool) or not isinstance(stage, numbers.Integral) or
      stage < 0):
    raise ValueError(
        f"`{arg}` must be a stage number >= 0 (0 the input, s the output of "
        f"stage s); got {stage!r}.")
  return int(stage)


CHECKS = {"stages": check_stages}


def checked_features(x: Any, batch_size: int, stage: int) -> Array:
  """``x`` given to ``feature_mix`` at ``stage``: ``[B, ...]``, floating.

  The model passes the whole batch at every stage; anything else (a
  per-device slice of it, a rank-1 array) cannot be mixed with the drawn
  partners and raises ``ValueError`` at trace time.
  """
  shape = getattr(x, "shape", None)
  if (shape is None or len(shape) < 2 or shape[0] != batch_size or
      not jnp.issubdtype(x.dtype, jnp.floating)):
    raise ValueError(
        f"`feature_mix({stage}, x)`: `x` must be the batch's floating features "
        f"[B, ...] with B = {batch_size} (the partners index the whole batch); "
        f"got {tuple(shape) if shape is not None else type(x).__name__}.")
  return x


def manifoldmix(key: Array, images: Array, labels: Array, *,
                alpha: float = 2.0, stages: tuple[int, ...] = (0, 1, 2),
                lam_scope: str = "batch", partner: str = "permutation",
                lam: Any = None, index: Any = None, stage: Any = None
                ) -> tuple[Callable[[int, Array], Array], Array, dict]:
  """ManifoldMix: MixUp of the features after a random stage.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images (the clean batch the model will
      run on; only their shape is read here).
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration (OpenMixup CIFAR: 2).
    stages: the stages k may be drawn from, uniformly (OpenMixup's
      ``layer=(0, 3)`` is ``(0, 1, 2)``). The trainer refuses a stage the
      model does not have.
    lam_scope: ``"batch"`` (one λ, OpenMixup and the authors) or
      ``"sample"``.
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    lam: optional explicit λ, scalar or ``[B]``.
    index: optional explicit partner indices ``[B]``.
    stage: optional explicit stage, a member of ``stages`` (Python int, or
      an int32 scalar array under jit); drawn when None.

  Returns:
    ``(feature_mix, mixed_labels, aux)``: ``feature_mix(s, x) -> x'`` mixes
    ``x`` (``[B, ...]``, any rank) with ``x[index]`` when ``s`` is the chosen
    stage and returns it unchanged otherwise; ``mixed_labels`` ``[B, K]``;
    ``aux`` holds ``lam`` ``[B]`` float32, ``index`` ``[B]`` int32 and
    ``stage`` (int32 scalar, the chosen stage).
  """
  batch_size = C.check_batch(images, labels)
  alpha = C.check_alpha(alpha)
  stages = check_stages(stages)
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  if stage is not None and isinstance(stage, (numbers.Integral, np.integer)):
    if check_stage(stage) not in stages:
      raise ValueError(f"`stage` must be one of `stages` {stages}; got "
                       f"{stage}.")
  elif stage is not None:
    if getattr(stage, "shape", None) != () or not jnp.issubdtype(
        stage.dtype, jnp.integer):
      raise ValueError(f"`stage` must be an int or an int32 scalar array; got "
                       f"{stage!r}.")
  k_lam, k_index, k_stage = jax.random.split(key, 3)
  lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)
  if stage is None:
    chosen = jnp.asarray(stages, jnp.int32)[
        jax.random.randint(k_stage, (), 0, len(stages))]
  else:
    chosen = jnp.asarray(stage, jnp.int32)
  # The mixing is data for the model: no gradient flows into λ or the index.
  lam = jax.lax.stop_gradient(lam)

  def feature_mix(s: int, x: Array) -> Array:
    if s not in stages:  # Static: stages that are never drawn cost nothing.
      return x
    x = checked_features(x, batch_size, s)
    mixed = C.blend(x, C.take(x, index), C.per_sample(lam, x.ndim))
    return jnp.where(chosen == s, mixed, x)

  aux = {"lam": lam, "index": index, "stage": chosen}
  return feature_mix, C.mix_labels(labels, lam, index), aux
