"""Property tests of N-way MixUp (AdAutoMix's linear N-image mix)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import mixers
from automix_jax.mixers import _nway

B, H, W, C, K = 6, 4, 4, 3, 5


def _batch(seed=0, shape=(B, H, W, C), dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)
  labels = np.eye(K, dtype=np.float32)[rng.integers(0, K, shape[0])]
  return images, jnp.asarray(labels)


@functools.lru_cache(maxsize=None)
def _jit_cached(static):
  return jax.jit(functools.partial(mixers.nway_mixup, **dict(static)))


def _jit(**static):
  """One compiled mixer per static configuration, shared by the tests."""
  return _jit_cached(tuple(sorted(static.items())))


def _raises(match, *args, **kw):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(functools.partial(mixers.nway_mixup, **kw), *args)


def _check_mix(images, labels, mixed, mixed_labels, aux, n):
  lam = np.asarray(aux["lam"], np.float64)
  index = np.asarray(aux["index"])
  assert lam.shape == (images.shape[0], n) and aux["lam"].dtype == jnp.float32
  assert index.shape == (images.shape[0], n) and aux["index"].dtype == jnp.int32
  np.testing.assert_allclose(lam.sum(-1), 1.0, atol=1e-6)
  assert np.all(lam >= 0)
  x = np.asarray(images).astype(np.float64)
  w = lam.reshape(lam.shape + (1,) * (x.ndim - 1))
  expected = (w * x[index]).sum(1)
  np.testing.assert_allclose(np.asarray(mixed).astype(np.float64), expected,
                             atol=1e-5, rtol=1e-5)
  y = np.asarray(labels, np.float64)
  np.testing.assert_allclose(mixed_labels, (lam[..., None] * y[index]).sum(1),
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(mixed_labels).sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("weights", ["beta_normalized", "dirichlet"])
@pytest.mark.parametrize("lam_scope", ["batch", "sample"])
def test_provenance_weights_and_labels(weights, lam_scope):
  images, labels = _batch()
  n = 3
  mixed, mixed_labels, aux = mixers.nway_mixup(
      jax.random.key(0), images, labels, num_images=n, weights=weights,
      lam_scope=lam_scope)
  assert mixed.shape == images.shape and mixed.dtype == images.dtype
  _check_mix(images, labels, mixed, mixed_labels, aux, n)
  lam, index = np.asarray(aux["lam"]), np.asarray(aux["index"])
  # π_0 is the identity; the other columns are permutations of the batch.
  np.testing.assert_array_equal(index[:, 0], np.arange(B))
  for i in range(1, n):
    np.testing.assert_array_equal(np.sort(index[:, i]), np.arange(B))
  if lam_scope == "batch":
    np.testing.assert_array_equal(lam, np.broadcast_to(lam[0], lam.shape))
  else:
    assert len({row.tobytes() for row in lam}) == B


def test_all_permuted_when_not_identity_first():
  images, labels = _batch()
  fn = _jit(num_images=4, identity_first=False)
  ids_seen = []
  for seed in range(3):
    mixed, mixed_labels, aux = fn(jax.random.key(seed), images, labels)
    _check_mix(images, labels, mixed, mixed_labels, aux, 4)
    index = np.asarray(aux["index"])
    for i in range(4):
      np.testing.assert_array_equal(np.sort(index[:, i]), np.arange(B))
    ids_seen.append(np.array_equal(index[:, 0], np.arange(B)))
  assert not all(ids_seen)  # column 0 is permuted too


def test_roll_and_flip_partners():
  images, labels = _batch()
  mixed, mixed_labels, aux = _jit(num_images=3, partner="roll")(
      jax.random.key(0), images, labels, lam=jnp.asarray([0.2, 0.3, 0.5]))
  ids = np.arange(B)
  np.testing.assert_array_equal(
      aux["index"], np.stack([(ids - i) % B for i in range(3)], 1))
  _check_mix(images, labels, mixed, mixed_labels, aux, 3)
  mixed, mixed_labels, aux = _jit(num_images=2, partner="flip")(
      jax.random.key(0), images, labels, lam=jnp.asarray([0.3, 0.7]))
  np.testing.assert_array_equal(aux["index"], np.stack([ids, ids[::-1]], 1))
  _check_mix(images, labels, mixed, mixed_labels, aux, 2)


def test_explicit_weights_and_indices():
  images, labels = _batch()
  fn = _jit(num_images=3)
  key = jax.random.key(1)
  # λ = e_0 with π_0 = identity returns the inputs bit for bit.
  mixed, mixed_labels, aux = fn(key, images, labels,
                                lam=jnp.asarray([1.0, 0.0, 0.0]))
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(mixed_labels, labels)
  # Per-sample weights and explicit indices are used as given.
  rng = np.random.default_rng(0)
  lam = rng.dirichlet([1.0] * 3, B).astype(np.float32)
  lam /= lam.sum(-1, keepdims=True)
  indices = np.stack([rng.permutation(B) for _ in range(3)], 1).astype(np.int32)
  mixed, mixed_labels, aux = fn(key, images, labels, lam=jnp.asarray(lam),
                                indices=jnp.asarray(indices))
  np.testing.assert_array_equal(aux["lam"], lam)
  np.testing.assert_array_equal(aux["index"], indices)
  _check_mix(images, labels, mixed, mixed_labels, aux, 3)


def test_weight_distributions_differ():
  # AdAutoMix normalises iid Beta(α, α) draws; that is not Dirichlet(α·1).
  # Moments over many per-sample draws (a fixed key): for N = 3, α = 1 the
  # Dirichlet weight has variance (N-1) / (N² (Nα + 1)) = 1/18 ≈ 0.0556 and
  # the normalised uniforms ≈ 0.032 (numpy, 2·10⁵ draws).
  n, rows = 3, 8192
  var = {}
  for weights in _nway.WEIGHTS:
    w = np.asarray(_nway.draw_weights(jax.random.key(0), 1.0, n, rows, weights))
    assert w.shape == (rows, n)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(w.mean(0), 1 / n, atol=0.01)
    var[weights] = w.var(0)
  np.testing.assert_allclose(var["dirichlet"], 1 / 18, rtol=0.06)
  np.testing.assert_allclose(var["beta_normalized"], 0.0322, rtol=0.06)


def test_jit_matches_eager_without_retracing():
  chex.clear_trace_counter()
  fn = functools.partial(mixers.nway_mixup, num_images=3, lam_scope="sample")

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jitted(key, images, labels):
    return fn(key, images, labels)

  for seed in range(3):
    images, labels = _batch(seed)
    key = jax.random.key(seed)
    chex.assert_trees_all_close(jitted(key, images, labels),
                                fn(key, images, labels), atol=1e-6)


def test_vmap_over_keys_and_bfloat16():
  images, labels = _batch(dtype=jnp.bfloat16)
  keys = jax.random.split(jax.random.key(2), 3)
  fn = _jit(num_images=3)
  lam = jnp.asarray([0.2, 0.3, 0.5])  # explicit: the partners vary per key
  batched = jax.jit(jax.vmap(lambda k: mixers.nway_mixup(
      k, images, labels, num_images=3, lam=lam)))(keys)
  for i in range(3):
    single = fn(keys[i], images, labels, lam=lam)
    assert single[0].dtype == jnp.bfloat16
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], batched), single)
    mixed, mixed_labels, aux = single
    x = np.asarray(images).astype(np.float64)
    lam, index = np.asarray(aux["lam"]), np.asarray(aux["index"])
    expected = (lam[:, :, None, None, None] * x[index]).sum(1)
    # One bf16 rounding of a float32 accumulation.
    np.testing.assert_allclose(np.asarray(mixed).astype(np.float64), expected,
                               rtol=1e-2, atol=1e-2)
  assert not np.array_equal(batched[2]["index"][0], batched[2]["index"][1])


def test_any_rank():
  for shape in [(B, 7), (B, 5, 2), (B, 2, 2, 2, 1)]:
    images, labels = _batch(shape=shape)
    # Explicit weights keep the Beta sampler (slow to compile) out.
    mixed, mixed_labels, aux = _jit(num_images=2)(
        jax.random.key(0), images, labels, lam=jnp.asarray([0.3, 0.7]))
    _check_mix(images, labels, mixed, mixed_labels, aux, 2)


def test_bad_input():
  key = jax.random.key(0)
  images, labels = _batch()
  _raises("num_images", key, images, labels, num_images=1)
  _raises("num_images", key, images, labels, num_images=B + 1)
  _raises("num_images", key, images, labels, num_images=2.0)
  _raises("weights", key, images, labels, weights="uniform")
  _raises("alpha", key, images, labels, alpha=0.0)
  _raises("alpha", key, images, labels, alpha=-2.0)
  _raises("floating", key, images.astype(jnp.int32), labels)
  _raises(r"\[B, K\]", key, images, jnp.argmax(labels, -1))
  _raises("batch size", key, images, labels[:4])
  _raises("at least 2", key, images[:1], labels[:1])
  _raises("flip", key, images[:5], labels[:5], num_images=2, partner="flip")
  _raises("flip", key, images, labels, num_images=3, partner="flip")
  _raises("partner", key, images, labels, partner="random")
  _raises("lam_scope", key, images, labels, lam_scope="pixel")
  _raises("identity_first", key, images, labels, identity_first=False,
          partner="roll")
  _raises("lam", key, images, labels, lam=jnp.asarray([0.5, 0.5]))
  _raises("lam", key, images, labels, lam=jnp.asarray([0.5, 0.4, 0.3]))
  _raises("lam", key, images, labels, lam=jnp.asarray([1.2, -0.2, 0.0]))
  _raises("indices", key, images, labels, indices=jnp.zeros((B, 2), jnp.int32))
  _raises("indices", key, images, labels, indices=jnp.zeros((B, 3)))
  _raises("indices", key, images, labels,
          indices=jnp.full((B, 3), B, jnp.int32))
  jax.eval_shape(functools.partial(mixers.nway_mixup, num_images=B), key,
                 images, labels)  # N = B is allowed
