"""Property tests of the mask mixers: FMix, SmoothMix, AttentiveMix+, MaskMix.

Compile time dominates on CPU, so most calls go through one cached jit per
configuration with λ passed as a traced argument (which also keeps the Beta
sampler, slow to compile, out of most graphs), and bad-input checks use
``jax.eval_shape`` (validation happens at trace time, nothing is compiled).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import mixers
from automix_jax.mixers import _fmix

B, H, W, C, K = 4, 8, 8, 3, 5


def _batch(seed=0, shape=(B, H, W, C), dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)
  labels = np.eye(K, dtype=np.float32)[rng.integers(0, K, shape[0])]
  return images, jnp.asarray(labels)


def _scores(batch_size=B, grid=(4, 4), seed=7):
  return jnp.asarray(np.random.default_rng(seed).normal(
      size=(batch_size,) + grid), jnp.float32)


def _attentive(key, images, labels, **kw):
  scores = kw.pop("scores", None)
  if scores is None:
    scores = _scores(images.shape[0])
  return mixers.attentive_grid_mix(key, images, labels, scores=scores, **kw)


# name -> (callable, extra kwargs, mask is binary)
MIXERS = {
    "fmix": (mixers.fmix, {}, True),
    "smoothmix": (mixers.smoothmix, {}, False),
    "attentive": (_attentive, {}, True),
    "maskmix": (mixers.maskmix, {"grid": 4}, True),
}
BINARY = [n for n, (_, _, b) in MIXERS.items() if b]


def _get(name, **kw):
  fn, extra, _ = MIXERS[name]
  return functools.partial(fn, **{**extra, **kw})


@functools.lru_cache(maxsize=None)
def _jit_cached(name, static):
  return jax.jit(_get(name, **dict(static)))


def _jit(name, **static):
  """One compiled mixer per (name, static hyperparameters), shared by tests."""
  return _jit_cached(name, tuple(sorted(static.items())))


def _raises(match, fn, *args, **kw):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(functools.partial(fn, **kw), *args)


def _assert_provenance(images, mixed, aux, binary):
  x = np.asarray(images).astype(np.float32)
  out = np.asarray(mixed).astype(np.float32)
  mask = np.asarray(aux["mask"])
  partner = x[np.asarray(aux["index"])]
  if binary:
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(out, np.where(mask == 1, x, partner))
  else:
    np.testing.assert_allclose(out, mask * x + (1 - mask) * partner,
                               rtol=1e-6, atol=1e-6)


def _assert_labels(labels, mixed_labels, aux):
  y = np.asarray(labels)
  lam = np.asarray(aux["lam"])[:, None]
  np.testing.assert_allclose(
      mixed_labels, lam * y + (1 - lam) * y[np.asarray(aux["index"])],
      atol=1e-6)
  np.testing.assert_allclose(np.asarray(mixed_labels).sum(-1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------
# Properties shared by all four.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("lam_scope", ["batch", "sample"])
def test_provenance_lam_and_labels(name, lam_scope):
  # Eager and with λ drawn from Beta: the default path.
  images, labels = _batch()
  mixed, mixed_labels, aux = _get(name, lam_scope=lam_scope)(
      jax.random.key(1), images, labels)
  binary = MIXERS[name][2]
  assert mixed.shape == images.shape and mixed.dtype == images.dtype
  assert aux["lam"].shape == (B,) and aux["lam"].dtype == jnp.float32
  assert aux["index"].shape == (B,) and aux["index"].dtype == jnp.int32
  assert aux["mask"].shape == (B, H, W, 1)
  _assert_provenance(images, mixed, aux, binary)
  # λ is the own image's mean weight, exactly for binary masks.
  mean = np.asarray(aux["mask"], np.float64).mean(axis=(1, 2, 3))
  if binary:
    np.testing.assert_array_equal(np.float32(mean), aux["lam"])
  else:
    np.testing.assert_allclose(aux["lam"], mean, rtol=1e-6)
  assert np.all((np.asarray(aux["lam"]) > 0) & (np.asarray(aux["lam"]) < 1))
  _assert_labels(labels, mixed_labels, aux)


@pytest.mark.parametrize("name", list(MIXERS))
def test_jit_matches_eager_without_retracing(name):
  fn = _get(name, lam_scope="sample")
  binary = MIXERS[name][2]
  chex.clear_trace_counter()  # the counter is shared by the parametrisations

  # λ (where there is one) is a traced argument: counts are computed in-graph.
  @jax.jit
  @chex.assert_max_traces(n=1)
  def jitted(key, images, labels, lam):
    return fn(key, images, labels, **({"lam": lam} if binary else {}))

  for seed in range(3):
    key = jax.random.key(seed)
    images, labels = _batch(seed)
    lam = jnp.asarray(np.random.default_rng(seed).uniform(size=B), jnp.float32)
    out_j = jitted(key, images, labels, lam)
    out_e = fn(key, images, labels, **({"lam": lam} if binary else {}))
    chex.assert_trees_all_close(out_j, out_e, atol=1e-6)
    if binary:
      np.testing.assert_array_equal(out_j[2]["mask"], out_e[2]["mask"])
      _assert_provenance(images, out_j[0], out_j[2], True)


@pytest.mark.parametrize("name", list(MIXERS))
def test_bfloat16_kept(name):
  images, labels = _batch(dtype=jnp.bfloat16)
  kw = {"lam": 0.5} if MIXERS[name][2] else {}
  mixed, mixed_labels, aux = _jit(name)(jax.random.key(3), images, labels,
                                        **kw)
  assert mixed.dtype == jnp.bfloat16
  assert mixed_labels.dtype == labels.dtype
  assert aux["lam"].dtype == jnp.float32
  # Binary masks move pixels bit for bit in any dtype; soft ones round once.
  if MIXERS[name][2]:
    _assert_provenance(images, mixed, aux, True)
  else:
    x = np.asarray(images).astype(np.float32)
    m = np.asarray(aux["mask"])
    expected = m * x + (1 - m) * x[np.asarray(aux["index"])]
    np.testing.assert_allclose(np.asarray(mixed).astype(np.float32), expected,
                               atol=0.05, rtol=0.02)


@pytest.mark.parametrize("name", list(MIXERS))
def test_vmap_over_keys_matches_loop(name):
  images, labels = _batch()
  fn = _jit(name, lam_scope="sample")
  keys = jax.random.split(jax.random.key(4), 3)
  kw = {"lam": 0.5} if MIXERS[name][2] else {}
  batched = jax.jit(jax.vmap(lambda k: _get(name, lam_scope="sample")(
      k, images, labels, **kw)))(keys)
  for i in range(3):
    single = fn(keys[i], images, labels, **kw)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], batched), single,
                                atol=1e-6)
  # Different keys give different mixes.
  assert not np.array_equal(batched[0][0], batched[0][1])


@pytest.mark.parametrize("name", ["fmix", "smoothmix", "maskmix"])
def test_lam_scope(name):
  images, labels = _batch()
  kw = {"lam": 0.5} if MIXERS[name][2] else {}
  _, _, aux = _jit(name, lam_scope="batch")(jax.random.key(5), images, labels,
                                             **kw)
  mask = np.asarray(aux["mask"])
  assert all(np.array_equal(mask[0], m) for m in mask[1:])
  _, _, aux = _jit(name, lam_scope="sample")(jax.random.key(5), images, labels,
                                              **kw)
  mask = np.asarray(aux["mask"])
  assert not all(np.array_equal(mask[0], m) for m in mask[1:])
  if not kw:
    assert len(np.unique(np.asarray(aux["lam"]))) > 1


@pytest.mark.parametrize("name", BINARY)
def test_explicit_lam_and_index(name):
  images, labels = _batch()
  fn = _jit(name)
  key = jax.random.key(6)
  index = jnp.asarray([1, 0, 3, 2], jnp.int32)
  x, y = np.asarray(images), np.asarray(labels)
  # λ = 1 returns the inputs unchanged, λ = 0 the partners.
  mixed, mixed_labels, aux = fn(key, images, labels, lam=jnp.ones((B,)),
                                index=index)
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(mixed_labels, labels)
  np.testing.assert_array_equal(aux["lam"], 1.0)
  np.testing.assert_array_equal(aux["index"], index)
  mixed, mixed_labels, aux = fn(key, images, labels, lam=jnp.zeros((B,)),
                                index=index)
  np.testing.assert_array_equal(mixed, x[np.asarray(index)])
  np.testing.assert_allclose(mixed_labels, y[np.asarray(index)])
  # A per-sample λ is honoured even with lam_scope="batch". 64 pixels and 16
  # cells make every target here reachable exactly.
  lam = jnp.asarray([0.0, 0.25, 0.5, 1.0])
  mixed, mixed_labels, aux = fn(key, images, labels, lam=lam, index=index)
  np.testing.assert_array_equal(aux["lam"], lam)
  _assert_provenance(images, mixed, aux, True)
  _assert_labels(labels, mixed_labels, aux)


# ----------------------------------------------------------------------------
# Bad input (raised at trace time: checked with eval_shape).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
def test_bad_input(name):
  fn = _get(name)
  key = jax.random.key(0)
  images, labels = _batch()
  _raises("alpha", fn, key, images, labels, alpha=0.0)
  _raises("alpha", fn, key, images, labels, alpha=-1.0)
  _raises("floating", fn, key, images.astype(jnp.int32), labels)
  _raises(r"\[B, K\]", fn, key, images, jnp.argmax(labels, -1))
  _raises(r"\[B, K\]", fn, key, images, labels[..., None])
  _raises("batch size", fn, key, images, labels[:3])
  _raises("at least 2", fn, key, images[:1], labels[:1])
  _raises("must have shape", fn, key, images[None, None], labels)
  _raises("flip", fn, key, images[:3], labels[:3], partner="flip")
  jax.eval_shape(functools.partial(fn, partner="roll"), key, images[:3],
                 labels[:3])  # an odd batch is fine otherwise
  _raises("partner", fn, key, images, labels, partner="random")
  _raises("lam_scope", fn, key, images, labels, lam_scope="pixel")
  _raises("index", fn, key, images, labels, index=jnp.zeros((3,), jnp.int32))
  if MIXERS[name][2]:
    _raises("lam", fn, key, images, labels, lam=1.5)
    _raises("lam", fn, key, images, labels, lam=jnp.ones((3,)))


# ----------------------------------------------------------------------------
# FMix.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(B, 64, C), (B, H, W, C), (B, 4, 4, 4, 2)])
def test_fmix_any_rank_exact_topk_count(shape):
  images, labels = _batch(shape=shape)
  n = int(np.prod(shape[1:-1]))
  lam = 0.3  # 0.3 · 64 = 19.2: ceil 20 or floor 19
  counts = set()
  # A rank-3 batch needs its dimensionality spelled out (here a sequence).
  fn = _jit("fmix", lam_scope="sample", spatial_dims=len(shape) - 2)
  for key in jax.random.split(jax.random.key(0), 4):
    mixed, mixed_labels, aux = fn(key, images, labels, lam=lam)
    mask = np.asarray(aux["mask"])
    assert mask.shape == shape[:-1] + (1,)
    c = mask.reshape(B, -1).sum(-1)
    counts.update(c.tolist())
    np.testing.assert_array_equal(aux["lam"], np.float32(c / n))
    _assert_provenance(images, mixed, aux, True)
    _assert_labels(labels, mixed_labels, aux)
  # Per-sample coins between ceil and floor: both show up in 16 draws.
  assert counts == {np.floor(lam * n), np.ceil(lam * n)}


def test_fmix_binarise_keeps_top_ranked_positions():
  grey = jnp.asarray(np.random.default_rng(0).normal(size=(1, 50)), jnp.float32)
  lam = jnp.asarray([0.1, 0.33, 0.5, 0.9])
  up = jnp.asarray([True, True, False, False])
  mask = np.asarray(_fmix.binarise_by_rank(grey, lam, up))
  order = np.argsort(-np.asarray(grey[0]))
  for i, k in enumerate([5, 17, 25, 45]):  # 0.1·50 = 5 exactly, not 6
    expected = np.zeros(50)
    expected[order[:k]] = 1
    np.testing.assert_array_equal(mask[i], expected)


def _boundary(mask):
  """Mean number of unequal neighbour pairs per mask ([N, H, W])."""
  return (np.abs(np.diff(mask, axis=1)).sum((1, 2)) +
          np.abs(np.diff(mask, axis=2)).sum((1, 2))).mean()


def test_fmix_masks_are_low_frequency():
  images, labels = _batch(shape=(16, 16, 16, 1))
  bounds = {}
  for d in (0.5, 3.0):
    _, _, aux = _jit("fmix", decay_power=d, lam_scope="sample")(
        jax.random.key(0), images, labels, lam=0.5)
    bounds[d] = _boundary(np.asarray(aux["mask"])[..., 0])
  # A random mask of the same area has ~ 2·16·15·0.5 = 240 boundary pairs.
  perm = np.stack([np.random.default_rng(i).permutation(256) < 128
                   for i in range(16)]).reshape(16, 16, 16).astype(float)
  random_bound = _boundary(perm)
  assert bounds[3.0] < 0.35 * random_bound
  assert bounds[3.0] < 0.6 * bounds[0.5]


def test_fmix_soft_edges():
  images, labels = _batch(shape=(B, 16, 16, C))
  n = 256
  mixed, mixed_labels, aux = _jit("fmix", max_soft=0.1)(
      jax.random.key(2), images, labels, lam=0.4)
  mask = np.asarray(aux["mask"]).reshape(B, -1)
  soft = int(n * 0.1)
  frac = (mask > 0) & (mask < 1)
  # The ramp covers 2·soft positions, its two ends being exactly 1 and 0.
  assert frac.sum(-1).tolist() == [2 * soft - 2] * B
  assert mask.min() == 0 and mask.max() == 1
  count = mask.sum(-1)
  assert set(np.round(count, 4).tolist()) <= {102.0, 103.0}
  np.testing.assert_allclose(aux["lam"], count / n, rtol=1e-6)
  _assert_provenance(images, mixed, aux, False)
  _assert_labels(labels, mixed_labels, aux)
  _raises("max_soft", mixers.fmix, jax.random.key(2), images, labels,
          max_soft=1.5)
  _raises("decay_power", mixers.fmix, jax.random.key(2), images, labels,
          decay_power=-1.0)


# ----------------------------------------------------------------------------
# SmoothMix.
# ----------------------------------------------------------------------------


def test_smoothmix_returns_own_weight_not_partner_weight():
  # Regression for OpenMixup's swap (it returns mean(k), the partner's share).
  images = jnp.concatenate([jnp.zeros((2, H, W, C)), jnp.ones((2, H, W, C))])
  labels = jnp.asarray(np.eye(K, dtype=np.float32)[[0, 0, 1, 1]])
  index = jnp.asarray([2, 3, 0, 1], jnp.int32)
  fn = _jit("smoothmix", lam_scope="sample")
  for seed in range(3):
    mixed, mixed_labels, aux = fn(jax.random.key(seed), images, labels,
                                  index=index)
    own_share = 1 - np.asarray(mixed)[:2].mean((1, 2, 3))  # own pixels are 0
    np.testing.assert_allclose(aux["lam"][:2], own_share, rtol=1e-5)
    np.testing.assert_allclose(mixed_labels[:2, 0], own_share, rtol=1e-5)
    # The partner's share is mean(k), what OpenMixup returns instead.
    k = 1 - np.asarray(aux["mask"])[:2]
    np.testing.assert_allclose(1 - aux["lam"][:2], k.mean((1, 2, 3)),
                               rtol=1e-5)


def test_smoothmix_mask_is_gaussian():
  images, labels = _batch(shape=(B, 16, 12, C))
  _, _, aux = _jit("smoothmix", lam_scope="sample")(jax.random.key(3), images,
                                                    labels)
  k = 1 - np.asarray(aux["mask"], np.float64)[..., 0]
  assert np.all(k > 0) and np.all(k <= 1)
  log_k = np.log(k)
  # log k is separable and quadratic: constant second differences
  # -1/σy² along rows and -1/σx² along columns, σ in [0.25, 0.5]·side.
  d2y = np.diff(log_k, n=2, axis=1)
  d2x = np.diff(log_k, n=2, axis=2)
  sy = np.sqrt(-1 / d2y.mean((1, 2)))
  sx = np.sqrt(-1 / d2x.mean((1, 2)))
  np.testing.assert_allclose(d2y - d2y.mean((1, 2), keepdims=True), 0,
                             atol=1e-4)
  np.testing.assert_allclose(d2x - d2x.mean((1, 2), keepdims=True), 0,
                             atol=1e-4)
  np.testing.assert_allclose(sy / 16, sx / 12, rtol=1e-3)
  assert np.all((sy >= 0.25 * 16 - 1e-3) & (sy <= 0.5 * 16 + 1e-3))
  assert len(np.unique(np.round(sy, 3))) == B  # per-sample σ


def test_smoothmix_bad_sigma_scope():
  images, labels = _batch()
  for bad in [(0.0, 0.5), (0.5, 0.25), 0.3, (0.1, float("inf"))]:
    _raises("sigma_scope", mixers.smoothmix, jax.random.key(0), images, labels,
            sigma_scope=bad)


# ----------------------------------------------------------------------------
# Attentive grid mix.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("lam_scope", ["batch", "sample"])
def test_attentive_keeps_exactly_the_top_k_own_cells(lam_scope):
  images, labels = _batch()
  scores = _scores(grid=(2, 4))
  _, _, aux = mixers.attentive_grid_mix(
      jax.random.key(1), images, labels, scores=scores, lam_scope=lam_scope)
  mask = np.asarray(aux["mask"])[..., 0]
  cells = mask[:, ::4, ::2]                 # one pixel per 4×2 cell
  np.testing.assert_array_equal(
      np.repeat(np.repeat(cells, 4, 1), 2, 2), mask)  # block constant
  s = np.asarray(scores).reshape(B, -1)
  for i in range(B):
    k = int(cells[i].sum())
    assert aux["lam"][i] == np.float32(k / 8)
    kept = np.flatnonzero(cells[i].reshape(-1))
    np.testing.assert_array_equal(np.sort(kept), np.sort(np.argsort(-s[i])[:k]))


def test_attentive_k_is_int_of_n_lam():
  images, labels = _batch()
  fn = jax.jit(mixers.attentive_grid_mix)
  lam = jnp.asarray([0.1, 0.5, 0.7, 0.99])  # 16 cells: 1, 8, 11, 15
  _, _, aux = fn(jax.random.key(0), images, labels, scores=_scores(), lam=lam)
  np.testing.assert_array_equal(aux["lam"] * 16, [1, 8, 11, 15])
  # 0.7 in float32 times 10 cells is 6.9999998: int() must still give 7.
  _, _, aux = _jit("attentive")(jax.random.key(0), *_batch(shape=(B, 4, 10, 1)),
                                scores=_scores(grid=(2, 5)), lam=0.7)
  np.testing.assert_array_equal(aux["lam"] * 10, 7)


def test_attentive_top_k():
  images, labels = _batch()
  _, _, aux = mixers.attentive_grid_mix(jax.random.key(0), images, labels,
                                        scores=_scores(), top_k=5)
  np.testing.assert_array_equal(aux["lam"], np.float32(5 / 16))
  fn = functools.partial(mixers.attentive_grid_mix, scores=_scores())
  key = jax.random.key(0)
  _raises("top_k", fn, key, images, labels, top_k=17)
  _raises("top_k", fn, key, images, labels, top_k=2.5)
  _raises("top_k", fn, key, images, labels, top_k=3, lam=0.5)


def test_attentive_bad_scores_and_grid():
  images, labels = _batch()
  key = jax.random.key(0)
  fn = mixers.attentive_grid_mix
  _raises("scores", fn, key, images, labels, scores=jnp.ones((B, 16)))
  _raises("scores", fn, key, images, labels, scores=jnp.ones((3, 4, 4)))
  _raises("scores", fn, key, images, labels,
          scores=jnp.ones((B, 4, 4), jnp.complex64))
  _raises("divide", fn, key, images, labels, scores=_scores(grid=(3, 4)))
  _raises("grid_size", fn, key, images, labels, scores=_scores(), grid_size=7)
  jax.eval_shape(functools.partial(fn, scores=_scores(), grid_size=(4, 4)),
                 key, images, labels)


# ----------------------------------------------------------------------------
# MaskMix.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("lam_scope", ["batch", "sample"])
def test_maskmix_cell_count_is_ceil(lam_scope):
  images, labels = _batch(shape=(B, 16, 16, C))
  fn = _jit("maskmix", mask_patch=4, grid=None, lam_scope=lam_scope)
  lam = jnp.asarray([0.1, 0.3, 0.5, 0.99])  # ceil(16 λ) = 2, 5, 8, 16
  mixed, mixed_labels, aux = fn(jax.random.key(0), images, labels, lam=lam)
  mask = np.asarray(aux["mask"])[..., 0]
  cells = mask[:, ::4, ::4]                   # ceil(16 / 4) = 4 → 4×4 grid
  np.testing.assert_array_equal(
      np.repeat(np.repeat(cells, 4, 1), 4, 2), mask)
  np.testing.assert_array_equal(cells.reshape(B, -1).sum(-1), [2, 5, 8, 16])
  np.testing.assert_array_equal(aux["lam"] * 16, [2, 5, 8, 16])
  _assert_provenance(images, mixed, aux, True)
  _assert_labels(labels, mixed_labels, aux)


def test_maskmix_float32_guard():
  # 0.1 in float32 times 10 cells is 1.0000000149, whose ceil is 1, not 2.
  images, labels = _batch(shape=(B, 4, 10, 1))
  _, _, aux = _jit("maskmix", grid=(2, 5))(jax.random.key(0), images, labels,
                                          lam=0.1)
  np.testing.assert_array_equal(aux["lam"] * 10, 1)


def test_maskmix_cells_are_uniformly_random():
  images, labels = _batch()
  fn = _jit("maskmix", lam_scope="sample")
  # One call with a per-sample layout over a big batch: every cell is kept in
  # about half of the samples.
  many = jnp.tile(images, (32, 1, 1, 1))
  _, _, aux = fn(jax.random.key(0), many, jnp.tile(labels, (32, 1)), lam=0.5)
  layouts = np.asarray(aux["mask"])[:, ::2, ::2, 0].reshape(128, 16)
  assert len({row.tobytes() for row in layouts}) > 100
  np.testing.assert_array_equal(layouts.sum(-1), 8)
  assert np.all(np.abs(layouts.mean(0) - 0.5) < 0.2)


def test_maskmix_grid_must_divide_image():
  images, labels = _batch(shape=(B, 10, 10, C))
  key = jax.random.key(0)
  fn = mixers.maskmix
  _raises("mask_patch", fn, key, images, labels, mask_patch=3)  # 4 cells/side
  _raises("grid", fn, key, images, labels, grid=3)
  _raises("grid", fn, key, images, labels, grid=(2, 2, 2))
  _raises("mask_patch", fn, key, images, labels, mask_patch=0)
  _raises("grid", fn, key, images, labels, grid=0)
  jax.eval_shape(functools.partial(fn, mask_patch=5), key, images, labels)
