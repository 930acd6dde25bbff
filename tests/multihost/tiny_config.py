r"""The CPU configs shrunk for simulated-pod tests (a few seconds a step).

``arg``: ``method`` (a static mixer name, or ``automix`` / ``adautomix``),
``epochs``. The model is a 1/16-width ResNet-10 layout; the global batch of 16
splits over 1 x 8, 2 x 4 and 4 x 2 devices; the test archive (tests/_tiny_archive.py)
is given with ``--config.data.archive_path``.

  bash scripts/launch_local_pod.sh 2 4 -- \
    --config tests/multihost/tiny_config.py:method=mixup \
    --config.data.archive_path=tiny.tar.gz --workdir runs/x
"""

import ml_collections

from automix_jax.configs import cifar10_cpu
from automix_jax.configs import common
from automix_jax.configs.adautomix import cifar10_cpu as adautomix_cpu
from automix_jax.configs.automix import cifar10_cpu as automix_cpu


def get_config(arg=None):
  arg = common.parse_arg(arg, method="mixup", epochs=3)
  learned = {"automix": automix_cpu, "adautomix": adautomix_cpu}
  if arg.method in learned:
    c = learned[arg.method].get_config("batch_size=16,images_per_class=0")
  else:
    c = cifar10_cpu.get_config(f"mixer={arg.method},images_per_class=0")
  c.num_epochs = arg.epochs
  c.batch_size = 16
  c.eval_batch_size = 16
  c.model.width = 1 / 16
  c.model.kwargs = ml_collections.ConfigDict({"stage_sizes": (1, 1, 1, 1)})
  c.log_every_steps = 1
  c.report_last_epochs = 2
  c.checkpoint.every_steps = 1
  c.checkpoint.keep = 3
  c.progress_bar = False
  c.final_evals.fgsm = False
  return c
