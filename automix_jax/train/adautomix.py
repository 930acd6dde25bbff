"""AdAutoMix (Qin et al., "Adversarial AutoMixup", ICLR 2024, arXiv 2312.11954)
as a pure training method.

One iteration, following the authors' ``AdAutoMix.forward_train`` as established
by running it (github.com/JinXins/Adversarial-AutoMixup; docs/learned_mixing.md); N = ``mix_samples`` images per mix:

* N >= 3: one λ vector per batch, ``λ_i = Beta(α, α)_i / Σ_j Beta(α, α)_j``
  (normalised Beta draws, not a Dirichlet), shared by both samples; N fresh
  permutations each for the generator's sample (π_mb) and the classifier's (π_bb).
  N = 2: independent λ_mb, λ_bb ~ Beta(α, α), channel 0 the unpermuted batch.
* The EMA teacher encodes the clean batch (stage ``mask_layer``); the generator
  gives ``M_mb = G(z[π_mb], λ)`` (differentiable w.r.t. the generator) and
  ``M_bb = stop_gradient(G(z[π_bb], λ))``; ``M_bb`` falls back to the constant λ
  (plain N-way mixup) when λ is within ``lam_margin`` of 0 or 1.
* Generator loss through the frozen teacher's ``mix`` head, alternating by the
  parity of the global step: even steps ``-β CE(p_mb, ỹ_mb) + s (1-β) L_cos``,
  odd steps ``+CE(p_mb, ỹ_mb)``, with ``L_cos = mean_b Σ_i λ_i cos(p_mb, p_i)``
  over teacher logits, p_i the teacher's logits on ``x[π_mb_i]``, and s the
  ``cosine_sign`` (+1 = the code, the default).
* Classifier loss ``L_amce + (1-a) L_ce + a L_mce`` (N >= 3; a = mixup_radio),
  ``L_amce + L_ce`` (N = 2); ``L_mce`` is plain N-way mixup on π_bb.
* One update of {classifier, generator} (disjoint gradients), then the EMA
  teacher update with the CosineScheduleHook momentum.

Exact speed-up: the reference runs the teacher on every ``x[π_mb_i]``; with
train-mode BN the batch statistics are permutation invariant, so those logits
are the clean-batch logits permuted (reused from the feature pass), and the N
running-stat updates those passes make are applied in closed form
(``_learned.repeat_stat_update``). Exact for deterministic backbones (BN ResNets);
with stochastic depth (ViTs) the reused logits share one drop-path draw.

Config block ``config.adautomix`` (configs/adautomix/cifar100.py documents each
key): ``mix_samples, is_random, alpha, lam_margin, margin_scope ("first" |
"all"), mixup_radio, beta_radio, cosine_sign (+1 | -1), teacher_bn
("batch_stats" | "running"), mask_layer, generator = {reduction, scale,
upsample, lam_concat, logit_bound (optional; absent or 0 = off, the
reference)}``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from automix_jax import generators
from automix_jax import mixers
from automix_jax.generators import _apply as gen_common
from automix_jax.train import _learned as L

MARGIN_SCOPES = ("first", "all")


class AdAutoMix(L.LearnedMixingBase):
  """AdAutoMix with an AdaptiveMask generator; see the module docstring."""

  block_name = "adautomix"

  def _read_block(self, block: Any) -> None:
    name = self.block_name
    self.max_mix = L.check_int(L.get(block, "mix_samples", 3),
                               f"{name}.mix_samples", minimum=2)
    if self.max_mix > self.batch_size:
      raise ValueError(f"`{name}.mix_samples`={self.max_mix} images per mix "
                       f"exceeds the batch size {self.batch_size}.")
    self.is_random = bool(L.get(block, "is_random", False))
    self.alpha = L.check_positive(L.get(block, "alpha", 1.0), f"{name}.alpha")
    self.lam_margin = L.check_unit(L.get(block, "lam_margin", 0.03),
                                   f"{name}.lam_margin", high=0.5)
    self.margin_scope = L.check_choice(L.get(block, "margin_scope", "first"),
                                       MARGIN_SCOPES, f"{name}.margin_scope")
    self.mixup_radio = L.check_unit(L.get(block, "mixup_radio", 0.5),
                                    f"{name}.mixup_radio")
    self.beta_radio = L.check_unit(L.get(block, "beta_radio", 0.3),
                                   f"{name}.beta_radio")
    sign = L.get(block, "cosine_sign", 1.0)
    if sign not in (1, -1):
      raise ValueError(f"`{name}.cosine_sign` must be +1 (the reference code: "
                       f"the generator minimises +cos) or -1 (maximises cos); "
                       f"got {sign!r}.")
    self.cosine_sign = float(sign)

  def _build_generator(self, gen_cfg: dict):
    gen_common.check_scale(gen_cfg.get("scale", 4), arg="adautomix.generator.scale")
    gen_common.check_upsample(gen_cfg.get("upsample", "bilinear"))
    return generators.AdaptiveMask(
        reduction=int(gen_cfg.get("reduction", 2)),
        scale=gen_cfg.get("scale", 4),
        upsample=gen_cfg.get("upsample", "bilinear"),
        lam_concat=bool(gen_cfg.get("lam_concat", False)),
        logit_bound=L.generator_logit_bound(gen_cfg, self.block_name))

  def check_features(self, sample_images):
    feat_shape = super().check_features(sample_images)
    gen_common.check_image_size(tuple(int(s) for s in sample_images.shape[1:3]),
                                feat_shape[1], feat_shape[2],
                                gen_common.check_scale(self.generator.scale))
    return feat_shape

  def _generator_init_args(self, features, image_hw):
    n = features.shape[0]
    ids = jnp.arange(n, dtype=jnp.int32)
    indices = jnp.stack([jnp.roll(ids, i) for i in range(n)], axis=1)  # [B, N]
    return features, indices, jnp.full((n,), 1.0 / n, jnp.float32)

  # ---------------------------------------------------------------------------

  def draw(self, key: jax.Array, n: int, batch_size: int) -> dict:
    """λ (``[N]`` each for mb and bb) and permutations (``[N, B]`` each)."""
    k_l1, k_l2, k_p1, k_p2 = jax.random.split(key, 4)
    if n == 2:
      lam_mb = jax.random.beta(k_l1, self.alpha, self.alpha, dtype=jnp.float32)
      lam_bb = jax.random.beta(k_l2, self.alpha, self.alpha, dtype=jnp.float32)
      ids = jnp.arange(batch_size, dtype=jnp.int32)
      perm = lambda k: jax.random.permutation(k, batch_size).astype(jnp.int32)
      return {"lam_mb": jnp.stack([lam_mb, 1.0 - lam_mb]),
              "lam_bb": jnp.stack([lam_bb, 1.0 - lam_bb]),
              "perm_mb": jnp.stack([ids, perm(k_p1)]),
              "perm_bb": jnp.stack([ids, perm(k_p2)])}
    lam = jax.random.beta(k_l1, self.alpha, self.alpha, (n,), dtype=jnp.float32)
    lam = lam / jnp.sum(lam)
    return {"lam_mb": lam, "lam_bb": lam,
            "perm_mb": L.random_perms(k_p1, n, batch_size),
            "perm_bb": L.random_perms(k_p2, n, batch_size)}

  def margin_fires(self, lam_bb: jax.Array) -> jax.Array:
    """Whether the classifier's mask falls back to the constant λ.

    N = 2: ``m >= λ or m >= 1 - λ``. N >= 3 (the authors' comparison, not
    OpenMixup's inverted one): ``m >= λ_0 or m > 1 - λ_0`` for
    ``margin_scope="first"`` (the reference: only λ_0 is tested), or the same
    test for any λ_i with ``margin_scope="all"``.
    """
    m = jnp.float32(self.lam_margin)
    if lam_bb.shape[0] == 2:
      return jnp.logical_or(m >= lam_bb[0], m >= 1.0 - lam_bb[0])
    tested = lam_bb[:1] if self.margin_scope == "first" else lam_bb
    return jnp.any(jnp.logical_or(m >= tested, m > 1.0 - tested))

  @property
  def preview_sources(self) -> int:
    return self.max_mix

  def _preview_masks(self, gen_params, features, perms, lam, image_hw):
    return self.masks(gen_params, features, perms, lam, image_hw)

  def masks(self, gen_params, features, perms, lam, image_hw):
    """``[B, H, W, N]`` masks for the sources ``x[perms[i]]`` (perms ``[N, B]``)."""
    return self.generator.apply({"params": gen_params}, features, perms.T, lam,
                                image_size=image_hw)

  # ---------------------------------------------------------------------------

  def prepare(self, n: int, state, batch, key) -> dict:
    """Everything outside the gradient for a static N (per-step ``key``)."""
    images, labels = L.check_batch(batch, min_size=max(n, 2), what=(
        f"AdAutoMix with N = {n} images per mix"))
    b = images.shape[0]
    image_hw = tuple(images.shape[1:3])
    k_draw, k_t1, k_t2, k_q1, k_q2, k_q3 = jax.random.split(key, 6)
    d = self.draw(k_draw, n, b)
    targets = mixers.one_hot(labels, self.num_classes,
                             smoothing=self.label_smoothing)
    # Teacher on the clean batch: mask features and the head-"mix" logits that
    # stand in for the reference's passes on x[π_mb_i].
    stats0 = state.ema_batch_stats
    t_out, stats1 = self.teacher_apply(state.ema_params, stats0, images, k_t1)
    features = t_out["stages"][self.mask_layer]
    # Classifier sample: detached masks, or constant λ within the margin.
    m_bb = jax.lax.stop_gradient(
        self.masks(state.params["generator"], features, d["perm_bb"],
                   d["lam_bb"], image_hw))
    fire = self.margin_fires(d["lam_bb"])
    m_bb = jnp.where(fire, jnp.broadcast_to(d["lam_bb"], m_bb.shape), m_bb)
    lam_bb_bn = jnp.broadcast_to(d["lam_bb"], (b, n))
    lam_mb_bn = jnp.broadcast_to(d["lam_mb"], (b, n))
    idx_bb, idx_mb = d["perm_bb"].T, d["perm_mb"].T              # [B, N]
    return {
        **d, "n": n, "images": images, "labels": labels, "targets": targets,
        "image_hw": image_hw, "features": features,
        "teacher_logits": t_out["logits"]["mix"],
        "stats0": stats0, "stats1": stats1, "fire": fire,
        "m_bb": jnp.moveaxis(m_bb, -1, 1),                     # [B, N, H, W]
        "x_bb": generators.nway_blend(images, m_bb, idx_bb),
        "x_lin": generators.nway_blend(images, lam_bb_bn, idx_bb),
        "y_bb": generators.nway_labels(targets, lam_bb_bn, idx_bb),
        "y_mb": generators.nway_labels(targets, lam_mb_bn, idx_mb),
        "adversarial": (state.step % 2) == 0,
        "keys": (k_t2, k_q1, k_q2, k_q3)}

  def cosine_term(self, p_mb: jax.Array, teacher_logits: jax.Array,
                  perm_mb: jax.Array, lam_mb: jax.Array) -> jax.Array:
    """``mean_b Σ_i λ_i cos(p_mb, p_i)`` with ``p_i = teacher_logits[π_mb_i]``."""
    p_i = teacher_logits[perm_mb]                                   # [N, B, K]
    cos = L.cosine_similarity(p_mb[None], p_i)                     # [N, B]
    return jnp.mean(jnp.sum(lam_mb[:, None] * cos, axis=0))

  def generator_weights(self, adversarial: jax.Array):
    """``(w_ce, w_cos)``: even steps ``(-β, s(1-β))``, odd steps ``(1, 0)``."""
    beta = self.beta_radio
    w_ce = jnp.where(adversarial, jnp.float32(-beta), jnp.float32(1.0))
    w_cos = jnp.where(adversarial, jnp.float32(self.cosine_sign * (1.0 - beta)),
                      jnp.float32(0.0))
    return w_ce, w_cos

  def losses(self, params, state, ctx) -> tuple[jax.Array, jax.Array, dict]:
    """``(loss_classifier, loss_generator, aux)`` as functions of ``params``."""
    n = ctx["n"]
    k_t2, k_q1, k_q2, k_q3 = ctx["keys"]
    images = ctx["images"]
    # Generator: its mixed sample through the frozen teacher's "mix" head.
    m_mb = self.masks(params["generator"], ctx["features"], ctx["perm_mb"],
                      ctx["lam_mb"], ctx["image_hw"])
    x_mb = generators.nway_blend(images, m_mb, ctx["perm_mb"].T)
    p_out, stats2 = self.teacher_apply(state.ema_params, ctx["stats1"], x_mb,
                                       k_t2)
    p_mb = p_out["logits"]["mix"]
    ce_teacher = L.soft_ce(p_mb, ctx["y_mb"])
    cos = self.cosine_term(p_mb, ctx["teacher_logits"], ctx["perm_mb"],
                           ctx["lam_mb"])
    w_ce, w_cos = self.generator_weights(ctx["adversarial"])
    loss_gen = w_ce * ce_teacher + w_cos * cos
    if self.teacher_bn == "batch_stats":
      # The reference's N teacher passes on x[π_mb_i], in closed form.
      stats2 = L.repeat_stat_update(stats2, ctx["stats0"], ctx["stats1"], n)
    # Classifier: one train-mode pass per sample, in the order clean, linear
    # mixup, generator mixup (one concatenated pass would change the BN batch
    # statistics, so it would not be the same computation).
    cls = params["classifier"]
    out_one, stats = self.online_apply(cls, state.batch_stats, images, k_q1)
    ce_one = L.soft_ce(out_one["logits"]["one"], ctx["targets"])
    extra = {}
    if n >= 3:
      out_lin, stats = self.online_apply(cls, stats, ctx["x_lin"], k_q2)
      ce_lin = self.mixed_ce(out_lin["logits"]["mix"], ctx["y_bb"],
                             ctx["labels"], extra)
    else:
      ce_lin = jnp.float32(0.0)
    out_bb, stats = self.online_apply(cls, stats, ctx["x_bb"], k_q3)
    ce_amce = self.mixed_ce(out_bb["logits"]["mix"], ctx["y_bb"],
                            ctx["labels"], extra)
    a = self.mixup_radio
    loss_cls = (ce_amce + (1.0 - a) * ce_one + a * ce_lin if n >= 3
                else ce_amce + ce_one)
    aux = {"stats": stats, "teacher_stats": stats2, "x_mb": x_mb,
           "m_mb": jnp.moveaxis(m_mb, -1, 1),                  # [B, N, H, W]
           "metrics": {"loss_classifier": loss_cls, "loss_generator": loss_gen,
                       "ce_one": ce_one, "ce_mix": ce_amce, "ce_lin": ce_lin,
                       "ce_teacher_mix": ce_teacher, "cos": cos, **extra,
                       **L.mask_metrics(m_mb, ctx["lam_mb"])}}
    return loss_cls, loss_gen, aux

  def _step_n(self, n: int, state, batch, step_key):
    ctx = self.prepare(n, state, batch, step_key)

    new_state, metrics = self.update(state, ctx)
    metrics.update({"n_mix": jnp.int32(n),
                    "adversarial": ctx["adversarial"].astype(jnp.float32),
                    "lam_margin": ctx["fire"].astype(jnp.float32),
                    "lam_max": jnp.max(ctx["lam_bb"])})
    return new_state, metrics

  def train_step(self, state, batch, key):
    """One AdAutoMix iteration; ``batch``: image ``[B, H, W, C]``, label ``[B]``.

    ``key`` is the run's root key; the step folds in ``state.step``. With
    ``is_random`` N is drawn uniformly from {2, ..., mix_samples} every step and
    the step dispatches with ``lax.switch`` to the branch compiled for that N
    (the branches differ in structure: N = 2 has independent λ_mb/λ_bb, an
    unpermuted channel 0 and no linear-mixup term).
    """
    L.check_batch(batch, min_size=self.max_mix, what=(
        f"AdAutoMix with mix_samples={self.max_mix}"))
    step_key = jax.random.fold_in(key, state.step)
    if not self.is_random:
      return self._step_n(self.max_mix, state, batch, step_key)
    k_n, step_key = jax.random.split(step_key)
    branch = jax.random.randint(k_n, (), 0, self.max_mix - 1)
    fns = [functools.partial(self._step_n, n)
           for n in range(2, self.max_mix + 1)]
    return jax.lax.switch(branch, fns, state, batch, step_key)
