"""Small grid MRFs minimised inside ``jit``: the labelling step of PuzzleMix and Co-Mixup.

Both methods label a coarse block grid by minimising a pairwise MRF energy; the
authors solve it on the CPU with pyGCO's alpha-beta swap graph cuts
(``gco.cut_grid_graph``). Here the same energy is minimised by jittable solvers
with a fixed amount of work, so the whole mixer stays one traced function.

Energy of a labelling ``l`` of an ``n_h x n_w`` grid with ``L`` labels (pyGCO's
``cut_grid_graph`` energy, in real numbers rather than its int32 costs)::

    E(l) = sum_p unary[p, l_p]
         + sum_{r, c} w_v[r, c] * pair[l[r, c], l[r + 1, c]]     # vertical edges
         + sum_{r, c} w_h[r, c] * pair[l[r, c], l[r, c + 1]]     # horizontal edges

Solvers:

* ``exact_labels``: a row-major *frontier* dynamic programme (transfer matrix):
  the state is the labels of the last ``n_w`` nodes visited, so the minimum is
  exact with ``L ** n_w`` states and ``n_h * n_w * L ** (n_w + 1)`` work. For
  PuzzleMix's 3 labels that is exact up to an 8 x 8 grid (6561 states).
* ``sweep_labels``: block coordinate descent. One sweep minimises exactly over
  all even rows at once (they share no edge, so given the odd rows each is an
  independent chain, solved by Viterbi), then the odd rows, the even columns
  and the odd columns. The energy never increases; the result is a local
  minimum with respect to changing any single row or column, which is a larger
  move than ICM's single node.
* ``minimize``: ``exact_labels`` when ``L ** min(n_h, n_w) <= max_states``,
  otherwise coarse-to-fine: the grid is coarsened 2 x 2 (each coarse label
  stands for its four nodes, so the coarse problem is the fine one restricted
  to 2 x 2-constant labellings and its exact minimum is a feasible fine
  labelling of the same energy), solved recursively, and refined with
  ``sweep_labels``; the unary argmin is the start instead when it is lower.

How close ``minimize`` gets is measured in ``tests/mixers/test_puzzle_comix.py``
against brute-force enumeration and against ``exact_labels``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# 3 ** 8: exact for 3 labels on grids up to 8 x 8.
MAX_STATES = 6561
SWEEPS = 4


def grid_energy(labels: Array, unary: Array, pair: Array, w_v: Array,
                w_h: Array) -> Array:
  """``E(labels)`` (module docstring): ``labels`` ``[n_h, n_w]`` int,
  ``unary`` ``[n_h, n_w, L]``, ``pair`` ``[L, L]``, ``w_v`` ``[n_h - 1, n_w]``,
  ``w_h`` ``[n_h, n_w - 1]``; a float32 scalar."""
  un = jnp.take_along_axis(unary, labels[..., None], axis=-1).sum()
  vert = jnp.sum(w_v * pair[labels[:-1], labels[1:]])
  horiz = jnp.sum(w_h * pair[labels[:, :-1], labels[:, 1:]])
  return un + vert + horiz


def _transpose(unary, w_v, w_h):
  """The same problem on the transposed grid (vertical edges become horizontal)."""
  return jnp.swapaxes(unary, 0, 1), w_h.T, w_v.T


def exact_labels(unary: Array, pair: Array, w_v: Array, w_h: Array) -> Array:
  """The exact minimiser ``[n_h, n_w]`` int32 by the frontier programme.

  Nodes are visited in row-major order; the state is the labels of the last
  ``n_w`` nodes (the oldest most significant digit, base ``L``), which hold the
  node above and the node to the left of the next one. Adding a node minimises
  over the label of the node above, which then leaves the state. Ties go to
  the lowest label. Work ``n_h n_w L^(n_w + 1)``, memory ``n_h n_w L^n_w``: the
  narrower side is taken as ``n_w``.
  """
  n_h, n_w, num_labels = unary.shape
  if n_w > n_h:
    t_unary, t_v, t_h = _transpose(unary, w_v, w_h)
    return exact_labels(t_unary, pair, t_v, t_h).T
  states = num_labels ** n_w
  rest = states // num_labels
  # Per visited node: its unary row, the weight of its edge to the node above
  # (0 on the first row) and to the node on its left (0 in the first column).
  w_up = jnp.concatenate([jnp.zeros((n_w,), unary.dtype), w_v.reshape(-1)])
  w_left = jnp.concatenate([jnp.zeros((n_h, 1), unary.dtype), w_h],
                           axis=1).reshape(-1)
  # The left neighbour of the next node is the newest digit of the state.
  left_label = jnp.arange(rest) % num_labels

  def step(value, inputs):
    u, wu, wl = inputs
    # value[d, rest]: d the label of the node above, which leaves the state.
    cand = value.reshape(num_labels, rest)[:, :, None] + wu * pair[:, None, :]
    best = jnp.min(cand, axis=0) + u[None, :] + wl * pair[left_label, :]
    return best.reshape(states), jnp.argmin(cand, axis=0).reshape(states)

  value, back = jax.lax.scan(
      step, jnp.zeros((states,), unary.dtype),
      (unary.reshape(n_h * n_w, num_labels), w_up, w_left))

  def trace(state, pointers):
    label = state % num_labels
    return pointers[state] * rest + state // num_labels, label

  _, labels = jax.lax.scan(trace, jnp.argmin(value), back, reverse=True)
  return labels.reshape(n_h, n_w).astype(jnp.int32)


def chain_labels(unary: Array, pair: Array, weights: Array) -> Array:
  """Exact minimiser ``[n]`` of a chain: ``unary`` ``[n, L]``, edge ``i`` between
  nodes ``i`` and ``i + 1`` with weight ``weights[i]`` (Viterbi)."""
  def forward(value, inputs):
    u, w = inputs
    cand = value[:, None] + w * pair
    return jnp.min(cand, axis=0) + u, jnp.argmin(cand, axis=0)

  value, back = jax.lax.scan(forward, unary[0], (unary[1:], weights))

  def trace(label, pointers):
    return pointers[label], label

  first, rest = jax.lax.scan(trace, jnp.argmin(value), back, reverse=True)
  return jnp.concatenate([first[None], rest]).astype(jnp.int32)


def _row_step(labels, unary, pair, w_v, w_h, parity):
  """Exact minimisation over every row of the given parity, the rest fixed."""
  # Each row's chain sees its fixed neighbours above and below as unary terms.
  local = unary.at[1:].add(w_v[..., None] * pair[labels[:-1]])
  local = local.at[:-1].add(w_v[..., None] * pair.T[labels[1:]])
  rows = jax.vmap(chain_labels, in_axes=(0, None, 0))(local, pair, w_h)
  update = (jnp.arange(labels.shape[0]) % 2 == parity)[:, None]
  return jnp.where(update, rows, labels)


def sweep_labels(labels: Array, unary: Array, pair: Array, w_v: Array,
                 w_h: Array, sweeps: int = SWEEPS) -> Array:
  """``sweeps`` rounds of exact row and column updates from ``labels``
  (module docstring); the energy never increases."""
  def one_round(_, labels):
    for parity in (0, 1):
      labels = _row_step(labels, unary, pair, w_v, w_h, parity)
    t_unary, t_v, t_h = _transpose(unary, w_v, w_h)
    labels = labels.T
    for parity in (0, 1):
      labels = _row_step(labels, t_unary, pair, t_v, t_h, parity)
    return labels.T

  return jax.lax.fori_loop(0, sweeps, one_round, labels)


def _coarsen(unary, pair, w_v, w_h):
  """The problem restricted to labellings constant on 2 x 2 cells."""
  n_h, n_w, num_labels = unary.shape
  diag = jnp.diagonal(pair)
  # A cell's own two vertical and two horizontal edges join equal labels.
  inner = (w_v[0::2].reshape(n_h // 2, n_w // 2, 2).sum(-1) +
           w_h[:, 0::2].reshape(n_h // 2, 2, n_w // 2).sum(1))
  cell = unary.reshape(n_h // 2, 2, n_w // 2, 2, num_labels).sum((1, 3))
  cell = cell + inner[..., None] * diag
  coarse_v = w_v[1::2].reshape(n_h // 2 - 1, n_w // 2, 2).sum(-1)
  coarse_h = w_h[:, 1::2].reshape(n_h // 2, 2, n_w // 2 - 1).sum(1)
  return cell, coarse_v, coarse_h


def minimize(unary: Array, pair: Array, w_v: Array, w_h: Array, *,
             max_states: int = MAX_STATES, sweeps: int = SWEEPS) -> Array:
  """A labelling ``[n_h, n_w]`` int32: exact when ``L ** min(n_h, n_w) <=
  max_states``, else coarse-to-fine with ``sweeps`` rounds of line updates
  per level (module docstring). Static shapes decide which; no data does."""
  n_h, n_w, num_labels = unary.shape
  if num_labels ** min(n_h, n_w) <= max_states:
    return exact_labels(unary, pair, w_v, w_h)
  start = jnp.argmin(unary, axis=-1).astype(jnp.int32)
  if n_h % 2 == 0 and n_w % 2 == 0:
    c_unary, c_v, c_h = _coarsen(unary, pair, w_v, w_h)
    coarse = minimize(c_unary, pair, c_v, c_h, max_states=max_states,
                      sweeps=sweeps)
    fine = jnp.repeat(jnp.repeat(coarse, 2, axis=0), 2, axis=1)
    better = (grid_energy(fine, unary, pair, w_v, w_h) <=
              grid_energy(start, unary, pair, w_v, w_h))
    start = jnp.where(better, fine, start)
  return sweep_labels(start, unary, pair, w_v, w_h, sweeps)
