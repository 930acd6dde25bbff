"""Co-Mixup (Kim, Choo, Jeong, Song, ICLR 2021, arXiv 2102.03065).

Batch-level mixing: the ``m`` inputs of a partition are mixed into ``m``
outputs at once. Every block of every output is labelled with the input it
shows (or, from the second pass on, an even mix of two inputs) so as to
minimise, over the whole partition, the negative saliency kept (coverage), a
label smoothness term (β), a prior on the inputs' shares (η, Dirichlet(α)),
and a supermodular penalty on an input appearing in several outputs
(diversity, γ, with the compatibility matrix ``A`` built from the distance
between the images' salient locations, ω). The reference is the authors'
code, github.com/snu-mllab/Co-Mixup: ``match.py`` (``get_onehot_matrix``,
``graphcut_wrapper``, ``resolve_label``, ``obj_fn``, ``mix_input``) called as
``mixup.py`` / ``mixup_parallel.py`` do, with ``main.py``'s CIFAR defaults.

The solver is the authors' *modular approximation*: outputs are relabelled one
after the other (Gauss-Seidel, ``niter`` passes over the partition); output
``j``'s diversity penalty is linearised around the other outputs' current
input counts ``c_{-j}``: a per-input unary cost ``2γ [A c_{-j} > τ] A c_{-j}``
(``thres_type="hard"``; ``"soft"`` subtracts τ), so each step is one grid MRF
(Potts pairwise, weight β) over the inputs' labels. From the second pass the
output may also use "soft" labels, an even mix of two of the inputs it
already shows (all three pairs of its three most used inputs, or the one pair
when it shows two), with pairwise cost 1/4 to their two inputs. Before the
last pass outputs that use the same set of inputs are penalised on one input
each (``set_resolve``). A pass whose objective changes by less than a
relative 1e-6 ends the iterations (the reference's ``break``, here a flag,
so the work is always ``niter`` passes).

Deviations from the reference, on purpose:

* The per-output MRF is not pyGCO's alpha-beta swap but ``_mrf.minimize`` on
  the same energy: exact when (labels)^(grid side) <= 6561 (small
  partitions), else exact on the 2 x 2-coarsened grid and refined by exact
  row/column updates. ``tests/mixers/test_puzzle_comix.py`` checks the whole
  assignment against the authors' algorithm re-derived in numpy (equal masks
  where both cuts are exact) and against exhaustive search;
  ``scripts/bench_puzzle_comix.py --gco`` compares it at 20 into 20 on a
  4 x 4 grid with the authors' algorithm run with pyGCO (a different local
  optimum of the same passes: lower or equal ``obj_fn_thres`` in 69% of 16
  partitions, 2.6 vs 2.6 inputs per output).
* The authors' released code mixes the labelled blocks as they are (its
  ``mix_input``; no optimal-transport step in either the CIFAR or the ImageNet
  code), and so does this function.
* The batch is cut into partitions of ``part`` consecutive samples (the
  authors' ``m_part``, 20); a last, smaller partition is solved on its own as
  the reference does. ``aux['index']`` rows of that partition are padded
  with weight-0 columns.
* The saliency is whatever the caller passes; the static trainer takes it
  from an eval-mode pass (docs/interfaces.md). The authors' ``main.py``
  (default ``clean_lam=1``) takes it from a train-mode forward whose clean
  loss it also trains on; that clean-loss term belongs to the training loop
  and is not part of this mixer.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C
from automix_jax.mixers import _mrf

Array = jax.Array

THRES_TYPES = ("hard", "soft")
# A disabled soft label's unary cost: never chosen, still finite in sums.
_OFF = 1e6
# The reference's bonus for a soft label over the mean of its two inputs.
_SOFT_BONUS = 5e-4
# Window of the salient-location search for the compatibility term.
_LOCATION_WINDOW = 8


def _check_real(value: Any, *, arg: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not 0 <= value < np.inf):
    raise ValueError(f"`{arg}` must be a finite number >= 0; got {value!r}.")
  return float(value)


def _check_part(value: Any) -> int:
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or
      value < 2):
    raise ValueError(f"`part` must be an int >= 2 (samples mixed together); "
                     f"got {value!r}.")
  return int(value)


CHECKS = {
    "block_num": functools.partial(C.check_positive_int, arg="block_num"),
    "part": _check_part,
    "beta": functools.partial(_check_real, arg="beta"),
    "gamma": functools.partial(_check_real, arg="gamma"),
    "eta": functools.partial(_check_real, arg="eta"),
    "thres": functools.partial(_check_real, arg="thres"),
    "omega": functools.partial(_check_real, arg="omega"),
    "thres_type": C.choice_check(THRES_TYPES, "thres_type"),
    "set_resolve": functools.partial(C.check_static_bool, arg="set_resolve"),
    "niter": functools.partial(C.check_positive_int, arg="niter"),
}


def salient_locations(saliency: Array) -> Array:
  """``[B, H, W]`` -> ``[B, 2]`` float32 (row, col) of the most salient
  ``8 x 8`` window (stride 1; the whole map if smaller), as the authors'
  ``main.py`` locates each image's object for the compatibility term."""
  _, height, width = saliency.shape
  k = min(_LOCATION_WINDOW, height, width)
  summed = jax.lax.reduce_window(saliency, 0.0, jax.lax.add, (1, k, k),
                                 (1, 1, 1), "VALID")
  cols = summed.shape[2]
  flat = jnp.argmax(summed.reshape(summed.shape[0], -1), axis=1)
  return jnp.stack([flat // cols, flat % cols], axis=1).astype(jnp.float32)


def compatibility(locations: Array, omega: float) -> Array:
  """``A = (1 - ω) I + ω D / sum(D) * m``, ``D`` the L1 distances between the
  ``[m, 2]`` salient locations (``[m, m]``; ``D`` = 0 when all coincide)."""
  m = locations.shape[0]
  dist = jnp.abs(locations[:, None] - locations[None]).sum(-1)
  total = dist.sum()
  dist = jnp.where(total > 0, dist / jnp.where(total > 0, total, 1.0) * m, 0.0)
  return (1 - omega) * jnp.eye(m) + omega * dist


def objective(cost: Array, masks: Array, beta: float, gamma: float) -> Array:
  """The authors' ``obj_fn``: ``cost`` ``[g, g, m]`` (with the prior),
  ``masks`` ``[m_out, g, g, m]``; β and γ per block (divided by ``g^2``)."""
  counts = masks.sum((1, 2))
  smooth = (jnp.sum((masks[:, :-1] - masks[:, 1:]) ** 2) +
            jnp.sum((masks[:, :, :-1] - masks[:, :, 1:]) ** 2))
  diversity = jnp.sum(counts.sum(0) ** 2) - jnp.sum(counts ** 2)
  return jnp.sum(cost * masks) + beta / 2 * smooth + gamma * diversity


def _resolve(masks: Array) -> Array:
  """The authors' ``resolve_label``: outputs ``o1 < o2`` that use the same set
  of (>= 2) inputs get +1 on ``o1``'s first and ``o2``'s second input."""
  used = masks.sum((1, 2)) > 0                               # [m_out, m]
  m_out, m = used.shape
  same = jnp.all(used[:, None] == used[None], axis=-1)
  same = same & (jnp.arange(m_out)[:, None] < jnp.arange(m_out)[None])
  ids = jnp.arange(m)
  first = jnp.argmax(used, axis=1)
  second = jnp.argmax(used & (ids[None] > first[:, None]), axis=1)
  several = used.sum(1) >= 2
  mark_first = several & same.any(axis=1)
  mark_second = several & same.any(axis=0)
  return ((mark_first[:, None] & (ids[None] == first[:, None])) |
          (mark_second[:, None] & (ids[None] == second[:, None]))
          ).astype(jnp.float32)


def _soft_pairs(count: Array, soft: Array) -> tuple[Array, Array]:
  """The soft labels of one output: ``[S, m]`` input weights (0.5, 0.5 on a
  pair; rows of disabled slots are 0) and ``[S]`` whether enabled.

  ``count`` ``[m]`` is the output's current use of each input; from the
  second pass (``soft``) an output using exactly two inputs gets their pair,
  one using three or more gets the three pairs of its three most used.
  """
  m = count.shape[0]
  if m < 2:
    return jnp.zeros((0, m)), jnp.zeros((0,), bool)
  n_used = jnp.where(soft, jnp.sum(count > 0), 0)
  top = jnp.sort(jax.lax.top_k(count, min(3, m))[1])
  if m == 2:
    pairs, enabled = jnp.array([[0, 1]]), (n_used == 2)[None]
  else:
    # Two used: their pair (the top two, in index order); three or more: the
    # pairs (a, b), (a, c), (b, c) of the top three a < b < c.
    top2 = jnp.sort(jax.lax.top_k(count, 2)[1])
    three = top[np.array([[0, 1], [0, 2], [1, 2]])]
    two = jnp.stack([top2, top2, top2])
    pairs = jnp.where(n_used >= 3, three, two)
    enabled = jnp.where(n_used >= 3, jnp.ones(3, bool),
                        jnp.array([True, False, False]) & (n_used == 2))
  weights = 0.5 * (jax.nn.one_hot(pairs[:, 0], m) +
                   jax.nn.one_hot(pairs[:, 1], m))
  return weights * enabled[:, None], enabled


def label_output(cost: Array, count: Array, soft: Array, beta: float
                 ) -> Array:
  """One step of the modular approximation: output masks ``[g, g, m]`` from
  the linearised unary ``cost`` ``[g, g, m]`` (the authors'
  ``graphcut_wrapper``, solved by ``_mrf.minimize``)."""
  g, _, m = cost.shape
  pair_w, enabled = _soft_pairs(count, soft)
  n_soft = pair_w.shape[0]
  soft_cost = (jnp.sum(cost[..., None, :] * (pair_w > 0), -1) / 2 -
               _SOFT_BONUS + jnp.where(enabled, 0.0, _OFF))
  unary = jnp.concatenate([cost, soft_cost], axis=-1)
  # Potts between inputs; 1/4 between a soft label and its two inputs.
  cross = 1.0 - 0.75 * (pair_w > 0)
  pair = jnp.block([[1.0 - jnp.eye(m), cross.T],
                    [cross, 1.0 - jnp.eye(n_soft)]])
  labels = _mrf.minimize(unary, pair, jnp.full((g - 1, g), beta),
                         jnp.full((g, g - 1), beta))
  hot = jax.nn.one_hot(labels, m + n_soft)
  return hot[..., :m] + jnp.sum(hot[..., m:, None] * pair_w, axis=-2)


def assign(key: Array, cost: Array, compat: Array, *, alpha: float,
           beta: float, gamma: float, eta: float, thres: float,
           thres_type: str = "hard", set_resolve: bool = True, niter: int = 4
           ) -> Array:
  """Co-Mixup's labelling of one partition (the authors' ``get_onehot_matrix``).

  Args:
    key: PRNG key (Dirichlet prior, random initial labels).
    cost: ``[m, g, g]`` per-input block cost (``-`` normalised saliency).
    compat: ``[m, m]`` compatibility ``A``.
    alpha, beta, gamma, eta, thres, thres_type, set_resolve, niter: as
      ``comixup`` (unscaled; divided by ``g^2`` here as the authors).

  Returns:
    ``[m, g, g, m]`` float32: output ``j``'s weight of input ``i`` per block,
    in {0, 1/2, 1}, summing to 1 over inputs.
  """
  m, g, _ = cost.shape
  area = g * g
  beta, gamma, eta, thres = beta / area, gamma / area, eta / area, thres * area
  k_prior, k_init = jax.random.split(key)
  share = jax.random.dirichlet(k_prior, jnp.full((m,), alpha, jnp.float32))
  cost = jnp.moveaxis(cost - eta * jnp.log(share + 1e-8)[:, None, None], 0, -1)
  masks = jax.nn.one_hot(jax.random.randint(k_init, (m, g, g), 0, m), m)

  def relabel(it, carry):
    masks, penalty, extra = carry

    def one_output(state, j):
      masks, penalty = state
      count = masks[j].sum((0, 1))
      others = penalty - count
      load = jnp.sum(compat * others[None], axis=1)
      over = load > thres
      excess = load if thres_type == "hard" else load - thres
      linear = 2 * gamma * jnp.where(over, excess, 0.0) + gamma * extra[j]
      new = label_output(cost + linear, count, it > 0, beta)
      return (masks.at[j].set(new), others + new.sum((0, 1))), None

    (masks, penalty), _ = jax.lax.scan(one_output, (masks, penalty),
                                       jnp.arange(m))
    if set_resolve:
      extra = jnp.where(it == niter - 2, _resolve(masks), extra)
    return masks, penalty, extra

  def one_pass(it, carry):
    state, loss_prev, done = carry
    new_state = relabel(it, state)
    loss = objective(cost, new_state[0], beta, gamma)
    state = jax.tree.map(lambda a, b: jnp.where(done, a, b), state, new_state)
    settled = jnp.abs(loss_prev - loss) / jnp.abs(loss) < 1e-6
    return (state, jnp.where(done, loss_prev, loss), done | settled)

  start = (masks, masks.sum((0, 1, 2)), jnp.zeros((m, m), jnp.float32))
  (masks, _, _), _, _ = jax.lax.fori_loop(
      0, niter, one_pass,
      (start, objective(cost, masks, beta, gamma), jnp.asarray(False)))
  return masks


def _partition_masks(key: Array, saliency: Array, grid: int, hp: dict
                     ) -> Array:
  """``[m, g, g, m]`` masks of one partition of ``m`` samples."""
  cost = -C.block_shares(saliency, grid)
  compat = compatibility(salient_locations(saliency), hp["omega"])
  return assign(key, cost, compat, alpha=hp["alpha"], beta=hp["beta"],
                gamma=hp["gamma"], eta=hp["eta"], thres=hp["thres"],
                thres_type=hp["thres_type"], set_resolve=hp["set_resolve"],
                niter=hp["niter"])


def comixup(key: Array, images: Array, labels: Array, *, saliency: Array,
            alpha: float = 2.0, block_num: int = 4, part: int = 20,
            beta: float = 0.32, gamma: float = 1.0, eta: float = 0.05,
            thres: float = 0.83, thres_type: str = "hard",
            omega: float = 0.001, set_resolve: bool = True, niter: int = 4,
            data_format: Any = None
            ) -> tuple[Array, Array, dict[str, Array]]:
  """Co-Mixup: each partition of ``part`` samples mixed into as many outputs.

  Defaults are the authors' CIFAR ``main.py`` (``mixup_alpha=2, m_block_num=4,
  m_part=20, m_beta=0.32, m_gamma=1, m_eta=0.05, m_thres=0.83,
  m_thres_type=hard, m_omega=0.001, set_resolve, m_niter=4``). Output ``j``
  of a partition is *not* tied to input ``j``; ``aux`` says what it holds.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]`` floating; ``H`` and ``W`` divisible by
      ``block_num``.
    labels: ``[B, K]`` dense targets.
    saliency: ``[B, H, W]`` maps >= 0 (the trainer passes
      ``gradient_saliency(input_grad)``); no gradient flows through the masks.
    alpha: Dirichlet(α) concentration of the prior on the inputs' shares.
    block_num: blocks per side of the labelling grid.
    part: samples mixed together (the batch is cut into consecutive
      partitions of this size; the last may be smaller).
    beta: label smoothness β; gamma: diversity γ; eta: prior weight η.
    thres: τ, the share of an image's worth of blocks an input may take in
      the other outputs before it is penalised; thres_type: "hard" or "soft".
    omega: compatibility weight ω.
    set_resolve: penalise outputs built from the same inputs before the last
      pass.
    niter: passes over the partition.
    data_format: ``None``/``"NHWC"`` or ``"NCHW"`` (output and ``mask`` keep it).

  Returns:
    ``(mixed_images, mixed_labels, aux)`` with ``N = min(part, B)``:
    ``aux['index']`` ``[B, N]`` int32 the inputs of each output's partition,
    ``aux['lam']`` ``[B, N]`` their shares of the output (rows sum to 1; the
    label weights), ``aux['mask']`` ``[B, H, W, N]`` their per-pixel weights
    (in {0, 1/2, 1}, summing to 1), so ``mixed = Σ_n mask[..., n] ⊙
    images[index[:, n]]`` and ``mixed_labels = Σ_n lam[:, n] labels[index[:, n]]``.
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels)
  _, height, width, _ = images.shape
  hp = {name: CHECKS[name](value) for name, value in (
      ("block_num", block_num), ("part", part), ("beta", beta),
      ("gamma", gamma), ("eta", eta), ("thres", thres), ("omega", omega),
      ("thres_type", thres_type), ("set_resolve", set_resolve),
      ("niter", niter))}
  hp["alpha"] = C.check_alpha(alpha)
  grid = hp["block_num"]
  if height % grid or width % grid:
    raise ValueError(
        f"`block_num` {grid} must divide the image size (H, W) = "
        f"{(height, width)} into equal blocks.")
  C.check_saliency(saliency, batch_size, height, width)
  saliency = jax.lax.stop_gradient(saliency.astype(jnp.float32))

  m = min(hp["part"], batch_size)
  n_full, rest = divmod(batch_size, m)
  keys = jax.random.split(key, n_full + (rest > 0))
  solve = functools.partial(_partition_masks, grid=grid, hp=hp)
  cells = jax.vmap(solve)(keys[:n_full], saliency[:n_full * m].reshape(
      n_full, m, height, width)).reshape(n_full * m, grid, grid, m)
  ids = jnp.arange(n_full * m, dtype=jnp.int32)
  index = (ids // m * m)[:, None] + jnp.arange(m, dtype=jnp.int32)
  if rest:
    tail = solve(keys[-1], saliency[n_full * m:])
    cells = jnp.concatenate(
        [cells, jnp.pad(tail, ((0, 0),) * 3 + ((0, m - rest),))])
    # Padded columns point at the partition's first input with weight 0.
    tail_index = n_full * m + jnp.arange(m, dtype=jnp.int32) % rest
    index = jnp.concatenate(
        [index, jnp.broadcast_to(tail_index, (rest, m))])
  mask = jnp.repeat(jnp.repeat(cells, height // grid, axis=1),
                    width // grid, axis=2)
  lam = cells.mean((1, 2))
  mixed = C.nway_blend(images, mask, index)
  mixed_labels = jnp.sum(lam[..., None] *
                         C.take(labels, index).astype(jnp.float32), axis=1)
  aux = {"lam": lam, "index": index, "mask": mask}
  return C.restore_layout(mixed, mixed_labels.astype(labels.dtype), aux,
                          data_format)
