r"""AdAutoMix on the offline CIFAR-10 archive, sized for a few CPU minutes.

The CIFAR recipe of ``configs/adautomix/cifar100.py`` (N = 3, α = 1, β = 0.3,
a = 0.5, lam_margin 0.03, bilinear x4 generator on stage-3 features, EMA
0.999 -> 0.999999, SGD 0.1 -> 0.05 per-epoch cosine) on a class-balanced subset
of CIFAR-10 with a 1/8-width ResNet-18 and 3 epochs.

Args (``:k=v,...``): epochs (3), images_per_class (100; 0 = all), width
(0.125), batch_size (50), ema_momentum / ema_end_momentum (0.9 / 0.99: scaled
to a 60-iteration run, see below; the reference's are 0.999 / 0.999999),
mix_samples (3), cosine_sign (+1), teacher_bn, logit_bound (0 = off, the
reference; b > 0 soft-clips the generator's logits to (-b, b) before the
softmax over images: ``adautomix.generator.logit_bound``, a guard against
saturation that is not in the reference).

Run:
  python -m experiments.train --config configs/adautomix/cifar10_cpu.py \
    --workdir runs/cpu_adautomix
"""

from automix_jax.configs import common
from automix_jax.configs.adautomix import cifar100


def get_config(arg=None):
  arg = common.parse_arg(arg, epochs=3, images_per_class=100, width=0.125,
                         batch_size=50, ema_momentum=0.9,
                         ema_end_momentum=0.99, mix_samples=3, cosine_sign=1.0,
                         teacher_bn="batch_stats", logit_bound=0.0)
  c = cifar100.base(model="cifar_resnet18", epochs=arg.epochs)
  common.offline_cpu_run(c, arg)
  common.set_logit_bound(c.adautomix.generator, arg.logit_bound)
  c.adautomix.mix_samples = arg.mix_samples
  c.adautomix.cosine_sign = arg.cosine_sign
  c.adautomix.teacher_bn = arg.teacher_bn
  return c
