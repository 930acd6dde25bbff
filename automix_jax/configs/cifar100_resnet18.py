r"""CIFAR-100, ResNet-18 (CIFAR stem), static mixers: OpenMixup's recipe.

OpenMixup ``configs/classification/cifar100/mixups/basic/r18_mixups_CE_none.py``
(OpenMixup, github.com/Westlake-AI/openmixup, configs/classification/cifar100/mixups): SGD lr 0.1, momentum 0.9, weight decay 1e-4,
batch 100 on one device, cosine per epoch to ``min_lr``, RandomCrop 32 pad 4 +
flip, mean/std (0.4914, 0.4822, 0.4465)/(0.2023, 0.1994, 0.201), each mixer at
its CIFAR α (mixup 1, cutmix 0.2, fmix 0.2, saliencymix 0.2, resizemix 1,
gridmix 0.2, smoothmix 0.2, maskmix 1, manifoldmix 2, alignmix 2; snapmix
Beta(1, 1) with prob 0.5; attentivemix is left out because it needs a frozen
pretrained scorer). Reported number: median top-1 of the last 10 epochs
(AdAutoMix's protocol).

Args (``:k=v,...``):
  mixer: vanilla | mixup | cutmix | fmix | saliencymix | resizemix | gridmix |
    smoothmix | maskmix | manifoldmix | alignmix | snapmix | guidedmixup, or
    several static ones joined by "+" for a uniform random switch.
  label_mix: none | sumix (SUMix's label correction on top of the mixer).
  epochs: 200 | 400 | 800 | 1200 (any positive int is accepted).
  min_lr: cosine floor (OpenMixup's mixup benchmark: 0; AutoMix/AdAutoMix: 0.05).
  ema: keep an EMA teacher (momentum 0.999 -> 0.999999, AutoMix cosine hook)
    and report it.
  runlocal: tiny shapes for a smoke run.

Run:
  python -m experiments.train \
    --config configs/cifar100_resnet18.py:mixer=cutmix,epochs=400 \
    --workdir runs/c100_r18_cutmix_400e
"""

from automix_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, mixer="mixup", label_mix="none", epochs=400,
                         min_lr=0.0, ema=False, runlocal=False)
  if arg.epochs < 1:
    raise ValueError(f"`epochs` must be >= 1; got {arg.epochs}.")
  c = common.base_config()
  c.method = "static"
  c.num_epochs = arg.epochs
  common.openmixup_cifar100(c, min_lr=arg.min_lr)
  c.report_last_epochs = 10

  c.model.name = "cifar_resnet18"
  c.model.width = 1.0

  c.mixer, c.switch = common.mixer_block(arg.mixer)
  c.label_mix = common.label_mix_block(arg.label_mix)

  common.automix_ema(c, enabled=arg.ema)

  c.checkpoint.every_steps = 5000
  c.checkpoint.keep = 3

  if arg.runlocal:
    common.shrink_for_local_run(c)
  return c
