"""Launch resolution, pre-emption watcher and per-device BatchNorm (in-process)."""

import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import checkpoint
from automix_jax import multihost
from automix_jax.train import static


@pytest.mark.parametrize("env,source", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4",
      "JAX_PROCESS_ID": "3"}, "JAX_* variables"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1",
      "JAX_PROCESS_ID": "0"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "SLURM"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_NTASKS": "4"}, None),  # not inside a job allocation
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "TPU pod slice"),
    ({"TPU_WORKER_HOSTNAMES": "a"}, None),
])
def test_resolve_launch(env, source):
  spec = multihost.resolve_launch(env)
  assert (spec.source if spec else None) == source
  if source == "JAX_* variables":
    assert (spec.coordinator_address, spec.num_processes,
            spec.process_id) == ("10.0.0.2:1234", 4, 3)
  elif spec is not None:  # jax's cluster detection fills the addresses in
    assert spec.coordinator_address is None


@pytest.mark.parametrize("env,message", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "JAX_COORDINATOR_ADDRESS is not set"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1"},
     "JAX_NUM_PROCESSES, JAX_PROCESS_ID are not set"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "-1"}, r"must lie in \[0, JAX_NUM_PROCESSES=2\)"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two",
      "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES='two' must be an integer"),
    ({"JAX_COORDINATOR_ADDRESS": "h:99999", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "0"}, "must be 'host:port'"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "0",
      "JAX_PROCESS_ID": "0"}, "must be >= 1"),
])
def test_inconsistent_variables_raise_naming_them(env, message):
  with pytest.raises(multihost.LaunchError, match=message):
    multihost.resolve_launch(env)


def test_initialize_arguments():
  assert multihost.initialize("false", env={"OMPI_COMM_WORLD_SIZE": "8"}) is None
  assert multihost.initialize("auto", env={}) is None
  with pytest.raises(multihost.LaunchError, match="mode"):
    multihost.initialize("yes", env={})
  with pytest.raises(multihost.LaunchError, match="timeout_s"):
    multihost.initialize("auto", env={}, timeout_s=0)


def test_single_process_sigterm_sets_the_flag_and_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  watcher = multihost.PreemptionWatcher()
  try:
    assert not watcher.reached(1)
    signal.raise_signal(signal.SIGTERM)
    assert watcher.reached(2)
  finally:
    watcher.close()
  assert signal.getsignal(signal.SIGTERM) is before


def test_cloud_workdirs_stay_urls(tmp_path):
  assert str(checkpoint.as_path("gs://bucket/run/checkpoints")) == (
      "gs://bucket/run/checkpoints")
  local = checkpoint.as_path("relative/dir")
  assert local.is_absolute() and str(local).endswith("relative/dir")


class _TinyBN(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(3)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return {"y": x}


def test_per_device_batch_norm_normalises_each_slice():
  model = _TinyBN()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  rngs = {"dropout": jax.random.key(1)}
  out, stats = static.train_apply(model, variables, x, rngs=rngs, groups=4)
  want_out, want_stats = [], []
  for g in range(4):
    o, s = static.train_apply(model, variables, x[2 * g:2 * g + 2], rngs=rngs)
    want_out.append(o["y"])
    want_stats.append(s)
  np.testing.assert_allclose(out["y"], np.concatenate(want_out), rtol=1e-5,
                             atol=1e-6)
  mean = jax.tree.map(lambda *s: np.mean(s, axis=0), *want_stats)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(mean)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # One group is the plain global-batch BatchNorm.
  glob, _ = static.train_apply(model, variables, x, rngs=rngs, groups=1)
  assert not np.allclose(glob["y"], out["y"])
  with pytest.raises(ValueError, match="does not split into 3"):
    static.train_apply(model, variables, x, rngs=rngs, groups=3)
