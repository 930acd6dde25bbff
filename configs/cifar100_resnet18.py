r"""CIFAR-100, ResNet-18 (CIFAR stem), static mixers: OpenMixup's recipe.

OpenMixup ``configs/classification/cifar100/mixups/basic/r18_mixups_CE_none.py``
(mixers.md §1, adautomix.md §3.1): SGD lr 0.1, momentum 0.9, weight decay 1e-4,
batch 100 on one device, cosine per epoch to ``min_lr``, RandomCrop 32 pad 4 +
flip, mean/std (0.4914, 0.4822, 0.4465)/(0.2023, 0.1994, 0.201), each mixer at
its CIFAR α (mixup 1, cutmix 0.2, fmix 0.2, saliencymix 0.2, resizemix 1,
gridmix 0.2, smoothmix 0.2, maskmix 1; attentivemix is left out because it needs
a frozen pretrained scorer). Reported number: median top-1 of the last 10
epochs (AdAutoMix's protocol).

Args (``:k=v,...``):
  mixer: vanilla | mixup | cutmix | fmix | saliencymix | resizemix | gridmix |
    smoothmix | maskmix, or several joined by "+" for a uniform random switch.
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

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, mixer="mixup", epochs=400, min_lr=0.0,
                         ema=False, runlocal=False)
  if arg.epochs < 1:
    raise ValueError(f"`epochs` must be >= 1; got {arg.epochs}.")
  c = common.base_config()
  c.method = "static"
  c.num_epochs = arg.epochs
  c.batch_size = 100
  c.log_every_steps = 100
  c.report_last_epochs = 10

  c.model.name = "cifar_resnet18"
  c.model.width = 1.0

  c.data.name = "cifar100"          # TFDS
  c.data.archive_path = ""
  c.data.augment = "cifar"
  c.data.mean = common.CIFAR10_MEAN   # OpenMixup uses these for CIFAR-100 too
  c.data.std = common.CIFAR10_STD

  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.by_epoch = True
  c.optimizer.min_lr = arg.min_lr

  c.mixer, c.switch = common.mixer_block(arg.mixer)

  c.ema.enabled = arg.ema
  c.ema.schedule = "cosine"
  c.ema.momentum = 0.999
  c.ema.end_momentum = 0.999999

  c.checkpoint.every_steps = 5000
  c.checkpoint.keep = 3

  if arg.runlocal:
    c.num_epochs = 2
    c.batch_size = 16
    c.model.width = 0.0625
    c.data.images_per_class = 2
    c.log_every_steps = 1
    c.report_last_epochs = 2
    c.checkpoint.every_steps = 10
  return c
