"""Token-Label Alignment (Xiao et al., "Token-Label Alignment for Vision
Transformers", ICCV 2023, arXiv 2210.06455).

CutMix on the token grid: a box of whole ``patch_size`` patches of the
partner replaces the same tokens of the image (timm's box drawn on the
``H/p x W/p`` grid, λ corrected to the token count). Each token starts with
the label of the image it came from, the CLS token with the area-mixed label,
and the labels follow the tokens through every block's attention of the
forward pass on the mixed images:

  y_0 = [λ y_a + (1 - λ) y_b, token labels],   y_l = (A_l y_{l-1} + y_{l-1}) / 2

with ``A_l`` the head mean of block ``l``'s attention (softmax before
attention dropout, detached). The target is the CLS row of ``y_depth``.
Follows the authors' code (github.com/Euphoria16/TL-Align: ``tla.py``,
``TL_AlignMix`` and ``token_label``; the propagation in
``timm/models/vision_transformer.py``, ``Attention.forward`` /
``Block.forward``; ``main_tla.py`` defaults: token CutMix with α 1, MixUp
off, the flipped batch as partner, one box per batch). Every label row is a
mix of ``y_a`` and ``y_b`` whose weights the (row-stochastic) attention
carries, so the propagation runs on the own-label weight per token, ``[B, 1 +
N]`` instead of ``[B, 1 + N, K]``: the same numbers for any K.

OpenMixup's ``augments/tla.py`` mixes the token box but propagates no labels
(area λ only); this is the authors' alignment.

Model output (docs/interfaces.md, need ``"relabel"``): ``"attention"``
``[B, depth, 1 + N, 1 + N]`` of the forward pass on the mixed images (ViT/DeiT
called with ``return_attention=True``; the trainer does so).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _attention as A
from automix_jax.mixers import _common as C
from automix_jax.mixers import _cutmix as B_

Array = jax.Array

CHECKS = {"patch_size": lambda v: C.check_positive_int(v, arg="patch_size")}
RELABEL_OUTPUTS = ("attention",)


def propagate(attention: Array, token_lam: Array) -> Array:
  """``t_l = (A_l t_{l-1} + t_{l-1}) / 2`` through ``attention`` ``[B, L, T,
  T]`` (rows summing to 1) from ``token_lam`` ``[B, T]``; returns ``t_L``."""
  def block(t, a):
    return 0.5 * (jnp.einsum("bqk,bk->bq", a, t) + t), None
  out, _ = jax.lax.scan(block, token_lam.astype(jnp.float32),
                        jnp.moveaxis(attention.astype(jnp.float32), 1, 0))
  return out


def tlalign(key: Array, images: Array, labels: Array, *, alpha: float = 1.0,
            patch_size: int = 16, lam_scope: str = "batch",
            partner: str = "flip", lam: Any = None, index: Any = None,
            data_format: Any = None):
  """TL-Align: token-grid CutMix, labels aligned through the attention.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images, ``H`` and ``W`` multiples of
      ``patch_size``.
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) of the box (the authors: 1).
    patch_size: the model's patch size in pixels (DeiT: 16; ``vit_tiny``:
      4); ``relabel`` refuses a model whose token count differs.
    lam_scope: ``"batch"`` (the authors: one box) or ``"sample"``.
    partner: ``"flip"`` (the authors), ``"permutation"`` or ``"roll"``.
    lam: optional explicit λ (scalar or ``[B]``) that sets the box size.
    index: optional explicit partner indices ``[B]``.
    data_format: ``None``/``"NHWC"`` or ``"NCHW"`` (see ``_common.py``).

  Returns:
    ``(mixed_images, relabel, aux)``. ``aux``: ``lam`` (token-count λ),
    ``index``, ``mask`` ``[B, H, W, 1]`` (own pixels) and ``box`` ``[B, 4]``
    int32 on the token grid. ``relabel(out)`` returns ``(mixed_labels,
    aux)`` with ``aux['lam']`` the aligned own-label weight ``[B]`` and
    ``aux['lam_area']``.
  """
  x = C.channels_last(images, data_format)
  batch_size = C.check_batch(x, labels)
  patch = C.check_positive_int(patch_size, arg="patch_size")
  alpha = C.check_alpha(alpha)
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  height, width = x.shape[1:3]
  if height % patch or width % patch or height // patch < 3 or (
      width // patch < 3):
    raise ValueError(
        f"tlalign: `images` of {height}x{width} px must be a grid of at "
        f"least 3x3 whole `patch_size` = {patch} patches (the model's "
        "tokens; a box of 2 tokens a side needs 3).")
  gh, gw = height // patch, width // patch
  k_lam, k_index, k_center = jax.random.split(key, 3)
  lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)
  center = B_.draw_center(k_center, batch_size, gh, gw, lam_scope)
  # The authors' rand_token_bbox: timm's symmetric box on the token grid.
  box = B_.box_from_center(center[:, 0], center[:, 1], B_.cut_size(lam, gh),
                           B_.cut_size(lam, gw), gh, gw)
  own_tokens = (~B_.box_inside(box, gh, gw)).astype(jnp.float32)
  lam = B_.box_area_lam(box, gh, gw)
  mask = C.cells_to_mask(own_tokens, height, width)
  mixed = C.apply_mask(x, mask, index)
  aux = {"lam": lam, "index": index, "mask": mask, "box": box}
  mixed, _, aux = C.restore_layout(mixed, labels, aux, data_format)

  def relabel(out: dict) -> tuple[Array, dict]:
    attn = A.model_output(out, "attention", method="tlalign",
                          form="[B, depth, 1 + N, 1 + N]", ndim=4)
    if attn.shape[0] != batch_size or attn.shape[-1] != 1 + gh * gw:
      raise ValueError(
          f"tlalign: the model's attention covers {attn.shape[-1] - 1} "
          f"tokens but `patch_size` = {patch} cuts the {height}x{width} "
          f"images into {gh}x{gw} = {gh * gw}; set `patch_size` to the "
          "model's patch size (config.mixer.kwargs.patch_size).")
    start = jnp.concatenate([lam[:, None], own_tokens.reshape(batch_size, -1)],
                            axis=1)
    lam_aligned = propagate(attn, start)[:, 0]
    return A.relabeled(labels, lam_aligned, index, aux, lam_area=lam)

  return mixed, relabel, aux
