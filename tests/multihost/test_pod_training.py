"""Training on a simulated pod: 2 processes x 4 fake devices against 1 x 8.

Every run goes through the documented launcher (scripts/launch_local_pod.sh)
and the documented CLI (python -m experiments.train), with the tiny configs of
tests/multihost/tiny_config.py: global batch 16, 2 steps per epoch, a test
split of 20 images evaluated in 2 batches of 16 (the last one padded).
"""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from automix_jax import checkpoint
from tests import _tb_events
from tests._tiny_archive import write_tiny_archive
from tests.multihost import _pod

# One xdist worker runs the whole module (scripts/test.sh: --dist loadgroup),
# so the runs that several tests compare against are made once.
pytestmark = [pytest.mark.multihost, pytest.mark.xdist_group("pod_training")]

EPOCHS = 2  # 4 steps, an eval after each epoch


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
  root = tmp_path_factory.mktemp("pod")
  archive = write_tiny_archive(root / "tiny.tar.gz", train_per_class=4,
                               test_per_class=2)
  env = _pod.pod_env(cache_dir=root / "xla_cache")
  runs = {}

  def run(name, procs, devices, *, method="mixup", overrides=()):
    """Runs (once per name) and returns the work directory."""
    if name not in runs:
      workdir = root / name
      _pod.run(procs, devices, _pod.train_args(
          workdir, archive, method=method, epochs=EPOCHS,
          overrides=overrides), env)
      runs[name] = workdir
    return runs[name]

  run.root, run.archive, run.env = root, archive, env
  return run


def _final_state(workdir):
  return checkpoint.read_state(workdir / "checkpoints")


def _train_losses(workdir):
  return {m["step"]: m["train/loss"] for m in _pod.metrics(workdir)
          if "train/loss" in m}


def _evals(workdir):
  return [{k: v for k, v in m.items() if k.startswith("eval/")}
          for m in _pod.metrics(workdir) if any(k.startswith("eval/")
                                                 for k in m)]


def _assert_same_run(a, b, *, exact, rtol=1e-4, atol=1e-5):
  """Two runs of one config: losses, parameters and evaluations agree.

  ``exact``: bit for bit (resumption). Otherwise to float tolerance: the
  gradient all-reduce sums in another order across processes.
  """
  la, lb = _train_losses(a), _train_losses(b)
  assert sorted(la) == sorted(lb) == list(range(1, 2 * EPOCHS + 1))
  np.testing.assert_allclose([la[s] for s in sorted(la)],
                             [lb[s] for s in sorted(lb)],
                             rtol=0 if exact else 1e-5)
  sa, state_a = _final_state(a)
  sb, state_b = _final_state(b)
  assert sa == sb == 2 * EPOCHS
  for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    if exact:
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
  ea, eb = _evals(a), _evals(b)
  assert len(ea) == len(eb) == EPOCHS
  for x, y in zip(ea, eb):  # top-1/top-5 are counts: identical
    assert {k: v for k, v in x.items() if "/top" in k} == {
        k: v for k, v in y.items() if "/top" in k}
    np.testing.assert_allclose([x[k] for k in sorted(x) if "ece" in k],
                               [y[k] for k in sorted(y) if "ece" in k],
                               atol=1e-6)


@pytest.mark.parametrize("method", ["mixup", "automix", "adautomix"])
def test_two_processes_match_one(pod, method):
  two = pod(f"{method}_2x4", 2, 4, method=method)
  one = pod(f"{method}_1x8", 1, 8, method=method)
  _assert_same_run(two, one, exact=False)
  s2, s1 = _pod.summary(two), _pod.summary(one)
  assert (s2["num_processes"], s2["num_devices"]) == (2, 8)
  assert (s1["num_processes"], s1["num_devices"]) == (1, 8)
  assert s2["reported_top1"] == s1["reported_top1"]
  # Only process 0 wrote: one metrics line per step / eval / final line, and
  # one TensorBoard event file per run.
  lines = _pod.metrics(two)
  assert len(lines) == len(_pod.metrics(one))
  assert len(_tb_events.event_files(two)) == 1
  assert len(_tb_events.event_files(one)) == 1
  log1 = open(two / "pod_logs" / "process_1.log").read()
  assert "process 1/2: 4 local / 8 global cpu devices" in log1
  assert '"reported_top1"' not in log1  # the summary is printed by process 0


def test_rerun_of_a_finished_pod_keeps_its_summary(pod):
  """Every process agrees there is nothing to do; summary.json is untouched."""
  workdir = pod("mixup_2x4", 2, 4)
  before = (workdir / "summary.json").read_text()
  out = _pod.run(2, 4, _pod.train_args(workdir, pod.archive, epochs=EPOCHS),
                 pod.env)
  assert '"already_complete": true' in out, out[-3000:]
  assert (workdir / "summary.json").read_text() == before


def test_per_device_mixing_and_batch_stats_on_a_pod(pod):
  """DDP-style semantics: partners, λ and BatchNorm statistics per device;
  the same numbers whether the 8 devices sit in 1 process or 2."""
  flags = ["--config.per_device_mixing=True",
           "--config.per_device_batch_stats=True"]
  two = pod("per_device_2x4", 2, 4, overrides=flags)
  one = pod("per_device_1x8", 1, 8, overrides=flags)
  # BatchNorm over 2 images per device divides by small variances, which
  # amplifies the all-reduce's rounding differences (seen: 7e-5 after 4 steps).
  _assert_same_run(two, one, exact=False, atol=2e-4)
  # And the option changes the run (it is not silently ignored).
  assert _train_losses(one) != _train_losses(pod("mixup_1x8", 1, 8))


