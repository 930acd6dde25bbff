"""The contract every registered mixer keeps (see automix_jax/mixers/_common.py).

Mixer-specific defining properties live in the other files of this directory; this
file checks what all of them share: signature rules, jit == eager, shapes and dtypes,
labels consistent with the returned λ/index, pixel provenance against the returned
mask, a single trace, and per-device mixing under ``jax.shard_map``.
"""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import mixers

B, H, W, C, K = 8, 16, 16, 3, 5


def _hparams(name):
  """Hyperparameters that make each mixer runnable on the tiny test batch."""
  if name == "attentivemix":
    scores = jax.random.uniform(jax.random.key(7), (B, 4, 4))
    return {"scores": scores}
  if name == "maskmix":
    return {"mask_patch": 4}
  return {}


# Static mixers, and model-aware ones that need only a saliency map (given by
# _model_inputs). Those needing a CAM or returning a feature_mix function are
# checked by tests/train/test_model_aware.py and their own files.
# PuzzleMix and Co-Mixup need square images divisible by their block grids
# and are slow at any size: tests/mixers/test_puzzle_comix.py covers this
# contract for them (provenance, labels, jit once, sharding, refusals).
OWN_CONTRACT_TESTS = ("puzzlemix", "comixup")
MIXERS = [n for n in mixers.names()
          if n != "none" and set(mixers.needs(n)) <= {"saliency"}
          and n not in OWN_CONTRACT_TESTS]
# ResizeMix pastes a *resized* partner, so its pixels are not
# mask * x + (1 - mask) * x[index]; its own test checks provenance.
NO_PIXEL_PROVENANCE = {"resizemix"}


def _batch(dtype=jnp.float32):
  kx, ky = jax.random.split(jax.random.key(0))
  images = jax.random.uniform(kx, (B, H, W, C), dtype=jnp.float32).astype(dtype)
  labels = mixers.one_hot(jax.random.randint(ky, (B,), 0, K), K)
  return images, labels


def _model_inputs(name, b=B):
  """Per-call model inputs of a model-aware mixer (``mixers.needs``)."""
  inputs = {}
  if "saliency" in mixers.needs(name):
    inputs["saliency"] = jax.random.uniform(jax.random.key(8), (b, H, W)) ** 4
  return inputs


def _call(name, key, images, labels):
  return mixers.get(name, **_hparams(name))(key, images, labels,
                                            **_model_inputs(name))


def _expected_labels(labels, aux):
  lam, index = aux["lam"], aux["index"]
  if lam.ndim == 2:  # n-way
    return jnp.einsum("bn,bnk->bk", lam, labels[index])
  return lam[:, None] * labels + (1 - lam[:, None]) * labels[index]


@pytest.mark.parametrize("name", mixers.names())
def test_signature_is_key_first_with_keyword_only_hyperparameters(name):
  fn = mixers.get(name)
  params = list(inspect.signature(fn).parameters.values())
  assert [p.name for p in params[:3]] == ["key", "images", "labels"]
  for p in params[:3]:
    assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
  for p in params[3:]:
    assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)


@pytest.mark.parametrize("name", MIXERS)
def test_jit_equals_eager_and_contract(name):
  images, labels = _batch()
  key = jax.random.key(1)
  out_eager = _call(name, key, images, labels)
  out_jit = jax.jit(lambda k, x, y: _call(name, k, x, y))(key, images, labels)
  chex.assert_trees_all_close(out_eager, out_jit, atol=1e-6, rtol=1e-6)

  mixed, mixed_labels, aux = out_jit
  chex.assert_shape(mixed, images.shape)
  assert mixed.dtype == images.dtype
  chex.assert_shape(mixed_labels, labels.shape)
  assert mixed_labels.dtype == labels.dtype
  assert aux["lam"].dtype == jnp.float32
  assert aux["index"].dtype == jnp.int32
  assert aux["lam"].shape[0] == B and aux["index"].shape[0] == B
  np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(mixed_labels, _expected_labels(labels, aux),
                             atol=1e-6)
  lam = np.asarray(aux["lam"])
  assert np.all((lam >= 0) & (lam <= 1))
  # Inputs are never modified (jax arrays are immutable; also check values).
  images2, labels2 = _batch()
  np.testing.assert_array_equal(images, images2)
  np.testing.assert_array_equal(labels, labels2)


@pytest.mark.parametrize("name", [n for n in MIXERS
                                  if n not in NO_PIXEL_PROVENANCE])
def test_pixel_provenance(name):
  images, labels = _batch()
  mixed, _, aux = _call(name, jax.random.key(2), images, labels)
  lam, index = aux["lam"], aux["index"]
  if lam.ndim == 2:  # n-way: a convex combination of the indexed images
    expected = jnp.einsum("bn,bnhwc->bhwc", lam, images[index])
  elif "mask" in aux:
    mask = aux["mask"]
    chex.assert_shape(mask, (B, H, W, 1))
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1
    expected = mask * images + (1 - mask) * images[index]
  else:
    expected = lam[:, None, None, None] * images + (
        1 - lam[:, None, None, None]) * images[index]
  np.testing.assert_allclose(mixed, expected, atol=1e-6)


@pytest.mark.parametrize("name", MIXERS)
def test_bfloat16_images_keep_dtype(name):
  images, labels = _batch(jnp.bfloat16)
  mixed, _, _ = _call(name, jax.random.key(3), images, labels)
  assert mixed.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", MIXERS)
def test_traced_once_across_calls(name):
  # chex counts traces per function source, across parametrizations.
  chex.clear_trace_counter()
  images, labels = _batch()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key, x, y):
    return _call(name, key, x, y)

  for seed in range(3):
    jax.block_until_ready(run(jax.random.key(seed), images, labels))


@pytest.mark.parametrize("name", MIXERS)
def test_per_device_equals_mixer_applied_shard_by_shard(name):
  n_dev = 8
  assert jax.device_count() >= n_dev
  mesh = jax.make_mesh((n_dev,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  per_shard = 4
  kx, ky = jax.random.split(jax.random.key(5))
  images = jax.random.uniform(kx, (n_dev * per_shard, H, W, C))
  labels = mixers.one_hot(jax.random.randint(ky, (n_dev * per_shard,), 0, K), K)
  hp = _hparams(name)
  # Per-sample inputs (attentive mixing's score maps) travel with the batch.
  batch_inputs = {}
  if name == "attentivemix":
    batch_inputs = {"scores": jax.random.uniform(
        jax.random.key(7), (n_dev * per_shard, 4, 4))}
    hp = {}
  batch_inputs.update(_model_inputs(name, n_dev * per_shard))
  mixer = mixers.get(name, **hp)
  key = jax.random.key(11)
  mixed, mixed_labels, aux = jax.jit(mixers.per_device(mixer, mesh))(
      key, images, labels, **batch_inputs)
  for s in range(n_dev):
    sl = slice(s * per_shard, (s + 1) * per_shard)
    ref = mixer(jax.random.fold_in(key, s), images[sl], labels[sl],
                **{k: v[sl] for k, v in batch_inputs.items()})
    np.testing.assert_allclose(mixed[sl], ref[0], atol=1e-6)
    np.testing.assert_allclose(mixed_labels[sl], ref[1], atol=1e-6)
    np.testing.assert_allclose(aux["lam"][sl], ref[2]["lam"], atol=1e-6)
    np.testing.assert_array_equal(aux["index"][sl],
                                  ref[2]["index"] + s * per_shard)
  # Global indices keep the label identity.
  np.testing.assert_allclose(mixed_labels, _expected_labels(labels, aux),
                             atol=1e-6)
