r"""CIFAR-100 at 224 px with DeiT-S (or Swin-T), static mixers: OpenMixup's
ViT recipe, the setting of AdAutoMix's ViT table.

OpenMixup ``configs/classification/cifar100/mixups/vits/
deit_s_mixups_sz224_bs100_randaug.py`` (github.com/Westlake-AI/openmixup):
DeiT-S (``deit_small``, patch 16, drop-path 0.1), label smoothing 0.1,
AdamW lr 1e-3, wd 0.05 except norms / biases / ``cls_token`` /
``pos_embed``, grad clip 5, per-iteration cosine to 1e-6 after 20 warm-up
epochs from 1e-5 x lr, batch 100 on one device, 200 epochs; data
``common.cifar100_224`` (RandomResizedCrop 224 of the 32-px image, RandAugment
m7). Swin-T (``model=swin_t``, drop-path 0.2, no decay on the relative
position bias tables) uses OpenMixup's Swin data config
(``sz224_swin_bs100.py``: RandAugment m9 + random erasing 0.25).
Mixers at the α of OpenMixup's CIFAR-100 ViT table (``common.
OPENMIXUP_VIT_MIXERS``; ``deit`` = CutMix(1) or MixUp(0.8), each with
probability 1/2). OpenMixup reports DeiT-S 200 ep: vanilla 65.81, mixup 69.98,
cutmix 74.12, deit 75.92 (Swin-T: 78.41, 76.78, 80.64, 81.25). Reported
number: median top-1 of the last 10 epochs.

Args (``:k=v,...``):
  mixer: vanilla | mixup | cutmix | deit | fmix | saliencymix | resizemix |
    gridmix | smoothmix | manifoldmix, or several joined by "+"; or one of the
    model-aware transmix | tokenmix | smmix | mixpro | tlalign (SMMix with
    its authors' extra loss terms, config.loss.smmix).
  model: deit_s | swin_t.
  epochs: 200 (600 is OpenMixup's longer schedule).
  decouple: add DecoupleMix's regulariser (config.loss.decouple).
  ema: keep and report an EMA model (momentum 0.99996, DeiT's model EMA).
  runlocal: tiny shapes for a smoke run.

Run:
  python -m experiments.train \
    --config configs/cifar100_deit.py:mixer=deit,model=deit_s \
    --workdir runs/c100_deit_s_deit_200e
"""

from automix_jax.configs import common

MODELS = {
    # name, drop path, no-decay rule, RandAugment policy, erasing prob
    "deit_s": ("deit_small", 0.1, common.VIT_NO_DECAY,
               "rand-m7-mstd0.5-inc1", 0.0),
    "swin_t": ("swin_tiny", 0.2, common.SWIN_NO_DECAY,
               "rand-m9-mstd0.5-inc1", 0.25),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, mixer="deit", model="deit_s", epochs=200,
                         decouple=False, ema=False, runlocal=False)
  if arg.model not in MODELS:
    raise ValueError(f"`model` must be one of {sorted(MODELS)}; got "
                     f"{arg.model!r}.")
  if arg.epochs < 1:
    raise ValueError(f"`epochs` must be >= 1; got {arg.epochs}.")
  name, drop_path, no_decay, randaug, erasing = MODELS[arg.model]
  c = common.base_config()
  c.method = "static"
  c.num_epochs = arg.epochs
  c.batch_size = 100
  c.log_every_steps = 100
  c.report_last_epochs = 10
  c.model.name = name
  c.model.kwargs = {"drop_path_rate": drop_path}
  common.cifar100_224(c, randaugment=randaug, erasing_prob=erasing)
  c.label_smoothing = 0.1
  common.vit_optimizer(c, lr=1e-3, min_lr=1e-6, warmup_epochs=20,
                       warmup_ratio=1e-5, grad_clip_norm=5.0,
                       no_decay=no_decay)
  common.static_vit_tail(c, mixer=arg.mixer, decouple=arg.decouple,
                         ema=arg.ema)
  if arg.runlocal:
    common.shrink_for_local_run(c)
    c.data.image_size = 32
    small = {"deit_s": {"patch_size": 4}, "swin_t": {"window_size": 4}}
    c.model.kwargs = {"drop_path_rate": drop_path, **small[arg.model]}
  return c
