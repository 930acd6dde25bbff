r"""Trains and evaluates one config: ``python -m experiments.train``.

  python -m experiments.train --config configs/cifar10_cpu.py:mixer=mixup \
    --workdir runs/x --config.num_epochs=3

The config is locked (``lock_config=True``): an override of a key that does not
exist (a typo) is an error before anything runs. A workdir with a checkpoint is
resumed. Multi-process launches (TPU pod slices, multi-node GPU) call
``jax.distributed.initialize()`` first; see docs/training.md.
"""

import json
import logging
import os

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (get_config(arg)); `path.py:arg`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output/resume directory.")
_MULTI = flags.DEFINE_enum(
    "multi_process", "auto", ["auto", "true", "false"],
    "Call jax.distributed.initialize(): auto = when launched by a "
    "multi-process launcher (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, TPU "
    "pod env vars).")
flags.mark_flags_as_required(["config", "workdir"])

_MULTI_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def launched_multi_process(env=os.environ) -> bool:
  """True when the environment says this is one of several processes."""
  if any(env.get(k) for k in _MULTI_ENV):
    return True
  for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES"):
    try:
      if int(env.get(k, "1")) > 1:
        return True
    except ValueError:
      pass
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


class _QuietOrbax(logging.Filter):
  """Drops orbax's per-save INFO chatter; its warnings still show."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())
  import jax  # after flag parsing
  multi = _MULTI.value
  if multi == "true" or (multi == "auto" and launched_multi_process()):
    jax.distributed.initialize()  # reads the launcher's env (TPU/SLURM/MPI)
  logging.info("process %d/%d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  from automix_jax.train import loop
  summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    short = {k: v for k, v in summary.items()
             if k not in ("history", "config")}
    print(json.dumps(short, indent=1, default=str))


if __name__ == "__main__":
  app.run(main)
