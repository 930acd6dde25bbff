"""Runs scripts/launch_local_pod.sh (the documented simulated pod) from tests."""

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "scripts", "launch_local_pod.sh")
TINY_CONFIG = os.path.join("tests", "multihost", "tiny_config.py")


def pod_env(cache_dir=None, **extra):
  """Environment of a simulated pod: no inherited device flags, fast compile."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")
         and not k.startswith("PYTEST")}
  env["PYTHON"] = sys.executable
  # Tiny models: fewer XLA passes compile several times faster (as the
  # `fast_compile` fixture does in-process).
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env.update({k: str(v) for k, v in extra.items()})
  return env


def train_args(workdir, archive, *, method="mixup", epochs=3, overrides=()):
  return ["--config", f"{TINY_CONFIG}:method={method},epochs={epochs}",
          f"--config.data.archive_path={archive}",
          f"--config.data.cache_dir={os.path.dirname(archive)}/cache",
          "--workdir", str(workdir), *overrides]


def start(num_processes, devices, args, env):
  """Starts the launcher in its own process group; returns the Popen."""
  return subprocess.Popen(
      ["bash", LAUNCHER, str(num_processes), str(devices), "--", *args],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, start_new_session=True)


def finish(proc, timeout=600):
  """Waits; returns ``(returncode, output)``; kills the group on timeout."""
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    raise AssertionError(f"simulated pod timed out after {timeout} s:\n"
                         f"{out[-4000:]}")
  return proc.returncode, out


def run(num_processes, devices, args, env, timeout=600):
  rc, out = finish(start(num_processes, devices, args, env), timeout)
  assert rc == 0, f"pod {num_processes}x{devices} failed (rc {rc}):\n{out[-6000:]}"
  return out


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def wait_for_step(workdir, step, proc, timeout=300):
  """Polls metrics.jsonl until a train line of ``step`` or later appears."""
  path = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError("the pod ended before step "
                           f"{step}:\n{proc.communicate()[0][-4000:]}")
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(l)["step"] for l in f if l.endswith("\n")
                 and "train/loss" in l]
      if steps and max(steps) >= step:
        return max(steps)
    time.sleep(0.2)
  raise AssertionError(f"step {step} not reached in {timeout} s")


def signal_processes(workdir, sig):
  """Sends ``sig`` to every training process of the pod writing to workdir."""
  out = subprocess.run(["pgrep", "-f", f"experiments.train.*{workdir}"],
                       capture_output=True, text=True).stdout.split()
  pids = [int(p) for p in out if int(p) != os.getpid()]
  for pid in pids:
    try:
      os.kill(pid, sig)
    except ProcessLookupError:
      pass
  return pids
