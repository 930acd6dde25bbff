"""scripts/profile_step.py: its timing and FLOP helpers on a matmul (the
full profile compiles a dozen ResNet programs; it is run by hand)."""

import importlib.util
import pathlib

import jax.numpy as jnp

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "profile_step", REPO / "scripts" / "profile_step.py")
ps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ps)


def test_flops_come_from_xla_and_rounds_time_every_function():
  a = jnp.ones((64, 64))
  mm, info = ps.compile_fn(jnp.dot, (a, a))
  assert info["flops"] == 2 * 64 ** 3
  add, _ = ps.compile_fn(jnp.add, (a, a))
  out = ps.time_interleaved([(mm, (a, a)), (add, (a, a))], reps=3, warmup=1)
  assert len(out) == 2
  assert all(0 < t["min"] <= t["median"] for t in out)
