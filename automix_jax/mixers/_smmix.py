"""SMMix (Chen et al., "SMMix: Self-Motivated Image Mixing for Vision
Transformers", ICCV 2023, arXiv 2212.12977): max-min attention region mixing.

With a square side ``s`` (tokens) drawn uniformly from ``{int(r_lo S), ...,
int(r_hi S)}`` (``S`` the token grid's side, ``(r_lo, r_hi) =
side_ratios``), the ``s x s`` window of the partner with the *most*
attention replaces the ``s x s`` window of the image with the *least*
attention, token for token; the partner is the flipped batch and the labels
follow the areas, ``λ = 1 - s² / N``. Follows the authors' code
(github.com/ChenMnZ/SMMix ``smmix.py``, ``SMMix.smmix`` /
``index_translate``: window scores by ``unfold`` + sum with stride 1, the
first window in row-major order on ties; ``main.py`` defaults: ratios 0.25
and 0.75 of a 14-token side, one side per batch).

The attention is a model input (need ``"token_attention"``, docs/
interfaces.md): the authors take it from a clean forward pass in eval mode
(``motivat_model.eval()`` under ``no_grad``), which is what the trainer
passes. Their DeiT's map is the attention each patch *receives* from the
patch queries (``attn[:, :, 1:, 1:].mean((1, 2))`` of the last block); the
ViT's ``"token_attention"`` is the CLS attention (OpenMixup's
``augments/smmix.py`` reads that too), and Swin's the received attention.
Any non-negative ``[B, h, w]`` map may be passed.

Labels: the mixed image's label is the area λ above, which this mixer
returns. The authors' "fine-grained label assignment" (the mixed pass's
output tokens of each image's region, mean-pooled and classified, against
that image's label) and feature consistency (KL to the λ-mix of the clean
pass's predictions) are loss terms on the model's outputs: the static step
adds them with ``config.loss.smmix`` (``train/losses.py``:
``region_cross_entropy``, ``consistency_kl``; on in the ViT configs for
``mixer=smmix``), from ``aux['token_mask']``. OpenMixup leaves them off by
default. The authors alternate SMMix with MixUp (α 0.8, probability 0.5);
here every batch is SMMix.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _attention as A
from automix_jax.mixers import _common as C

Array = jax.Array

CHECKS = {"side_ratios": lambda v: C.check_range(v, arg="side_ratios")}


def side_range(grid_h: int, grid_w: int, side_ratios: Any) -> tuple[int, int]:
  """``(int(r_lo S), int(r_hi S))`` with ``S = min(h, w)``, at least 1 and at
  most ``S - 1`` (a window must leave the image something of its own)."""
  lo_r, hi_r = C.check_range(side_ratios, arg="side_ratios")
  side = min(grid_h, grid_w)
  lo, hi = max(1, int(side * lo_r)), min(side - 1, int(side * hi_r))
  if lo > hi:
    raise ValueError(
        f"smmix: `side_ratios` = {(lo_r, hi_r)} give no window side between "
        f"1 and {side - 1} tokens on the {grid_h}x{grid_w} token grid.")
  return lo, hi


def window_sums(maps: Array, side: Array, outside: float) -> Array:
  """Sums of every ``side x side`` window, ``[B, h, w]`` by top-left token;
  windows that leave the grid get ``outside``. ``side`` ``[B]`` int
  (traced), so one trace serves every side."""
  _, h, w = maps.shape
  r = jnp.arange(h)
  c = jnp.arange(w)
  s = side[:, None, None]
  rows = ((r[None, None, :] >= r[None, :, None]) &
          (r[None, None, :] < r[None, :, None] + s)).astype(maps.dtype)
  cols = ((c[None, None, :] >= c[None, :, None]) &
          (c[None, None, :] < c[None, :, None] + s)).astype(maps.dtype)
  sums = jnp.einsum("bri,bij,bcj->brc", rows, maps, cols,
                    precision=jax.lax.Precision.HIGHEST)
  valid = ((r[None, :, None] <= h - s) & (c[None, None, :] <= w - s))
  return jnp.where(valid, sums, outside)


def _arg(sums: Array, fn) -> tuple[Array, Array]:
  """Row-major first arg-min/-max over valid windows -> ``(row, col)`` [B]."""
  flat = sums.reshape(sums.shape[0], -1)
  idx = fn(flat, axis=1)
  return (idx // sums.shape[2]).astype(jnp.int32), (
      idx % sums.shape[2]).astype(jnp.int32)


def smmix(key: Array, images: Array, labels: Array, *,
          token_attention: Array, side_ratios: Any = (0.25, 0.75),
          lam_scope: str = "batch", partner: str = "flip", index: Any = None,
          data_format: Any = None):
  """SMMix: the partner's most-attended window over the least-attended one.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    token_attention: ``[B, h, w]`` non-negative attention on the model's
      token grid (``H % h == W % w == 0``); model input.
    side_ratios: ``(r_lo, r_hi)`` of the window side as fractions of the
      token grid's side (the authors: (0.25, 0.75)).
    lam_scope: ``"batch"`` (the authors: one side per batch) or
      ``"sample"``.
    partner: ``"flip"`` (the authors), ``"permutation"`` or ``"roll"``.
    index: optional explicit partner indices ``[B]``.
    data_format: ``None``/``"NHWC"`` or ``"NCHW"`` (see ``_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux``: ``lam`` ``[B]`` (``1 -
    s²/N``), ``index``, ``mask`` ``[B, H, W, 1]`` (own pixels),
    ``token_mask`` ``[B, h, w]`` (1 = partner token), ``side`` ``[B]`` int32,
    ``box`` and ``box_partner`` ``[B, 4]`` int32 token windows ``(y1, y2,
    x1, x2)`` in the image and in its partner.
  """
  x = C.channels_last(images, data_format)
  batch_size = C.check_batch(x, labels)
  height, width = x.shape[1:3]
  gh, gw = A.check_token_attention(token_attention, batch_size, height,
                                   width, method="smmix")
  lo, hi = side_range(gh, gw, side_ratios)
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  k_side, k_index = jax.random.split(key)
  index = C.resolve_index(k_index, batch_size, partner, index)
  n_side = 1 if lam_scope == "batch" else batch_size
  side = jnp.broadcast_to(
      jax.random.randint(k_side, (n_side,), lo, hi + 1, dtype=jnp.int32),
      (batch_size,))

  maps = jax.lax.stop_gradient(token_attention).astype(jnp.float32)
  # The least-attended window of the image and the most-attended one of its
  # partner, both of the image's side.
  r0, c0 = _arg(window_sums(maps, side, jnp.inf), jnp.argmin)
  r1, c1 = _arg(window_sums(C.take(maps, index), side, -jnp.inf), jnp.argmax)

  ph, pw = height // gh, width // gw
  ys = jnp.arange(height, dtype=jnp.int32)[None, :]
  xs = jnp.arange(width, dtype=jnp.int32)[None, :]
  in_rows = (ys >= (r0 * ph)[:, None]) & (ys < ((r0 + side) * ph)[:, None])
  in_cols = (xs >= (c0 * pw)[:, None]) & (xs < ((c0 + side) * pw)[:, None])
  inside = in_rows[:, :, None] & in_cols[:, None, :]
  src_y = jnp.clip(ys + ((r1 - r0) * ph)[:, None], 0, height - 1)
  src_x = jnp.clip(xs + ((c1 - c0) * pw)[:, None], 0, width - 1)
  source = C.take(x, index)
  source = jnp.take_along_axis(source, src_y[:, :, None, None], axis=1)
  source = jnp.take_along_axis(source, src_x[:, None, :, None], axis=2)
  mixed = jnp.where(inside[..., None], source, x)

  token_mask = inside[:, ::ph, ::pw].astype(jnp.float32)
  lam = 1.0 - (side * side).astype(jnp.float32) / (gh * gw)
  box = lambda r, c: jnp.stack([r, r + side, c, c + side], 1).astype(jnp.int32)
  aux = {"lam": lam, "index": index,
         "mask": (~inside).astype(jnp.float32)[..., None],
         "token_mask": token_mask, "side": side, "box": box(r0, c0),
         "box_partner": box(r1, c1)}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
