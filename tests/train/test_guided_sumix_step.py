"""GuidedMixup and SUMix inside the static method's one jitted step: the step
equals the update written out by hand, traces once, and 8 devices == 1."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from automix_jax import mixers
from automix_jax.train import static
from automix_jax.train import sumix
from tests.train import test_sharded
from tests.train.test_model_aware import _cfg
from tests.train.test_model_aware import _check_step
from tests.train.test_model_aware import _hand_step
from tests.train.test_model_aware import _init
from tests.train.test_model_aware import _method
from tests.train.test_static_step import tiny_batch

pytestmark = pytest.mark.usefixtures("fast_compile")

# The step's keys for key(7) at step 0 (train_step: fold_in, then split).
K_MIX, K_DROP = jax.random.split(jax.random.fold_in(jax.random.key(7), 0))


def test_guidedmixup_step_mixes_with_its_saliency_of_the_input_gradient():
  method = _method(_cfg("guidedmixup"))
  state, batch = _init(method), tiny_batch()
  hot = jax.nn.one_hot(batch["label"], 10)
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def clean_loss(x):  # eval mode, as the plumbing documents
    logits = method.model.apply(variables, x, train=False)["logits"]["one"]
    return -jnp.mean(jnp.sum(hot * jax.nn.log_softmax(logits), -1))
  saliency = mixers.guided_saliency(jax.jit(jax.grad(clean_loss))(
      batch["image"]))
  mixed, targets, aux = mixers.guidedmixup(K_MIX, batch["image"], hot,
                                           saliency=saliency)
  assert float(jnp.std(aux["lam"])) > 0      # the saliency decides the λ
  _check_step(method, state, batch,
              _hand_step(method, state, batch, mixed, targets))


def test_sumix_step_equals_the_two_forward_loss_by_hand():
  config = _cfg("cutmix", **{
      "mixer.kwargs": ml_collections.ConfigDict({"alpha": 1.0}),
      "label_mix.name": "sumix",
      "label_mix.kwargs": ml_collections.ConfigDict({"gamma": 0.5})})
  method = _method(config)
  state, batch = _init(method), tiny_batch()
  assert "uncertain" in state.params["heads"]
  hot = jax.nn.one_hot(batch["label"], 10)
  mixed, _, aux = mixers.get("cutmix", alpha=1.0)(K_MIX, batch["image"], hot)

  def apply(params, stats, x, rng):
    out, upd = method.model.apply({"params": params, "batch_stats": stats}, x,
                                  train=True, mutable=["batch_stats"],
                                  rngs={"dropout": rng})
    return out, upd["batch_stats"]

  def loss_fn(params):
    clean, stats = apply(params, state.batch_stats, batch["image"],
                         jax.random.fold_in(K_DROP, 1))
    out, stats = apply(params, stats, mixed, K_DROP)
    loss, _ = sumix.sumix_loss(
        clean["logits"]["one"], out["logits"]["one"],
        clean["logits"]["uncertain"], out["logits"]["uncertain"],
        batch["label"], hot, aux["lam"], aux["index"], gamma=0.5)
    return loss, stats

  @jax.jit
  def update(state):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, _ = method.tx.update(grads, state.opt_state, state.params)
    return loss, optax.apply_updates(state.params, updates), stats, grads
  loss, params, stats, grads = update(state)
  # The uncertainty head is trained (by the regulariser alone).
  assert float(jnp.abs(grads["heads"]["uncertain"]["kernel"]).max()) > 0
  new, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(7))
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  chex.assert_trees_all_close(new.params, params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(new.batch_stats, stats, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      metrics["loss"], metrics["sumix_ce"] + 0.5 * metrics["sumix_reg"],
      rtol=1e-5)


def test_config_args_build_both():
  from configs import cifar10_cpu
  c = cifar10_cpu.get_config("mixer=guidedmixup,label_mix=sumix")
  assert c.mixer.name == "guidedmixup" and c.mixer.kwargs.mix_prob == 0.8
  assert c.label_mix.name == "sumix" and c.label_mix.kwargs.gamma == 0.5
  static.StaticMixing.check_config(c)
  with pytest.raises(ValueError, match="unknown label_mix"):
    cifar10_cpu.get_config("label_mix=sumixx")


def test_8_devices_match_1_device():
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)}
             for _ in range(2)]
  key = jax.random.key(3)
  c = test_sharded._config()
  with c.unlocked():
    c.mixer.name = "guidedmixup"
    c.mixer.kwargs = ml_collections.ConfigDict({"mix_prob": 1.0})
    c.label_mix.name = "sumix"
  test_sharded.assert_one_device_equals_eight(c, batches, key)
