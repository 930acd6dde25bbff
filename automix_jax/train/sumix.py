"""SUMix (Qin et al., "SUMix: Mixup with Semantic and Uncertain Information",
ECCV 2024, arXiv 2407.07805): a label/loss wrapper for any two-image mixer.

The mixed sample's class probabilities are compared with those of its two
sources (a second, clean forward of the same batch) to re-weight the mixing
ratio per sample, and an uncertainty regulariser trains a second linear head
on both forwards. As the authors' code does it (github.com/JinXins/SUMix,
``openmixup/models/heads/cls_mixup_head.py``: ``ClsUncertainMixupHead.IN_loss``;
``openmixup/models/classifiers/mixup_classification.py`` with ``is_IN=True``):

* ``p = softmax(clean logits)``, ``p̃ = softmax(mixed logits)``, both without
  gradient. ``p_a``: the sample's own ``p`` with the partner's class set to
  0; ``p_b``: the partner's ``p`` with the own class set to 0.
* ``α_a = s · l2norm(softmax(p̃ - p_a))``, ``α_b = s · l2norm(softmax(p̃ - p_b))``
  (``[B, K]``; ``s`` the batch size in the reference, its ``avg_factor``).
* ``λ̂ = λ e^{-α_a[y_a]} / (λ e^{-α_a[y_a]} + (1-λ) e^{-α_b[y_b]})``, the corrected
  own-label weight (computed as a sigmoid of log-weights, which the
  reference's ``exp`` underflows for large ``s``); targets
  ``λ̂ y_a + (1 - λ̂) y_b``. As the code has it, ``α_a[y_a]`` is small when
  the mixed prediction puts *less* mass on ``y_a`` than the clean one, so
  the label the mixed prediction under-represents gains weight.
* Uncertainty: a second head ``u = l2norm(softmax(W_u f))`` on the pooled
  features of both forwards; ``β_a = u_clean + u_mix``,
  ``β_b = u_clean[partner] + u_mix``; the regulariser is
  ``λ CE(e^{-(β_a+α_a)}, y_a) + (1-λ) CE(e^{-(β_b+α_b)}, y_b)`` (the
  exponentials are the CE's logits), weighted by ``gamma`` (0.5 in the
  authors' CIFAR-100 configs).
* Gradients: none through ``λ̂`` or ``α`` (the probabilities are detached);
  the classification loss reaches the mixed forward's ``"one"`` head, the
  regulariser reaches the uncertainty head of *both* forwards (so the clean
  forward is trained through it, but its ``"one"`` logits are not).

Deviation, on purpose: the reference's ``CrossEntropyLoss`` returns a batch
mean, so ``CE(cls_mix, y_a) * λ̂`` collapses the per-sample ``λ̂`` to its
batch mean. Here the corrected targets are per sample (the method's stated
per-sample ratio), and the soft cross-entropy uses them sample by sample. With
a per-batch λ the regulariser equals the reference's.

The clean forward runs in train mode before the mixed one (BatchNorm running
statistics updated by both, in that order), as in the reference.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from automix_jax import mixers
from automix_jax.mixers import _common as mc
from automix_jax.train import losses

Array = jax.Array

LABEL_MIXES = ("none", "sumix")
UNCERTAIN_HEAD = "uncertain"


def _l2_normalize(x: Array) -> Array:
  """Rows divided by their L2 norm (the reference's ``l2_norm``)."""
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


def uncertainty(logits: Array) -> Array:
  """The uncertainty head's output: ``l2norm(softmax(logits))``, ``[B, K]``."""
  return _l2_normalize(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))


