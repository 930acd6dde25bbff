"""Static-mixing train step, optimizer (vs torch), lr schedule and EMA schedule."""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from automix_jax import sharding
from automix_jax.train import ema as ema_lib
from automix_jax.train import losses
from automix_jax.train import optim
from configs import cifar10_cpu


pytestmark = pytest.mark.usefixtures("fast_compile")


def tiny_config(**overrides):
  """cifar10_cpu config shrunk to a 1/16-width ResNet-10 on 8x8 images."""
  c = cifar10_cpu.get_config()
  c.num_epochs = 2
  c.batch_size = 8
  c.model.width = 1 / 16
  c.model.kwargs = ml_collections.ConfigDict({"stage_sizes": (1, 1, 1, 1)})
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  c.lock()
  return c


def tiny_batch(seed=0, batch=8, size=8, num_classes=10):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.normal(size=(batch, size, size, 3)),
                               jnp.float32),
          "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)}


# ---------------------------------------------------------------------------
# Optimizer and schedules.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch_sgd_with_weight_decay_and_momentum(nesterov):
  torch = pytest.importorskip("torch")
  a = np.array([[3.0, 0.5], [0.5, 1.0]])
  b = np.array([1.0, -2.0])
  w0 = np.array([0.7, -0.3])
  lr, mom, wd = 0.1, 0.9, 0.05  # large wd so the coupling shows.

  w_t = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
  opt_t = torch.optim.SGD([w_t], lr=lr, momentum=mom, weight_decay=wd,
                          nesterov=nesterov)
  a_t, b_t = torch.tensor(a), torch.tensor(b)
  for _ in range(3):
    opt_t.zero_grad()
    loss = 0.5 * w_t @ a_t @ w_t - b_t @ w_t
    loss.backward()
    opt_t.step()

  tx, _ = optim.make_optimizer(
      dict(name="sgd", lr=lr, momentum=mom, nesterov=nesterov,
           weight_decay=wd, schedule="constant"),
      steps_per_epoch=1, num_epochs=3)
  w = jnp.asarray(w0, jnp.float32)
  st = tx.init(w)
  grad = jax.grad(lambda w: 0.5 * w @ jnp.asarray(a, jnp.float32) @ w
                  - jnp.asarray(b, jnp.float32) @ w)
  for _ in range(3):
    upd, st = tx.update(grad(w), st, w)
    w = optax.apply_updates(w, upd)
  np.testing.assert_allclose(np.asarray(w), w_t.detach().numpy(), rtol=1e-6,
                             atol=1e-7)
  # Sanity: decoupled decay would differ, so the test can fail.
  assert not np.allclose(np.asarray(w), w0)


def test_cosine_by_epoch_is_constant_within_epochs_and_hits_the_floor():
  spe, epochs, lr, floor = 10, 4, 0.1, 0.01
  sched = optim.lr_schedule(dict(lr=lr, min_lr=floor, schedule="cosine",
                                 by_epoch=True), steps_per_epoch=spe,
                            num_epochs=epochs)
  got = np.asarray(jax.vmap(sched)(jnp.arange(spe * epochs)))
  for e in range(epochs):
    want = floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * e / epochs))
    np.testing.assert_allclose(got[e * spe:(e + 1) * spe], want, rtol=1e-6)
  np.testing.assert_allclose(float(sched(spe * epochs)), floor, rtol=1e-6)
  per_step = optim.lr_schedule(dict(lr=lr, min_lr=floor, by_epoch=False),
                               steps_per_epoch=spe, num_epochs=epochs)
  assert float(per_step(5)) < float(sched(5)) == pytest.approx(lr)


def test_linear_warmup_mmcv_style():
  sched = optim.lr_schedule(dict(lr=0.1, schedule="constant", warmup_epochs=1,
                                 warmup_start_lr=0.01), steps_per_epoch=10,
                            num_epochs=2)
  np.testing.assert_allclose(float(sched(0)), 0.01, rtol=1e-6)
  np.testing.assert_allclose(float(sched(5)), 0.1 * (0.1 + 0.9 * 0.5),
                             rtol=1e-6)
  np.testing.assert_allclose(float(sched(10)), 0.1, rtol=1e-6)


