r"""ImageNet-1k, DeiT-S (or DeiT-Ti / Swin-T), 300 epochs: the DeiT recipe.

Touvron et al., "Training data-efficient image transformers & distillation
through attention", ICML 2021 (arXiv 2012.12877), github.com/facebookresearch/
deit ``main.py`` defaults: AdamW (eps 1e-8) lr 5e-4 x batch / 512 (batch
1024: 1e-3), wd 0.05 (no decay on norms, biases, ``cls_token``,
``pos_embed``: timm's no-weight-decay group), cosine per epoch to 1e-5 after
5 warm-up epochs from 1e-6, no gradient clipping, label smoothing 0.1,
drop-path 0.1, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25
(per-pixel), CutMix(1) or MixUp(0.8) with probability 1/2 each, bicubic
RandomResizedCrop 224; eval resize 256 + centre crop 224. Reported DeiT-S
79.8 (DeiT-Ti 72.2). Swin-T (``model=swin_t``): Liu et al.'s recipe differs
in drop-path 0.2, 20 warm-up epochs, grad clip 5, a per-iteration cosine
and no decay on the relative position bias tables (github.com/microsoft/
Swin-Transformer ``config.py``; reported 81.2).

Not reproduced: repeated augmentation (DeiT's ``RASampler``; the data
iterator has no such sampler) and the warm-up shape (DeiT's timm scheduler
raises the lr once per epoch, mmcv's warm-up here once per step). DeiT keeps
a model EMA (0.99996) but reports the online weights; ``ema`` adds it.
TFDS ``imagenet2012`` (prepared with ``tfds build imagenet2012
--file_format=array_record``) has images of varying size: each is cropped on
the host from its original size (RandomResizedCrop; eval resize 256 + centre
crop 224) before the batch is stacked, as DeiT's torchvision pipeline does
(``Augment.for_variable_size``, docs/interfaces.md "Data").

Args (``:k=v,...``): mixer (as configs/cifar100_deit.py; default deit),
model (deit_s | deit_t | swin_t), epochs, decouple, ema.

Run:
  python -m experiments.train --config configs/imagenet_deit.py:model=deit_s \
    --workdir runs/in1k_deit_s
"""

from automix_jax.configs import common

MODELS = {
    # name, drop path, warm-up epochs, grad clip, no-decay rule
    "deit_s": ("deit_small", 0.1, 5, 0.0, common.VIT_NO_DECAY),
    "deit_t": ("deit_tiny", 0.1, 5, 0.0, common.VIT_NO_DECAY),
    "swin_t": ("swin_tiny", 0.2, 20, 5.0, common.SWIN_NO_DECAY),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, mixer="deit", model="deit_s", epochs=300,
                         decouple=False, ema=False)
  if arg.model not in MODELS:
    raise ValueError(f"`model` must be one of {sorted(MODELS)}; got "
                     f"{arg.model!r}.")
  name, drop_path, warmup, clip, no_decay = MODELS[arg.model]
  c = common.base_config()
  c.method = "static"
  c.num_epochs = arg.epochs
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.log_every_steps = 100
  c.report_last_epochs = 1
  c.model.name = name
  c.model.kwargs = {"drop_path_rate": drop_path}
  common.imagenet_224(c, augment="deit")
  c.data.randaugment = "rand-m9-mstd0.5-inc1"
  c.data.erasing_prob = 0.25
  c.data.erasing_mode = "pixel"
  c.label_smoothing = 0.1
  lr = 5e-4 * c.batch_size / 512
  common.vit_optimizer(c, lr=lr, min_lr=1e-5, warmup_epochs=warmup,
                       warmup_ratio=1e-6 / lr, grad_clip_norm=clip,
                       no_decay=no_decay, by_epoch=arg.model != "swin_t")
  return common.static_vit_tail(c, mixer=arg.mixer, decouple=arg.decouple,
                                ema=arg.ema)