def semantic_distances(clean_logits: Array, mixed_logits: Array,
                       class_ids: Array, index: Array, *,
                       scale: float | None = None) -> tuple[Array, Array]:
  """SUMix's ``(α_a, α_b)``, each ``[B, K]`` float32, no gradient.

  Args:
    clean_logits: ``[B, K]`` logits of the clean batch.
    mixed_logits: ``[B, K]`` logits of the mixed batch.
    class_ids: ``[B]`` int class of each clean sample.
    index: ``[B]`` int partner of each sample (the mixer's ``aux['index']``).
    scale: multiplies the distances; ``None``: the batch size B, the
      reference's ``avg_factor`` (its per-GPU batch).
  """
  b = clean_logits.shape[0]
  scale = float(b) if scale is None else float(scale)
  rows = jnp.arange(b)
  p = jax.nn.softmax(jax.lax.stop_gradient(clean_logits).astype(jnp.float32))
  p_mix = jax.nn.softmax(
      jax.lax.stop_gradient(mixed_logits).astype(jnp.float32))
  partner_ids = mc.take(class_ids, index)
  # The partner's row is taken before the own row's entry is zeroed (the
  # reference indexes a copy first), so each keeps its own probabilities
  # except for the other source's class.
  p_b = mc.take(p, index).at[rows, class_ids].set(0.0)
  p_a = p.at[rows, partner_ids].set(0.0)
  alpha_a = scale * _l2_normalize(jax.nn.softmax(p_mix - p_a, axis=-1))
  alpha_b = scale * _l2_normalize(jax.nn.softmax(p_mix - p_b, axis=-1))
  return alpha_a, alpha_b


def corrected_lam(alpha_a: Array, alpha_b: Array, class_ids: Array,
                  lam: Array, index: Array) -> Array:
  """SUMix's per-sample own-label weight ``λ̂`` ``[B]`` float32, in [0, 1].

  ``λ e^{-α_a[y_a]} / (λ e^{-α_a[y_a]} + (1-λ) e^{-α_b[y_b]})`` as a sigmoid
  of log-weights (λ = 0 or 1 stays 0 or 1).
  """
  rows = jnp.arange(class_ids.shape[0])
  lam = jax.lax.stop_gradient(lam).astype(jnp.float32)
  a = alpha_a[rows, class_ids]
  b = alpha_b[rows, mc.take(class_ids, index)]
  return jax.nn.sigmoid((jnp.log(lam) - a) - (jnp.log1p(-lam) - b))


def uncertainty_regularizer(clean_uncertain: Array, mixed_uncertain: Array,
                            alpha_a: Array, alpha_b: Array, targets: Array,
                            lam: Array, index: Array) -> Array:
  """SUMix's uncertainty term (scalar): ``mean_i λ_i CE(e^{-(β_a+α_a)}, y_a)
  + (1-λ_i) CE(e^{-(β_b+α_b)}, y_b)``, from the uncertainty head's logits
  ``[B, K]`` of the clean and the mixed batch."""
  u_clean = uncertainty(clean_uncertain)
  u_mix = uncertainty(mixed_uncertain)
  beta_a = u_clean + u_mix
  beta_b = mc.take(u_clean, index) + u_mix
  logits_a = jnp.exp(-(beta_a + alpha_a))
  logits_b = jnp.exp(-(beta_b + alpha_b))
  lam = jax.lax.stop_gradient(lam).astype(jnp.float32)[:, None]
  targets = targets.astype(jnp.float32)
  mixed_targets = (lam * targets * jax.nn.log_softmax(logits_a) +
                   (1 - lam) * mc.take(targets, index) *
                   jax.nn.log_softmax(logits_b))
  return -jnp.mean(jnp.sum(mixed_targets, axis=-1))


def _check(logits: Any, name: str, shape: tuple | None = None) -> None:
  got = getattr(logits, "shape", None)
  if got is None or len(got) != 2 or (shape is not None and
                                      tuple(got) != shape):
    want = "[B, K]" if shape is None else f"[B, K] = {shape}"
    raise ValueError(f"`{name}` must be {want} logits; got "
                     f"{tuple(got) if got is not None else type(logits).__name__}.")


