"""SAMix (Li et al., "Boosting Discriminative Visual Representation Learning
with Scenario-Agnostic Mixup", arXiv 2111.15454, 2021) as a pure training
method.

SAMix's supervised form is AutoMix's iteration (``train/automix.py``) with other
Mix Block options and losses: the authors train it with OpenMixup's
``AutoMixup`` classifier (``openmixup/models/classifiers/automix.py``),
configured by ``configs/classification/cifar100/samix/``
(github.com/Westlake-AI/openmixup; ``mix_mode="samix"`` of
``MixUpClassification`` is not implemented there). What differs from AutoMix:

* Mix Block (``generators.PixelMixBlock`` options, ``pmix_block.py``): features
  rescaled by the adjusted ``λ̂`` (``lam_mul=1, lam_residual, lam_mul_k=0.25``),
  query and key convs on ``concat(x, x[π])`` (``x_qk_concat``), a
  conv-BN-ELU-conv value net with C/2 hidden channels, bilinear upsampling.
* Generator loss: the teacher's head-``mix`` cross-entropy is OpenMixup's soft
  CE with ``neg_weight`` η (``ClsMixupHead(multi_label=True,
  neg_weight=0.5)``, "eta in SAMix"): each class term ``-ỹ_k log p_k`` is
  weighted 1 on the mixed classes (``λ y + (1-λ) y[π] > 0``) and η elsewhere
  (:func:`eta_soft_ce`). With one-hot targets the other classes' terms are
  zero, so η changes nothing (the reference's CIFAR setting); it weights the
  smoothed mass under label smoothing.
* Mask loss ``"L1+Variance"``: ``max(|1 - λ - mean(s)| - m, 0) - 2 Var(s)``,
  the variance over batch and pixels around the global mean
  (:func:`mask_variance`).
* ``mask_adjust`` p: with probability p per step, the classifier's detached
  mask is rescaled per sample so that its own-image mean equals λ
  (:func:`adjust_mask_mean`), before the λ-margin test. The reference rescales
  towards λ_mb, the *generator's* λ (``lam[0]``), while the label uses λ_bb;
  ``mask_adjust_lam`` ("mb" = the reference | "bb") chooses.

Config block ``config.samix`` (configs/samix/cifar100.py documents each key):
AutoMix's keys plus ``eta, mask_loss_mode ("L1" | "L1+Variance"), mask_adjust,
mask_adjust_lam ("mb" | "bb")`` and the generator keys ``lam_mul, lam_mul_k,
lam_residual, x_qk_concat, value_reduction``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from automix_jax import generators
from automix_jax import mixers
from automix_jax.train import _learned as L
from automix_jax.train import automix

MASK_LOSS_MODES = ("L1", "L1+Variance")
MASK_ADJUST_LAMS = ("mb", "bb")

# The reference's clamp of the own-image mask before taking its mean.
ADJUST_EPS = 1e-8


def eta_soft_ce(logits: jax.Array, targets: jax.Array, positive: jax.Array, *,
                eta: float) -> jax.Array:
  """``mean_b -Σ_k w_bk ỹ_bk log softmax(z_b)_k``, ``w = 1`` on ``positive``, η
  elsewhere.

  OpenMixup's ``soft_cross_entropy`` with the ``class_weight`` that
  ``ClsMixupHead`` builds from ``neg_weight``: ``clamp(ỹ > 0, min=η)``.

  Args:
    logits: ``[B, K]``.
    targets: ``[B, K]`` soft targets ỹ.
    positive: ``[B, K]`` bool, the mixed classes (``λ y + (1-λ) y[π] > 0`` of
      the unsmoothed one-hots).
    eta: weight of the other classes, in [0, 1].

  Returns:
    float32 scalar.
  """
  if logits.ndim != 2 or not logits.shape == targets.shape == positive.shape:
    raise ValueError(f"`logits`, `targets` and `positive` must all be [B, K]; "
                     f"got {logits.shape}, {targets.shape}, {positive.shape}.")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  w = jnp.where(positive, 1.0, jnp.float32(eta))
  return -jnp.mean(jnp.sum(w * targets.astype(jnp.float32) * logp, axis=-1))


def mask_variance(s: jax.Array) -> jax.Array:
  """``mean((s - mean(s))²)`` over batch and pixels (the reference's variance
  term, one global mean, not per sample)."""
  s = s.astype(jnp.float32)
  return jnp.mean(jnp.square(s - jnp.mean(s)))


def adjust_mask_mean(s: jax.Array, lam: jax.Array) -> jax.Array:
  """Rescales each partner mask ``s`` ``[B, H, W, 1]`` so that its own-image
  mean is λ (OpenMixup ``AutoMixup.pixel_mixup``, ``mask_adjust``).

  With ``m = clip(1 - s, ε, 1 - ε)`` and ``μ_b = mean(m_b)``: if ``μ_b > λ + ε``
  the own weight becomes ``m λ / μ_b``; if ``μ_b < λ - ε`` the partner weight
  becomes ``(1 - m)(1 - λ) / (1 - μ_b)``; otherwise ``s_b`` is unchanged.

  Args:
    s: ``[B, H, W, 1]`` partner weight in [0, 1].
    lam: scalar or ``[B]`` target own-image mean.

  Returns:
    ``[B, H, W, 1]`` partner weight.
  """
  own = jnp.clip(1.0 - s, ADJUST_EPS, 1.0 - ADJUST_EPS)
  mean = jnp.mean(own, axis=(1, 2, 3), keepdims=True)
  lam = jnp.broadcast_to(jnp.asarray(lam, s.dtype).reshape(-1, 1, 1, 1),
                         mean.shape)
  larger = mean > lam + ADJUST_EPS
  smaller = mean < lam - ADJUST_EPS
  # Safe denominators: jnp.where evaluates both branches.
  s_larger = 1.0 - own * (lam / jnp.where(larger, mean, 1.0))
  s_smaller = (1.0 - own) * ((1.0 - lam) / jnp.where(smaller, 1.0 - mean, 1.0))
  return jnp.where(larger, s_larger, jnp.where(smaller, s_smaller, s))


class SAMix(automix.AutoMix):
  """AutoMix's step with SAMix's Mix Block and losses (module docstring)."""

  block_name = "samix"

  def _read_block(self, block: Any) -> None:
    super()._read_block(block)
    name = self.block_name
    self.eta = L.check_unit(L.get(block, "eta", 0.5), f"{name}.eta")
    self.mask_loss_mode = L.check_choice(
        L.get(block, "mask_loss_mode", "L1+Variance"), MASK_LOSS_MODES,
        f"{name}.mask_loss_mode")
    self.mask_adjust = L.check_unit(L.get(block, "mask_adjust", 0.0),
                                    f"{name}.mask_adjust")
    self.mask_adjust_lam = L.check_choice(L.get(block, "mask_adjust_lam", "mb"),
                                          MASK_ADJUST_LAMS,
                                          f"{name}.mask_adjust_lam")

  def _generator_options(self, gen_cfg: dict) -> dict:
    opts = super()._generator_options({"upsample": "bilinear", **gen_cfg})
    opts.update(lam_mul=gen_cfg.get("lam_mul", 1.0),
                lam_mul_k=gen_cfg.get("lam_mul_k", 0.25),
                lam_residual=bool(gen_cfg.get("lam_residual", True)),
                x_qk_concat=bool(gen_cfg.get("x_qk_concat", True)),
                value_reduction=gen_cfg.get("value_reduction", 2))
    try:
      generators.PixelMixBlock(**opts).check_options()
    except ValueError as e:
      raise ValueError(f"`{self.block_name}.generator`: {e}") from None
    return opts

  def draw(self, key: jax.Array, batch_size: int) -> dict:
    """AutoMix's draws plus the ``mask_adjust`` coin (bool ``adjust``)."""
    k_automix, k_adjust = jax.random.split(key)
    d = super().draw(k_automix, batch_size)
    d["adjust"] = jax.random.uniform(k_adjust) < self.mask_adjust
    return d

  def adjust_classifier_mask(self, s_bb: jax.Array, draws: dict) -> jax.Array:
    if self.mask_adjust == 0:
      return s_bb
    lam = draws["lam_mb"] if self.mask_adjust_lam == "mb" else draws["lam_bb"]
    return jnp.where(draws["adjust"], adjust_mask_mean(s_bb, lam), s_bb)

  def prepare(self, state, batch, key) -> dict:
    ctx = super().prepare(state, batch, key)
    # The mixed classes of the generator's target, from unsmoothed one-hots
    # (the reference's y_mixed > 0).
    hard = mixers.one_hot(batch["label"], self.num_classes)
    b = hard.shape[0]
    ctx["positive_mb"] = mixers.mix_labels(
        hard, jnp.broadcast_to(ctx["lam_mb"], (b,)), ctx["perm_mb"]) > 0
    return ctx

  def generator_loss(self, teacher_logits, s_mb, ctx):
    """``η-CE(p_mb, ỹ_mb) + w_mask · (L1(s_mb) - 2 Var(s_mb))`` (``"L1"`` mode:
    no variance term) and its metrics."""
    ce_teacher = eta_soft_ce(teacher_logits, ctx["y_mb"], ctx["positive_mb"],
                             eta=self.eta)
    mask_l1 = self.bounded_l1(s_mb, ctx["lam_mb"])
    mask_var = mask_variance(s_mb)
    variance_term = self.mask_loss_mode == "L1+Variance"
    mask_loss = mask_l1 - 2.0 * mask_var if variance_term else mask_l1
    return ce_teacher + ctx["mask_w"] * mask_loss, {
        "ce_teacher_mix": ce_teacher, "mask_loss": mask_loss,
        "mask_l1": mask_l1, "mask_var": mask_var, "mask_mean": jnp.mean(s_mb),
        "mask_adjust": ctx["adjust"].astype(jnp.float32)}
