"""The jitted step on 8 (fake CPU) devices equals the 1-device step."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from automix_jax import sharding
from automix_jax.train import static
from configs import cifar10_cpu


pytestmark = pytest.mark.usefixtures("fast_compile")


def _config(**mixer_kwargs):
  c = cifar10_cpu.get_config("mixer=mixup,ema")
  c.batch_size = 16
  c.model.width = 1 / 16
  c.model.kwargs = ml_collections.ConfigDict({"stage_sizes": (1, 1, 1, 1)})
  # Batch-scope λ and a deterministic partner: the mixing is the same
  # function of the global batch whatever the device count.
  c.mixer.kwargs = ml_collections.ConfigDict(
      {"alpha": 1.0, "partner": "roll", "lam_scope": "batch", **mixer_kwargs})
  c.lock()
  return c


def _run(devices, config, batches, key, size=8):
  mesh = sharding.make_mesh(devices)
  method = static.StaticMixing(config, num_classes=10, steps_per_epoch=5,
                               mesh=mesh)
  sample = jnp.zeros((2, size, size, 3))
  abstract = jax.eval_shape(method.init, key, sample)
  state_sh = sharding.state_shardings(abstract, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)
  state = jax.jit(method.init, out_shardings=state_sh)(key, sample)
  step = jax.jit(method.train_step, in_shardings=(state_sh, batch_sh, repl),
                 out_shardings=(state_sh, repl), donate_argnums=0)
  losses = []
  for b in batches:
    b = sharding.shard_batch(b, mesh)
    state, m = step(state, b, key)
    losses.append(float(m["loss"]))
  assert step._cache_size() == 1, "train_step compiled more than once"
  # The donated state is consumed; the output keeps its replicated sharding.
  assert state.params["heads"]["one"]["kernel"].sharding.is_fully_replicated
  return losses, jax.device_get(state)


def assert_one_device_equals_eight(config, batches, key):
  """Runs ``batches`` on 1 and on 8 devices (highest matmul precision),
  checks loss, parameters and BatchNorm statistics agree (rtol 1e-5), and
  returns the two final states ``(state1, state8)``."""
  with jax.default_matmul_precision("highest"):
    loss1, state1 = _run(jax.devices()[:1], config, batches, key)
    loss8, state8 = _run(jax.devices()[:8], config, batches, key)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-5,
                              atol=1e-5)
  chex.assert_trees_all_close(state8.batch_stats, state1.batch_stats,
                              rtol=1e-5, atol=1e-5)
  return state1, state8


def test_8_devices_match_1_device():
  assert jax.device_count() >= 8, "tests/conftest.py sets 8 CPU devices"
  config = _config()
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)}
             for _ in range(2)]
  key = jax.random.key(3)
  state1, state8 = assert_one_device_equals_eight(config, batches, key)
  chex.assert_trees_all_close(state8.ema_params, state1.ema_params,
                              rtol=1e-5, atol=1e-5)
  assert int(state8.step) == 2


def test_batch_must_divide_the_devices():
  mesh = sharding.make_mesh(jax.devices()[:8])
  with pytest.raises(ValueError, match="12 is not divisible by the 8 devices"):
    sharding.check_batch_divisible(12, mesh)
  assert sharding.check_batch_divisible(16, mesh) == 2