def test_bad_optimizer_config_raises():
  with pytest.raises(ValueError, match="optimizer.name"):
    optim.make_optimizer(dict(name="lamb"), steps_per_epoch=1, num_epochs=1)
  with pytest.raises(ValueError, match="schedule"):
    optim.lr_schedule(dict(schedule="step"), steps_per_epoch=1, num_epochs=1)


# ---------------------------------------------------------------------------
# EMA.
# ---------------------------------------------------------------------------


def test_cosine_ema_schedule_matches_the_hook():
  total = 500 * 800  # CIFAR R-18, 800 epochs of 500 iterations.
  sched = jax.jit(ema_lib.cosine(total, base=0.999, end=0.999999))
  ts = np.array([0, 1, total // 10 - 1, total // 10, total // 4, total // 2,
                 total - 1, total])
  m, one_minus = (np.asarray(x, np.float64) for x in jax.vmap(sched)(ts))
  ref = ema_lib.cosine_momentum_np(ts, total)
  np.testing.assert_array_equal(m[:3], np.float32(0.999))
  # The hook's jump at t = 0.1T: cos(0.1 pi) argument, not a restart.
  np.testing.assert_allclose(m[3], 0.99902445, atol=5e-9)
  np.testing.assert_allclose(ref[3], 0.99902445, atol=5e-9)
  np.testing.assert_allclose(m[-1], np.float32(0.999999), atol=0)
  np.testing.assert_allclose(m, ref, atol=1e-7)
  # (1 - m) formed accurately: relative error ~1e-7, not the 1.3 % of
  # 1 - float32(0.999999).
  np.testing.assert_allclose(one_minus, 1.0 - ref, rtol=1e-6)
  naive = 1.0 - np.float32(0.999999).astype(np.float64)
  assert abs(naive / 1e-6 - 1) > 0.01  # the error this avoids is real.
  assert np.all(np.diff(m[3:]) >= 0)


def test_constant_ema_and_update():
  m, one_minus = ema_lib.constant(0.999999)(jnp.int32(7))
  np.testing.assert_allclose(float(one_minus), 1e-6, rtol=1e-7)
  k = {"w": jnp.ones(3)}
  q = {"w": jnp.full(3, 3.0)}
  out = ema_lib.ema_update(k, q, jnp.float32(0.75), jnp.float32(0.25))
  np.testing.assert_allclose(np.asarray(out["w"]), 1.5)
  with pytest.raises(ValueError, match="schedule"):
    ema_lib.from_config(dict(schedule="linear"), total_steps=10)


def test_soft_cross_entropy():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 1])
  hard = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])
  np.testing.assert_allclose(
      float(losses.soft_cross_entropy(logits, jax.nn.one_hot(labels, 3))),
      float(hard), rtol=1e-6)
  with pytest.raises(ValueError, match="targets"):
    losses.soft_cross_entropy(logits, jnp.ones((2, 4)))


# ---------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ema_run():
  """Builds a tiny static method with EMA and runs it 2 steps on 1 device."""
  from automix_jax.train import static
  config = tiny_config(**{"ema.enabled": True, "ema.schedule": "constant",
                          "ema.momentum": 0.9, "optimizer.lr": 0.05})
  mesh = sharding.make_mesh(jax.devices()[:1])
  method = static.StaticMixing(config, num_classes=10, steps_per_epoch=3,
                               mesh=mesh)
  key = jax.random.key(0)
  state0 = jax.jit(method.init)(key, tiny_batch()["image"][:2])
  init_params = jax.tree.map(np.asarray, state0.params)

  traced = []

  def counted(state, batch, key):
    traced.append(1)  # runs once per trace
    return method.train_step(state, batch, key)

  step = jax.jit(counted, donate_argnums=0)
  state, outs = state0, []
  for i in range(2):
    prev = jax.tree.map(np.asarray, state.ema_params)
    state, metrics = step(state, tiny_batch(seed=i), key)
    outs.append((prev, jax.device_get(metrics),
                 jax.tree.map(np.asarray, state.params),
                 jax.tree.map(np.asarray, state.ema_params)))
  return method, state, outs, traced, init_params


