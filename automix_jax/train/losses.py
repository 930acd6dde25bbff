"""Losses on dense (soft) targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of ``-sum_k targets[b, k] * log_softmax(logits)[b, k]``.

  With mixed targets ``λ y_a + (1-λ) y_b`` this equals OpenMixup's
  ``λ CE(y_a) + (1-λ) CE(y_b)`` with a batch-mean CE.

  Args:
    logits: ``[B, K]`` (any float dtype; computed in float32).
    targets: ``[B, K]`` rows summing to 1.

  Returns:
    float32 scalar.
  """
  if logits.ndim != 2 or logits.shape != targets.shape:
    raise ValueError(
        f"`logits` and `targets` must both be [B, K] with equal shapes; got "
        f"{logits.shape} and {targets.shape}.")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(targets.astype(jnp.float32) * logp, axis=-1))


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """``[B]`` bool: is ``labels[b]`` among the ``k`` largest ``logits[b]``."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
  return jnp.any(top == labels[:, None], axis=-1)


# ----------------------------------------------------------------------------
# DecoupleMix: the decoupled mixup regulariser.
# ----------------------------------------------------------------------------

DECOUPLE_SCALES = ("none", "pow")
DECOUPLE_MODES = ("both", "less", "more")
# Keys of ``config.loss.decouple`` besides ``enabled`` (docs/config_schema.md).
DECOUPLE_DEFAULTS = {"eta": 0.1, "lam_scale": "pow", "lam_thr": 1.0,
                     "lam_idx": 1.0, "mode": "both", "thr": 0.5,
                     "min_weight": 1e-3}


def _check_number(value, arg, *, low, high=float("inf"), low_open=False):
  import numbers  # pylint: disable=import-outside-toplevel
  ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
        and (value > low if low_open else value >= low) and value <= high)
  if not ok:
    bound = f"{'(' if low_open else '['}{low}, {high}]"
    raise ValueError(f"`{arg}` must be a number in {bound}; got {value!r}.")
  return float(value)


def check_decouple(*, eta: float, lam_scale: str, lam_thr: float,
                   lam_idx: float, mode: str, thr: float, min_weight: float,
                   prefix: str = "") -> dict:
  """Validated DecoupleMix hyperparameters (``ValueError`` naming the key)."""
  if lam_scale not in DECOUPLE_SCALES:
    raise ValueError(f"`{prefix}lam_scale` must be one of {DECOUPLE_SCALES}; "
                     f"got {lam_scale!r}.")
  if mode not in DECOUPLE_MODES:
    raise ValueError(f"`{prefix}mode` must be one of {DECOUPLE_MODES}; got "
                     f"{mode!r}.")
  return {
      "eta": _check_number(eta, f"{prefix}eta", low=0.0, high=100.0),
      "lam_scale": lam_scale,
      "lam_thr": _check_number(lam_thr, f"{prefix}lam_thr", low=0.0,
                               high=1.0, low_open=True),
      "lam_idx": _check_number(lam_idx, f"{prefix}lam_idx", low=-100.0,
                               high=100.0),
      "mode": mode,
      "thr": _check_number(thr, f"{prefix}thr", low=0.0, high=1.0),
      "min_weight": _check_number(min_weight, f"{prefix}min_weight", low=0.0,
                                  high=0.5, low_open=True),
  }


def loss_block(loss_config, name: str, defaults: dict) -> dict | None:
  """``config.loss.<name>`` over ``defaults`` (without ``enabled``), or None
  when absent or ``enabled=False``; an unknown key raises ``ValueError``."""
  block = None if loss_config is None else loss_config.get(name, None)
  if block is None:
    return None
  block = dict(block.to_dict() if hasattr(block, "to_dict") else block)
  if not block.pop("enabled", False):
    return None
  unknown = sorted(set(block) - set(defaults))
  if unknown:
    raise ValueError(f"`config.loss.{name}` has unknown key(s) {unknown}; "
                     f"expected enabled and {sorted(defaults)}.")
  return {**defaults, **block}


def decouple_from_config(loss_config) -> dict | None:
  """``config.loss.decouple`` -> the keyword arguments of
  ``decoupled_regularizer``, or None when absent or ``enabled=False``."""
  block = loss_block(loss_config, "decouple", DECOUPLE_DEFAULTS)
  return None if block is None else check_decouple(
      **block, prefix="config.loss.decouple.")


def unsmooth(targets: jax.Array, smoothing: float) -> jax.Array:
  """The mixed label weights before label smoothing, ``[B, K]`` float32.

  Mixers mix smoothed one-hots linearly, ``T = Σ_i w_i ((1 - ε) e_i + ε/K)
  = (1 - ε) W + (ε/K) Σ_i w_i``, and every row of smoothed one-hots sums to
  1, so ``Σ_i w_i = Σ_k T_k`` and ``W = (T - (ε/K) Σ_k T_k) / (1 - ε)``
  exactly, whatever the label weights (λ, attention-corrected, unnormalised).
  """
  targets = targets.astype(jnp.float32)
  if not smoothing:
    return targets
  k = targets.shape[-1]
  total = jnp.sum(targets, axis=-1, keepdims=True)
  return (targets - (smoothing / k) * total) / (1.0 - smoothing)


def decoupled_regularizer(logits: jax.Array, mix_weights: jax.Array,
                          labels: jax.Array | None = None, *,
                          eta: float = 0.1, lam_scale: str = "pow",
                          lam_thr: float = 1.0, lam_idx: float = 1.0,
                          mode: str = "both", thr: float = 0.5,
                          min_weight: float = 1e-3) -> jax.Array:
  """DecoupleMix's decoupled regulariser per sample, ``[B]`` float32.

  Liu et al., "Harnessing Hard Mixed Samples with Decoupled Regularizer",
  NeurIPS 2023 (arXiv 2203.10761); the authors' code is OpenMixup
  (github.com/Westlake-AI/openmixup) ``losses/cross_entropy_loss.py:
  soft_mix_cross_entropy`` (``use_mix_decouple=True``) with the η weights of
  ``heads/cls_mixup_head.py:ClsMixupHead``. For each sample b, with ``M_b``
  its mixed classes (``mix_weights[b, c] > min_weight``, at least two) and
  ``z`` its logits::

    reg_b = Σ_{c ∈ M_b} η_{b,c} · -log softmax_{(C \\ M_b) ∪ {c}}(z)[c]

  i.e. each mixed class is classified against the non-mixed classes only,
  not against its mixing partners. ``η_{b,c} = eta · s(w_{b,c})`` with
  ``lam_scale="pow"``: ``s(w) = (w / lam_thr)^|lam_idx|`` for ``w <
  lam_thr``, else 1 (the OpenMixup CIFAR default eta 0.1, thr 1, idx 1 gives
  ``0.1 λ`` and ``0.1 (1 - λ)``); ``"none"``: ``s = 1``. ``mode``: "both"
  (every mixed class), "less" (the own class ``labels[b]`` if its weight λ <
  ``thr``, otherwise the other mixed classes), "more" (own if λ >= ``thr``,
  otherwise the others) -- OpenMixup's two-image rule, which needs
  ``labels``.

  Differences from OpenMixup, deliberate: everything is per sample. OpenMixup
  reads λ and the class order from sample 0 and matches the other rows by
  value, so it assumes one λ per batch, pairs ``eta·λ`` with whichever of
  sample 0's two classes has the smaller index (so with the "pow" scale the
  two η swap in about half the batches), and skips the term for the whole
  batch when λ = 0.5 (the two values coincide). Here each row's classes and
  weights are its own, so per-sample λ (CutMix with clipped boxes, the
  model-aware mixers, N-way mixing) is handled, and λ = 0.5 is regularised
  like any other λ. A row with fewer than two mixed classes (a pair of the
  same class, λ in {0, 1}) gets no term, as OpenMixup's plain-CE rows.

  Args:
    logits: ``[B, K]``.
    mix_weights: ``[B, K]`` unsmoothed mixed label weights (``unsmooth``).
    labels: ``[B]`` int own labels; needed for ``mode`` "less" / "more".
    eta, lam_scale, lam_thr, lam_idx, mode, thr: as above
      (``check_decouple``).
    min_weight: a class with a weight above this is a mixed class
      (OpenMixup's 1e-3).

  Returns:
    ``[B]`` float32; add its mean to the mixed cross-entropy.
  """
  check_decouple(eta=eta, lam_scale=lam_scale, lam_thr=lam_thr,
                 lam_idx=lam_idx, mode=mode, thr=thr, min_weight=min_weight)
  if (getattr(logits, "ndim", 0) != 2 or
      getattr(mix_weights, "shape", None) != logits.shape):
    raise ValueError(
        f"`logits` and `mix_weights` must both be [B, K] with equal shapes; "
        f"got {getattr(logits, 'shape', None)} and "
        f"{getattr(mix_weights, 'shape', None)}.")
  if mode != "both":
    if (labels is None or tuple(labels.shape) != logits.shape[:1] or
        not jnp.issubdtype(labels.dtype, jnp.integer)):
      raise ValueError(
          f"`labels` must be [B] = ({logits.shape[0]},) integer class ids for "
          f"mode={mode!r}; got "
          f"{None if labels is None else tuple(labels.shape)}.")
  z = logits.astype(jnp.float32)
  w = mix_weights.astype(jnp.float32)
  mixed = w > min_weight                                          # [B, K]
  active = jnp.sum(mixed, axis=-1) >= 2                           # [B]
  # log Σ_{j ∉ M} exp z_j; rows where every class is mixed get -inf (then
  # each decoupled softmax has one class and the term is 0).
  outside = jnp.any(~mixed, axis=-1)
  lse_out = jax.nn.logsumexp(
      jnp.where(mixed | ~outside[:, None], -jnp.inf, z), axis=-1,
      where=jnp.broadcast_to(outside[:, None], z.shape))
  lse_out = jnp.where(outside, lse_out, -jnp.inf)
  term = jnp.logaddexp(lse_out[:, None], z) - z                   # [B, K]
  if lam_scale == "pow":
    scale = jnp.where(w >= lam_thr, 1.0,
                      (jnp.clip(w, 0.0, None) / lam_thr) ** abs(lam_idx))
  else:
    scale = jnp.ones_like(w)
  select = mixed
  if mode != "both":
    own = jax.nn.one_hot(labels, z.shape[-1], dtype=bool)
    lam = jnp.take_along_axis(w, labels[:, None].astype(jnp.int32), axis=-1)
    own_first = lam < thr if mode == "less" else lam >= thr       # [B, 1]
    select = mixed & jnp.where(own_first, own, ~own)
  weight = jnp.where(select & active[:, None], eta * scale, 0.0)
  return jnp.sum(jnp.where(weight > 0, weight * term, 0.0), axis=-1)


def mixed_cross_entropy(logits: jax.Array, targets: jax.Array,
                        labels: jax.Array | None = None, *,
                        decouple: dict | None = None,
                        smoothing: float = 0.0
                        ) -> tuple[jax.Array, jax.Array]:
  """``(soft_cross_entropy + mean decoupled regulariser, regulariser)``.

  With ``decouple=None`` this is ``(soft_cross_entropy(logits, targets),
  0)``, the same computation as before the option existed. Otherwise
  ``decouple`` holds ``decoupled_regularizer``'s keywords
  (``decouple_from_config``) and ``targets`` (smoothed with ``smoothing``)
  are unsmoothed to find each sample's mixed classes and weights.

  Args:
    logits: ``[B, K]``.
    targets: ``[B, K]`` mixed (and smoothed) targets.
    labels: ``[B]`` own labels (for the "less"/"more" modes).
    decouple: None or the regulariser's keywords.
    smoothing: the label smoothing ε that ``targets`` carry.

  Returns:
    Two float32 scalars: the loss and the regulariser's batch mean.
  """
  ce = soft_cross_entropy(logits, targets)
  if decouple is None:
    return ce, jnp.float32(0.0)
  reg = jnp.mean(decoupled_regularizer(
      logits, unsmooth(targets, smoothing), labels, **decouple))
  return ce + reg, reg


# ----------------------------------------------------------------------------
# SMMix: fine-grained label assignment and feature consistency.
# ----------------------------------------------------------------------------

# Keys of ``config.loss.smmix`` besides ``enabled`` (docs/config_schema.md):
# the authors' loss is ``cls + ½ (fine_own + fine_partner) + consistency``.
SMMIX_DEFAULTS = {"fine_weight": 0.5, "consistency_weight": 1.0}


def smmix_from_config(loss_config) -> dict | None:
  """``config.loss.smmix`` -> ``{"fine_weight", "consistency_weight"}``, or
  None when absent or ``enabled=False``."""
  block = loss_block(loss_config, "smmix", SMMIX_DEFAULTS)
  return None if block is None else {
      k: _check_number(v, f"config.loss.smmix.{k}", low=0.0, high=100.0)
      for k, v in block.items()}


def region_cross_entropy(tokens: jax.Array, token_mask: jax.Array,
                         head: tuple[jax.Array, jax.Array],
                         own_targets: jax.Array, partner_targets: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
  """SMMix's fine-grained label assignment: each image's region of the mixed
  sample's output tokens, mean-pooled and classified, against its label.

  Chen et al., ICCV 2023 (github.com/ChenMnZ/SMMix ``deit.py``: the token
  head on ``(image_token * mask).sum(1) / mask.sum(1)``, ``engine.py``:
  ``½ (CE(target_result, y_a) + CE(source_result, y_b))``). Here the head is
  the model's classifier (the authors: a separate ``token_head``, "sharing
  ... does not affect performance").

  Args:
    tokens: ``[B, h, w, D]`` output tokens of the forward pass on the mixed
      images (a ViT's patch tokens after the final LayerNorm).
    token_mask: ``[B, h, w]``, 1 where a token came from the partner.
    head: ``(kernel [D, K], bias [K])`` of the linear classifier.
    own_targets, partner_targets: ``[B, K]`` the images' own targets.

  Returns:
    ``(CE of the own region, CE of the partner's region)``, batch means.
  """
  if tokens.ndim != 4 or tokens.shape[:3] != token_mask.shape:
    raise ValueError(
        f"`tokens` [B, h, w, D] must be on the token grid of `token_mask` "
        f"{tuple(token_mask.shape)}; got {tuple(tokens.shape)}.")
  kernel, bias = head
  tokens = tokens.astype(jnp.float32)
  mask = jax.lax.stop_gradient(token_mask).astype(jnp.float32)[..., None]

  def pooled_logits(m):
    pooled = jnp.sum(tokens * m, (1, 2)) / jnp.maximum(jnp.sum(m, (1, 2)), 1.0)
    return pooled @ kernel.astype(jnp.float32) + bias.astype(jnp.float32)
  return (soft_cross_entropy(pooled_logits(1.0 - mask), own_targets),
          soft_cross_entropy(pooled_logits(mask), partner_targets))


def consistency_kl(logits: jax.Array, clean_logits: jax.Array,
                   lam: jax.Array, index: jax.Array) -> jax.Array:
  """SMMix's feature consistency: ``KL(softmax(z̄) || softmax(logits))``,
  batch mean, with ``z̄ = λ z + (1 - λ) z[index]`` the clean pass's logits
  mixed by the area λ (the authors' ``KLDivLoss(reduction='batchmean')`` on
  ``log_softmax(outputs)`` and ``softmax(mixed_prediction_distribution)``).
  The clean logits are a target: no gradient flows into them."""
  clean = jax.lax.stop_gradient(clean_logits).astype(jnp.float32)
  lam = lam.astype(jnp.float32)[:, None]
  target = jax.nn.softmax(lam * clean + (1.0 - lam) * clean[index], axis=-1)
  logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(
      target * (jnp.log(jnp.maximum(target, 1e-30)) - logq), axis=-1))
