r"""SAMix on the offline CIFAR-10 archive, sized for a few CPU minutes.

Same recipe as ``configs/samix/cifar100.py`` (AutoMix's step with SAMix's Mix
Block: λ-rescaled residual, concat q/k, 2-layer value net, bilinear x4; L1 +
variance mask loss; η = 0.5; mask_adjust 0.25) but on a class-balanced subset of
CIFAR-10 with a 1/8-width ResNet-18 and 3 epochs.

Args (``:k=v,...``):
  epochs: default 3.
  images_per_class: default 100 (0 = all 5000).
  width: ResNet width multiplier (default 0.125).
  batch_size: default 50.
  ema_momentum, ema_end_momentum: 0.9 / 0.99, scaled to a 60-iteration run (the
    reference's 0.999 / 0.999999 would leave the teacher at its init).

Run:
  python -m experiments.train --config configs/samix/cifar10_cpu.py \
    --workdir runs/cpu_samix
"""

from automix_jax.configs import common
from automix_jax.configs.samix import cifar100


def get_config(arg=None):
  arg = common.parse_arg(arg, epochs=3, images_per_class=100, width=0.125,
                         batch_size=50, ema_momentum=0.9,
                         ema_end_momentum=0.99)
  c = cifar100.get_config("epochs=%d" % arg.epochs)
  common.offline_cpu_run(c, arg)
  return c
