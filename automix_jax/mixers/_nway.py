"""N-way MixUp: a convex combination of N images and their labels.

The N ≥ 3 linear mix of AdAutoMix (Qin et al., ICLR 2024, arXiv 2312.11954),
generalising MixUp (Zhang et al., ICLR 2018, arXiv 1710.09412).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _common as C

WEIGHTS = ("beta_normalized", "dirichlet")


def check_num_images(num_images: Any, batch_size: int | None = None) -> int:
  bound = "batch size" if batch_size is None else f"batch size ({batch_size})"
  if (isinstance(num_images, bool) or
      not isinstance(num_images, numbers.Integral) or num_images < 2 or
      (batch_size is not None and num_images > batch_size)):
    raise ValueError(
        f"`num_images` must be an int with 2 <= num_images <= {bound}; got "
        f"{num_images!r}.")
  return int(num_images)


CHECKS = {"num_images": check_num_images,
          "weights": C.choice_check(WEIGHTS, "weights"),
          "identity_first": functools.partial(C.check_static_bool,
                                              arg="identity_first")}


def draw_weights(key: jax.Array, alpha: float, num_images: int, rows: int,
                 weights: str = "beta_normalized") -> jax.Array:
  """``[rows, N]`` float32 mixing weights, each row summing to 1.

  * ``"beta_normalized"`` (AdAutoMix): ``λ_i ~ Beta(α, α)`` iid, divided by
    their sum. This is *not* a Dirichlet sample: for α = 1, N = 3 the variance
    of a weight is about 0.032 against the Dirichlet's 0.056.
  * ``"dirichlet"``: ``Dirichlet(α·1_N)``.
  """
  C.check_choice(weights, WEIGHTS, arg="weights")
  if weights == "dirichlet":
    alphas = jnp.full((num_images,), alpha, jnp.float32)
    return jax.random.dirichlet(key, alphas, (rows,), dtype=jnp.float32)
  lam = jax.random.beta(key, alpha, alpha, (rows, num_images),
                        dtype=jnp.float32)
  total = jnp.sum(lam, axis=-1, keepdims=True)
  # All N draws underflowing to 0 (tiny α) would divide 0 by 0.
  return jnp.where(total > 0, lam / jnp.where(total > 0, total, 1.0),
                   1.0 / num_images)


def _check_weights(lam: Any, batch_size: int, num_images: int) -> jax.Array:
  shape = getattr(lam, "shape", None)
  if shape is None or tuple(shape) not in ((num_images,),
                                           (batch_size, num_images)):
    raise ValueError(
        f"`lam` must be weights of shape [N] = ({num_images},) or [B, N] = "
        f"({batch_size}, {num_images}); got "
        f"{tuple(shape) if shape is not None else type(lam).__name__}.")
  C.check_weight_rows(lam, arg="lam")
  return jnp.broadcast_to(jnp.asarray(lam, jnp.float32),
                          (batch_size, num_images))


def draw_indices(key: jax.Array, batch_size: int, num_images: int,
                 partner: str = "permutation", identity_first: bool = True
                 ) -> jax.Array:
  """``[B, N]`` int32: column ``i`` is the permutation ``π_i`` of the batch.

  * ``"permutation"``: independent uniform permutations; column 0 is the
    identity when ``identity_first`` (else permuted too, as AdAutoMix).
  * ``"roll"``: ``π_i(j) = (j - i) mod B`` (distinct for every ``i < B``).
  * ``"flip"``: N = 2 only, ``π_1(j) = B - 1 - j``.
  """
  C.check_partner(partner, batch_size)
  ids = jnp.arange(batch_size, dtype=jnp.int32)
  if partner == "permutation":
    keys = jax.random.split(key, num_images)
    perms = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(keys)
    perms = perms.astype(jnp.int32)
    if identity_first:
      perms = perms.at[0].set(ids)
    return perms.T
  if partner == "flip":
    return jnp.stack([ids, ids[::-1]], axis=1)
  return jnp.stack([jnp.roll(ids, i) for i in range(num_images)], axis=1)


def nway_mixup(key: jax.Array, images: jax.Array, labels: jax.Array, *,
               num_images: int = 3, alpha: float = 1.0,
               weights: str = "beta_normalized", lam_scope: str = "batch",
               partner: str = "permutation", identity_first: bool = True,
               lam: Any = None, indices: Any = None,
               data_format: Any = None
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """N-way MixUp: ``x̃ = Σ_i w_i x[π_i]``, ``ỹ = Σ_i w_i y[π_i]``.

  Convention: with ``identity_first=True`` (default) ``π_0`` is the identity,
  so ``aux['lam'][:, 0]`` is each sample's own weight, and ``π_1 … π_{N-1}``
  are independent permutations. ``identity_first=False`` permutes all N
  (AdAutoMix's linear mix), needing ``partner="permutation"``.

  Unlike the two-image mixers, ``aux['lam']`` and ``aux['index']`` are
  ``[B, N]``, so this mixer cannot be a branch of ``mixers.switch``.

  Args:
    key: PRNG key.
    images: ``[B, ...]`` floating (any rank 2-5).
    labels: ``[B, K]`` dense targets.
    num_images: N, with ``2 <= N <= B`` (AdAutoMix: 3).
    alpha: concentration of the weight draw (AdAutoMix: 1).
    weights: ``"beta_normalized"``: AdAutoMix's ``λ_i ~ Beta(α, α)`` iid then
      divided by their sum — *not* a Dirichlet; ``"dirichlet"``:
      ``Dirichlet(α·1_N)``.
    lam_scope: ``"batch"``: one weight vector for the batch (AdAutoMix);
      ``"sample"``: one per sample.
    partner: ``"permutation"``; ``"roll"`` (``π_i`` = roll by ``i``); or
      ``"flip"`` (N = 2 only).
    identity_first: whether ``π_0`` is the identity.
    lam: optional explicit weights ``[N]`` or ``[B, N]``, rows non-negative and
      summing to 1.
    indices: optional explicit ``[B, N]`` integer indices (column i = π_i).
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it). ``None``
      refuses a batch that looks NCHW (``automix_jax/mixers/_common.py``).

  Returns:
    ``(mixed_images, mixed_labels, aux)`` with ``aux = {'lam': [B, N] float32
    (rows sum to 1), 'index': [B, N] int32}``.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels, ranks=(2, 3, 4, 5))
  alpha = C.check_alpha(alpha)
  num_images = check_num_images(num_images, batch_size)
  C.check_choice(weights, WEIGHTS, arg="weights")
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  if partner == "flip" and num_images != 2:
    raise ValueError(
        f'`partner="flip"` pairs each sample with one partner, so it needs '
        f"num_images == 2; got {num_images}. Use \"permutation\" or \"roll\".")
  C.check_static_bool(identity_first, arg="identity_first")
  if not identity_first and partner != "permutation":
    raise ValueError(
        f'`identity_first=False` permutes every image and needs '
        f'partner="permutation"; got partner={partner!r}.')

  k_lam, k_index = jax.random.split(key)
  if lam is None:
    rows = 1 if lam_scope == "batch" else batch_size
    lam = draw_weights(k_lam, alpha, num_images, rows, weights)
    lam = jnp.broadcast_to(lam, (batch_size, num_images))
  else:
    lam = _check_weights(lam, batch_size, num_images)
  if indices is None:
    index = draw_indices(k_index, batch_size, num_images, partner,
                         identity_first)
  else:
    C.check_index_matrix(indices, batch_size, num_images)
    index = jnp.asarray(indices, jnp.int32)

  # Accumulate in at least float32 (bf16 images), cast once at the end.
  acc_dtype = jnp.promote_types(images.dtype, jnp.float32)
  # One row gather per image (N takes of [B, ...]) rather than a single
  # [B, N, ...] gather: XLA's CPU gather for the latter was ~50x slower.
  mixed = sum(C.per_sample(lam[:, i], images.ndim).astype(acc_dtype) *
              C.take(images, index[:, i]).astype(acc_dtype)
              for i in range(num_images)).astype(images.dtype)
  # An explicit product-sum rather than einsum: accelerators may run matmuls
  # at reduced precision by default.
  mixed_labels = jnp.sum(lam[..., None] * C.take(labels, index).astype(jnp.float32),
                         axis=1)
  aux = {"lam": lam, "index": index}
  return C.restore_layout(mixed, mixed_labels.astype(labels.dtype), aux,
                          data_format)
