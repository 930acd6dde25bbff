"""GuidedMixup (Kang & Kim, AAAI 2023): pairing, mask, labels, saliency.

The pairing is checked against a NumPy re-derivation of the authors'
``onecycle_cover`` (github.com/3neutronstar/GuidedMixup, ``pairing.pyx``) and
against brute force over every pairing of its kind (one cycle through the
batch) on tiny batches; the saliency against torchvision's
``gaussian_blur``.
"""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import mixers
from automix_jax.mixers import _guidedmix as G

B, H, W, C, K = 8, 12, 10, 3, 5  # non-square: catches H/W swaps


def _batch(b=B, seed=0):
  kx, ky, ks = jax.random.split(jax.random.key(seed), 3)
  images = jax.random.uniform(kx, (b, H, W, C))
  labels = mixers.one_hot(jax.random.randint(ky, (b,), 0, K), K)
  saliency = jax.random.uniform(ks, (b, H, W)) ** 4  # peaked, like gradients
  return images, labels, saliency


def _authors_onecycle_cover(distance):
  """The authors' ``onecycle_cover`` (pairing.pyx), re-derived in NumPy."""
  d = np.array(distance, np.float64)
  b = d.shape[0]
  np.fill_diagonal(d, -np.inf)
  row, col = divmod(int(np.argmax(d)), b)
  first_row = row
  partner = np.zeros(b, np.int64)
  partner[row] = col
  d[:, row] = -np.inf
  for _ in range(b - 2):
    row = col
    col = int(np.argmax(d[row]))
    partner[row] = col
    d[:, row] = -np.inf
  partner[col] = first_row
  return partner


def _cycles(b):
  """Every pairing of the authors' kind: one cycle through all b images."""
  for rest in itertools.permutations(range(1, b)):
    order = (0,) + rest
    partner = np.empty(b, np.int64)
    partner[list(order)] = np.roll(order, -1)
    yield partner


def _is_one_cycle(partner):
  seen, i = set(), 0
  while i not in seen:
    seen.add(i)
    i = int(partner[i])
  return len(seen) == len(partner) and sorted(partner) == list(range(len(partner)))


_greedy = jax.jit(G.greedy_cycle_pairing)


@pytest.mark.parametrize("b", [2, 3, 5, 8, 16])
def test_greedy_pairing_is_the_authors_algorithm(b):
  rng = np.random.default_rng(b)
  for _ in range(5):
    x = rng.random((b, 7))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).astype(np.float32)
    got = np.asarray(_greedy(jnp.asarray(d)))
    np.testing.assert_array_equal(got, _authors_onecycle_cover(d))
    assert _is_one_cycle(got)


def test_greedy_pairing_against_brute_force_over_all_cycles():
  """max_π Σ_i d(s_i, s_π(i)) over all one-cycle pairings, B = 4..7."""
  rng = np.random.default_rng(0)
  greedy_ratio, random_ratio = [], []
  for b in (4, 5, 6, 7):
    cycles = np.stack(list(_cycles(b)))                     # [(b-1)!, b]
    for _ in range(25):
      x = rng.random((b, 6))
      d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).astype(np.float32)
      values = d[np.arange(b), cycles].sum(-1)
      got = np.asarray(_greedy(jnp.asarray(d)))
      value = d[np.arange(b), got].sum()
      assert any(np.array_equal(got, c) for c in cycles)
      assert value <= values.max() + 1e-5
      # Far from the optimum never (worst seen ~0.88), and far better than
      # a random cycle on average.
      assert value >= 0.75 * values.max()
      greedy_ratio.append(value / values.max())
      random_ratio.append(values.mean() / values.max())
  assert np.mean(greedy_ratio) > np.mean(random_ratio) + 0.05


