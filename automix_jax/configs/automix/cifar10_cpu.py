r"""AutoMix on the offline CIFAR-10 archive, sized for a few CPU minutes.

Same recipe as ``configs/automix/cifar100.py`` (α = 2, lam_margin 0.08, L1 mask
loss 0.1 with margin 0.1, nearest x4 Mix Block on stage-3 features, EMA teacher
0.999 -> 0.999999, SGD 0.1 -> 0.05 per-epoch cosine) but on a class-balanced
subset of CIFAR-10 with a 1/8-width ResNet-18 and 3 epochs.

Args (``:k=v,...``):
  epochs: default 3.
  images_per_class: default 100 (0 = all 5000).
  width: ResNet width multiplier (default 0.125).
  batch_size: default 50.
  ema_momentum, ema_end_momentum: 0.9 / 0.99, scaled to a 60-iteration run (the
    reference's 0.999 / 0.999999 would leave the teacher at its init).
  logit_bound: 0 (default, the reference) or b > 0: soft-clip the Mix Block's
    logits to (-b, b) before the sigmoid (``automix.generator.logit_bound``, a
    guard against saturation that is not in the reference).

Run:
  python -m experiments.train --config configs/automix/cifar10_cpu.py \
    --workdir runs/cpu_automix
"""

from automix_jax.configs import common
from automix_jax.configs.automix import cifar100


def get_config(arg=None):
  arg = common.parse_arg(arg, epochs=3, images_per_class=100, width=0.125,
                         batch_size=50, ema_momentum=0.9,
                         ema_end_momentum=0.99, logit_bound=0.0)
  c = cifar100.get_config("epochs=%d" % arg.epochs)
  common.offline_cpu_run(c, arg)
  common.set_logit_bound(c.automix.generator, arg.logit_bound)
  return c
