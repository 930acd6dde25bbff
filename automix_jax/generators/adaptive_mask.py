"""AdAutoMix's adaptive mask generator (Qin et al., "Adversarial AutoMixup",
ICLR 2024, arXiv 2312.11954).

Behaviour follows the authors' ``AdaptiveMask`` (JinXins/Adversarial-AutoMixup) as
established by running it (docs/learned_mixing.md): separate q/k 1x1 convs with
ReLU, a 1-channel value conv on each image's *own* features, cross-attention whose
logits are summed over the other images before the row softmax, upsampling of the
per-image logits, then a softmax over the N images at every pixel.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.generators import _apply as G
from automix_jax.mixers import _common as mc


class AdaptiveMask(nn.Module):
  """N-image mask generator; masks sum to 1 over the N images at every pixel.

  For N = 2 this is the reference's ``normal_mix`` (s_0 from q_0, k_1, v_0 and s_1
  from q_1, k_0, v_1); for N >= 3 its ``co_mix``:
  ``s_i = softmax_rows(Σ_{j≠i} q_i k_jᵀ / √d) v_i``. The sum over j is taken on the
  keys, ``q_i (Σ_{j≠i} k_j)ᵀ``, which is the same logit matrix (bilinearity) at
  1/(N-1) of the cost; it differs from summing the N-1 products only by float
  rounding.

  Attributes:
    reduction: ``d = C // reduction`` query/key channels (2 in every config).
    scale: integer upsampling factor from the feature map to the image
      (4 CIFAR/Tiny, 16 for 224-px CNNs, 32 Swin).
    upsample: ``"bilinear"`` (CNN configs; ``align_corners=False``) or
      ``"nearest"`` (ViT configs).
    lam_concat: append a constant λ_i channel (last) to image i's features.
    logit_bound: None (reference) or b > 0: soft-clip the upsampled per-image
      logits to ``(-b, b)`` before the softmax over images
      (``_apply.bound_logits``): every weight stays at least
      ``1 / (1 + (N-1) e^{2b})`` from 0 and 1, so the softmax's gradient
      cannot vanish.
    dtype: compute dtype; masks are float32.
  """
  reduction: int = 2
  scale: int = 4
  upsample: str = "bilinear"
  lam_concat: bool = False
  logit_bound: Optional[float] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, indices: jax.Array,
               lam: Optional[Any] = None, *,
               image_size: Optional[Sequence[int]] = None,
               return_logits: bool = False):
    """Masks for the N sources ``x[indices[:, i]]`` (docs/interfaces.md).

    Args:
      features: ``[B, h, w, C]`` (NHWC) EMA-encoder stage features of the
        clean batch.
      indices: ``[B, N]`` int; image i of sample b is ``x[indices[b, i]]``, as
        in ``apply_masks`` and ``nway_mixup`` (the reference's N=2 path uses
        ``indices[:, 0] = arange(B)``).
      lam: ``[N]`` (one λ vector per batch, as the reference) or ``[B, N]``;
        required iff ``lam_concat``.
      image_size: optional ``(H, W)`` that ``scale`` must map ``(h, w)`` onto.
      return_logits: also return the upsampled per-image logits.

    Returns:
      ``masks`` ``[B, h*scale, w*scale, N]`` float32 summing to 1 over N,
      channel i the weight of ``x[indices[:, i]]`` (``apply_masks``' input);
      with ``return_logits`` the pair ``(masks, logits)`` (logits
      ``[B, H, W, N]``).
    """
    b, h, w, c = G.check_features(features)
    scale = G.check_scale(self.scale)
    G.check_upsample(self.upsample)
    bound = G.check_logit_bound(self.logit_bound)
    d = G.check_reduction(self.reduction, c)
    G.check_image_size(image_size, h, w, scale)
    n = mc.check_index_matrix(indices, b)
    if self.lam_concat:
      if lam is None:
        raise ValueError("`lam` ([N] or [B, N]) is required when lam_concat=True.")
      if tuple(jnp.shape(lam)) not in ((n,), (b, n)):
        raise ValueError(f"`lam` must be [N] = ({n},) or [B, N] = ({b}, {n}); got "
                         f"{tuple(jnp.shape(lam))}.")

    # Computed source-major, [N, B, ...], as the reference stacks its inputs.
    z = features.astype(self.dtype)[indices.T]                # [N, B, h, w, C]
    if self.lam_concat:
      lam_bn = jnp.broadcast_to(jnp.asarray(lam, self.dtype), (b, n))
      lam_map = jnp.broadcast_to(lam_bn.T[:, :, None, None, None], (n, b, h, w, 1))
      z = jnp.concatenate([z, lam_map], axis=-1)
    z = z.reshape((n * b, h, w, z.shape[-1]))

    conv = lambda feats, name: nn.Conv(
        feats, (1, 1), kernel_init=G.KERNEL_INIT, bias_init=G.BIAS_INIT,
        dtype=self.dtype, name=name)
    # mmcv ConvModule's default act_cfg is ReLU: q, k >= 0.
    q = nn.relu(conv(d, "conv_q")(z)).reshape(n, b, h * w, d)
    k = nn.relu(conv(d, "conv_k")(z)).reshape(n, b, h * w, d)
    v = conv(1, "conv_v")(z).reshape(n, b, h * w, 1)

    others = jnp.asarray(1.0 - np.eye(n), k.dtype)             # [i, j]: j != i
    k_others = jnp.einsum("ij,jbqd->ibqd", others, k)          # Σ_{j≠i} k_j
    logits = jnp.einsum("ibpd,ibqd->ibpq", q, k_others).astype(jnp.float32)
    attn = jax.nn.softmax(logits / jnp.sqrt(jnp.float32(d)), axis=-1)
    s = jnp.einsum("ibpq,ibqo->ibpo", attn, v.astype(jnp.float32))  # [N,B,hw,1]
    # Row-major (h, w) reshape: also right for non-square maps, which the
    # reference scrambles (docs/learned_mixing.md).
    s = jnp.transpose(s.reshape(n, b, h, w), (1, 2, 3, 0))      # [B, h, w, N]
    # Upsample the logits first, then normalise over images, as the authors' code.
    s = G.bound_logits(G.upsample(s, scale, self.upsample), bound)
    masks = jax.nn.softmax(s, axis=-1)
    return (masks, s) if return_logits else masks
