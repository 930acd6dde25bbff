r"""CIFAR-10 from the offline JPEG archive with a tiny ViT: a few CPU minutes.

The CPU variant of the DeiT recipe (configs/cifar100_deit.py) for smoke runs
and for the ViT-specific methods: ``vit_tiny`` (patch 4 at 32 px, so an 8x8
token grid, 64-d, 4 blocks, 2 heads), drop-path 0.1, label smoothing 0.1,
AdamW lr 1e-3 / wd 0.05 without decay on norms, biases and the embeddings,
a per-iteration cosine after one warm-up epoch, grad clip 5, CutMix(1) or
MixUp(0.8) (``mixer=deit``); crop + flip (RandAugment is host-side and slow on
two cores). A class-balanced subset of the train split
(``images_per_class``), batch 64, evaluation on the 10k test images.

Args (``:k=v,...``):
  mixer: as configs/cifar100_deit.py (default deit).
  epochs: number of epochs (default 3).
  images_per_class: training images per class (default 100; 0 = all 5000).
  width: embedding multiplier (default 1: 64-d).
  decouple: add DecoupleMix's regulariser.
  ema: keep and report an EMA model.

Run:
  python -m experiments.train --config configs/vit_cpu.py:mixer=deit \
    --workdir runs/cpu_vit_deit
"""

from automix_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, mixer="deit", epochs=3, images_per_class=100,
                         width=1.0, decouple=False, ema=False)
  c = common.base_config()
  c.method = "static"
  c.num_epochs = arg.epochs
  c.batch_size = 64  # a multiple of 8: runs on 1, 2, 4 or 8 devices
  c.eval_batch_size = 500
  c.log_every_steps = 5
  c.report_last_epochs = 2

  c.model.name = "vit_tiny"
  c.model.width = arg.width
  c.model.kwargs = {"drop_path_rate": 0.1}

  c.data.name = "cifar10_archive"
  c.data.archive_path = "../shared/data/cifar10-jpeg.tar.gz"
  c.data.images_per_class = arg.images_per_class
  c.data.augment = "cifar"

  c.label_smoothing = 0.1
  common.vit_optimizer(c, lr=1e-3, min_lr=1e-5, warmup_epochs=1,
                       warmup_ratio=1e-3, grad_clip_norm=5.0)
  c.mixer, c.switch = common.mixer_block(arg.mixer,
                                         common.OPENMIXUP_VIT_MIXERS)
  # SMMix with its authors' fine-grained and consistency terms.
  c.loss.smmix.enabled = c.mixer.name == "smmix"
  c.loss.decouple.enabled = arg.decouple

  c.ema.enabled = arg.ema
  c.ema.schedule = "cosine"

  c.checkpoint.every_steps = 20
  c.checkpoint.keep = 2
  return c
