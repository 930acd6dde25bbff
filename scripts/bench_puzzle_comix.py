r"""PuzzleMix / Co-Mixup solver cost at CIFAR size, and (optionally) vs pyGCO.

    python scripts/bench_puzzle_comix.py                 # timings, batch 100, 32 px
    python scripts/bench_puzzle_comix.py --gco           # + energies vs pyGCO
    python scripts/bench_puzzle_comix.py --exact-transport   # + vs scipy

Timings: the jitted mixers alone (no model), batch 100 of 32x32x3 images with
one Gaussian saliency blob each: PuzzleMix per grid side (2, 4, 8, 16, each
traced alone) and with the grid drawn per call (the default, ``lax.switch``
over the four), the labelling step alone per side, and Co-Mixup with the
authors' CIFAR defaults (5 partitions of 20). Compile time is reported
separately from the median call.

``--gco`` (needs ``pip install gco-wrapper``, pyGCO, the authors' solver):
PuzzleMix's labelling energy from ``_mrf.minimize`` against pyGCO's
alpha-beta swap on the same energies (int32-scaled as the authors'
``graphcut_multi``), and Co-Mixup's assignment against ``authors_assign``
(the authors' ``get_onehot_matrix`` re-derived in numpy) with pyGCO's swap as
its per-output cut, both from the same prior draw and random start; the
objective is the authors' ``obj_fn``.

``--exact-transport`` (needs scipy): the transport greedy's assignment cost
against the exact optimum (``scipy.optimize.linear_sum_assignment``) on
PuzzleMix masks at 32 px.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def blobs(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
  """``[batch, size, size]`` saliency: one Gaussian object each, plus noise."""
  yy, xx = np.mgrid[:size, :size]
  out = []
  for _ in range(batch):
    cy, cx = rng.uniform(1, size - 1, 2)
    sig = rng.uniform(size / 10, size / 4)
    out.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig ** 2)) +
               0.05 * rng.random((size, size)))
  return np.stack(out).astype(np.float32)


def grid_energies(labels, unary, pair, w_v, w_h) -> np.ndarray:
  """Energies ``[n]`` of labellings ``[n, h, w]`` of one grid MRF."""
  e = np.take_along_axis(unary[None], labels[..., None], -1)[..., 0].sum((1, 2))
  e = e + (w_v * pair[labels[:, :-1], labels[:, 1:]]).sum((1, 2))
  return e + (w_h * pair[labels[:, :, :-1], labels[:, :, 1:]]).sum((1, 2))


def exhaustive_cut(unary, pair, beta):
  """The exact minimiser of a small Potts-like grid MRF (edge weight β)."""
  h, w, n = unary.shape
  every = np.array(list(itertools.product(range(n), repeat=h * w)))
  every = every.reshape(-1, h, w)
  e = grid_energies(every, unary, pair, np.full((h - 1, w), beta),
                    np.full((h, w - 1), beta))
  return every[np.argmin(e)]


def authors_objective(cost, masks, beta, gamma, thres=0.0):
  """The authors' ``obj_fn`` (``obj_fn_thres`` for ``thres`` > 0, in blocks):
  ``cost`` ``[g, g, m]``, ``masks`` ``[m_out, g, g, m]``, β and γ per block."""
  counts = masks.sum((1, 2))
  smooth = (((masks[:, :-1] - masks[:, 1:]) ** 2).sum() +
            ((masks[:, :, :-1] - masks[:, :, 1:]) ** 2).sum())
  others = counts.sum(0) - counts
  diversity = ((others > thres) * others * counts).sum()
  return (cost * masks).sum() + beta / 2 * smooth + gamma * diversity


def authors_assign(cost, compat, share, init, *, cut, beta, gamma, eta,
                   thres, thres_type="hard", set_resolve=True, niter=4):
  """The authors' ``get_onehot_matrix`` (github.com/snu-mllab/Co-Mixup,
  ``match.py``) re-derived in numpy; ``cut(unary [g, g, L], pair [L, L],
  beta)`` is the per-output graph cut (theirs: pyGCO's alpha-beta swap).

  ``cost`` ``[m, g, g]``, ``compat`` ``[m, m]``, ``share`` ``[m]`` (the
  Dirichlet draw), ``init`` ``[m, g, g]`` (the random start). Returns the
  masks ``[m, g, g, m]`` and the cost with the prior ``[g, g, m]``.
  """
  m, g, _ = cost.shape
  beta, gamma, eta, thres = (beta / g ** 2, gamma / g ** 2, eta / g ** 2,
                             thres * g ** 2)
  cost = np.moveaxis(cost - eta * np.log(share + 1e-8)[:, None, None], 0, -1)
  masks = np.eye(m)[init]

  def relabel(unary, count, it):
    used = count > 0
    n_used = int(used.sum()) if it > 0 else 0
    if n_used < 2:
      return np.eye(m)[cut(unary, 1.0 - np.eye(m), beta)]
    if n_used == 2:
      weights = 0.5 * used[None].astype(float)
    else:
      top = np.zeros(m, bool)
      top[np.argsort(-count, kind="stable")[:3]] = True
      weights = np.zeros((3, m))
      weights[:, top] = [[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    k = len(weights)
    pair = np.ones((m + k, m + k)) - np.eye(m + k)
    pair[m:, :m] = np.where(weights > 0, 0.25, 1.0)
    pair[:m, m:] = pair[m:, :m].T
    soft = unary @ weights.T - 5e-4   # the mean of the pair's costs
    hot = np.eye(m + k)[cut(np.concatenate([unary, soft], -1), pair, beta)]
    return hot[..., :m] + hot[..., m:] @ weights

  loss_prev = authors_objective(cost, masks, beta, gamma)
  penalty, extra = masks.sum((0, 1, 2)), None
  for it in range(niter):
    for j in range(m):
      count = masks[j].sum((0, 1))
      penalty = penalty - count
      load = compat @ penalty
      excess = load if thres_type == "hard" else load - thres
      linear = 2 * gamma * (load > thres) * excess
      if extra is not None:
        linear = linear + gamma * extra[j]
      masks[j] = relabel(cost + linear, count, it)
      penalty = penalty + masks[j].sum((0, 1))
    if it == niter - 2 and set_resolve:
      used = masks.sum((1, 2)) > 0
      extra = np.zeros((m, m))
      for a in range(m):
        for b in range(a + 1, m):
          ids = np.nonzero(used[a])[0]
          if (used[a] == used[b]).all() and len(ids) > 1:
            extra[a, ids[0]] = extra[b, ids[1]] = 1.0
    loss = authors_objective(cost, masks, beta, gamma)
    if abs(loss_prev - loss) / abs(loss) < 1e-6:
      break
    loss_prev = loss
  return masks, cost


def _time(fn, *args, runs, new_key=False):
  """(compile s, median call s); with ``new_key`` the first argument is a
  fresh key per call and the *mean* is returned (the expected cost of a
  per-call random choice, e.g. PuzzleMix's grid)."""
  import jax
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(runs + 1):
    if new_key:
      args = (jax.random.key(i),) + args[1:]
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, float((np.mean if new_key else np.median)(times[1:]))


def timings(batch: int, size: int, runs: int) -> list[str]:
  import jax
  import jax.numpy as jnp
  from automix_jax import mixers
  from automix_jax.mixers import _mrf
  from automix_jax.mixers import _puzzlemix
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((batch, size, size, 3)), jnp.float32)
  labels = mixers.one_hot(jnp.asarray(rng.integers(0, 100, batch)), 100)
  sal = jnp.asarray(blobs(rng, batch, size))
  key = jax.random.key(0)
  rows = []

  def row(what, compile_s, run_s):
    rows.append(f"| {what} | {compile_s:.1f} | {run_s * 1e3:.1f} |")
    print(rows[-1], flush=True)

  index = jnp.asarray(rng.permutation(batch))
  lam = jnp.full((batch,), 0.5, jnp.float32)
  solve = jax.vmap(_mrf.minimize, in_axes=(0, None, 0, 0))
  for k in range(1, 5):
    g = 2 ** k
    problem = _puzzlemix.labelling_problem(
        images, sal, index, lam, g, beta=1.2, gamma=0.5, eta=0.2,
        neigh_size=4, n_labels=3)
    row(f"PuzzleMix labelling alone, grid {g}", *_time(solve, *problem,
                                                        runs=runs))
    fn = lambda k_, x, y, s, k=k: mixers.puzzlemix(  # noqa: E731
        k_, x, y, saliency=s, block_num=(k, k + 1))
    row(f"PuzzleMix, grid {g} (labelling + transport + mix)",
        *_time(fn, key, images, labels, sal, runs=runs))
  fn = lambda k_, x, y, s: mixers.puzzlemix(k_, x, y, saliency=s)  # noqa
  row(f"PuzzleMix, default (grid drawn per call; mean of {2 * runs} calls)",
      *_time(fn, key, images, labels, sal, runs=2 * runs, new_key=True))
  fn = lambda k_, x, y, s: mixers.comixup(k_, x, y, saliency=s)  # noqa
  row(f"Co-Mixup, default ({batch // 20} partitions of 20, 4x4 grid)",
      *_time(fn, key, images, labels, sal, runs=runs))
  return rows


def versus_gco(instances: int) -> list[str]:
  import gco  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from automix_jax.mixers import _common
  from automix_jax.mixers import _comixup
  from automix_jax.mixers import _mrf
  from automix_jax.mixers import _puzzlemix
  rows = []
  rng = np.random.default_rng(1)
  solve = jax.jit(jax.vmap(_mrf.minimize, in_axes=(0, None, 0, 0)))
  for k in range(1, 5):
    g, b, size = 2 ** k, instances, 32
    images = jax.image.resize(jnp.asarray(rng.random((b, 8, 8, 3)),
                                          jnp.float32), (b, size, size, 3),
                              "linear")
    problem = _puzzlemix.labelling_problem(
        images, jnp.asarray(blobs(rng, b, size)),
        jnp.asarray(rng.permutation(b)),
        jnp.asarray(rng.uniform(0, 1, b), jnp.float32), g, beta=1.2,
        gamma=0.5, eta=0.2, neigh_size=4, n_labels=3)
    ours = np.asarray(solve(*problem))
    unary, pair, w_v, w_h = (np.asarray(a) for a in problem)
    large = 1000 * g * g  # the authors' int32 scaling
    e_ours, e_gco = [], []
    for i in range(b):
      theirs = gco.cut_grid_graph(
          (large * unary[i]).astype(np.int32), pair,
          (large * w_v[i]).astype(np.int32), (large * w_h[i]).astype(np.int32),
          algorithm="swap").reshape(g, g)
      args = (unary[i], pair, w_v[i], w_h[i])
      e_ours.append(grid_energies(ours[i][None], *args)[0])
      e_gco.append(grid_energies(theirs[None], *args)[0])
    rel = (np.array(e_ours) - np.array(e_gco)) / np.abs(e_gco)
    rows.append(f"| PuzzleMix labelling, grid {g} | {np.mean(rel <= 1e-7):.2f}"
                f" | {np.mean(rel < -1e-7):.2f} | {rel.mean():+.1e} | "
                f"{rel.max():+.1e} |")
    print(rows[-1], flush=True)

  def gco_cut(unary, pair, beta):
    h, w, _ = unary.shape
    return gco.cut_grid_graph(
        np.ascontiguousarray(unary, np.float32), pair.astype(np.float32),
        np.full((h - 1, w), beta, np.float32),
        np.full((h, w - 1), beta, np.float32),
        algorithm="swap").reshape(h, w)

  hp = dict(beta=0.32, gamma=1.0, eta=0.05, thres=0.83)
  m, g = 20, 4
  assign = jax.jit(lambda k, c, a: _comixup.assign(k, c, a, alpha=2.0, **hp))
  rel = {"obj_fn": [], "obj_fn_thres": []}
  sources = {"ours": [], "theirs": []}
  for t in range(instances // 4):
    sal = jnp.asarray(blobs(rng, m, 32))
    cost = -_common.block_shares(sal, g)
    compat = _comixup.compatibility(_comixup.salient_locations(sal), 0.001)
    key = jax.random.key(t)
    k_prior, k_init = jax.random.split(key)
    share = np.asarray(jax.random.dirichlet(k_prior, jnp.full((m,), 2.0)))
    init = np.asarray(jax.random.randint(k_init, (m, g, g), 0, m))
    theirs, c = authors_assign(np.asarray(cost, np.float64),
                               np.asarray(compat), share, init, cut=gco_cut,
                               **hp)
    ours = np.asarray(assign(key, cost, compat))
    b, gm = hp["beta"] / g ** 2, hp["gamma"] / g ** 2
    for name, tau in (("obj_fn", 0.0), ("obj_fn_thres", hp["thres"] * g * g)):
      o = authors_objective(c, ours, b, gm, tau)
      th = authors_objective(c, theirs, b, gm, tau)
      rel[name].append((o - th) / abs(th))
    for name, masks in (("ours", ours), ("theirs", theirs)):
      sources[name].append(np.mean((masks.sum((1, 2)) > 0).sum(1)))
  for name, r in rel.items():
    r = np.array(r)
    rows.append(f"| Co-Mixup assignment, 20 into 20, grid 4 ({name}) | "
                f"{np.mean(r <= 1e-7):.2f} | {np.mean(r < -1e-7):.2f} | "
                f"{r.mean():+.1e} | {r.max():+.1e} |")
    print(rows[-1], flush=True)
  print(f"\ninputs per output: ours {np.mean(sources['ours']):.2f}, "
        f"authors' with pyGCO {np.mean(sources['theirs']):.2f}")
  return rows


def transport_vs_exact(instances: int) -> list[str]:
  """The transport greedy against the exact assignment (scipy's
  ``linear_sum_assignment``) on PuzzleMix masks at CIFAR size."""
  import jax
  import jax.numpy as jnp
  from scipy import optimize
  from automix_jax.mixers import _common
  from automix_jax.mixers import _mrf
  from automix_jax.mixers import _puzzlemix
  rng = np.random.default_rng(2)
  rows = []
  solve = jax.vmap(_mrf.minimize, in_axes=(0, None, 0, 0))
  move = jax.jit(jax.vmap(_puzzlemix.transport_permutation,
                          in_axes=(0, 0, None, None)), static_argnums=3)
  for g, side in ((4, 8), (8, 8), (16, 16)):  # t_size 4 at 32 px
    b, size = instances, 32
    images = jnp.asarray(rng.random((b, size, size, 3)), jnp.float32)
    sal = jnp.asarray(blobs(rng, b, size))
    problem = _puzzlemix.labelling_problem(
        images, sal, jnp.asarray(rng.permutation(b)),
        jnp.asarray(rng.uniform(0, 1, b), jnp.float32), g, beta=1.2,
        gamma=0.5, eta=0.2, neigh_size=4, n_labels=3)
    cells = np.asarray(_puzzlemix.mask_values(3))[np.asarray(
        jax.jit(solve)(*problem))]
    cells = np.repeat(np.repeat(cells, side // g, 1), side // g, 2)
    scores = np.asarray(_common.block_shares(sal, side)).reshape(b, -1)
    visible = cells.reshape(b, -1) > 0
    cost = 0.8 * _puzzlemix.transport_cost(side)
    source = np.asarray(move(scores, visible, cost, side))
    rel, moved = [], []
    for i in range(b):
      full = cost - scores[i][:, None] * visible[i][None, :]
      ours = full[source[i], np.arange(side * side)].sum()
      r, c = optimize.linear_sum_assignment(full)
      best = full[r, c].sum()
      rel.append(ours - best)  # absolute: the optimum can be 0
      moved.append(np.mean(source[i] != np.arange(side * side)))
    rel = np.array(rel)
    rows.append(f"| transport greedy, mask grid {g}, transport grid {side} | "
                f"{np.mean(rel <= 1e-6):.2f} | {rel.mean():+.1e} | "
                f"{rel.max():+.1e} | {np.mean(moved):.2f} |")
    print(rows[-1], flush=True)
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--runs", type=int, default=10)
  p.add_argument("--gco", action="store_true",
                 help="compare with pyGCO (pip install gco-wrapper)")
  p.add_argument("--exact-transport", action="store_true",
                 help="transport greedy vs scipy's exact assignment")
  p.add_argument("--instances", type=int, default=32)
  p.add_argument("--skip-timings", action="store_true")
  args = p.parse_args(argv)
  import jax
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; batch "
        f"{args.batch}, {args.size}x{args.size}x3\n")
  if not args.skip_timings:
    print("| what | compile (s) | median call (ms) |\n|---|---|---|")
    timings(args.batch, args.size, args.runs)
  if args.exact_transport:
    print("\n| vs exact assignment (scipy) | optimal | mean excess (cost "
          "units) | worst | "
          "blocks moved |\n|---|---|---|---|---|")
    transport_vs_exact(args.instances)
  if args.gco:
    print("\n| solver vs pyGCO swap | ours <= pyGCO | ours < pyGCO | mean "
          "(ours - pyGCO) / abs(pyGCO) | worst |\n|---|---|---|---|---|")
    versus_gco(args.instances)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
