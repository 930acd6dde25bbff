"""AutoMix (Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger
Classifiers", ECCV 2022, arXiv 2103.13027) as a pure training method.

One iteration (OpenMixup ``AutoMixup.forward_train``; github.com/Westlake-AI/openmixup):

* λ_mb, λ_bb ~ Beta(α, α) independently (α = 2), one per batch; independent
  permutations π_mb, π_bb.
* The EMA teacher encodes the clean batch; its stage-``mask_layer`` features feed
  the Mix Block. ``s_mb = G(z, π_mb, λ_mb)`` keeps the gradient w.r.t. the
  generator; ``s_bb = stop_gradient(G(z, π_bb, λ_bb))``, replaced by the constant
  ``1 - λ_bb`` (plain mixup) when ``λ_bb <= m`` or ``1 - λ_bb <= m``
  (``lam_margin`` m = 0.08). ``s`` is the partner's weight:
  ``x̃ = (1 - s) ⊙ x + s ⊙ x[π]``, ``ỹ = λ y + (1 - λ) y[π]``.
* Generator loss: the *teacher* (frozen weights, train-mode BN; gradient flows
  through its activations) classifies ``x̃_mb`` with head ``mix``:
  ``CE(p_mb, ỹ_mb) + w_mask · max(|(1 - λ_mb) - mean(s_mb)| - margin, 0)``
  (w_mask = 0.1, margin 0.1; the mean is over batch and pixels).
* Classifier loss: ``CE(head_mix(x̃_bb), ỹ_bb) + CE(head_one(x), y)``.
* One update of {classifier, generator} (disjoint gradients), then the EMA
  teacher update with the CosineScheduleHook momentum.

Config block ``config.automix`` (configs/automix/cifar100.py documents each key):
``alpha, lam_margin, mask_layer, mask_loss, mask_loss_margin,
mask_loss_schedule ("constant" | "cosine"), teacher_bn ("batch_stats" |
"running"), generator = {reduction, scale (0 = the reference's rule from the
image width), upsample, lam_concat, logit_bound (optional; absent or 0 = off,
the reference)}``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from automix_jax import generators
from automix_jax import mixers
from automix_jax.generators import _apply as gen_common
from automix_jax.train import _learned as L


class AutoMix(L.LearnedMixingBase):
  """AutoMix with a PixelMixBlock generator; see the module docstring."""

  block_name = "automix"

  def _read_block(self, block: Any) -> None:
    name = self.block_name
    self.alpha = L.check_positive(L.get(block, "alpha", 2.0), f"{name}.alpha")
    self.lam_margin = L.check_unit(L.get(block, "lam_margin", 0.08),
                                   f"{name}.lam_margin", high=0.5)
    self.mask_loss = L.check_unit(L.get(block, "mask_loss", 0.1),
                                  f"{name}.mask_loss", high=math.inf)
    self.mask_loss_margin = L.check_unit(L.get(block, "mask_loss_margin", 0.1),
                                         f"{name}.mask_loss_margin")
    self.mask_loss_schedule = L.check_choice(
        L.get(block, "mask_loss_schedule", "constant"), ("constant", "cosine"),
        f"{name}.mask_loss_schedule")

  def _build_generator(self, gen_cfg: dict):
    scale = gen_cfg.get("scale", 0)
    self._scale_auto = scale in (0, None)
    if not self._scale_auto:
      gen_common.check_scale(scale, arg=f"{self.block_name}.generator.scale")
    return generators.PixelMixBlock(
        scale=1 if self._scale_auto else scale,   # set from the image in init
        **self._generator_options(gen_cfg))

  def _generator_options(self, gen_cfg: dict) -> dict:
    """``PixelMixBlock`` keyword arguments (other than ``scale``) from
    ``config.<block>.generator``."""
    upsample = gen_cfg.get("upsample", "nearest")
    gen_common.check_upsample(upsample)
    return {"reduction": int(gen_cfg.get("reduction", 2)),
            "lam_concat": bool(gen_cfg.get("lam_concat", False)),
            "upsample": upsample,
            "logit_bound": L.generator_logit_bound(gen_cfg, self.block_name)}

  def generator_for(self, image_hw):
    """The Mix Block with its scale resolved for ``image_hw`` (auto: as OpenMixup)."""
    if self._scale_auto:
      return self.generator.clone(
          scale=generators.automix_scale(image_hw[1], self.mask_layer))
    return self.generator

  def check_features(self, sample_images):
    feat_shape = super().check_features(sample_images)
    image_hw = tuple(int(s) for s in sample_images.shape[1:3])
    gen_common.check_image_size(image_hw, feat_shape[1], feat_shape[2],
                                self.generator_for(image_hw).scale)
    return feat_shape

  def _generator_init_args(self, features, image_hw):
    n = features.shape[0]
    return (features, jnp.arange(n, dtype=jnp.int32), jnp.float32(0.5))

  # ---------------------------------------------------------------------------

  def mask_loss_weight(self, step: jax.Array) -> jax.Array:
    """0.1 constant (CIFAR), or cosine-annealed per iteration to 0 (Cars/ImageNet,
    ``CustomCosineAnnealingHook``)."""
    if self.mask_loss_schedule == "constant":
      return jnp.float32(self.mask_loss)
    t = jnp.minimum(step.astype(jnp.float32) / self.total_steps, 1.0)
    return jnp.float32(self.mask_loss) * 0.5 * (1.0 + jnp.cos(math.pi * t))

  def margin_fires(self, lam_bb: jax.Array) -> jax.Array:
    """``m >= λ_bb or m >= 1 - λ_bb`` (OpenMixup ``pixel_mixup``)."""
    m = jnp.float32(self.lam_margin)
    return jnp.logical_or(m >= lam_bb, m >= 1.0 - lam_bb)

  def draw(self, key: jax.Array, batch_size: int) -> dict:
    """λ_mb, λ_bb (scalars) and π_mb, π_bb (``[B]``) for one step."""
    k_lmb, k_lbb, k_pmb, k_pbb = jax.random.split(key, 4)
    beta = lambda k: jax.random.beta(k, self.alpha, self.alpha, dtype=jnp.float32)
    return {"lam_mb": beta(k_lmb), "lam_bb": beta(k_lbb),
            "perm_mb": jax.random.permutation(k_pmb, batch_size).astype(jnp.int32),
            "perm_bb": jax.random.permutation(k_pbb, batch_size).astype(jnp.int32)}

  def mask(self, gen_params, features, index, lam, image_hw):
    """Partner weight ``s`` ``[B, H, W, 1]``."""
    # The Mix Block returns the own weight sigmoid(-z) and its logit -z; the
    # reference's partner weight sigmoid(z) is taken from the logit, exactly.
    # A SAMix value net's BatchNorm uses batch statistics; its running
    # statistics are never read (the reference's Mix Block only runs in train
    # mode), so the updated `batch_stats` are dropped.
    (_, own_logits), _ = self.generator_for(image_hw).apply(
        {"params": gen_params}, features, index, lam, image_size=image_hw,
        return_logits=True, mutable=["batch_stats"])
    return jax.nn.sigmoid(-own_logits)

  def adjust_classifier_mask(self, s_bb: jax.Array, draws: dict) -> jax.Array:
    """Hook on the classifier's detached mask before the λ-margin (AutoMix:
    unchanged; SAMix: ``mask_adjust``)."""
    del draws
    return s_bb

  def _preview_masks(self, gen_params, features, perms, lam, image_hw):
    s = self.mask(gen_params, features, perms[1], lam[0], image_hw)
    return jnp.concatenate([1.0 - s, s], axis=-1)   # [own weight, partner's]

  @staticmethod
  def mix(images, s, index):
    # The reference's expression x(1 - s) + x[π] s, kept literally.
    return images * (1.0 - s) + images[index] * s

  # ---------------------------------------------------------------------------

  def prepare(self, state, batch, key) -> dict:
    """Everything outside the gradient: draws, teacher features, the classifier's
    (detached) mixed sample. ``key`` is the per-step key."""
    images, labels = L.check_batch(batch, min_size=2, what="AutoMix")
    b = images.shape[0]
    image_hw = tuple(images.shape[1:3])
    k_draw, k_t1, k_t2, k_q1, k_q2 = jax.random.split(key, 5)
    d = self.draw(k_draw, b)
    targets = mixers.one_hot(labels, self.num_classes,
                             smoothing=self.label_smoothing)
    lam_mb, lam_bb = d["lam_mb"], d["lam_bb"]
    # Teacher on the clean batch -> mask features (its weights are never
    # differentiated).
    t_out, t_stats = self.teacher_apply(state.ema_params, state.ema_batch_stats,
                                        images, k_t1)
    features = t_out["stages"][self.mask_layer]
    # Classifier sample: detached generator mask, or plain mixup in the margin.
    s_bb = jax.lax.stop_gradient(
        self.mask(state.params["generator"], features, d["perm_bb"], lam_bb,
                  image_hw))
    s_bb = self.adjust_classifier_mask(s_bb, d)
    fire = self.margin_fires(lam_bb)
    s_bb = jnp.where(fire, (1.0 - lam_bb).astype(s_bb.dtype), s_bb)
    return {
        **d, "images": images, "labels": labels, "targets": targets,
        "image_hw": image_hw,
        "features": features, "teacher_stats": t_stats, "fire": fire,
        "x_bb": self.mix(images, s_bb, d["perm_bb"]),
        "y_mb": mixers.mix_labels(targets, jnp.broadcast_to(lam_mb, (b,)),
                                  d["perm_mb"]),
        "y_bb": mixers.mix_labels(targets, jnp.broadcast_to(lam_bb, (b,)),
                                  d["perm_bb"]),
        "mask_w": self.mask_loss_weight(state.step),
        "keys": (k_t2, k_q1, k_q2)}

  def losses(self, params, state, ctx) -> tuple[jax.Array, jax.Array, dict]:
    """``(loss_classifier, loss_generator, aux)`` as functions of ``params``."""
    k_t2, k_q1, k_q2 = ctx["keys"]
    images = ctx["images"]
    # Generator: its mixed sample through the frozen teacher (head "mix").
    s_mb = self.mask(params["generator"], ctx["features"], ctx["perm_mb"],
                     ctx["lam_mb"], ctx["image_hw"])
    x_mb = self.mix(images, s_mb, ctx["perm_mb"])
    p_out, t_stats2 = self.teacher_apply(state.ema_params, ctx["teacher_stats"],
                                         x_mb, k_t2)
    loss_gen, gen_metrics = self.generator_loss(p_out["logits"]["mix"], s_mb,
                                                ctx)
    # Classifier: separate train-mode passes (BN batch statistics differ per
    # sample, so one concatenated pass would change the result), in the
    # reference's order (forward_q): the clean batch first, then the mixed
    # sample, so the running statistics are chained the same way.
    cls = params["classifier"]
    out_one, stats = self.online_apply(cls, state.batch_stats, images, k_q2)
    ce_one = L.soft_ce(out_one["logits"]["one"], ctx["targets"])
    out_bb, stats = self.online_apply(cls, stats, ctx["x_bb"], k_q1)
    extra = {}
    ce_mix = self.mixed_ce(out_bb["logits"]["mix"], ctx["y_bb"],
                           ctx["labels"], extra)
    loss_cls = ce_mix + ce_one
    aux = {"stats": stats, "teacher_stats": t_stats2, "x_mb": x_mb, "s_mb": s_mb,
           "metrics": {"loss_classifier": loss_cls, "loss_generator": loss_gen,
                       "ce_mix": ce_mix, "ce_one": ce_one, **gen_metrics, **extra,
                       # Own weight 1 - s and partner weight s, label
                       # weights λ_mb and 1 - λ_mb.
                       **L.mask_metrics(
                           jnp.concatenate([1.0 - s_mb, s_mb], axis=-1),
                           jnp.stack([ctx["lam_mb"], 1.0 - ctx["lam_mb"]]))}}
    return loss_cls, loss_gen, aux

  def bounded_l1(self, s: jax.Array, lam: jax.Array) -> jax.Array:
    """``max(|(1 - λ) - mean(s)| - margin, 0)``, the mean over batch and pixels
    (the reference's ``mask_loss_mode="L1"``)."""
    return jnp.maximum(
        jnp.abs((1.0 - lam) - jnp.mean(s)) - self.mask_loss_margin, 0.0)

  def generator_loss(self, teacher_logits: jax.Array, s_mb: jax.Array,
                     ctx: dict) -> tuple[jax.Array, dict]:
    """``CE(p_mb, ỹ_mb) + w_mask · L1(s_mb)`` and its metrics.

    Args:
      teacher_logits: ``[B, K]`` the teacher's head-``mix`` logits on
        ``x̃_mb``.
      s_mb: ``[B, H, W, 1]`` the generator's partner weight.
      ctx: :meth:`prepare`'s dict (``y_mb``, ``lam_mb``, ``mask_w``).
    """
    ce_teacher = L.soft_ce(teacher_logits, ctx["y_mb"])
    mask_l1 = self.bounded_l1(s_mb, ctx["lam_mb"])
    return ce_teacher + ctx["mask_w"] * mask_l1, {
        "ce_teacher_mix": ce_teacher, "mask_loss": mask_l1,
        "mask_mean": jnp.mean(s_mb)}

  def train_step(self, state, batch, key):
    """One AutoMix iteration; ``batch``: image ``[B, H, W, C]``, label ``[B]``.

    ``key`` is the run's root key; the step folds in ``state.step``.
    """
    ctx = self.prepare(state, batch, jax.random.fold_in(key, state.step))

    new_state, metrics = self.update(state, ctx)
    metrics.update({"lam_mb": ctx["lam_mb"], "lam_bb": ctx["lam_bb"],
                    "lam_margin": ctx["fire"].astype(jnp.float32),
                    "mask_loss_weight": ctx["mask_w"]})
    return new_state, metrics
