r"""Trains and evaluates one config: ``python -m experiments.train``.

  python -m experiments.train --config configs/cifar10_cpu.py:mixer=mixup \
    --workdir runs/x --config.num_epochs=3

The config is locked (``lock_config=True``): an override of a key that does not
exist (a typo) is an error before anything runs. A workdir with a checkpoint is
resumed. Multi-process launches (TPU pod slices, SLURM / Open MPI, or the
explicit JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables
that scripts/launch_local_pod.sh sets) initialise ``jax.distributed`` first
(``automix_jax.multihost``); see docs/training.md.
"""

import json
import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (get_config(arg)); `path.py:arg`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output/resume directory.")
_MULTI = flags.DEFINE_enum(
    "multi_process", "auto", ["auto", "true", "false"],
    "Initialise jax.distributed: auto = when the environment shows a "
    "multi-process launch (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + "
    "JAX_PROCESS_ID, SLURM, Open MPI, a TPU pod slice); see docs/training.md.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout_s", 300,
    "Seconds a process waits for all processes to connect before it aborts.")
flags.mark_flags_as_required(["config", "workdir"])


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
  from automix_jax import multihost
  try:
    multihost.initialize(_MULTI.value, timeout_s=_INIT_TIMEOUT.value)
  except multihost.LaunchError as e:
    sys.exit(f"experiments.train: bad multi-process launch: {e}")
  # First line of every process: who it is and what it sees.
  print(multihost.process_line(), file=sys.stderr, flush=True)
  from automix_jax.train import loop
  summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    short = {k: v for k, v in summary.items()
             if k not in ("history", "config")}
    print(json.dumps(short, indent=1, default=str))


if __name__ == "__main__":
  app.run(main)
