"""Model-aware mixers in the static method: the registry (``needs``,
``saliency_fn``), the inputs the step computes, one trace, 8 devices == 1."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from automix_jax import mixers
from automix_jax import models
from automix_jax.mixers import _common as C
from automix_jax.mixers import _compose
from automix_jax.train import losses
from automix_jax.train import static
from tests.train import test_sharded
from tests.train.test_static_step import tiny_batch
from tests.train.test_static_step import tiny_config

pytestmark = pytest.mark.usefixtures("fast_compile")


def _toy_saliency_fn(grad):
  """A reduction nothing else uses: sum of squares over channels."""
  return jnp.sum(grad * grad, axis=-1)


def _toy_saliency_mix(key, images, labels, *, saliency, scale=1.0):
  """Adds the saliency it was given to every channel (labels untouched)."""
  del key
  if saliency.shape != images.shape[:3]:
    raise ValueError(f"`saliency` must be [B, H, W] = {images.shape[:3]}; got "
                     f"{saliency.shape}.")
  b = images.shape[0]
  aux = {"lam": jnp.ones((b,), jnp.float32),
         "index": jnp.arange(b, dtype=jnp.int32)}
  return images + scale * saliency[..., None], labels, aux


def _toy_cam_mix(key, images, labels, *, cam):
  """λ_i = the CAM mass of sample i's top-left quarter; mixup with roll."""
  del key
  b = images.shape[0]
  cam = cam - cam.min(axis=(1, 2), keepdims=True)
  h, w = cam.shape[1:]
  lam = cam[:, :h // 2, :w // 2].sum((1, 2)) / (cam.sum((1, 2)) + 1e-8)
  index = jnp.roll(jnp.arange(b, dtype=jnp.int32), 1)
  mixed = C.blend(images, images[index], C.per_sample(lam, 4))
  return mixed, C.mix_labels(labels, lam, index), {"lam": lam, "index": index}


def _toy_feature_mix(key, images, labels, *, stage=2, lam=0.7):
  """ManifoldMix-like at a fixed stage with a rolled partner."""
  del key
  b = images.shape[0]
  index = jnp.roll(jnp.arange(b, dtype=jnp.int32), 1)
  lam_b = jnp.full((b,), lam, jnp.float32)

  def feature_mix(s, x):
    return C.blend(x, x[index], jnp.float32(lam)) if s == stage else x
  return feature_mix, C.mix_labels(labels, lam_b, index), {
      "lam": lam_b, "index": index}


@pytest.fixture
def toy_mixers(monkeypatch):
  """Registers the toy mixers in a copy of the registry (restored after)."""
  for name in ("_REGISTRY", "_CHECKS", "_NEEDS", "_SALIENCY_FNS"):
    monkeypatch.setattr(_compose, name, dict(getattr(_compose, name)))
  mixers.register("toy_saliency", needs=("saliency",),
                  saliency_fn=_toy_saliency_fn)(_toy_saliency_mix)
  mixers.register("toy_cam", needs=("cam",))(_toy_cam_mix)
  mixers.register("toy_feature", needs=("feature_mix",))(_toy_feature_mix)


# ---------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------


# Every mixer registered before the model-aware ones existed.
_STATIC = ("none", "mixup", "cutmix", "fmix", "resizemix", "saliencymix",
           "gridmix", "smoothmix", "attentivemix", "maskmix", "nway_mixup")


def test_static_mixers_need_nothing():
  for name in _STATIC:
    assert mixers.needs(name) == (), name
  assert mixers.needs("snapmix") == ("cam",)
  assert mixers.needs("manifoldmix") == mixers.needs("alignmix") == (
      "feature_mix",)


def test_registry_reports_needs_and_binds_hyperparameters_only(toy_mixers):
  assert set(_STATIC) <= set(mixers.names())
  assert mixers.needs("toy_saliency") == ("saliency",)
  assert mixers.saliency_fn("toy_saliency") is _toy_saliency_fn
  assert mixers.needs("toy_feature") == ("feature_mix",)
  assert mixers.hyperparameter_names("toy_saliency") == ("scale",)
  assert mixers.hyperparameter_names("toy_cam") == ()
  with pytest.raises(ValueError, match="`saliency` is a model input"):
    mixers.get("toy_saliency", saliency=jnp.zeros((2, 4, 4)))
  with pytest.raises(ValueError, match="does not need \"saliency\""):
    mixers.saliency_fn("cutmix")


def test_register_validates_needs(toy_mixers):
  reg = mixers.register
  with pytest.raises(ValueError, match="unknown kind 'attention'"):
    reg("bad1", needs=("attention",))
  with pytest.raises(ValueError, match="must be a tuple of kinds"):
    reg("bad2", needs="cam")
  with pytest.raises(ValueError, match="`saliency_fn`.*must be given exactly"):
    reg("bad3", needs=("saliency",))
  with pytest.raises(ValueError, match="`saliency_fn`.*must be given exactly"):
    reg("bad4", saliency_fn=_toy_saliency_fn)
  with pytest.raises(ValueError, match="keyword-only argument `cam`"):
    reg("bad5", needs=("cam",))(mixers.mixup)


def test_switch_refuses_model_aware_mixers(toy_mixers):
  images = jnp.zeros((4, 8, 8, 3))
  labels = mixers.one_hot(jnp.arange(4) % 2, 2)
  for entry in ("toy_cam", mixers.get("toy_saliency", scale=2.0)):
    with pytest.raises(ValueError, match="is model-aware"):
      mixers.switch(jax.random.key(0), images, labels,
                    mixers=["mixup", entry])


def test_config_refuses_model_aware_in_switch_and_per_device(toy_mixers):
  c = tiny_config(**{"switch.enabled": True})
  with c.unlocked():
    c.switch.mixers = ["mixup", "toy_cam"]
    c.switch.kwargs = [{}, {}]
  with pytest.raises(ValueError, match=r"`config.switch.mixers\[1\]`.*model-aware"):
    static.StaticMixing.check_config(c)
  for key in ("per_device_mixing", "per_device_batch_stats"):
    c = _cfg("toy_feature", **{key: True})
    with pytest.raises(ValueError, match=f"`config.{key}=True` is not supported"):
      static.StaticMixing.check_config(c)


# ---------------------------------------------------------------------------
# The step computes the inputs as documented.
# ---------------------------------------------------------------------------


def _cfg(name, **overrides):
  """The tiny config with mixer ``name`` and no mixer keywords."""
  return tiny_config(**{"mixer.name": name,
                        "mixer.kwargs": ml_collections.ConfigDict(),
                        **overrides})


def _method(config):
  return static.StaticMixing(config, num_classes=10, steps_per_epoch=5)


def _init(method):
  return method.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))


