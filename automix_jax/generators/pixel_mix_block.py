"""AutoMix's Mix Block (Liu et al., "AutoMix: Unveiling the Power of Mixup for
Stronger Classifiers", ECCV 2022, arXiv 2103.13027) and its SAMix options (Li et
al., "Boosting Discriminative Visual Representation Learning with
Scenario-Agnostic Mixup", arXiv 2111.15454, 2021).

Behaviour follows OpenMixup's ``PixelMixBlock`` as established by running it
(OpenMixup, github.com/Westlake-AI/openmixup): one shared 1x1 ``query`` conv embeds both the
sample and its partner (no activation, no norm), a 1-channel ``value`` conv sees the
partner only, ``P = softmax(q_a k_bᵀ / √d)``, and the mask is
``s = sigmoid(upsample_nearest(P v_b))``, the per-pixel weight of the *partner*.
The module returns the sample's *own* weight ``1 - s = sigmoid(-z)`` (``z`` the
upsampled logit), the mask layout of ``apply_masks`` and every mixer
(docs/interfaces.md).

SAMix is the same module with more of OpenMixup's ``PixelMixBlock`` options
(``openmixup/models/heads/pmix_block.py``; the CIFAR settings of
``configs/classification/cifar100/samix/``): the features are rescaled by the
λ-adjusted weight ``λ̂`` (``x ← x (1 + λ̂)``, ``x[π] ← x[π] (1 + 1 - λ̂)``),
separate query and key convs both read ``concat(x, x[π])``, the value is a
2-layer conv net (conv-BN-ELU-conv) on ``x[π]``, and the mask is upsampled
bilinearly. With the defaults every option is off and the module is AutoMix's.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from automix_jax.generators import _apply as G


def automix_scale(image_width: int, mask_layer: int = 2) -> int:
  """The reference's upsampling factor: ``2**mask_layer`` if the image width is at
  most 64 px, else ``2**(2 + mask_layer)`` (OpenMixup ``pixel_mixup``)."""
  return 2 ** mask_layer if image_width <= 64 else 2 ** (2 + mask_layer)


# The reference caps the rescaling constant k at 10 (its ``__init__``).
MAX_LAM_MUL_K = 10.0


def samix_rescale_lam(lam: Any, k: float) -> jax.Array:
  """SAMix's λ adjustment ``λ̂ = (4/3 λ³ - 2 λ² + (k+1) λ) / (k + 1/3)``.

  A cubic through (0, 0), (1/2, 1/2) and (1, 1) that pulls λ towards 1/2 the
  more, the smaller ``k >= 0`` is (``rescale_lam_mult`` in OpenMixup's
  ``pmix_block.py``; k = 0.25 on CIFAR). Negative ``k``: λ unchanged.
  """
  lam = jnp.asarray(lam, jnp.float32)
  if k < 0:
    return lam
  k1 = k + 1.0
  return (4.0 / 3.0 * lam ** 3 - 2.0 * lam ** 2 + k1 * lam) / (k1 - 2.0 / 3.0)


class ValueNet(nn.Module):
  """SAMix's value network ``conv1x1 -> BN -> ELU -> conv1x1`` to one channel.

  OpenMixup's ``ConvNeck(num_layers=2, kernel_size=1, with_bias=False)`` with
  its default BN and ELU, no norm or dropout after the last conv. BatchNorm uses
  the batch statistics: the reference's Mix Block only ever runs in train mode,
  so its running statistics are never read (callers discard ``batch_stats``).
  """
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda feats, name: nn.Conv(
        feats, (1, 1), use_bias=False, kernel_init=G.KERNEL_INIT,
        dtype=self.dtype, name=name)
    x = conv(self.hidden, "conv_hidden")(x)
    x = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name="norm")(x)
    return conv(1, "conv_out")(jax.nn.elu(x))


class PixelMixBlock(nn.Module):
  """AutoMix mask generator, with SAMix's options.

  Attributes:
    reduction: query/key channels ``d = C // reduction`` (2 in every config).
    scale: integer nearest/bilinear upsampling factor from the feature map to the
      image (4 for 32-px CIFAR stage-3 maps, 16 for 224-px images).
    lam_concat: append a constant λ channel to the sample's features and a
      ``1 - λ`` channel to the partner's (ImageNet / fine-grained configs).
    upsample: ``"nearest"`` (AutoMix) or ``"bilinear"`` (SAMix).
    lam_mul: SAMix's λ encoding strength μ in [0, 1] (0: off, AutoMix; 1:
      SAMix). With ``lam_residual``: ``x ← x (1 + μ λ̂)`` and
      ``x[π] ← x[π] (1 + μ (1 - λ̂))``; without: ``x ← λ̂ x``,
      ``x[π] ← (1 - λ̂) x[π]``.
    lam_mul_k: the k of :func:`samix_rescale_lam` (0.25 on CIFAR; negative:
      ``λ̂ = λ``); at most 10, the reference's cap.
    lam_residual: see ``lam_mul``.
    x_qk_concat: SAMix's query and key: two convs (``query``, ``key``), both
      on ``concat(x, x[π])``; off: one ``query`` conv shared by x and x[π].
    value_reduction: 0 (AutoMix): the value is a 1x1 conv of x[π]; r > 0
      (SAMix): :class:`ValueNet` with ``C // r`` hidden channels (every
      reference config uses C/2).
    logit_bound: None (reference) or b > 0: soft-clip the upsampled logits to
      ``(-b, b)`` before the sigmoid (``_apply.bound_logits``), an opt-in guard
      that keeps the mask's gradient from vanishing when the sigmoid saturates.
    dtype: compute dtype; parameters stay float32 and the mask is float32.
  """
  reduction: int = 2
  scale: int = 4
  lam_concat: bool = False
  upsample: str = "nearest"
  lam_mul: float = 0.0
  lam_mul_k: float = -1.0
  lam_residual: bool = False
  x_qk_concat: bool = False
  value_reduction: int = 0
  logit_bound: Optional[float] = None
  dtype: Any = jnp.float32

  def check_options(self) -> None:
    """Raises ``ValueError`` for an invalid or inconsistent SAMix option (also
    run by ``__call__``, before any compute)."""
    real = lambda v: (isinstance(v, numbers.Real) and not isinstance(v, bool)
                      and math.isfinite(v))
    if not real(self.lam_mul) or not 0.0 <= self.lam_mul <= 1.0:
      raise ValueError(f"`lam_mul` must be a number in [0, 1] (0: off, 1: "
                       f"SAMix); got {self.lam_mul!r}.")
    if not real(self.lam_mul_k) or self.lam_mul_k > MAX_LAM_MUL_K:
      raise ValueError(f"`lam_mul_k` must be a number <= {MAX_LAM_MUL_K:g} "
                       f"(negative: no rescaling; 0.25 on CIFAR); got "
                       f"{self.lam_mul_k!r}.")
    if (isinstance(self.value_reduction, bool)
        or not isinstance(self.value_reduction, numbers.Integral)
        or self.value_reduction < 0):
      raise ValueError(f"`value_reduction` must be an integer >= 0 (0: a 1x1 "
                       f"value conv; r: a 2-layer value net with C // r hidden "
                       f"channels); got {self.value_reduction!r}.")
    if self.lam_concat and self.lam_mul > 0:
      raise ValueError("`lam_concat` and `lam_mul` both encode λ in the "
                       "features; set one of them.")
    if self.lam_concat and self.x_qk_concat:
      raise ValueError("`lam_concat` has no effect on q/k with `x_qk_concat` "
                       "(both read concat(x, x[π])); set one of them.")

  @nn.compact
  def __call__(self, features: jax.Array, index: jax.Array,
               lam: Optional[Any] = None, *,
               image_size: Optional[Sequence[int]] = None,
               return_logits: bool = False):
    """Own-image weight of the mix of ``x`` with the partner ``x[index]``.

    Args:
      features: ``[B, h, w, C]`` (NHWC) EMA-encoder features of the clean
        batch.
      index: ``[B]`` int partner of each sample.
      lam: scalar or ``[B]`` own-label weight; required iff ``lam_concat`` or
        ``lam_mul > 0``.
      image_size: optional ``(H, W)``; if given, ``scale`` must map ``(h, w)`` onto it.
      return_logits: also return the upsampled pre-sigmoid logits.

    Returns:
      ``m`` ``[B, h*scale, w*scale, 1]`` float32 in ``[0, 1]``: the weight of
      the sample's own image, ``x̃ = m ⊙ x + (1 - m) ⊙ x[index]`` (what
      ``apply_masks`` takes; the reference's partner mask is ``s = 1 - m``);
      with ``return_logits`` the pair ``(m, logits)``, ``m = sigmoid(logits)``
      (the reference's ``s = sigmoid(-logits)``).
    """
    b, h, w, c = G.check_features(features)
    scale = G.check_scale(self.scale)
    G.check_upsample(self.upsample)
    bound = G.check_logit_bound(self.logit_bound)
    d = G.check_reduction(self.reduction, c)
    G.check_image_size(image_size, h, w, scale)
    G.check_index_vector(index, b, arg="index")
    self.check_options()
    if self.lam_concat or self.lam_mul > 0:
      if lam is None:
        raise ValueError("`lam` (scalar or [B]) is required when "
                         "lam_concat=True or lam_mul > 0.")
      lam_shape = tuple(jnp.shape(lam))
      if lam_shape not in ((), (b,)):
        raise ValueError(f"`lam` must be a scalar or [B] = ({b},); got {lam_shape}.")

    x_a = features.astype(self.dtype)
    x_b = x_a[index]
    if self.lam_mul > 0:
      lam_hat = samix_rescale_lam(lam, self.lam_mul_k).reshape(-1, 1, 1, 1)
      if self.lam_residual:
        w_a, w_b = 1 + self.lam_mul * lam_hat, 1 + self.lam_mul * (1 - lam_hat)
      else:
        w_a, w_b = lam_hat, 1 - lam_hat
      x_a = x_a * w_a.astype(self.dtype)
      x_b = x_b * w_b.astype(self.dtype)
    if self.lam_concat:
      lam_b = jnp.broadcast_to(jnp.asarray(lam, self.dtype).reshape(-1, 1, 1, 1),
                               (b, h, w, 1))
      x_a = jnp.concatenate([x_a, lam_b], axis=-1)
      x_b = jnp.concatenate([x_b, 1 - lam_b], axis=-1)

    conv = lambda feats, name: nn.Conv(
        feats, (1, 1), kernel_init=G.KERNEL_INIT, bias_init=G.BIAS_INIT,
        dtype=self.dtype, name=name)
    if self.value_reduction:
      value = ValueNet(max(c // self.value_reduction, 1), dtype=self.dtype,
                       name="value")
    else:
      value = conv(1, "value")
    v = G.flatten_hw(value(x_b))                        # [B, hw, 1]
    if self.x_qk_concat:
      # SAMix: both embeddings see the pair (the reference's x_lam = x_lam_ =
      # cat(x, x[π]) feeding separate query and key convs).
      x_ab = jnp.concatenate([x_a, x_b], axis=-1)
      q = G.flatten_hw(conv(d, "query")(x_ab))          # [B, hw, d]
      k = G.flatten_hw(conv(d, "key")(x_ab))            # [B, hw, d]
    else:
      query = conv(d, "query")  # Shared: AutoMix builds no separate key conv.
      q = G.flatten_hw(query(x_a))                      # [B, hw, d]
      k = G.flatten_hw(query(x_b))                      # [B, hw, d]
    attn = jnp.einsum("bpd,bqd->bpq", q, k).astype(jnp.float32) / jnp.sqrt(
        jnp.float32(d))
    attn = jax.nn.softmax(attn, axis=-1)
    logits = jnp.einsum("bpq,bqo->bpo", attn, v.astype(jnp.float32))
    logits = G.upsample(logits.reshape(b, h, w, 1), scale, self.upsample)
    logits = G.bound_logits(logits, bound)
    own_logits = -logits   # own weight 1 - sigmoid(z) = sigmoid(-z)
    own = jax.nn.sigmoid(own_logits)
    return (own, own_logits) if return_logits else own
