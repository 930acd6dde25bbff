"""Test set-up: 8 fake CPU devices so sharding tests run on any machine."""

import os

# Must happen before jax initialises its backends.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def fast_compile():
  """Fewer XLA passes for a module's tiny models (as flax's train_test does).

  These graphs compile several times faster; the setting is restored after the
  module so other tests run with the default pipeline. Use with
  ``pytestmark = pytest.mark.usefixtures("fast_compile")``.
  """
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