def _hand_step(method, state, batch, mixed, targets, *, batch_stats=None,
               feature_mix=None):
  """The static step's update written out for given mixed inputs/targets."""
  k_drop = jax.random.split(jax.random.fold_in(jax.random.key(7), 0))[1]

  def loss_fn(params):
    out, stats = method.model.apply(
        {"params": params,
         "batch_stats": state.batch_stats if batch_stats is None
         else batch_stats},
        mixed, train=True, mutable=["batch_stats"], rngs={"dropout": k_drop},
        feature_mix=feature_mix)
    return losses.soft_cross_entropy(out["logits"]["one"], targets), stats
  @jax.jit
  def update(state):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, _ = method.tx.update(grads, state.opt_state, state.params)
    return (loss, optax.apply_updates(state.params, updates),
            stats["batch_stats"])
  return update(state)


def _check_step(method, state, batch, want):
  """The jitted step equals ``want``; a second step does not retrace."""
  loss, params, stats = want
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1))
  new, metrics = step(state, batch, jax.random.key(7))
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  chex.assert_trees_all_close(new.params, params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(new.batch_stats, stats, rtol=1e-5, atol=1e-6)
  shape = batch["image"].shape
  batch = tiny_batch(seed=1, batch=shape[0], size=shape[1])
  _, metrics = step(new, batch, jax.random.key(7))
  assert bool(metrics["finite"])
  chex.clear_trace_counter()


def test_saliency_mixer_receives_the_input_gradient(toy_mixers):
  method = _method(_cfg("toy_saliency"))
  state, batch = _init(method), tiny_batch()
  images = batch["image"]
  hot = jax.nn.one_hot(batch["label"], 10)
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def clean_loss(x):  # Eval mode: running statistics (PuzzleMix's code).
    logits = method.model.apply(variables, x, train=False)["logits"]["one"]
    return -jnp.mean(jnp.sum(hot * jax.nn.log_softmax(logits), -1))
  grad = jax.jit(jax.grad(clean_loss))(images)
  assert float(jnp.abs(grad).max()) > 0
  saliency = jnp.sum(grad ** 2, -1)
  want = _hand_step(method, state, batch, images + saliency[..., None], hot)
  _check_step(method, state, batch, want)


def test_cam_mixer_receives_the_own_class_map(toy_mixers):
  method = _method(_cfg("toy_cam"))
  # 16 px: a 2x2 last stage, so the toy's quarter of the map is a real part.
  state, batch = _init(method), tiny_batch(size=16)
  hot = jax.nn.one_hot(batch["label"], 10)
  # The clean train-mode forward, statistics kept (SnapMix's code).
  k_cam = jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 0), 3)
  out, upd = method.model.apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      batch["image"], train=True, mutable=["batch_stats"],
      rngs={"dropout": k_cam})
  cam = models.class_activation_map(out, state.params, "one", batch["label"])
  mixed, targets, aux = _toy_cam_mix(None, batch["image"], hot, cam=cam)
  assert float(jnp.std(aux["lam"])) > 0  # The CAM decides something.
  want = _hand_step(method, state, batch, mixed, targets,
                    batch_stats=upd["batch_stats"])
  _check_step(method, state, batch, want)


