"""AlignMix (Venkataramanan et al., "AlignMixup: Improving Representations By
Interpolating Aligned Features", CVPR 2022, arXiv 2103.15375).

Mixes last-stage feature maps after aligning them with optimal transport. With
``A``, ``A'`` the ``[HW, C]`` maps of a sample and of its partner, an
entropic optimal transport plan ``P`` ``[HW, HW]`` (Sinkhorn, uniform
marginals, squared Euclidean cost, regularisation ε) gives the assignment
``R = HW · P`` (rows summing to ~1), and a coin flip picks one of

* ``λ A + (1 - λ) R A'``   (the partner aligned to the sample, ``Ã = A'Rᵀ``
  in the paper's ``[C, HW]`` notation),
* ``λ Rᵀ A + (1 - λ) A'``  (the sample aligned to the partner, ``Ã' = AR``),

with ``ỹ = λ y + (1 - λ) y[index]`` either way. Follows the authors' code
(github.com/shashankvkt/AlignMixup_CVPR22, ``cifar10_100/utils/OT.py`` and
``models/resnet18_classifier.py:mixup_aligned``), which OpenMixup copies
(``openmixup/models/augments/alignmix.py``):

* Sinkhorn in the log domain from ``u = v = 0``, ``log(1/n + 1e-8)``
  marginals, at most ``max_iter = 100`` iterations, stopping after the first
  iteration whose ``mean_b sum_i |u_new - u_old| < 0.1`` (a batch-wide rule).
  Under jit this is a ``lax.while_loop`` with the same condition, so it stops
  at the same iteration as the reference. The plan is computed without
  gradient (the reference ``.detach()``\\ es it).
* The authors' training step (``Resnet_classifier.forward``) draws
  ``layer_mix`` in {0, 1}: 0 is plain MixUp of the input images, 1 the aligned
  mix after the last stage, with one λ ~ Beta(2, 2) either way. That is
  ``input_prob=0.5`` here (the default); ``input_prob=0`` is OpenMixup's
  ``alignmix`` alone (its CIFAR config mixes it 50/50 with ManifoldMix through
  ``mix_mode``).
* Cost matrix: ``|a|² + |b|² - 2 a·b`` (clipped at 0) rather than the
  reference's broadcast ``sum((a - b)²)``, which needs a ``[B, HW, HW, C]``
  temporary (1.3 G floats at ImageNet size); equal up to float rounding.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp

from automix_jax.mixers import _common as C
from automix_jax.mixers import _manifoldmix as M_

Array = jax.Array


def _check_positive(value: Any, *, arg: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not value > 0):
    raise ValueError(f"`{arg}` must be a number > 0; got {value!r}.")
  return float(value)


CHECKS = {"stage": M_.check_stage,
          "input_prob": functools.partial(C.check_probability,
                                          arg="input_prob"),
          "eps": functools.partial(_check_positive, arg="eps"),
          "threshold": functools.partial(_check_positive, arg="threshold"),
          "max_iter": functools.partial(C.check_positive_int, arg="max_iter")}


def sinkhorn_plan(x: Array, y: Array, *, eps: float = 0.1, max_iter: int = 100,
                  threshold: float = 0.1) -> tuple[Array, Array]:
  """Entropic OT plans between point sets, as the AlignMix authors compute them.

  Args:
    x: ``[B, P, D]`` points (the sample's positions).
    y: ``[B, Q, D]`` points (the partner's positions).
    eps: entropic regularisation ε.
    max_iter: most iterations.
    threshold: stop after the first iteration with
      ``mean_b sum_i |u_new - u_old| < threshold``.

  Returns:
    ``(plan, iterations)``: ``plan`` ``[B, P, Q]`` float32 with row sums
    ``~1/P`` and column sums ``~1/Q`` (the column marginal is exact after each
    iteration, the row marginal at convergence), and the int32 number of
    iterations run.
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  p, q = x.shape[1], y.shape[1]
  cost = (jnp.sum(x * x, -1)[:, :, None] + jnp.sum(y * y, -1)[:, None, :]
          - 2.0 * jnp.einsum("bpd,bqd->bpq", x, y))
  cost = jnp.maximum(cost, 0.0)
  log_mu = jnp.log(jnp.float32(1.0 / p) + 1e-8)
  log_nu = jnp.log(jnp.float32(1.0 / q) + 1e-8)

  def modified(u, v):  # M_ij = (-c_ij + u_i + v_j) / ε
    return (-cost + u[:, :, None] + v[:, None, :]) / eps

  def body(state):
    i, u, v, _ = state
    u_new = eps * (log_mu - jax.nn.logsumexp(modified(u, v), axis=-1)) + u
    v_new = eps * (log_nu - jax.nn.logsumexp(modified(u_new, v), axis=-2)) + v
    err = jnp.mean(jnp.sum(jnp.abs(u_new - u), axis=-1))
    return i + 1, u_new, v_new, err

  def cond(state):
    i, _, _, err = state
    return (i < max_iter) & (err >= threshold)

  b = x.shape[0]
  init = (jnp.int32(0), jnp.zeros((b, p), jnp.float32),
          jnp.zeros((b, q), jnp.float32), jnp.float32(jnp.inf))
  iterations, u, v, _ = jax.lax.while_loop(cond, body, init)
  return jnp.exp(modified(u, v)), iterations


def align_features(x: Array, partner: Array, lam: Array, direction: Array, *,
                   eps: float, max_iter: int, threshold: float) -> Array:
  """The aligned mix of ``x`` and ``partner`` (``[B, ..., C]``, same shape).

  ``direction`` (bool scalar) False: ``λ A + (1 - λ) R A'``; True:
  ``λ Rᵀ A + (1 - λ) A'``, with ``R = HW · P`` from ``sinkhorn_plan`` on the
  positions (all axes between batch and channels) of ``stop_gradient``\\ ed
  features.
  """
  b, c = x.shape[0], x.shape[-1]
  a = x.reshape(b, -1, c)
  a2 = partner.reshape(b, -1, c)
  plan, _ = sinkhorn_plan(jax.lax.stop_gradient(a), jax.lax.stop_gradient(a2),
                          eps=eps, max_iter=max_iter, threshold=threshold)
  assign = (plan * a.shape[1]).astype(x.dtype)
  w = C.per_sample(lam, 3).astype(x.dtype)
  to_own = w * a + (1 - w) * jnp.einsum("bij,bjc->bic", assign, a2)
  to_partner = w * jnp.einsum("bij,bic->bjc", assign, a) + (1 - w) * a2
  return jnp.where(direction, to_partner, to_own).reshape(x.shape)


def alignmix(key: Array, images: Array, labels: Array, *, alpha: float = 2.0,
             stage: int = 4, input_prob: float = 0.5, eps: float = 0.1,
             max_iter: int = 100, threshold: float = 0.1,
             partner: str = "permutation", lam: Any = None, index: Any = None,
             use_input: Any = None, direction: Any = None
             ) -> tuple[Callable[[int, Array], Array], Array, dict]:
  """AlignMix: optimal-transport-aligned mixing of last-stage features.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images (the clean batch; shape only).
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration of the one λ per batch (the
      authors' and OpenMixup's 2).
    stage: the stage whose output is aligned and mixed: the model's last
      (4 for the ResNets, the reference's network; 3 for the WRN, ``depth``
      for a ViT, whose tokens ``[B, 1 + N, D]`` are aligned as positions).
      The trainer refuses a stage the model does not have.
    input_prob: probability of plain MixUp of the input images instead (the
      authors' ``layer_mix``; 0 for aligned mixing only).
    eps, max_iter, threshold: Sinkhorn settings (``sinkhorn_plan``).
    partner: ``"permutation"`` (the reference), ``"flip"`` or ``"roll"``.
    lam: optional explicit λ, scalar or ``[B]``.
    index: optional explicit partner indices ``[B]``.
    use_input: optional explicit bool (scalar) for the input-MixUp branch.
    direction: optional explicit bool (scalar): False aligns the partner to
      the sample, True the sample to the partner.

  Returns:
    ``(feature_mix, mixed_labels, aux)``; ``aux`` holds ``lam`` ``[B]``,
    ``index`` ``[B]``, ``use_input`` and ``direction`` (bool scalars).
  """
  batch_size = C.check_batch(images, labels)
  alpha = C.check_alpha(alpha)
  stage = M_.check_stage(stage)
  if stage == 0:
    raise ValueError("`stage` must be >= 1: AlignMix aligns the feature maps "
                     "a stage outputs, not the input (stage 0).")
  input_prob = C.check_probability(input_prob, arg="input_prob")
  eps = _check_positive(eps, arg="eps")
  threshold = _check_positive(threshold, arg="threshold")
  max_iter = C.check_positive_int(max_iter, arg="max_iter")
  C.check_partner(partner, batch_size)
  for name, value in (("use_input", use_input), ("direction", direction)):
    if value is None or isinstance(value, bool):
      continue
    dtype = getattr(value, "dtype", None)
    if getattr(value, "shape", None) != () or dtype != jnp.bool_:
      raise ValueError(f"`{name}` must be a bool or a bool scalar array; got "
                       f"{value!r}.")
  k_lam, k_index, k_input, k_dir = jax.random.split(key, 4)
  lam = jax.lax.stop_gradient(
      C.resolve_lam(k_lam, alpha, batch_size, "batch", lam))
  index = C.resolve_index(k_index, batch_size, partner, index)
  if use_input is None:
    use_input = jax.random.bernoulli(k_input, input_prob)
  if direction is None:
    direction = jax.random.bernoulli(k_dir, 0.5)
  use_input = jnp.asarray(use_input, bool)
  direction = jnp.asarray(direction, bool)

  def feature_mix(s: int, x: Array) -> Array:
    if s == 0:
      x = M_.checked_features(x, batch_size, s)
      mixed = C.blend(x, C.take(x, index), C.per_sample(lam, x.ndim))
      return jnp.where(use_input, mixed, x)
    if s != stage:
      return x
    x = M_.checked_features(x, batch_size, s)
    if x.ndim < 3:
      raise ValueError(
          f"`feature_mix({s}, x)`: AlignMix aligns positions, so `x` must be "
          f"[B, h, w, C] or [B, L, C]; got {x.shape}.")
    # The Sinkhorn loop runs only on the aligned branch.
    return jax.lax.cond(
        use_input, lambda: x,
        lambda: align_features(x, C.take(x, index), lam, direction, eps=eps,
                               max_iter=max_iter, threshold=threshold))

  aux = {"lam": lam, "index": index, "use_input": use_input,
         "direction": direction}
  return feature_mix, C.mix_labels(labels, lam, index), aux