def test_static_step_runs_trains_and_compiles_once(ema_run):
  method, state, outs, traced, init_params = ema_run
  assert int(state.step) == 2
  assert len(traced) == 1, "train_step retraced"
  for _, metrics, _, _ in outs:
    assert set(metrics) >= {"loss", "grad_norm", "param_norm", "lr",
                            "lam_mean", "finite"}
    assert np.isfinite(metrics["loss"]) and metrics["finite"]
    assert 0.0 <= metrics["lam_mean"] <= 1.0
    np.testing.assert_allclose(metrics["lr"], 0.05, rtol=1e-6)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), init_params,
                         outs[-1][2])
  assert any(jax.tree.leaves(changed))
  assert method.reported_variant == "ema_one"
  assert set(method.eval_variants(state)) == {"online_one", "ema_one"}


def test_ema_follows_the_update_rule(ema_run):
  _, _, outs, _, _ = ema_run
  for prev_ema, metrics, params, new_ema in outs:
    np.testing.assert_allclose(metrics["ema_momentum"], 0.9, rtol=1e-7)
    want = jax.tree.map(lambda k, q: 0.9 * k + 0.1 * q, prev_ema, params)
    chex.assert_trees_all_close(new_ema, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", ["forward", "copy"])
def test_ema_batch_stats_rule(rule):
  """"forward": the EMA model's own train-mode pass on the clean batch with
  the updated EMA weights (as the learned teacher); "copy": online's stats."""
  from automix_jax.train import static
  config = tiny_config(**{"ema.enabled": True, "ema.schedule": "constant",
                          "ema.momentum": 0.5, "ema.batch_stats": rule,
                          "optimizer.lr": 0.05})
  method = static.StaticMixing(config, num_classes=10, steps_per_epoch=3,
                               mesh=sharding.make_mesh(jax.devices()[:1]))
  key = jax.random.key(0)
  state = jax.jit(method.init)(key, tiny_batch()["image"][:2])
  state, _ = jax.jit(method.train_step)(state, tiny_batch(), key)  # moves EMA
  batch = tiny_batch(seed=1)
  prev_stats = jax.tree.map(np.asarray, state.ema_batch_stats)
  new, _ = jax.jit(method.train_step)(state, batch, key)
  if rule == "copy":
    chex.assert_trees_all_equal(new.ema_batch_stats, new.batch_stats)
    return
  _, want = method.model.apply(
      {"params": new.ema_params, "batch_stats": prev_stats}, batch["image"],
      train=True, mutable=["batch_stats"])
  chex.assert_trees_all_close(new.ema_batch_stats, want["batch_stats"],
                              rtol=1e-5, atol=1e-6)
  # ... and they are not the online model's statistics.
  differs = jax.tree.map(lambda a, b: not np.allclose(a, b, atol=1e-6),
                         new.ema_batch_stats, new.batch_stats)
  assert any(jax.tree.leaves(differs))


def test_bad_method_config_raises_before_compute():
  from automix_jax.train import static
  with pytest.raises(ValueError, match="unknown mixer"):
    static.StaticMixing(tiny_config(**{"mixer.name": "mixupp"}),
                        num_classes=10, steps_per_epoch=2)
  with pytest.raises(ValueError, match="(?i)model"):
    static.StaticMixing(tiny_config(**{"model.name": "resnet_nope"}),
                        num_classes=10, steps_per_epoch=2)
  with pytest.raises(ValueError, match="label_smoothing"):
    static.StaticMixing(tiny_config(label_smoothing=1.5), num_classes=10,
                        steps_per_epoch=2)
  with pytest.raises(ValueError, match="ema.batch_stats"):
    static.StaticMixing(tiny_config(**{"ema.batch_stats": "average"}),
                        num_classes=10, steps_per_epoch=2)