def sumix_loss(clean_logits: Array, mixed_logits: Array,
               clean_uncertain: Array, mixed_uncertain: Array,
               class_ids: Array, targets: Array, lam: Array, index: Array, *,
               gamma: float = 0.5, scale: float | None = None
               ) -> tuple[Array, dict[str, Array]]:
  """The SUMix loss of one step: soft CE on the corrected targets + γ · reg.

  Args:
    clean_logits, mixed_logits: ``[B, K]`` classification logits of the
      clean and the mixed batch (the mixed ones get the CE gradient).
    clean_uncertain, mixed_uncertain: ``[B, K]`` logits of the uncertainty
      head on the same two forwards.
    class_ids: ``[B]`` int labels of the clean batch.
    targets: ``[B, K]`` dense targets of the clean batch (label smoothing
      included); the corrected targets mix them.
    lam: ``[B]`` the mixer's own-label weight (``aux['lam']``).
    index: ``[B]`` the mixer's partners (``aux['index']``).
    gamma: weight of the uncertainty regulariser.
    scale: see ``semantic_distances``.

  Returns:
    ``(loss, aux)``: ``aux`` holds ``targets`` ``[B, K]`` (corrected, rows
    summing to 1), ``lam`` ``[B]`` (``λ̂``), ``ce`` and ``regularizer``.
  """
  b, k = getattr(targets, "shape", (None, None))
  for name, x in (("clean_logits", clean_logits),
                  ("mixed_logits", mixed_logits),
                  ("clean_uncertain", clean_uncertain),
                  ("mixed_uncertain", mixed_uncertain)):
    _check(x, name, (b, k))
  for name, x in (("lam", lam), ("index", index), ("class_ids", class_ids)):
    if getattr(x, "shape", None) != (b,):
      raise ValueError(
          f"SUMix needs a two-image mix: `{name}` must be [B] = ({b},); got "
          f"{getattr(x, 'shape', type(x).__name__)} (N-way mixers such as "
          "nway_mixup have [B, N] weights and cannot be corrected).")
  alpha_a, alpha_b = semantic_distances(clean_logits, mixed_logits,
                                        class_ids, index, scale=scale)
  lam_hat = corrected_lam(alpha_a, alpha_b, class_ids, lam, index)
  corrected = mixers.mix_labels(targets, lam_hat, index)
  ce = losses.soft_cross_entropy(mixed_logits, corrected)
  reg = uncertainty_regularizer(clean_uncertain, mixed_uncertain, alpha_a,
                                alpha_b, targets, lam, index)
  return ce + gamma * reg, {"targets": corrected, "lam": lam_hat, "ce": ce,
                            "regularizer": reg}


class SUMix:
  """``config.label_mix = {"name": "sumix", "kwargs": {gamma, scale}}``.

  ``heads``: the extra model head it needs; ``loss(clean_out, mixed_out,
  class_ids, targets, aux)`` -> ``(loss, metrics)`` from the two model
  outputs (``{"logits": {head: [B, K]}}``) and the mixer's ``aux``.
  """

  heads = (UNCERTAIN_HEAD,)

  def __init__(self, *, gamma: float = 0.5, scale: float | None = None):
    if (isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or
        not gamma >= 0):
      raise ValueError(f"`gamma` must be a number >= 0; got {gamma!r}.")
    if scale is not None and (isinstance(scale, bool) or
                              not isinstance(scale, numbers.Real) or
                              not scale > 0):
      raise ValueError(f"`scale` must be None (the batch size) or a number "
                       f"> 0; got {scale!r}.")
    self.gamma = float(gamma)
    self.scale = None if scale is None else float(scale)

  def loss(self, clean_out: dict, mixed_out: dict, class_ids: Array,
           targets: Array, aux: dict) -> tuple[Array, dict[str, Array]]:
    loss, info = sumix_loss(
        clean_out["logits"]["one"], mixed_out["logits"]["one"],
        clean_out["logits"][UNCERTAIN_HEAD], mixed_out["logits"][UNCERTAIN_HEAD],
        class_ids, targets, aux["lam"], aux["index"], gamma=self.gamma,
        scale=self.scale)
    metrics = {"sumix_ce": info["ce"], "sumix_reg": info["regularizer"],
               "sumix_lam_mean": jnp.mean(info["lam"])}
    return loss, metrics


def from_config(config: Any) -> SUMix | None:
  """The label/loss wrapper of ``config.label_mix`` (None for ``"none"``)."""
  block = config.get("label_mix", None)
  if block is None:
    return None
  name = block.get("name", "none")
  if name not in LABEL_MIXES:
    raise ValueError(f"`config.label_mix.name` must be one of {LABEL_MIXES}; "
                     f"got {name!r}.")
  if name == "none":
    return None
  kwargs = block.get("kwargs", None)
  kwargs = dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else
                (kwargs or {}))
  try:
    return SUMix(**kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"`config.label_mix` (sumix): {e}".replace(
        "`gamma`", "`config.label_mix.kwargs.gamma`").replace(
            "`scale`", "`config.label_mix.kwargs.scale`")) from None
