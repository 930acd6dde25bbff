"""MixPro (Zhao et al., "MixPro: Data Augmentation with MaskMix and
Progressive Attention Labeling for Vision Transformer", ICLR 2023,
arXiv 2304.12043): MaskMix images, labels by progressive attention labelling.

MaskMix (``maskmix``) keeps ``ceil(n λ)`` random cells of an ``n``-cell grid
of each image (λ corrected to ``kept / n``). PAL runs after the forward pass on
the mixed images, per sample:

  λ_attn = Σ_{kept tokens} a / Σ a                (a: head-mean CLS attention)
  sim    = cos(ỹ, softmax(logits))                (ỹ: area-mixed labels,
                                                   smoothed by ``smoothing``)
  λ'     = sim λ_attn + (1 - sim) λ_area

Follows the authors' code (github.com/fistyee/MixPro ``main.py``,
``train_one_epoch`` with ``PAL_ATTN``; ``utils.py:MaskMix``): the attention is
the last block's CLS -> patch attention (head mean, detached) of the *same*
forward pass that gives the logits, on the mixed images; ỹ are the MaskMix
targets with label smoothing 0.1; one λ per batch, the kept cells drawn per
sample; a random permutation as partner. OpenMixup (``augments/mixpro.py``)
instead reads the attention of a second, clean forward pass, and its hard-CE
head averages λ' over the batch; neither is done here.

Deviations: the cells are MaskMix's equal blocks (see ``maskmix``: MixPro cuts
64-px cells and crops the last row and column; its DeiT configs use 14-px
patches and 56-px cells, a 4x4 grid of whole tokens at 224 px), and they must
be whole tokens of the model: checked before mixing when ``patch_size`` is
given (the trainer passes the model's; the default grid then has the number
of cells per side closest to 4 that cuts whole tokens), else in ``relabel``.
``smoothing`` acts on the labels as given: with ``config.label_smoothing >
0`` they are smoothed already, so set ``smoothing=0`` to smooth ỹ once (the
ViT configs do); the final targets carry the config's smoothing, where the
authors' loss uses hard labels. The authors alternate MaskMix with timm's
MixUp/CutMix (``MASKMIX_PROB`` 0.5); here every batch is MixPro (the switch
takes static mixers only). Where the attention sums to 0, λ_attn = λ_area.

Model outputs (docs/interfaces.md, need ``"relabel"``): ``"cls_attention"``
``[B, heads, N]`` and ``"logits"`` of the forward pass on the mixed images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _attention as A
from automix_jax.mixers import _common as C
from automix_jax.mixers import _maskmix

Array = jax.Array


def check_smoothing(value: Any) -> float:
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or
      not 0 <= value < 1):
    raise ValueError(f"`smoothing` must be a number in [0, 1); got {value!r}.")
  return float(value)


def check_head(value: Any) -> str:
  if not isinstance(value, str) or not value:
    raise ValueError(f"`head` must be a head name, e.g. \"one\"; got "
                     f"{value!r}.")
  return value


CHECKS = {**_maskmix.CHECKS, "smoothing": check_smoothing, "head": check_head,
          "patch_size": lambda v: C.check_positive_int(v, arg="patch_size")}
RELABEL_OUTPUTS = ("cls_attention", "logits")


def cosine(a: Array, b: Array) -> Array:
  """Row-wise cosine similarity ``[B, K] x [B, K] -> [B]`` (PyTorch's
  ``cosine_similarity``: norms clamped at 1e-8)."""
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1), 1e-8)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), 1e-8)
  return jnp.sum(a * b, axis=-1) / (na * nb)


def token_cells(tokens: int) -> int:
  """Cells along a side of ``tokens`` tokens: the divisor closest to MixPro's
  4 (its 4x4 grid at 224 px), the smaller on a tie."""
  divisors = [d for d in range(2, tokens + 1) if tokens % d == 0] or [1]
  return min(divisors, key=lambda d: (abs(d - 4), d))


def _check_cells(height: int, width: int, grid: tuple[int, int],
                 tokens: tuple[int, int]) -> None:
  """Refuses MaskMix cells that are not whole ``tokens`` (``(h, w)``)."""
  (gh, gw), (h, w) = grid, tokens
  if h % gh or w % gw:
    fits = [d for d in range(2, min(h, w) + 1) if h % d == 0 and w % d == 0]
    raise ValueError(
        f"mixpro: MaskMix cells of {height // gh}x{width // gw} px are not "
        f"whole tokens of the model's {height // h}x{width // w}-px patches "
        f"({h}x{w} tokens); pass a `grid` (or `mask_patch`) whose cells are "
        f"whole tokens: grid in {fits}.")


def mixpro(key: Array, images: Array, labels: Array, *, alpha: float = 1.0,
           mask_patch: Any = None, grid: Any = None, patch_size: Any = None,
           smoothing: float = 0.1, head: str = "one",
           lam_scope: str = "batch",
           partner: str = "permutation", lam: Any = None, index: Any = None,
           data_format: Any = None):
  """MixPro: MaskMix, then λ from the mixed pass's attention and confidence.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    alpha: Beta(alpha, alpha) concentration (MixPro: 1).
    mask_patch, grid: MaskMix's cells (see ``maskmix``); each cell must be a
      whole number of the model's tokens.
    patch_size: optional model patch size (the trainer passes the model's):
      then the cells are checked against the tokens before mixing, and with
      neither ``grid`` nor ``mask_patch`` each side gets the divisor of its
      token count closest to MixPro's 4 cells (4x4 cells on ``vit_tiny``'s
      8x8 tokens, 2x2 on DeiT's 14x14 at 224 px).
    smoothing: label smoothing of ỹ in the confidence ``sim`` (MixPro: 0.1).
    head: the logits head PAL reads (``out["logits"][head]``).
    lam_scope: ``"batch"`` (the authors: one λ, cells drawn per sample) or
      ``"sample"`` (one λ each).
    partner, lam, index, data_format: as ``maskmix``.

  Returns:
    ``(mixed_images, relabel, aux)``. ``aux`` is MaskMix's (``lam`` the kept
    fraction, ``index``, ``mask``). ``relabel(out)`` returns
    ``(mixed_labels, aux)`` with ``aux['lam']`` = λ' ``[B]``, and ``[B]``
    ``aux['lam_area']``, ``aux['lam_attn']`` and ``aux['sim']``.
  """
  smoothing = check_smoothing(smoothing)
  head = check_head(head)
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  x = C.channels_last(images, data_format)
  batch_size = C.check_batch(x, labels)
  height, width = x.shape[1:3]
  if patch_size is not None:
    patch = C.check_positive_int(patch_size, arg="patch_size")
    if height % patch or width % patch:
      raise ValueError(f"mixpro: `images` of {height}x{width} px are not "
                       f"whole `patch_size` = {patch} patches.")
    tokens = (height // patch, width // patch)
    if grid is None and mask_patch is None:
      grid = tuple(token_cells(t) for t in tokens)
  gh, gw = _maskmix._grid(height, width, mask_patch, grid)
  if patch_size is not None:
    _check_cells(height, width, (gh, gw), tokens)
  k_lam, k_mix = jax.random.split(key)
  lam = C.resolve_lam(k_lam, C.check_alpha(alpha), batch_size, lam_scope, lam)
  # One λ per batch but cells per sample (the authors' MaskMix): per-sample
  # layouts with the λ given.
  mixed, area_labels, aux = _maskmix.maskmix(
      k_mix, images, labels, alpha=alpha, mask_patch=mask_patch, grid=grid,
      lam_scope="sample", partner=partner, lam=lam, index=index,
      data_format=data_format)
  mask = aux["mask"] if data_format != "NCHW" else jnp.moveaxis(
      aux["mask"], 1, -1)

  def relabel(out: dict) -> tuple[Array, dict]:
    attn = A.cls_attention(out, method="mixpro")
    h, w = A.token_grid(attn.shape[-1], height, width, method="mixpro",
                        arg="the MaskMix cells")
    _check_cells(height, width, (gh, gw), (h, w))
    logits = out.get("logits", {}) if isinstance(out, dict) else {}
    if not isinstance(logits, dict) or head not in logits:
      raise ValueError(f"mixpro reads the model output "
                       f"out[\"logits\"][{head!r}] (`head`); this model's "
                       f"logits heads are {sorted(logits) if isinstance(logits, dict) else logits!r}.")
    probs = jax.nn.softmax(
        jax.lax.stop_gradient(logits[head]).astype(jnp.float32), axis=-1)
    kept = A.nearest_tokens(mask, h, w)
    share, defined = A.attention_share(attn, kept)
    lam_attn = jnp.where(defined, share, aux["lam"])
    k = labels.shape[-1]
    smoothed = (1.0 - smoothing) * area_labels.astype(jnp.float32) + (
        smoothing / k)
    sim = cosine(smoothed, probs)
    lam_final = sim * lam_attn + (1.0 - sim) * aux["lam"]
    return A.relabeled(labels, lam_final, aux["index"], aux,
                       lam_area=aux["lam"], lam_attn=lam_attn, sim=sim)

  return mixed, relabel, aux

