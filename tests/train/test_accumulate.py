"""Gradient accumulation (config.grad_accum_steps) in the static method.

Defining properties: without BatchNorm (ViT) the accumulated step equals the
large-batch step; with BatchNorm each micro-batch is normalised on its own and
the running statistics are chained over the micro-batches (re-derived here with
explicit forward passes); the mixing happens on the whole batch; jitted once;
8 devices equal 1.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from automix_jax import mixers
from automix_jax import sharding
from automix_jax.train import accumulate
from automix_jax.train import loop
from automix_jax.train import losses
from automix_jax.train import static
from configs import cifar10_cpu
from tests.train import test_sharded
from tests.train import test_static_step

pytestmark = pytest.mark.usefixtures("fast_compile")

B = 8


def _config(model="cifar_resnet18", accum=1, **overrides):
  """test_static_step's tiny ResNet-10, or a one-block 16-d ViT."""
  if model == "vit_tiny":
    overrides = {"model.width": 1.0, "model.kwargs": ml_collections.ConfigDict(
        {"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 4}),
                 **overrides}
  return test_static_step.tiny_config(**{
      "grad_accum_steps": accum, "optimizer.lr": 0.1, "model.name": model,
      **overrides})


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.normal(size=(B, 8, 8, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, B), jnp.int32)}


@functools.lru_cache
def _cached_step(model, accum):
  return _one_step(_config(model, accum=accum))


def _one_step(config, key=jax.random.key(0)):
  method = static.StaticMixing(config, num_classes=10, steps_per_epoch=2,
                               mesh=sharding.make_mesh(jax.devices()[:1]))
  state = jax.jit(method.init)(jax.random.key(1), _batch()["image"][:2])
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1))
  new, metrics = step(state, _batch(), key)
  new2, _ = step(new, _batch(1), key)  # same shapes: no retrace
  return method, state, jax.device_get(new), jax.device_get(metrics)


def test_split_takes_strided_rows():
  x = jnp.arange(8)
  np.testing.assert_array_equal(accumulate.split(x, 2),
                                [[0, 2, 4, 6], [1, 3, 5, 7]])
  with pytest.raises(ValueError, match="does not split into 3"):
    accumulate.split(x, 3)


@pytest.mark.parametrize("accum", [2, 4])
def test_vit_accumulated_step_equals_the_large_batch_step(accum):
  with jax.default_matmul_precision("highest"):
    _, state0, big, m_big = _cached_step("vit_tiny", 1)
    _, _, acc, m_acc = _cached_step("vit_tiny", accum)
  assert acc.batch_stats == {} == big.batch_stats
  np.testing.assert_allclose(m_acc["loss"], m_big["loss"], rtol=1e-6)
  np.testing.assert_allclose(m_acc["grad_norm"], m_big["grad_norm"],
                             rtol=1e-5)
  np.testing.assert_allclose(m_acc["lam_mean"], m_big["lam_mean"], rtol=0)
  chex.assert_trees_all_close(acc.params, big.params, rtol=1e-5, atol=1e-7)
  # The update is not negligible, so the comparison can fail.
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(big.params), jax.tree.leaves(jax.device_get(
          state0.params))))
  assert moved > 1e-3


def test_batchnorm_micro_batches_and_chained_running_stats():
  """k=2 on a BN ResNet: gradient = mean of the two micro-batch gradients,
  running stats = two chained train-mode passes (rows 0::2 then 1::2) on the
  mixed batch, not one pass over the whole batch."""
  key = jax.random.key(0)
  method, state0, acc, _ = _cached_step("cifar_resnet18", 2)
  # The mixed batch: the step's own draw on the whole batch.
  k_mix, _ = jax.random.split(jax.random.fold_in(key, 0))
  batch = _batch()
  mixed, targets, _ = method.mixer(k_mix, batch["image"],
                                   mixers.one_hot(batch["label"], 10))
  model = method.model

  def loss(params, stats, x, y):
    out, upd = model.apply({"params": params, "batch_stats": stats}, x,
                           train=True, mutable=["batch_stats"])
    return losses.soft_cross_entropy(out["logits"]["one"], y), upd[
        "batch_stats"]

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  stats, grads = state0.batch_stats, []
  for i in range(2):
    (_, stats), g = grad_fn(state0.params, stats, mixed[i::2], targets[i::2])
    grads.append(g)
  mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  upd, _ = jax.jit(method.tx.update)(mean_grad, state0.opt_state,
                                     state0.params)
  want_params = optax.apply_updates(state0.params, upd)
  chex.assert_trees_all_close(acc.params, want_params, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(acc.batch_stats, stats, rtol=1e-5, atol=1e-6)
  # One pass over the whole batch (the large-batch step) gives other stats.
  _, whole = jax.jit(functools.partial(model.apply, train=True,
                                       mutable=["batch_stats"]))(
      {"params": state0.params, "batch_stats": state0.batch_stats}, mixed)
  differs = jax.tree.map(lambda a, b: not np.allclose(a, b, atol=1e-5),
                         acc.batch_stats, whole["batch_stats"])
  assert all(jax.tree.leaves(differs))


def test_ema_forward_statistics_use_the_same_micro_batches():
  config = _config(accum=2, **{"ema.enabled": True, "ema.momentum": 0.5})
  key = jax.random.key(0)
  method, state0, acc, _ = _one_step(config, key)
  images = _batch()["image"]
  apply = jax.jit(functools.partial(method.model.apply, train=True,
                                    mutable=["batch_stats"]))
  stats = state0.ema_batch_stats
  for i in range(2):
    _, upd = apply({"params": acc.ema_params, "batch_stats": stats},
                   images[i::2])
    stats = upd["batch_stats"]
  chex.assert_trees_all_close(acc.ema_batch_stats, stats, rtol=1e-5,
                              atol=1e-6)


def test_8_devices_match_1_device_with_accumulation():
  c = cifar10_cpu.get_config("mixer=mixup")
  c.batch_size = 16
  c.grad_accum_steps = 2
  c.model.width = 1 / 16
  c.model.kwargs = ml_collections.ConfigDict({"stage_sizes": (1, 1, 1, 1)})
  c.mixer.kwargs = ml_collections.ConfigDict(
      {"alpha": 1.0, "partner": "roll", "lam_scope": "batch"})
  c.lock()
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)}]
  key = jax.random.key(3)
  test_sharded.assert_one_device_equals_eight(c, batches, key)


def test_bad_grad_accum_configs_raise_before_compute():
  with pytest.raises(ValueError, match=r"grad_accum_steps.*positive int"):
    accumulate.check_config(_config(accum=0))
  with pytest.raises(ValueError, match=r"grad_accum_steps`=3 must divide"):
    loop.check_config(_config(accum=3), files=False)
  mesh = sharding.make_mesh(jax.devices()[:8])
  c = _config(accum=2, batch_size=8)  # 1 row per device, 2 micro-batches
  with pytest.raises(ValueError, match=r"each device's share.*divisible by 16"):
    accumulate.check_config(c, mesh=mesh)
  from configs.automix import cifar10_cpu as automix_cpu
  learned = automix_cpu.get_config()
  learned.grad_accum_steps = 2
  with pytest.raises(ValueError, match=r"grad_accum_steps.*method='static'"):
    loop.check_config(learned, files=False)
