r"""CIFAR-10 from the offline JPEG archive, a tiny ResNet-18, a few CPU minutes.

The ``cpu`` variant of the CIFAR recipe: same optimizer and schedule shape as
``cifar100_resnet18.py`` but width 1/8, a class-balanced subset of the train
split (``images_per_class``) and few epochs, so a full run (train + per-epoch
eval on the 10k test images + ECE/FGSM) finishes in minutes on 2 CPU cores.
Mixer α as OpenMixup's CIFAR recipe.

Args (``:k=v,...``):
  mixer: as in cifar100_resnet18.py (vanilla, mixup, cutmix, ... or "a+b").
  label_mix: none | sumix (SUMix's label correction on top of the mixer).
  epochs: number of epochs (default 3).
  images_per_class: training images per class (default 100; 0 = all 5000).
  width: ResNet width multiplier (default 0.125).
  ema: keep and report an EMA teacher (cosine momentum schedule).

Run:
  python -m experiments.train --config configs/cifar10_cpu.py:mixer=mixup \
    --workdir runs/cpu_mixup --config.num_epochs=3
"""

from automix_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, mixer="mixup", label_mix="none", epochs=3,
                         images_per_class=100, width=0.125, ema=False)
  c = common.base_config()
  c.method = "static"
  c.num_epochs = arg.epochs
  c.batch_size = 64  # a multiple of 8: runs on 1, 2, 4 or 8 devices / processes
  c.eval_batch_size = 500
  c.log_every_steps = 5
  c.report_last_epochs = 2

  c.model.name = "cifar_resnet18"
  c.model.width = arg.width

  c.data.name = "cifar10_archive"
  c.data.archive_path = "../shared/data/cifar10-jpeg.tar.gz"
  c.data.images_per_class = arg.images_per_class
  c.data.augment = "cifar"

  c.optimizer.lr = 0.1
  c.optimizer.min_lr = 0.0

  c.mixer, c.switch = common.mixer_block(arg.mixer)
  c.label_mix = common.label_mix_block(arg.label_mix)

  c.ema.enabled = arg.ema
  c.ema.schedule = "cosine"

  c.checkpoint.every_steps = 20
  c.checkpoint.keep = 2
  return c