def _wait_for_log(path, pattern, proc, timeout=300):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"pod ended early:\n{proc.communicate()[0][-4000:]}")
    if os.path.exists(path) and re.search(pattern, open(path).read()):
      return
    time.sleep(0.1)
  raise AssertionError(f"{pattern!r} not in {path} after {timeout} s")


def test_kill_both_processes_then_resume_bit_identical(pod):
  straight = pod("mixup_2x4", 2, 4)
  workdir = pod.root / "killed"
  args = _pod.train_args(workdir, pod.archive, epochs=EPOCHS)
  proc = _pod.start(2, 4, args, pod.env)
  _pod.wait_for_step(workdir, 2, proc)
  assert len(_pod.signal_processes(workdir, signal.SIGKILL)) == 2
  rc, _ = _pod.finish(proc)
  assert rc != 0
  _pod.run(2, 4, args, pod.env)
  summary = _pod.summary(workdir)
  assert summary["resumed_from_step"] >= 1
  _assert_same_run(workdir, straight, exact=True)


@pytest.mark.parametrize("procs,devices", [(2, 4), (1, 8)])
def test_sigterm_checkpoints_at_the_next_step_and_resumes(pod, procs, devices):
  straight = pod(f"mixup_{procs}x{devices}", procs, devices)
  workdir = pod.root / f"sigterm_{procs}x{devices}"
  args = _pod.train_args(workdir, pod.archive, epochs=EPOCHS)
  proc = _pod.start(procs, devices, args, pod.env)
  for i in range(procs):  # every process can take SIGTERM now
    _wait_for_log(workdir / "pod_logs" / f"process_{i}.log",
                  "SIGTERM now checkpoints", proc)
  assert len(_pod.signal_processes(workdir, signal.SIGTERM)) == procs
  rc, out = _pod.finish(proc)
  assert rc == 0, out[-4000:]
  stopped = _pod.summary(workdir)
  assert stopped["preempted"] is True
  step = stopped["stopped_at_step"]
  assert 1 <= step < 2 * EPOCHS
  assert _final_state(workdir)[0] == step  # saved at the step boundary
  _pod.run(procs, devices, args, pod.env)
  assert _pod.summary(workdir)["resumed_from_step"] == step
  _assert_same_run(workdir, straight, exact=True)


def test_a_nonfinite_update_never_reaches_a_checkpoint(pod):
  # lr 1e39 overflows float32: the loss and gradients of step 1 are finite,
  # the parameters after its update are not.
  workdir = pod.root / "nonfinite"
  args = _pod.train_args(workdir, pod.archive, epochs=EPOCHS, overrides=(
      "--config.optimizer.lr=1e39", "--config.optimizer.schedule=constant"))
  rc, out = _pod.finish(_pod.start(2, 4, args, pod.env))
  assert rc != 0
  assert "non-finite values in the state after step 1" in out
  assert "No checkpoint was written" in out
  assert not [d for d in os.listdir(workdir / "checkpoints") if d.isdigit()]


def _cli(env, *extra_env_and_args, timeout=60):
  env = dict(env)
  args = []
  for item in extra_env_and_args:
    if "=" in item and not item.startswith("--"):
      k, v = item.split("=", 1)
      env[k] = v
    else:
      args.append(item)
  t0 = time.time()
  out = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config",
       _pod.TINY_CONFIG, "--workdir", "unused", *args], cwd=_pod.ROOT, env=env,
      capture_output=True, text=True, timeout=timeout)
  return out.returncode, out.stdout + out.stderr, time.time() - t0


@pytest.mark.parametrize("variables,message", [
    (("JAX_COORDINATOR_ADDRESS=127.0.0.1:1234", "JAX_NUM_PROCESSES=2",
      "JAX_PROCESS_ID=2"), r"JAX_PROCESS_ID=2 must lie in \[0, JAX_NUM_PROCESSES=2\)"),
    (("JAX_NUM_PROCESSES=2", "JAX_PROCESS_ID=0"),
     r"JAX_COORDINATOR_ADDRESS is not set"),
    (("JAX_COORDINATOR_ADDRESS=127.0.0.1", "JAX_NUM_PROCESSES=2",
      "JAX_PROCESS_ID=0"), r"must be 'host:port'"),
])
def test_inconsistent_launch_variables_fail_in_seconds(pod, variables, message):
  rc, out, seconds = _cli(pod.env, *variables)
  assert rc != 0 and re.search(message, out), out[-2000:]
  assert "Traceback" not in out
  assert seconds < 30


def test_a_process_whose_peers_never_come_gives_up_after_the_timeout(pod):
  rc, out, seconds = _cli(
      pod.env, "JAX_COORDINATOR_ADDRESS=127.0.0.1:1", "JAX_NUM_PROCESSES=2",
      "JAX_PROCESS_ID=1", "--init_timeout_s=3")
  assert rc != 0
  assert "did not complete within 3 s" in out, out[-2000:]
  assert seconds < 30
