"""MixUp, label helpers and composition (registry, switch, per-device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import mixers

B, H, W, C, K = 6, 4, 4, 3, 5


def _batch(b=B):
  kx, ky = jax.random.split(jax.random.key(0))
  images = jax.random.uniform(kx, (b, H, W, C))
  labels = mixers.one_hot(jax.random.randint(ky, (b,), 0, K), K)
  return images, labels


def test_mixup_lam_one_returns_inputs_bit_for_bit():
  images, labels = _batch()
  mixed, mixed_labels, _ = mixers.mixup(jax.random.key(1), images, labels,
                                        lam=1.0)
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(mixed_labels, labels)


def test_mixup_lam_zero_returns_partner_bit_for_bit():
  images, labels = _batch()
  index = jnp.array([3, 2, 1, 0, 5, 4], jnp.int32)
  mixed, mixed_labels, aux = mixers.mixup(jax.random.key(1), images, labels,
                                          lam=0.0, index=index)
  np.testing.assert_array_equal(mixed, images[index])
  np.testing.assert_array_equal(mixed_labels, labels[index])
  np.testing.assert_array_equal(aux["index"], index)


def test_mixup_explicit_per_sample_lam_is_honoured():
  images, labels = _batch()
  lam = jnp.linspace(0.0, 1.0, B)
  mixed, mixed_labels, aux = mixers.mixup(jax.random.key(1), images, labels,
                                          lam=lam, partner="roll")
  np.testing.assert_allclose(aux["lam"], lam)
  index = np.roll(np.arange(B), 1)
  expected = lam[:, None, None, None] * images + (
      1 - lam[:, None, None, None]) * images[index]
  np.testing.assert_allclose(mixed, expected, atol=1e-6)
  np.testing.assert_allclose(
      mixed_labels, lam[:, None] * labels + (1 - lam[:, None]) * labels[index],
      atol=1e-6)


def test_lam_scope_batch_shares_one_lambda_and_sample_draws_many():
  images, labels = _batch()
  _, _, aux = mixers.mixup(jax.random.key(2), images, labels, lam_scope="batch")
  assert np.unique(np.asarray(aux["lam"])).size == 1
  _, _, aux = mixers.mixup(jax.random.key(2), images, labels,
                           lam_scope="sample")
  assert np.unique(np.asarray(aux["lam"])).size == B


@pytest.mark.parametrize("partner,expected", [
    ("flip", [5, 4, 3, 2, 1, 0]),
    ("roll", [5, 0, 1, 2, 3, 4]),
])
def test_deterministic_partners(partner, expected):
  images, labels = _batch()
  _, _, aux = mixers.mixup(jax.random.key(3), images, labels, partner=partner)
  np.testing.assert_array_equal(aux["index"], expected)


def test_permutation_partner_is_a_permutation():
  images, labels = _batch()
  _, _, aux = mixers.mixup(jax.random.key(3), images, labels)
  assert sorted(np.asarray(aux["index"]).tolist()) == list(range(B))


def test_mixup_works_on_sequences_and_volumes():
  labels = _batch()[1]
  for shape in [(B, 7, 3), (B, 2, 4, 4, 3)]:
    x = jax.random.uniform(jax.random.key(0), shape)
    mixed, _, aux = mixers.mixup(jax.random.key(1), x, labels)
    lam = aux["lam"].reshape((B,) + (1,) * (len(shape) - 1))
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[aux["index"]],
                               atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=-1.0), "alpha"),
    (dict(lam_scope="device"), "lam_scope"),
    (dict(partner="random"), "partner"),
    (dict(lam=1.5), "lam"),
    (dict(lam=jnp.ones((3,))), "lam"),
    (dict(index=jnp.arange(3)), "index"),
    (dict(index=jnp.arange(B) + 1), "index"),
    (dict(index=jnp.arange(B, dtype=jnp.float32)), "index"),
])
def test_mixup_bad_hyperparameters(kwargs, match):
  images, labels = _batch()
  with pytest.raises(ValueError, match=match):
    mixers.mixup(jax.random.key(0), images, labels, **kwargs)


def test_bad_batches_raise_before_compute():
  images, labels = _batch()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="labels"):
    mixers.mixup(key, images, jnp.argmax(labels, -1))  # integer [B]
  with pytest.raises(ValueError, match="batch size"):
    mixers.mixup(key, images, labels[:4])
  with pytest.raises(ValueError, match="at least 2"):
    mixers.mixup(key, images[:1], labels[:1])
  with pytest.raises(ValueError, match="floating"):
    mixers.mixup(key, (images * 255).astype(jnp.uint8), labels)
  with pytest.raises(ValueError, match="even batch"):
    mixers.mixup(key, images[:5], labels[:5], partner="flip")
  # Raised at trace time, i.e. inside jit too.
  with pytest.raises(ValueError, match="batch size"):
    jax.jit(mixers.mixup)(key, images, labels[:4])


def test_one_hot_with_label_smoothing_matches_timm_convention():
  y = mixers.one_hot(jnp.array([0, 2]), 4, smoothing=0.1)
  off, on = 0.1 / 4, 1 - 0.1 + 0.1 / 4
  np.testing.assert_allclose(y, [[on, off, off, off], [off, off, on, off]],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="labels"):
    mixers.one_hot(jnp.array([[0]]), 4)
  with pytest.raises(ValueError, match="smoothing"):
    mixers.one_hot(jnp.array([0]), 4, smoothing=1.0)


def test_registry():
  assert "mixup" in mixers.names() and "none" in mixers.names()
  images, labels = _batch()
  a = mixers.get("mixup", alpha=0.4)(jax.random.key(0), images, labels)
  b = mixers.mixup(jax.random.key(0), images, labels, alpha=0.4)
  np.testing.assert_array_equal(a[0], b[0])
  with pytest.raises(ValueError, match="unknown mixer 'mixupp'"):
    mixers.get("mixupp")
  with pytest.raises(ValueError, match="already registered"):
    mixers.register("mixup")(lambda key, images, labels: None)


def test_switch_choices_follow_probabilities():
  images, labels = _batch()
  fns = [mixers.get("mixup", lam=0.25), mixers.get("mixup", lam=0.75)]
  run = jax.jit(lambda k: mixers.switch(k, images, labels, mixers=fns,
                                        probs=[0.2, 0.8], p_none=0.5))
  choices = np.array([int(run(jax.random.key(i))[2]["choice"])
                      for i in range(400)])
  freq = np.bincount(choices, minlength=3) / choices.size
  np.testing.assert_allclose(freq, [0.1, 0.4, 0.5], atol=0.07)
  # Each branch's output matches its choice.
  for i in range(6):
    mixed, _, aux = run(jax.random.key(i))
    expected_lam = [0.25, 0.75, 1.0][int(aux["choice"])]
    np.testing.assert_allclose(aux["lam"], expected_lam)
    if int(aux["choice"]) == 2:
      np.testing.assert_array_equal(mixed, images)


def test_switch_validation():
  images, labels = _batch()
  with pytest.raises(ValueError, match="probs"):
    mixers.switch(jax.random.key(0), images, labels,
                  mixers=[mixers.mixup], probs=[0.5])
  with pytest.raises(ValueError, match="p_none"):
    mixers.switch(jax.random.key(0), images, labels,
                  mixers=[mixers.mixup], p_none=2.0)
  with pytest.raises(ValueError, match="mixers"):
    mixers.switch(jax.random.key(0), images, labels, mixers=[])


def test_per_device_validation():
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  images, labels = _batch(12)
  with pytest.raises(ValueError, match="divisible"):
    mixers.per_device(mixers.mixup, mesh)(jax.random.key(0), images, labels)
  with pytest.raises(ValueError, match="axis"):
    mixers.per_device(mixers.mixup, mesh, axis="batch")
  images, labels = _batch(8)
  with pytest.raises(ValueError, match="at least 2"):
    mixers.per_device(mixers.mixup, mesh)(jax.random.key(0), images, labels)
  images, labels = _batch(16)
  with pytest.raises(ValueError, match="`scores`.*leading dimension B = 16"):
    mixers.per_device(mixers.attentive_grid_mix, mesh)(
        jax.random.key(0), images, labels, scores=jnp.ones((8, 2, 2)))


def test_importing_the_mixers_costs_only_jax_and_numpy():
  from tests._imports import heavy_modules_loaded
  heavy = heavy_modules_loaded(
      "import automix_jax, automix_jax.mixers",
      ("flax", "optax", "orbax", "tensorflow_datasets", "tensorflow", "torch",
       "ml_collections"))
  assert heavy == [], heavy
