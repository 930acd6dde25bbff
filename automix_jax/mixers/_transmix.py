"""TransMix (Chen et al., "TransMix: Attend to Mix for Vision Transformers",
CVPR 2022, arXiv 2111.09833).

The images are mixed by CutMix; the labels are recomputed *after* the forward
pass on the mixed images, from that same pass's attention: with ``a`` the
head mean of the last block's CLS -> patch attention (``[B, N]``) and ``M``
the CutMix box sampled on the token grid,

  λ_attn = 1 - Σ_{tokens in M} a / Σ a,    λ' = (1 - w) λ_area + w λ_attn

(``w = attention_weight``, the authors' ½). Follows the authors' code
(github.com/Beckschen/TransMix ``transmix.py``, ``Mixup_transmix`` and
``transmix_label``; the attention in their ``train.py`` as
``attn[:, :, 0, 1:].mean(1)``, detached): the box is timm's CutMix box
(λ corrected to the clipped area), the partner the flipped batch, and the
token mask the box nearest-downsampled to the token grid (``nn.Upsample``:
each patch counts as in the box when its top-left pixel is). OpenMixup's
``augments/transmix.py`` computes the same λ'; its hard-CE head then scales a
batch-mean loss by each λ, i.e. uses mean(λ') -- here λ' stays per sample.

Not reproduced: the authors' recipe alternates TransMix with MixUp (α 0.8,
the CutMix branch with probability 0.8, timm's ``switch_prob``);
``mixers.switch`` takes static mixers only, so with ``config.mixer.name=
"transmix"`` every batch is TransMix. Where the attention sums to 0 (no
share defined) λ' falls back to λ_area.

Model output (docs/interfaces.md, need ``"relabel"``): ``"cls_attention"``
``[B, heads, N]`` of the forward pass on the mixed images (ViT/DeiT).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _attention as A
from automix_jax.mixers import _common as C
from automix_jax.mixers import _cutmix

Array = jax.Array

CHECKS = {
    "attention_weight": functools.partial(C.check_probability,
                                          arg="attention_weight"),
    "box_rule": _cutmix.CHECKS["box_rule"]}
RELABEL_OUTPUTS = ("cls_attention",)


def transmix(key: Array, images: Array, labels: Array, *, alpha: float = 1.0,
             attention_weight: float = 0.5, lam_scope: str = "batch",
             partner: str = "flip", lam: Any = None, index: Any = None,
             center: Any = None, box_rule: str = "symmetric",
             data_format: Any = None):
  """TransMix: CutMix images, labels re-weighted by the mixed pass's attention.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    alpha: CutMix's Beta(alpha, alpha) (the authors' DeiT: 1).
    attention_weight: weight ``w`` of λ_attn in λ' (the authors: ½).
    lam_scope, partner, lam, index, center, box_rule, data_format: as
      ``cutmix`` (defaults: one box per batch, the flipped batch as partner,
      timm's batch mode).

  Returns:
    ``(mixed_images, relabel, aux)``. ``aux`` is CutMix's (``lam`` the area
    λ, ``index``, ``mask``, ``box``). ``relabel(out)`` takes the model's
    output dict of the forward pass on ``mixed_images`` and returns
    ``(mixed_labels [B, K], aux)`` with ``aux['lam']`` = λ' ``[B]``,
    ``aux['lam_area']`` and ``aux['lam_attn']`` ``[B]``.
  """
  C.check_probability(attention_weight, arg="attention_weight")
  mixed, area_labels, aux = _cutmix.cutmix(
      key, images, labels, alpha=alpha, lam_scope=lam_scope, partner=partner,
      correct_lam=True, lam=lam, index=index, center=center,
      box_rule=box_rule, data_format=data_format)
  del area_labels  # Recomputed by relabel from the attention.
  mask = aux["mask"] if data_format != "NCHW" else jnp.moveaxis(
      aux["mask"], 1, -1)
  height, width = mask.shape[1:3]

  def relabel(out: dict) -> tuple[Array, dict]:
    attn = A.cls_attention(out, method="transmix")
    grid = A.token_grid(attn.shape[-1], height, width, method="transmix",
                        arg="the CutMix box")
    if attn.shape[0] != labels.shape[0]:
      raise ValueError(f"transmix: `out['cls_attention']` has batch "
                       f"{attn.shape[0]}, the mixed batch {labels.shape[0]}.")
    in_box = 1.0 - A.nearest_tokens(mask, *grid)  # partner's tokens
    partner_share, defined = A.attention_share(attn, in_box)
    lam_attn = jnp.where(defined, 1.0 - partner_share, aux["lam"])
    lam_final = ((1.0 - attention_weight) * aux["lam"] +
                 attention_weight * lam_attn)
    return A.relabeled(labels, lam_final, aux["index"], aux,
                       lam_area=aux["lam"], lam_attn=lam_attn)

  return mixed, relabel, aux
