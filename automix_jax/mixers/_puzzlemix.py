"""PuzzleMix (Kim, Choo, Song, ICML 2020, arXiv 2009.06962).

Two images are mixed by a mask on a coarse block grid that keeps the salient
blocks of both, chosen by minimising a discrete MRF energy, after which each
image's salient blocks may move (optimal transport) into the region the mask
gives it. The reference is the authors' ``mixup.py``
(github.com/snu-mllab/PuzzleMix: ``mixup_graph``, ``graphcut_multi``,
``neigh_penalty``, ``mask_transport``, ``transport_image``) as OpenMixup runs it
(github.com/Westlake-AI/openmixup, ``openmixup/models/augments/puzzlemix.py``;
CIFAR config ``block_num=5, t_size=4``). The saliency is an input, as
``docs/interfaces.md`` ("Model-aware mixers") specifies: the trainer passes
``gradient_saliency(d loss / d images)``, ``sqrt(mean_c grad^2)``.

Steps, per batch (one λ ~ Beta(α, α), one grid, one random partner per sample):

1. Grid: ``g = 2^k``, ``k`` uniform in ``[1, block_num)`` (OpenMixup's
   ``block_num=5``: ``g`` in {2, 4, 8, 16}, the authors' ``2**randint(1, 5)``).
2. Energy on the ``g x g`` blocks (``labelling_problem``), labels ``i`` in
   ``0..n_labels-1`` meaning own-image weight ``m_i = 1 - i/(n_labels-1)``
   (3 labels: {1, 1/2, 0}):
   unary ``m s_partner + (1 - m) s_own`` (the saliency the mask drops, pooled
   per block and normalised to sum 1 per image) plus the image smoothness terms
   (``γ``, the authors' reparametrisation into unary and pairwise parts) plus
   the prior ``-η/g² log(binomial(n-1, i) λ^(n-1-i) (1-λ)^i)``; pairwise
   ``(m_p - m_q)^2 (β' + smoothness)`` with ``β' = β / g / 16``.
3. Transport (``transport=True``): on a ``t_size``-pixel grid, each image's
   blocks are assigned to positions by the authors' iterative greedy
   (``transport_permutation``) for the cost ``t_eps * dist^2 - s_i z_j``
   (``z`` the positions where that image shows), then moved there.
4. ``x̃ = m ⊙ T(x) + (1 - m) ⊙ T'(x[π])``, ``λ_i = mean(m_i)``,
   ``ỹ = λ y + (1 - λ) y[π]``.

Deviations from the reference, on purpose:

* The labelling is not pyGCO's alpha-beta swap (CPU, not jittable) but
  ``_mrf.minimize`` on the same (real-valued rather than int32-rounded)
  energy: exact for grids up to 8 x 8 (frontier dynamic programme, 3 labels),
  and for 16 x 16 the exact 8 x 8 solution over 2 x 2-constant labellings
  refined by exact row/column updates (a local minimum, not always the global
  one; ``tests/mixers/test_puzzle_comix.py`` measures the gap). Against
  pyGCO's swap on the same energies (``scripts/bench_puzzle_comix.py
  --gco``, 64 pairs per grid, 32 px): never higher for grids 2-8 (lower in
  0-36% of pairs); at 16, lower or equal in 88%, at most 0.4% higher.
* Transport: the greedy resolves each position among the blocks that chose it
  (the reference's ``min`` also counts blocks that did not choose it, with cost
  0, which can leave a position empty); the loser penalty is added inside the
  loop, as OpenMixup does (the authors' file adds it after the loop, so their
  iterations repeat one step). Blocks left unplaced after the last round
  are completed into a permutation (a free block stays where it is
  if its own position is free, the rest fill the free positions in order),
  where the reference leaves those positions black. Every output block is
  therefore one source block (``tests/mixers/test_puzzle_comix.py`` checks
  block provenance). The greedy reaches the exact assignment
  (``scipy.optimize.linear_sum_assignment``) in 94-97% of CIFAR-size
  masks (``bench_puzzle_comix.py --exact-transport``); with ``t_eps=0.8``
  it seldom moves a block at 32 px, since the salient blocks are mostly
  where the mask already shows them.
* The adversarial-noise part of the authors' training (``adv_mask1/2``) is
  off, as in OpenMixup; it is a training-loop option, not part of the mixer.
* The image smoothness term reads the images de-normalised with ``mean`` /
  ``std`` when given (the reference de-normalises with the dataset
  statistics); with ``None`` it reads the images as they are.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C
from automix_jax.mixers import _mrf

Array = jax.Array

N_LABELS = (2, 3, 4)


def gradient_saliency(input_grad: Array) -> Array:
  """PuzzleMix's (and Co-Mixup's) saliency ``sqrt(mean_c grad^2)``:
  ``[B, H, W, C]`` input gradient -> ``[B, H, W]`` float32 (the ``saliency_fn``
  registered with both mixers)."""
  shape = getattr(input_grad, "shape", None)
  if shape is None or len(shape) != 4:
    raise ValueError(
        "`input_grad` must be the loss gradient w.r.t. the images, shape "
        f"[B, H, W, C]; got "
        f"{tuple(shape) if shape is not None else type(input_grad).__name__}.")
  grad = input_grad.astype(jnp.float32)
  return jnp.sqrt(jnp.mean(grad * grad, axis=-1))


def check_block_num(block_num: Any) -> tuple[int, int]:
  """OpenMixup's ``block_num``: ``n`` -> exponents ``[1, n)``; ``(lo, hi)`` ->
  ``[lo, hi)``; the grid side is ``2^k``, ``k`` drawn uniformly."""
  if isinstance(block_num, numbers.Integral) and not isinstance(block_num,
                                                               bool):
    pair = (1, block_num)
  elif isinstance(block_num, (tuple, list)) and len(block_num) == 2:
    pair = tuple(block_num)
  else:
    pair = (None, None)
  lo, hi = pair
  if (any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
          for v in pair) or not 0 <= lo < hi):
    raise ValueError(
        "`block_num` must be an int n >= 2 (grid sides 2^k, k in [1, n), as "
        "OpenMixup) or a pair (lo, hi) with 0 <= lo < hi (k in [lo, hi)); got "
        f"{block_num!r}.")
  return int(lo), int(hi)


def grid_sides(block_num: Any) -> tuple[int, ...]:
  """The grid sides ``block_num`` draws from, e.g. 5 -> (2, 4, 8, 16)."""
  lo, hi = check_block_num(block_num)
  return tuple(2 ** k for k in range(lo, hi))


def _check_nonneg(value: Any, *, arg: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not value >= 0 or not math.isfinite(value)):
    raise ValueError(f"`{arg}` must be a finite number >= 0; got {value!r}.")
  return float(value)


def _check_t_size(value: Any) -> int:
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or
      not (value == -1 or value >= 1)):
    raise ValueError(
        "`t_size` must be a positive int (transport block side in pixels) or "
        f"-1 (the mask's blocks); got {value!r}.")
  return int(value)


def _check_stats(value: Any, *, arg: str) -> tuple[float, ...] | None:
  if value is None:
    return None
  try:
    out = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"`{arg}` must be None or one number per channel; got "
                     f"{value!r}.") from None
  if arg == "std" and not all(v > 0 for v in out):
    raise ValueError(f"`std` must be positive; got {out}.")
  return out


CHECKS = {
    "block_num": check_block_num,
    "beta": functools.partial(_check_nonneg, arg="beta"),
    "gamma": functools.partial(_check_nonneg, arg="gamma"),
    "eta": functools.partial(_check_nonneg, arg="eta"),
    "t_eps": functools.partial(_check_nonneg, arg="t_eps"),
    "neigh_size": functools.partial(C.check_positive_int, arg="neigh_size"),
    "n_labels": C.choice_check(N_LABELS, "n_labels"),
    "transport": functools.partial(C.check_static_bool, arg="transport"),
    "t_size": _check_t_size,
    "mean": functools.partial(_check_stats, arg="mean"),
    "std": functools.partial(_check_stats, arg="std"),
}


def mask_values(n_labels: int) -> np.ndarray:
  """Own-image weight of each label: ``1 - i / (n_labels - 1)``."""
  return 1.0 - np.arange(n_labels) / (n_labels - 1)


def _neigh_penalty(upper: Array, lower: Array, k: int) -> tuple[Array, Array]:
  """Mean |difference| across each block border, ``upper`` on the top/left
  side, ``lower`` on the bottom/right (the authors' ``neigh_penalty``):
  ``[B, g k, g k, C]`` neighbourhood means -> ``[B, g-1, g]``, ``[B, g, g-1]``."""
  batch_size, side = upper.shape[:2]
  g = side // k
  dx = jnp.abs(upper[:, :-1] - lower[:, 1:])[:, k - 1::k].mean(-1)
  dy = jnp.abs(upper[:, :, :-1] - lower[:, :, 1:])[:, :, k - 1::k].mean(-1)
  return (dx.reshape(batch_size, g - 1, g, k).mean(-1),
          dy.reshape(batch_size, g, k, g - 1).mean(2))


def labelling_problem(images: Array, saliency: Array, index: Array,
                      lam: Array, grid: int, *, beta: float, gamma: float,
                      eta: float, neigh_size: int, n_labels: int,
                      mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None
                      ) -> tuple[Array, Array, Array, Array]:
  """PuzzleMix's mask energy on a ``grid x grid`` block grid, per sample.

  Args:
    images: ``[B, H, W, C]`` (square, ``H`` divisible by ``grid``).
    saliency: ``[B, H, W]`` maps >= 0.
    index: ``[B]`` partners; lam: ``[B]`` prior λ (own weight).
    grid, beta, gamma, eta, neigh_size, n_labels, mean, std: as ``puzzlemix``.

  Returns:
    ``(unary [B, g, g, n_labels], pair [n_labels, n_labels], w_v [B, g-1, g],
    w_h [B, g, g-1])``, the ``_mrf`` energy whose label ``i`` is own weight
    ``mask_values(n_labels)[i]``.
  """
  batch_size, height = images.shape[:2]
  block = height // grid
  neigh = min(neigh_size, block)
  u_own = C.block_shares(saliency, grid)
  u_partner = C.take(u_own, index)
  x = images.astype(jnp.float32)
  if std is not None:
    x = x * jnp.asarray(std, jnp.float32)
  if mean is not None:
    x = x + jnp.asarray(mean, jnp.float32)
  fine = height // neigh
  pooled = {1: C.block_mean(x, fine, fine)}
  pooled[0] = C.take(pooled[1], index)
  scale = beta / grid / 16  # the authors' β normalisation
  fx, fy = {}, {}
  # Key (a, b): top/left block shows image a, bottom/right image b
  # (1 = own, 0 = partner).
  for a in (0, 1):
    for b in (0, 1):
      dx, dy = _neigh_penalty(pooled[a], pooled[b], block // neigh)
      fx[a, b], fy[a, b] = scale * gamma * dx, scale * gamma * dy
  # The authors' reparametrisation of the 2 x 2 border costs: half of each
  # row of the table goes to each end's unary, the rest is a cost on
  # disagreement (equal to the table up to a constant).
  cost = {}
  for label, kept in ((1, u_partner), (0, u_own)):
    other = 1 - label
    c = kept
    c = c.at[:, :-1, :].add((fx[label, other] + fx[label, label]) / 2)
    c = c.at[:, 1:, :].add((fx[other, label] + fx[label, label]) / 2)
    c = c.at[:, :, :-1].add((fy[label, other] + fy[label, label]) / 2)
    c = c.at[:, :, 1:].add((fy[other, label] + fy[label, label]) / 2)
    cost[label] = c
  w_v = (fx[1, 0] + fx[0, 1] - fx[1, 1] - fx[0, 0]) / 2 + scale
  w_h = (fy[1, 0] + fy[0, 1] - fy[1, 1] - fy[0, 0]) / 2 + scale
  m = jnp.asarray(mask_values(n_labels), jnp.float32)
  i = np.arange(n_labels)
  binom = np.array([math.comb(n_labels - 1, int(k)) for k in i], np.float32)
  lam = lam.astype(jnp.float32)[:, None]
  prob = binom * lam ** (n_labels - 1 - i) * (1 - lam) ** i
  prior = -eta / grid ** 2 * jnp.log(prob + 1e-8)
  unary = (m * cost[1][..., None] + (1 - m) * cost[0][..., None] +
           prior[:, None, None, :])
  pair = jnp.asarray((i[:, None] - i[None, :]) ** 2 / (n_labels - 1) ** 2,
                     jnp.float32)
  return unary, pair, w_v, w_h


def transport_cost(side: int) -> np.ndarray:
  """Squared grid distance between blocks over ``(side - 1)^2``, ``[n, n]``
  with ``n = side^2`` (row-major blocks; the authors' ``cost_matrix``)."""
  r, c = np.divmod(np.arange(side * side), side)
  dist = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
  return (dist / (side - 1) ** 2).astype(np.float32)


def transport_permutation(scores: Array, visible: Array, cost: Array,
                          n_iter: int) -> Array:
  """The block each position receives, ``[n]`` int32 (a permutation).

  The authors' greedy assignment for the cost ``cost[i, j] - scores[i]
  visible[j]`` (block ``i`` to position ``j``): every block picks its cheapest
  position, each position keeps the cheapest block among those that picked it,
  the others pay +1 for that position and pick again; ``n_iter`` rounds, the
  last round's matches kept. Unplaced blocks complete the permutation (module
  docstring).

  Args:
    scores: ``[n]`` block saliency; visible: ``[n]`` bool, where the image
      shows; cost: ``[n, n]`` distance cost (``t_eps * transport_cost``).
    n_iter: rounds (the authors: the grid side).
  """
  n = scores.shape[0]
  ids = jnp.arange(n)
  cost = cost - scores[:, None] * visible[None, :].astype(cost.dtype)

  def resolve(cost):
    """Each block's pick, and whether it is the cheapest (then lowest-index)
    block among those that picked the same position."""
    # argmin as two plain reductions (XLA:CPU's argmin is several times
    # slower); ties go to the lowest position, as argmin.
    price = jnp.min(cost, axis=1)
    pick = jnp.min(jnp.where(cost == price[:, None], ids, n), axis=1)
    best = jax.ops.segment_min(price, pick, num_segments=n)
    first = jax.ops.segment_min(jnp.where(price == best[pick], ids, n), pick,
                                num_segments=n)
    return pick, first[pick] == ids

  def one_round(_, cost):
    pick, win = resolve(cost)
    return cost.at[ids, pick].add(jnp.where(win, 0.0, 1.0))

  # The matches of the last round (the loser penalty of the rounds before).
  pick, win = resolve(jax.lax.fori_loop(0, n_iter - 1, one_round, cost))
  placed = win
  source = jnp.full((n,), -1, jnp.int32).at[jnp.where(win, pick, n)].set(
      ids.astype(jnp.int32), mode="drop")
  covered = source >= 0
  stay = ~placed & ~covered
  free_block = ~placed & ~stay
  free_position = ~covered & ~stay
  # Free blocks in index order, then the k-th free position gets the k-th.
  order = jnp.argsort(~free_block, stable=True)
  rank = jnp.cumsum(free_position) - 1
  source = jnp.where(covered, source, jnp.where(stay, ids, order[rank]))
  return source.astype(jnp.int32)


def transport_blocks(images: Array, source: Array, side: int) -> Array:
  """Moves blocks: output block ``j`` of sample ``b`` is input block
  ``source[b, j]`` (row-major on a ``side x side`` grid), ``[B, H, W, C]``."""
  batch_size, height, width, ch = images.shape
  bh, bw = height // side, width // side
  blocks = images.reshape(batch_size, side, bh, side, bw, ch).transpose(
      0, 1, 3, 2, 4, 5).reshape(batch_size, side * side, bh, bw, ch)
  moved = jnp.take_along_axis(blocks, source[:, :, None, None, None], axis=1)
  return moved.reshape(batch_size, side, side, bh, bw, ch).transpose(
      0, 1, 3, 2, 4, 5).reshape(batch_size, height, width, ch)


def _transport_side(height: int, grid: int, t_size: int) -> int:
  """The transport grid side for a mask grid (the reference's rule)."""
  block = height // grid
  t = min(t_size, block)
  return grid if t == -1 or t >= block else height // t


def _check_sizes(height: int, width: int, sides: Sequence[int],
                 neigh_size: int, t_size: int, transport: bool) -> None:
  if height != width:
    raise ValueError(
        f"puzzlemix needs square images (H == W), as the authors' block grid; "
        f"got (H, W) = {(height, width)}.")
  for g in sides:
    if height % g:
      raise ValueError(
          f"`block_num` draws grid sides {tuple(sides)}, but side {g} does not "
          f"divide the image side {height}; pick `block_num` so that every "
          f"2^k divides it (e.g. block_num={int(math.log2(height & -height)) + 1}"
          ").")
  for g in sides:
    block = height // g
    if block % min(neigh_size, block):
      raise ValueError(
          f"`neigh_size` {neigh_size} must divide the block side {block} "
          f"(grid {g} on side {height}).")
    t = min(t_size, block)
    if transport and t != -1 and block % t:
      raise ValueError(
          f"`t_size` {t_size} must divide the block side {block} (grid {g} on "
          f"side {height}), as in the reference.")


def _mix_on_grid(grid: int, images: Array, energy_images: Array,
                 saliency: Array, index: Array, lam: Array, *, hp: dict
                 ) -> tuple[Array, Array]:
  """One branch of ``puzzlemix``: the mix on a static ``grid x grid`` grid."""
  height = images.shape[1]
  unary, pair, w_v, w_h = labelling_problem(
      energy_images, saliency, index, lam, grid, beta=hp["beta"],
      gamma=hp["gamma"], eta=hp["eta"], neigh_size=hp["neigh_size"],
      n_labels=hp["n_labels"], mean=hp["mean"], std=hp["std"])
  labels = jax.vmap(_mrf.minimize, in_axes=(0, None, 0, 0))(
      unary, pair, w_v, w_h)
  cells = jnp.asarray(mask_values(hp["n_labels"]), jnp.float32)[labels]
  own, other = images, C.take(images, index)
  if hp["transport"]:
    side = _transport_side(height, grid, hp["t_size"])
    cells_t = jnp.repeat(jnp.repeat(cells, side // grid, 1), side // grid, 2)
    scores = C.block_shares(saliency, side).reshape(len(index), -1)
    cost = jnp.asarray(hp["t_eps"] * transport_cost(side))
    move = jax.vmap(transport_permutation, in_axes=(0, 0, None, None))
    own = transport_blocks(
        own, move(scores, cells_t.reshape(len(index), -1) > 0, cost, side),
        side)
    other = transport_blocks(
        other, move(C.take(scores, index),
                    cells_t.reshape(len(index), -1) < 1, cost, side), side)
  mask = C.cells_to_mask(cells, height, height)
  return C.blend(own, other, mask), mask


def puzzlemix(key: Array, images: Array, labels: Array, *, saliency: Array,
              alpha: float = 1.0, block_num: Any = 5, beta: float = 1.2,
              gamma: float = 0.5, eta: float = 0.2, neigh_size: int = 4,
              n_labels: int = 3, transport: bool = True, t_eps: float = 0.8,
              t_size: int = 4, mean: Any = None, std: Any = None,
              lam_scope: str = "batch", partner: str = "permutation",
              lam: Any = None, index: Any = None, data_format: Any = None
              ) -> tuple[Array, Array, dict[str, Array]]:
  """PuzzleMix: a saliency-optimal {0, ½, 1} block mask plus block transport.

  Defaults are OpenMixup's CIFAR config (the authors' CIFAR-100 settings).
  Under ``jit`` the grid is drawn per call and ``lax.switch`` runs the branch
  traced for it: one trace serves every draw; the work per branch is fixed.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating, square.
    labels: ``[B, K]`` dense targets.
    saliency: ``[B, H, W]`` maps >= 0, ``saliency[b]`` that of ``images[b]``
      (the trainer passes ``gradient_saliency(input_grad)``). Neither it nor
      the images get a gradient through the mask (``stop_gradient``).
    alpha: Beta(α, α) for the prior λ (OpenMixup CIFAR: 1).
    block_num: grid sides ``2^k``, ``k`` in ``[1, block_num)`` (or a pair
      ``(lo, hi)``: ``k`` in ``[lo, hi)``); every side must divide ``H``.
    beta: label smoothness β (divided by ``16 g`` as the authors).
    gamma: image smoothness γ.
    eta: prior weight η.
    neigh_size: pixel neighbourhood of the smoothness term.
    n_labels: 2, 3 or 4 mask levels (3: {0, ½, 1}).
    transport: whether blocks move (optimal transport step).
    t_eps: distance weight of the transport cost.
    t_size: transport block side in pixels (``-1``: the mask's blocks).
    mean, std: per-channel statistics to de-normalise the images for the
      smoothness term (None: the images as given).
    lam_scope: ``"batch"`` (one λ, the reference) or ``"sample"``.
    partner: ``"permutation"``, ``"flip"`` or ``"roll"``.
    lam: optional explicit prior λ, scalar or ``[B]``.
    index: optional explicit partners ``[B]``.
    data_format: ``None``/``"NHWC"`` or ``"NCHW"`` (output and ``mask`` keep it).

  Returns:
    ``(mixed_images, mixed_labels, aux)``: ``aux['lam']`` ``[B]`` the mask
    mean (label weight), ``aux['index']`` ``[B]``, ``aux['mask']``
    ``[B, H, W, 1]`` the own-image weight, ``aux['grid']`` the drawn side.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels)
  _, height, width, channels = images.shape
  alpha = C.check_alpha(alpha)
  sides = grid_sides(block_num)
  hp = {name: CHECKS[name](value) for name, value in (
      ("beta", beta), ("gamma", gamma), ("eta", eta), ("t_eps", t_eps),
      ("neigh_size", neigh_size), ("n_labels", n_labels),
      ("transport", transport), ("t_size", t_size), ("mean", mean),
      ("std", std))}
  for name in ("mean", "std"):
    if hp[name] is not None and len(hp[name]) not in (1, channels):
      raise ValueError(f"`{name}` must hold 1 or C = {channels} numbers; got "
                       f"{hp[name]}.")
  C.check_choice(lam_scope, C.LAM_SCOPES, arg="lam_scope")
  C.check_partner(partner, batch_size)
  _check_sizes(height, width, sides, hp["neigh_size"], hp["t_size"],
               hp["transport"])
  C.check_saliency(saliency, batch_size, height, width)

  k_lam, k_index, k_grid = jax.random.split(key, 3)
  lam = C.resolve_lam(k_lam, alpha, batch_size, lam_scope, lam)
  index = C.resolve_index(k_index, batch_size, partner, index)
  # The mask is a fixed function of the inputs: no gradient flows into it.
  energy_images = jax.lax.stop_gradient(images)
  saliency = jax.lax.stop_gradient(saliency.astype(jnp.float32))
  branches = [functools.partial(_mix_on_grid, g, hp=hp) for g in sides]
  choice = jax.random.randint(k_grid, (), 0, len(sides))
  mixed, mask = jax.lax.switch(choice, branches, images, energy_images,
                               saliency, index, lam)
  lam = C.mask_to_lam(mask)
  aux = {"lam": lam, "index": index, "mask": mask,
         "grid": jnp.asarray(sides, jnp.int32)[choice]}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
