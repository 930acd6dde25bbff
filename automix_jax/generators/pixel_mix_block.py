"""AutoMix's Mix Block (Liu et al., "AutoMix: Unveiling the Power of Mixup for
Stronger Classifiers", ECCV 2022, arXiv 2103.13027).

Behaviour follows OpenMixup's ``PixelMixBlock`` as established by running it
(OpenMixup, github.com/Westlake-AI/openmixup): one shared 1x1 ``query`` conv embeds both the
sample and its partner (no activation, no norm), a 1-channel ``value`` conv sees the
partner only, ``P = softmax(q_a k_bᵀ / √d)``, and the mask is
``s = sigmoid(upsample_nearest(P v_b))``, the per-pixel weight of the *partner*.
The module returns the sample's *own* weight ``1 - s = sigmoid(-z)`` (``z`` the
upsampled logit), the mask layout of ``apply_masks`` and every mixer
(docs/interfaces.md).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from automix_jax.generators import _apply as G


def automix_scale(image_width: int, mask_layer: int = 2) -> int:
  """The reference's upsampling factor: ``2**mask_layer`` if the image width is at
  most 64 px, else ``2**(2 + mask_layer)`` (OpenMixup ``pixel_mixup``)."""
  return 2 ** mask_layer if image_width <= 64 else 2 ** (2 + mask_layer)


class PixelMixBlock(nn.Module):
  """AutoMix mask generator.

  Attributes:
    reduction: query/key channels ``d = C // reduction`` (2 in every config).
    scale: integer nearest/bilinear upsampling factor from the feature map to the
      image (4 for 32-px CIFAR stage-3 maps, 16 for 224-px images).
    lam_concat: append a constant λ channel to the sample's features and a
      ``1 - λ`` channel to the partner's (ImageNet / fine-grained configs).
    upsample: ``"nearest"`` (reference) or ``"bilinear"``.
    logit_bound: None (reference) or b > 0: soft-clip the upsampled logits to
      ``(-b, b)`` before the sigmoid (``_apply.bound_logits``), an opt-in guard
      that keeps the mask's gradient from vanishing when the sigmoid saturates.
    dtype: compute dtype; parameters stay float32 and the mask is float32.
  """
  reduction: int = 2
  scale: int = 4
  lam_concat: bool = False
  upsample: str = "nearest"
  logit_bound: Optional[float] = None
  dtype: Any = jnp.float32

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
      lam: scalar or ``[B]`` own-label weight; required iff ``lam_concat``.
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
    if self.lam_concat:
      if lam is None:
        raise ValueError("`lam` (scalar or [B]) is required when lam_concat=True.")
      lam_shape = tuple(jnp.shape(lam))
      if lam_shape not in ((), (b,)):
        raise ValueError(f"`lam` must be a scalar or [B] = ({b},); got {lam_shape}.")

    x_a = features.astype(self.dtype)
    x_b = x_a[index]
    if self.lam_concat:
      lam_b = jnp.broadcast_to(jnp.asarray(lam, self.dtype).reshape(-1, 1, 1, 1),
                               (b, h, w, 1))
      x_a = jnp.concatenate([x_a, lam_b], axis=-1)
      x_b = jnp.concatenate([x_b, 1 - lam_b], axis=-1)

    conv = lambda feats, name: nn.Conv(
        feats, (1, 1), kernel_init=G.KERNEL_INIT, bias_init=G.BIAS_INIT,
        dtype=self.dtype, name=name)
    query = conv(d, "query")  # Shared: the reference builds no separate key conv.
    q = G.flatten_hw(query(x_a))                        # [B, hw, d]
    k = G.flatten_hw(query(x_b))                        # [B, hw, d]
    v = G.flatten_hw(conv(1, "value")(x_b))             # [B, hw, 1]
    attn = jnp.einsum("bpd,bqd->bpq", q, k).astype(jnp.float32) / jnp.sqrt(
        jnp.float32(d))
    attn = jax.nn.softmax(attn, axis=-1)
    logits = jnp.einsum("bpq,bqo->bpo", attn, v.astype(jnp.float32))
    logits = G.upsample(logits.reshape(b, h, w, 1), scale, self.upsample)
    logits = G.bound_logits(logits, bound)
    own_logits = -logits   # own weight 1 - sigmoid(z) = sigmoid(-z)
    own = jax.nn.sigmoid(own_logits)
    return (own, own_logits) if return_logits else own
