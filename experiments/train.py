r"""Trains and evaluates one config: ``python -m experiments.train``.

The same command as the installed ``automix-train`` (``automix_jax/cli.py``,
where the flags and their documentation live):

  python -m experiments.train --config configs/cifar10_cpu.py:mixer=mixup \
    --workdir runs/x --config.num_epochs=3
"""

from automix_jax.cli import main, run  # pylint: disable=unused-import

if __name__ == "__main__":
  run()