def test_greedy_pairing_finds_the_optimum_between_two_groups():
  # Three maps near one pattern, three near another: the best cycles cross
  # between the groups at every step (up to the small within-group noise),
  # and so does the greedy walk.
  rng = np.random.default_rng(1)
  base = rng.random((2, 6))
  order = rng.permutation(6)
  group = np.repeat([0, 1], 3)[order]
  x = (np.repeat(base, 3, axis=0) + 0.01 * rng.random((6, 6)))[order]
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).astype(np.float32)
  cycles = np.stack(list(_cycles(6)))
  values = d[np.arange(6), cycles].sum(-1)
  best = cycles[np.argmax(values)]
  got = np.asarray(_greedy(jnp.asarray(d)))
  np.testing.assert_array_equal(group[best] != group, True)
  np.testing.assert_array_equal(group[got] != group, True)
  np.testing.assert_allclose(d[np.arange(6), got].sum(), values.max(),
                             rtol=1e-3)


def test_mixer_pairs_by_saliency_distance_and_mixes_with_that_partner():
  images, labels, saliency = _batch()
  _, _, aux = jax.jit(G.guidedmixup)(jax.random.key(0), images, labels,
                                     saliency=saliency)
  s = np.asarray(saliency, np.float64)
  s = s / s.sum(axis=(1, 2), keepdims=True)
  flat = s.reshape(B, -1)
  d = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
  np.testing.assert_array_equal(aux["index"], _authors_onecycle_cover(d))


def test_pixel_provenance_mask_and_labels():
  images, labels, saliency = _batch()
  mixed, mixed_labels, aux = jax.jit(
      functools.partial(G.guidedmixup, saliency=saliency))(
          jax.random.key(0), images, labels)
  index = np.asarray(aux["index"])
  s = np.asarray(saliency, np.float64)
  s = s / s.sum(axis=(1, 2), keepdims=True)
  mask = s / (s + s[index])                               # the paper's M
  np.testing.assert_allclose(aux["mask"][..., 0], mask, atol=1e-6)
  x = np.asarray(images)
  m = np.asarray(aux["mask"])
  np.testing.assert_allclose(mixed, m * x + (1 - m) * x[index], atol=1e-6)
  lam = mask.mean(axis=(1, 2))
  np.testing.assert_allclose(aux["lam"], lam, atol=1e-6)
  y = np.asarray(labels)
  np.testing.assert_allclose(
      mixed_labels, lam[:, None] * y + (1 - lam[:, None]) * y[index],
      atol=1e-6)
  np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, atol=1e-6)
  # Each pixel comes mostly from the image that finds it more salient.
  own_wins = s > s[index]
  assert np.all(m[..., 0][own_wins] > 0.5)
  assert np.all(m[..., 0][~own_wins] <= 0.5)


def test_explicit_index_random_pairing_and_nchw():
  images, labels, saliency = _batch()
  index = jnp.roll(jnp.arange(B), 3)
  mixed, _, aux = G.guidedmixup(jax.random.key(0), images, labels,
                                saliency=saliency, index=index)
  np.testing.assert_array_equal(aux["index"], index)
  _, _, aux_r = G.guidedmixup(jax.random.key(4), images, labels,
                              saliency=saliency, pairing="random")
  assert sorted(np.asarray(aux_r["index"]).tolist()) == list(range(B))
  # NCHW images, saliency still [B, H, W]: the same mix, channels on axis 1.
  mixed_nchw, _, aux_n = G.guidedmixup(
      jax.random.key(0), jnp.moveaxis(images, -1, 1), labels,
      saliency=saliency, index=index, data_format="NCHW")
  np.testing.assert_allclose(jnp.moveaxis(mixed_nchw, 1, -1), mixed, atol=1e-6)
  assert aux_n["mask"].shape == (B, 1, H, W)


