"""Pieces shared by the AutoMix and AdAutoMix method tests.

Tiny shapes: 1/32-width CIFAR ResNet-18 on 16x16 images (stage-3 features 4x4,
upsampled x4), batch 8, 4 classes, T = 20 iterations (momentum constant for
t < 2, cosine after).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from automix_jax import sharding
from automix_jax.train import ema as ema_lib

B, HW, K = 8, 16, 4
STEPS_PER_EPOCH = 10


def tiny(config, block_name: str, block: dict):
  """The CPU config shrunk for tests, with the reference's EMA momentum."""
  config.num_epochs = 2
  config.batch_size = B
  config.model.width = 1 / 32
  config.ema.momentum, config.ema.end_momentum = 0.999, 0.999999
  for k, v in block.items():
    config[block_name][k] = v
  return config


def make_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.normal(size=(B, HW, HW, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, K, B), jnp.int32)}


def setup(method_cls, config):
  """``(method, initial state, batch)``."""
  method = method_cls(config, num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
  batch = make_batch()
  state = method.init(jax.random.key(0), batch["image"][:2])
  return method, state, batch


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def run_sharded(method, state, batch, steps=3):
  """``steps`` jitted steps on 8 devices (traced once): states and metrics."""
  mesh = sharding.make_mesh(jax.devices()[:8])
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1))
  st = sharding.replicate(state, mesh)
  sb = sharding.shard_batch(batch, mesh)
  key = sharding.replicate(jax.random.key(1), mesh)
  states, metrics = [state], []
  for _ in range(steps):
    st, m = step(st, sb, key)
    states.append(jax.device_get(st))
    metrics.append(jax.device_get(m))
  return states, metrics


def assert_ema_is_exact(method, states, metrics):
  """teacher_{t+1} == m(t) teacher_t + (1 - m(t)) online_{t+1} to 1 ulp, with
  m(t) from the CosineScheduleHook; returns the reference momenta."""
  ref = ema_lib.cosine_momentum_np(np.arange(len(metrics)),
                                   STEPS_PER_EPOCH * 2)
  np.testing.assert_allclose([float(m["ema_momentum"]) for m in metrics], ref,
                             rtol=1e-7)
  for t in range(len(metrics)):
    m, om = (np.float32(v) for v in method.momentum_fn(t))
    want = jax.tree.map(lambda k, q: k * m + q * om, states[t].ema_params,
                        states[t + 1].params["classifier"])
    for g, w in zip(leaves(states[t + 1].ema_params), leaves(want)):
      np.testing.assert_array_max_ulp(g, w.astype(np.float32), maxulp=1)
  return ref
