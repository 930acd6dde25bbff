"""Multi-process launch and pre-emption: one code path from one CPU to a pod.

``initialize(mode="auto")`` is what ``experiments/train.py`` calls before it
touches a device. It resolves how this process was launched, in this order:

1. **Explicit variables** (any launcher, a local simulated pod, a GPU cluster
   without a scheduler): ``JAX_COORDINATOR_ADDRESS=host:port``,
   ``JAX_NUM_PROCESSES=n`` and ``JAX_PROCESS_ID=i`` (``0 <= i < n``), set on
   every process. They are validated here and passed to
   ``jax.distributed.initialize`` explicitly: jax itself only reads
   ``JAX_COORDINATOR_ADDRESS``, so without this the other two are ignored
   and jax fails with "Number of processes must be defined".
2. **A cluster jax detects itself**: SLURM (``SLURM_JOB_ID`` with
   ``SLURM_NTASKS > 1``), Open MPI (``OMPI_COMM_WORLD_SIZE > 1``) and TPU pod
   slices (``TPU_WORKER_HOSTNAMES`` with several hosts, or the GCE metadata):
   ``jax.distributed.initialize()`` is called with no addresses and jax's
   cluster detection fills them in.
3. Otherwise a single process: nothing to initialise.

Inconsistent variables (a process id outside ``[0, n)``, a process count
without a coordinator, a coordinator without a port, non-integers) raise
``LaunchError`` naming the variable before any network call. A process whose
peers never connect gives up after ``timeout_s`` seconds: jax then aborts the
process (its coordination client cannot be interrupted from Python), and a
watchdog prints, just before, which address and process count it was waiting
for.

Pre-emption (``PreemptionWatcher``): TPU pods and spot VMs are pre-empted with
SIGTERM. Multi-process, jax's coordination service catches SIGTERM on any
process and ``multihost_utils.reached_preemption_sync_point(step)`` turns true
*at the same step on every process*, so all of them save together. Single
process, a Python SIGTERM handler sets a flag read at the next step boundary.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Mapping

import jax

__all__ = ["LaunchError", "LaunchSpec", "PreemptionWatcher", "initialize",
           "resolve_launch", "process_line"]

COORDINATOR_VAR = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_VAR = "JAX_NUM_PROCESSES"
PROCESS_ID_VAR = "JAX_PROCESS_ID"
DEFAULT_TIMEOUT_S = 300


class LaunchError(ValueError):
  """The launch environment is inconsistent; raised before any network call."""


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
  """How ``jax.distributed.initialize`` is called for this process.

  ``coordinator_address``, ``num_processes`` and ``process_id`` are all set
  for an explicit launch and all None when jax's cluster detection (SLURM,
  Open MPI, TPU) fills them in; ``source`` says which.
  """
  source: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def describe(self) -> str:
    if self.coordinator_address is None:
      return f"{self.source} (addresses from jax's cluster detection)"
    return (f"{self.source}: process {self.process_id} of "
            f"{self.num_processes}, coordinator {self.coordinator_address}")


def _env_int(env: Mapping[str, str], name: str) -> int | None:
  raw = env.get(name, "").strip()
  if not raw:
    return None
  try:
    return int(raw)
  except ValueError:
    raise LaunchError(f"{name}={raw!r} must be an integer.") from None


def _check_address(address: str) -> str:
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise LaunchError(
        f"{COORDINATOR_VAR}={address!r} must be 'host:port' (e.g. "
        "'10.0.0.2:1234' or '127.0.0.1:12355'), reachable from every process.")
  return address


def resolve_launch(env: Mapping[str, str] | None = None) -> LaunchSpec | None:
  """The multi-process launch described by ``env``, or None for one process.

  Raises:
    LaunchError: inconsistent variables, naming them and the expected form.
  """
  env = os.environ if env is None else env
  address = env.get(COORDINATOR_VAR, "").strip()
  num = _env_int(env, NUM_PROCESSES_VAR)
  pid = _env_int(env, PROCESS_ID_VAR)
  if address or num is not None or pid is not None:
    missing = [name for name, v in ((COORDINATOR_VAR, address),
                                    (NUM_PROCESSES_VAR, num),
                                    (PROCESS_ID_VAR, pid)) if v in ("", None)]
    if missing:
      raise LaunchError(
          f"an explicit multi-process launch needs {COORDINATOR_VAR}=host:port, "
          f"{NUM_PROCESSES_VAR}=n and {PROCESS_ID_VAR}=i on every process; "
          f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
          "set. Unset all three for a single process.")
    if num < 1:
      raise LaunchError(f"{NUM_PROCESSES_VAR}={num} must be >= 1.")
    if not 0 <= pid < num:
      raise LaunchError(
          f"{PROCESS_ID_VAR}={pid} must lie in [0, {NUM_PROCESSES_VAR}={num}): "
          "process ids are 0, 1, ..., n - 1, one per process.")
    if num == 1:
      return None
    return LaunchSpec("JAX_* variables", _check_address(address), num, pid)
  slurm = _env_int(env, "SLURM_NTASKS")
  if slurm is not None and slurm > 1 and env.get("SLURM_JOB_ID"):
    return LaunchSpec("SLURM")
  ompi = _env_int(env, "OMPI_COMM_WORLD_SIZE")
  if ompi is not None and ompi > 1:
    return LaunchSpec("Open MPI")
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1:
    return LaunchSpec("TPU pod slice")
  return None


def _watchdog(spec: LaunchSpec, timeout_s: float) -> threading.Event:
  """Prints what the process waited for if initialisation outlives its limit."""
  done = threading.Event()

  def warn():
    if not done.wait(max(timeout_s - 0.5, 0.1)):
      print(f"automix_jax.multihost: jax.distributed.initialize did not "
            f"complete within {timeout_s:g} s ({spec.describe()}). Every "
            "process must be started with the same coordinator address and "
            "process count and a distinct process id; the coordinator "
            "(process 0) must be reachable. jax aborts this process now.",
            file=sys.stderr, flush=True)

  threading.Thread(target=warn, daemon=True,
                   name="multihost-init-watchdog").start()
  return done


def initialize(mode: str = "auto", *, env: Mapping[str, str] | None = None,
               timeout_s: int = DEFAULT_TIMEOUT_S) -> LaunchSpec | None:
  """Initialises ``jax.distributed`` for this launch (see module docstring).

  Args:
    mode: "auto" (initialise when the environment shows a multi-process
      launch), "true" (always; jax's cluster detection must then find the
      addresses if no JAX_* variables are set) or "false" (never).
    env: the environment to read (default ``os.environ``).
    timeout_s: seconds to wait for every process to connect.

  Returns:
    The resolved ``LaunchSpec``, or None when running as a single process.

  Raises:
    LaunchError: inconsistent variables or arguments, before any network call.
  """
  if mode not in ("auto", "true", "false"):
    raise LaunchError(f"mode must be 'auto', 'true' or 'false'; got {mode!r}.")
  if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or (
      timeout_s < 1):
    raise LaunchError(f"timeout_s must be an int >= 1; got {timeout_s!r}.")
  if mode == "false":
    return None
  spec = resolve_launch(env)
  if spec is None:
    if mode == "auto":
      return None
    spec = LaunchSpec("--multi_process=true (jax cluster detection)")
  logging.info("jax.distributed.initialize: %s; timeout %d s.",
               spec.describe(), timeout_s)
  done = _watchdog(spec, timeout_s)
  try:
    jax.distributed.initialize(
        coordinator_address=spec.coordinator_address,
        num_processes=spec.num_processes, process_id=spec.process_id,
        initialization_timeout=timeout_s)
  finally:
    done.set()
  return spec


def process_line() -> str:
  """One line naming this process and its devices (logged first by the CLI)."""
  return (f"process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.local_device_count()} local / {jax.device_count()} global "
          f"{jax.default_backend()} devices")


class PreemptionWatcher:
  """Tells the loop, at a step boundary, that the run must save and stop.

  Multi-process runs use jax's pre-emption sync point (the coordination
  service catches SIGTERM on any process and every process sees it at the same
  step). A single process installs a SIGTERM handler for the lifetime of the
  watcher (restored by ``close``). ``reached(step)`` must be called once per
  step, with increasing steps, on every process.
  """

  def __init__(self):
    self._requested = False
    self._previous = None
    self._synced = (jax.process_count() > 1
                    and jax.distributed.is_initialized())
    if not self._synced and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    logging.info("SIGTERM now checkpoints at the next step boundary (%s).",
                 "jax pre-emption sync point" if self._synced else
                 "signal handler")

  def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM: saving a checkpoint at the next step boundary "
                    "and stopping.")
    self._requested = True

  def request(self) -> None:
    """Asks for a stop as SIGTERM does (single process; used by tests)."""
    self._requested = True

  def reached(self, step: int) -> bool:
    """True once a pre-emption was signalled; the same step on every process."""
    if self._synced:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(multihost_utils.reached_preemption_sync_point(int(step)))
    return self._requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