def test_mix_prob_zero_keeps_the_batch_and_degenerate_maps_stay_finite():
  images, labels, saliency = _batch()
  mixed, mixed_labels, aux = G.guidedmixup(
      jax.random.key(0), images, labels, saliency=saliency, mix_prob=0.0)
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(aux["lam"], np.ones(B))
  np.testing.assert_allclose(mixed_labels, labels)
  # All-zero maps (a zero gradient) become uniform: M = 0.5, λ = 0.5.
  zero = jnp.zeros_like(saliency).at[0].set(saliency[0])
  mixed, _, aux = G.guidedmixup(jax.random.key(0), images, labels,
                                saliency=zero)
  assert np.all(np.isfinite(mixed))
  others = np.asarray(aux["index"]) != 0
  others[0] = False
  np.testing.assert_allclose(aux["lam"][others], 0.5, atol=1e-6)


def test_saliency_is_the_authors_reduction_and_torchvision_blur():
  torch = pytest.importorskip("torch")
  tvf = pytest.importorskip("torchvision.transforms.functional")
  grad = np.random.default_rng(0).normal(size=(4, H, W, C)).astype(np.float32)
  got = G.guided_saliency(jnp.asarray(grad))
  g = torch.from_numpy(grad.transpose(0, 3, 1, 2))
  ref = torch.sqrt(torch.mean(g ** 2, dim=1))              # authors' Guided-AP
  ref = tvf.gaussian_blur(ref, [7, 7], [3.0, 3.0])
  ref = ref / ref.sum(dim=(-1, -2), keepdim=True)
  np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(np.sum(got, axis=(1, 2)), 1.0, rtol=1e-5)


def test_traced_once():
  chex.clear_trace_counter()
  images, labels, saliency = _batch()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key, x, y, s):
    return G.guidedmixup(key, x, y, saliency=s)

  for seed in range(3):
    jax.block_until_ready(run(jax.random.key(seed), images, labels,
                              saliency * (seed + 1)))


@pytest.mark.parametrize("kind", ["Auto", "Explicit"])
def test_sharded_equals_unsharded(kind):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(
      getattr(jax.sharding.AxisType, kind),))
  images, labels, saliency = _batch(b=16)
  fn = lambda k, x, y, s: G.guidedmixup(k, x, y, saliency=s)
  key = jax.random.key(3)
  want = jax.jit(fn)(key, images, labels, saliency)
  sharded = jax.device_put((images, labels, saliency),
                           jax.sharding.NamedSharding(mesh, jax.P("data")))
  got = jax.jit(fn)(key, *sharded)
  np.testing.assert_array_equal(got[2]["index"], want[2]["index"])
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("saliency,match", [
    (None, "needs `saliency`"),
    (np.ones((B, H), np.float32), r"\[B, H, W\] = \(8, 12, 10\)"),
    (np.ones((B, H, W, 1), np.float32), r"\[B, H, W\]"),
    (np.ones((B, W, H), np.float32), r"\[B, H, W\]"),
    (np.ones((B - 1, H, W), np.float32), r"\[B, H, W\]"),
    (np.ones((B, H, W), np.int32), "floating"),
    (-np.ones((B, H, W), np.float32), ">= 0"),
])
def test_bad_saliency_raises(saliency, match):
  images, labels, _ = _batch()
  with pytest.raises(ValueError, match=match):
    G.guidedmixup(jax.random.key(0), images, labels, saliency=saliency)


def test_bad_hyperparameters_and_input_grad_raise():
  images, labels, saliency = _batch()
  with pytest.raises(ValueError, match="`pairing`"):
    G.guidedmixup(jax.random.key(0), images, labels, saliency=saliency,
                  pairing="best")
  with pytest.raises(ValueError, match="`mix_prob`"):
    G.guidedmixup(jax.random.key(0), images, labels, saliency=saliency,
                  mix_prob=1.5)
  with pytest.raises(ValueError, match="`input_grad`"):
    G.guided_saliency(jnp.ones((B, H, W)))
  with pytest.raises(ValueError, match="`blur_size`"):
    G.guided_saliency(jnp.ones((B, H, W, C)), blur_size=6)
