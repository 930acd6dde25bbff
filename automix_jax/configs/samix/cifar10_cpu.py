r"""SAMix on the offline CIFAR-10 archive, sized for a few CPU minutes.

AutoMix's CPU run (``configs/automix/cifar10_cpu.py``: a class-balanced CIFAR-10
subset, 1/8-width ResNet-18, 3 epochs, batch 50, EMA 0.9 -> 0.99 scaled to the
short run) with SAMix's method block from ``configs/samix/cifar100.py``
(λ-rescaled residual, concat q/k, 2-layer value net, bilinear x4; L1 + variance
mask loss; η = 0.5; mask_adjust 0.25).

Args (``:k=v,...``): those of ``configs/automix/cifar10_cpu.py`` (epochs,
images_per_class, width, batch_size, ema_momentum, ema_end_momentum).

Run:
  python -m experiments.train --config configs/samix/cifar10_cpu.py \
    --workdir runs/cpu_samix
"""

from automix_jax.configs.automix import cifar10_cpu as automix_cpu
from automix_jax.configs.samix import cifar100


def get_config(arg=None):
  return cifar100.from_automix(automix_cpu.get_config(arg))