def test_feature_mix_step_equals_the_explicit_forward(toy_mixers):
  method = _method(_cfg("toy_feature"))
  state, batch = _init(method), tiny_batch()
  hot = jax.nn.one_hot(batch["label"], 10)
  fm, targets, _ = _toy_feature_mix(None, batch["image"], hot)
  want = _hand_step(method, state, batch, batch["image"], targets,
                    feature_mix=fm)
  _check_step(method, state, batch, want)
  # And it is not the unmixed step.
  plain = _hand_step(method, state, batch, batch["image"], targets)
  assert abs(float(plain[0]) - float(want[0])) > 1e-4


def test_8_devices_match_1_device(toy_mixers):
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)}
             for _ in range(2)]
  key = jax.random.key(3)
  # (The CAM path is a plain clean forward, covered by the saliency one.)
  for name, kwargs in (("toy_saliency", {"scale": 10.0}), ("toy_feature", {})):
    c = test_sharded._config()
    with c.unlocked():
      c.mixer.name = name
      c.mixer.kwargs = ml_collections.ConfigDict(kwargs)
    with jax.default_matmul_precision("highest"):
      loss1, state1 = test_sharded._run(jax.devices()[:1], c, batches, key)
      loss8, state8 = test_sharded._run(jax.devices()[:8], c, batches, key)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5, err_msg=name)
    chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-5,
                                atol=1e-5)
    chex.assert_trees_all_close(state8.batch_stats, state1.batch_stats,
                                rtol=1e-5, atol=1e-5)


def test_saliency_mixer_per_device(toy_mixers):
  """``per_device_mixing`` splits the saliency over the devices."""
  c = _cfg("toy_saliency", per_device_mixing=True)
  from automix_jax import sharding
  mesh = sharding.make_mesh(jax.devices()[:4])
  method = static.StaticMixing(c, num_classes=10, steps_per_epoch=5, mesh=mesh)
  state, batch = _init(method), tiny_batch()
  state, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(0))
  assert bool(metrics["finite"])
