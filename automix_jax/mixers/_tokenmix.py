"""TokenMix (Liu et al., "TokenMix: Rethinking Image Mixing for Data
Augmentation in Vision Transformers", ECCV 2022, arXiv 2207.08409).

Images are mixed on the model's token grid: a set of tokens -- a union of
random rectangles (``mask_type="block"``, BEiT-style) or a random subset
(``"random"``) -- comes from the partner. The label weights are
*content-based*: with ``S_a`` a sample's activation map and ``S_b`` its
partner's, each normalised to sum 1 over the tokens and ``M`` the partner's
tokens,

  w_a = Σ S_a (1 - M),   w_b = Σ S_b M,   λ = w_a / (w_a + w_b).

Follows the authors' code (github.com/Sense-X/TokenMix ``tokenmix.py``:
``generate_mask``, ``generate_mask_random``, ``Mixup.__call__``): the
partner is the flipped batch, one mask per batch, and the number of partner
tokens aimed at is ``min(N, int((1 - λ) N) + minimum_tokens)`` with the
authors' constant λ = 0.5 (their ``lam_constant``; ``lam=None`` draws λ ~
Beta(alpha, alpha) as OpenMixup does) and 14 minimum tokens on their 14x14
grid (by default the same fraction, ``round(N / 14)``, on other grids). The
block generator places rectangles of random area and aspect ratio (0.3 to
1/0.3) in rounds of up to 10 attempts, each adding new tokens but never
more than still wanted, and stops when the count is reached or a round adds
nothing; λ_area = 1 - (partner tokens) / N is exact.

Deviations, on purpose:

* The activation maps. The authors' teacher is NFNet-F6: per-token class
  scores precomputed offline (TokenLabeling's label maps), the sample's own
  class channel. None is available here; the mixer takes any non-negative
  ``token_attention`` ``[B, h, w]`` -- the trainer passes the model's own
  attention from a clean eval-mode pass (``"token_attention"``: the
  normalised CLS attention of a ViT), which is what OpenMixup's
  ``augments/tokenmix.py`` uses. Pass a teacher's maps to follow the paper.
* The weights are normalised to λ (rows summing to 1, docs/interfaces.md);
  ``normalize=False`` returns the authors' raw ``w_a y_a + w_b y_b`` (they
  train with BCE on these rows).
* OpenMixup sums the sample's *own* attention over the *partner's* tokens
  for ``w_a`` (an apparent swap), leaves the weights unnormalised and its
  loss path averages them over the batch; none of that is done here: λ is
  per sample.
* The authors alternate TokenMix with MixUp (α 0.8, switch probability
  0.5); here every batch is TokenMix.

``label_weights="area"`` gives the plain area λ instead (TokenMix without
the teacher); the mixer still takes ``token_attention`` for the token grid.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _attention as A
from automix_jax.mixers import _common as C

Array = jax.Array

MASK_TYPES = ("block", "random")
LABEL_WEIGHTS = ("attention", "area")
# The authors' block generator: aspect ratios in [0.3, 1 / 0.3], up to 10
# attempts a round, rectangles of at least one token.
MIN_ASPECT, ATTEMPTS, MIN_AREA = 0.3, 10, 1.0


def _check_minimum_tokens(value: Any) -> Any:
  if value is not None and (isinstance(value, bool) or
                            not isinstance(value, int) or value < 0):
    raise ValueError(f"`minimum_tokens` must be None or an int >= 0; got "
                     f"{value!r}.")
  return value


CHECKS = {"mask_type": C.choice_check(MASK_TYPES, "mask_type"),
          "label_weights": C.choice_check(LABEL_WEIGHTS, "label_weights"),
          "minimum_tokens": _check_minimum_tokens,
          "normalize": functools.partial(C.check_static_bool,
                                         arg="normalize")}


def target_count(lam: Array, num_tokens: int, minimum_tokens: int) -> Array:
  """``min(N, int((1 - λ) N) + minimum_tokens)`` as int32 ``[B]``."""
  # floor of a float32 product: 0.3 -> (1 - 0.3) 10 = 6.9999995 must count 7.
  guard = 2.0 * num_tokens * float(np.finfo(np.float32).eps)
  wanted = jnp.floor((1.0 - lam) * num_tokens + guard).astype(jnp.int32)
  return jnp.minimum(num_tokens, wanted + minimum_tokens)


def block_mask(key: Array, count: Array, grid_h: int, grid_w: int) -> Array:
  """One BEiT-style block mask ``[h, w]`` float32 aiming at ``count`` tokens.

  The authors' ``generate_mask``: rounds of up to ``ATTEMPTS`` rectangles;
  the first rectangle of a round that fits the grid and adds between 1 and
  the still-wanted number of tokens is masked; a round without one ends the
  mask. The attempts of a round are drawn at once and the first valid one
  kept, which is the sequential loop's distribution.
  """
  rows = jnp.arange(grid_h)[None, :, None]
  cols = jnp.arange(grid_w)[None, None, :]
  log_aspect = (math.log(MIN_ASPECT), math.log(1.0 / MIN_ASPECT))

  def body(state):
    mask, masked, _, key = state
    key, k_area, k_aspect, k_top, k_left = jax.random.split(key, 5)
    room = (count - masked).astype(jnp.float32)
    area = jax.random.uniform(k_area, (ATTEMPTS,), minval=MIN_AREA,
                              maxval=room)
    aspect = jnp.exp(jax.random.uniform(k_aspect, (ATTEMPTS,),
                                        minval=log_aspect[0],
                                        maxval=log_aspect[1]))
    hh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ww = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (hh < grid_h) & (ww < grid_w)
    # randint(0, side - size) inclusive, as Python's random.randint.
    top = jnp.floor(jax.random.uniform(k_top, (ATTEMPTS,)) *
                    jnp.maximum(grid_h - hh + 1, 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(k_left, (ATTEMPTS,)) *
                     jnp.maximum(grid_w - ww + 1, 1)).astype(jnp.int32)
    rect = ((rows >= top[:, None, None]) & (rows < (top + hh)[:, None, None])
            & (cols >= left[:, None, None]) &
            (cols < (left + ww)[:, None, None])).astype(jnp.float32)
    new = (hh * ww - jnp.sum(rect * mask, axis=(1, 2))).astype(jnp.int32)
    ok = fits & (new > 0) & (new <= count - masked)
    first = jnp.argmax(ok)
    added = jnp.any(ok)
    mask = jnp.where(added, jnp.maximum(mask, rect[first]), mask)
    masked = masked + jnp.where(added, new[first], 0)
    return mask, masked, ~added, key

  def cond(state):
    _, masked, stalled, _ = state
    return (~stalled) & (masked < count)

  start = (jnp.zeros((grid_h, grid_w), jnp.float32), jnp.int32(0),
           jnp.bool_(False), key)
  return jax.lax.while_loop(cond, body, start)[0]


def random_mask(key: Array, count: Array, grid_h: int, grid_w: int) -> Array:
  """``count`` tokens chosen uniformly at random, ``[h, w]`` float32."""
  rank = jnp.argsort(jax.random.uniform(key, (grid_h * grid_w,)))
  return (rank < count).astype(jnp.float32).reshape(grid_h, grid_w)


def tokenmix(key: Array, images: Array, labels: Array, *,
             token_attention: Array, lam: Any = 0.5, alpha: float = 1.0,
             mask_type: str = "block", minimum_tokens: Any = None,
             label_weights: str = "attention", normalize: bool = True,
             lam_scope: str = "batch", partner: str = "flip",
             index: Any = None, data_format: Any = None):
  """TokenMix: partner tokens pasted on the token grid, labels by content.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    token_attention: ``[B, h, w]`` non-negative activation maps on the
      model's token grid (``H % h == W % w == 0``); model input, never bound
      by ``mixers.get``.
    lam: λ setting the partner's token count (scalar or ``[B]``); default
      the authors' constant 0.5; None draws λ ~ Beta(alpha, alpha).
    alpha: Beta concentration when ``lam`` is None (OpenMixup: 1).
    mask_type: ``"block"`` (the authors' default) or ``"random"``.
    minimum_tokens: tokens added to ``int((1 - λ) N)`` (the authors: 14 on
      14x14); None = ``round(N / 14)``.
    label_weights: ``"attention"`` (content-based, TokenMix) or ``"area"``.
    normalize: label rows summing to 1 (default) or the authors' raw
      weights (with ``label_weights="attention"``).
    lam_scope: ``"batch"`` (the authors: one mask) or ``"sample"``.
    partner: ``"flip"`` (the authors), ``"permutation"`` or ``"roll"``.
    index: optional explicit partner indices ``[B]``.
    data_format: ``None``/``"NHWC"`` or ``"NCHW"`` (see ``_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux``: ``lam`` ``[B]`` (own
    label weight), ``index``, ``mask`` ``[B, H, W, 1]`` (own pixels),
    ``token_mask`` ``[B, h, w]`` (1 = partner token), ``lam_area`` ``[B]``
    and ``weights`` ``[B, 2]`` the raw ``(w_a, w_b)``.
  """
  x = C.channels_last(images, data_format)
  batch_size = C.check_batch(x, labels)
  height, width = x.shape[1:3]
  gh, gw = A.check_token_attention(token_attention, batch_size, height,
                                   width, method="tokenmix")
  C.check_choice(mask_type, MASK_TYPES, arg="mask_type")
  C.check_choice(label_weights, LABEL_WEIGHTS, arg="label_weights")
  normalize = C.check_static_bool(normalize, arg="normalize")
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  n = gh * gw
  minimum = _check_minimum_tokens(minimum_tokens)
  minimum = round(n / 14) if minimum is None else minimum

  if lam_scope == "batch" and np.ndim(lam) == 1:
    raise ValueError(
        "tokenmix: a per-sample `lam` [B] needs lam_scope=\"sample\" (with "
        "\"batch\" one mask serves the whole batch).")
  k_lam, k_index, k_mask = jax.random.split(key, 3)
  lam = C.resolve_lam(k_lam, C.check_alpha(alpha), batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)
  count = target_count(lam, n, minimum)
  make = block_mask if mask_type == "block" else random_mask
  draw = lambda k, c: make(k, c, gh, gw)
  if lam_scope == "batch":
    token_mask = jnp.broadcast_to(draw(k_mask, count[0]), (batch_size, gh, gw))
  else:
    token_mask = jax.vmap(draw)(jax.random.split(k_mask, batch_size), count)
  own = C.cells_to_mask(1.0 - token_mask, height, width)
  mixed = C.apply_mask(x, own, index)
  lam_area = 1.0 - jnp.sum(token_mask, axis=(1, 2)) / n

  maps = A.normalized(jax.lax.stop_gradient(token_attention))
  w_a = jnp.sum(maps * (1.0 - token_mask), axis=(1, 2))
  w_b = jnp.sum(C.take(maps, index) * token_mask, axis=(1, 2))
  if label_weights == "area":
    w_a, w_b = lam_area, 1.0 - lam_area
  mixed_labels, lam_out = C.weighted_labels(
      labels, w_a, w_b, index, normalize=normalize or label_weights == "area",
      fallback=lam_area)
  aux = {"lam": jnp.clip(lam_out, 0.0, 1.0).astype(jnp.float32),
         "index": index, "mask": own, "token_mask": token_mask,
         "lam_area": lam_area.astype(jnp.float32),
         "weights": jnp.stack([w_a, w_b], axis=1).astype(jnp.float32)}
  return C.restore_layout(mixed, mixed_labels, aux, data_format)
