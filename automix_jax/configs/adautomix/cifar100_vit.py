r"""AdAutoMix with vision transformers on CIFAR-100 upsampled to 224 px.

The authors' ``configs/classification/cifar100/vit/{deit_s,swin_t}_adautomix_
nearest.py`` (github.com/JinXins/Adversarial-AutoMixup): AdamW lr 5e-4 ->
1e-4, cosine per iteration (``by_epoch=False``) after a linear warm-up from
1e-5 x lr (20 epochs Swin-T, 5 DeiT-S), wd 0.05 except norms, biases and the
token / position embeddings (Swin: the relative position bias tables), grad
clip 10 (global norm over classifier + generator), batch 100, 200 epochs
(Swin-T also reported at 600: 85.34), N = 3, β = 0.3, generator group lr 1e-3
-> 1e-4 (its own cosine and warm-up), nearest upsampling, ``lam_concat=True``,
label smoothing 0.1, RandAugment, EMA 0.999 -> 0.99996 held for the first
25 %.

* ``model=deit_s``: DeiT-S (``deit_small``, 384-d, 14x14 tokens), drop-path
  0.1, ``lam_margin`` 0.03, N = 3 fixed. The generator reads the tokens after
  block 6 (the reference's ``out_indices=(5, 11)``, "use 6-layer for
  MixBlock": ``stages[1]`` of the default ``stage_blocks`` (3, 6, 9, 12)),
  x16.
* ``model=swin_t``: Swin-T (``swin_tiny``, timm layout), drop-path 0.2,
  ``lam_margin`` 0 and ``is_random=True`` (N drawn from {2, 3} each step) as
  the reference. Generator on 7x7x768 maps, x32. The reference's backbone
  (mmcls) merges patches at the *end* of a stage and reads ``out_indices[0] =
  2``: the merged 7x7x768 map before stage 4's two blocks, with its own
  LayerNorm. The timm-layout model here has no such output; ``mask_layer=3``
  is stage 4's output after its blocks and the final LayerNorm (same shape,
  two blocks deeper). Reported 84.33 (200 ep).

Data (OpenMixup ``_base_/datasets/cifar100/sz224_randaug_bs100.py`` for
DeiT-S, ``sz224_swin_bs100.py`` for Swin-T): ``common.cifar100_224``. The
authors' RandAugment is mmcls's with the FixMatch op list (identity and
colour-transform instead of invert and solarize-add, translate 0.3 rather
than 0.45), which timm's ops approximate.

Args (``:k=v,...``): model (deit_s | swin_t), epochs.
"""

from automix_jax.configs import common
from automix_jax.configs.adautomix import cifar100

MODELS = {
    # name, warm-up epochs, mask_layer, scale, drop path, no-decay rule
    "deit_s": ("deit_small", 5, 1, 16, 0.1, common.VIT_NO_DECAY),
    "swin_t": ("swin_tiny", 20, 3, 32, 0.2, common.SWIN_NO_DECAY),
}
# RandAugment policy and random-erasing probability of each model's recipe.
DATA = {"deit_s": ("rand-m7-mstd0.5-inc1", 0.0),
        "swin_t": ("rand-m9-mstd0.5-inc1", 0.25)}


def get_config(arg=None):
  arg = common.parse_arg(arg, model="deit_s", epochs=200)
  if arg.model not in MODELS:
    raise ValueError(f"`model` must be one of {sorted(MODELS)}; got {arg.model!r}.")
  name, warmup, mask_layer, scale, drop_path, no_decay = MODELS[arg.model]
  c = cifar100.base(model=name, epochs=arg.epochs)
  c.model.kwargs = {"drop_path_rate": drop_path}
  common.cifar100_224(c, randaugment=DATA[arg.model][0],
                      erasing_prob=DATA[arg.model][1])
  c.label_smoothing = 0.1
  common.vit_optimizer(c, lr=5e-4, min_lr=1e-4, warmup_epochs=warmup,
                       warmup_ratio=1e-5, grad_clip_norm=10.0,
                       no_decay=no_decay)
  c.ema.end_momentum = 0.99996
  c.ema.warmup_frac = 0.25
  c.adautomix.mask_layer = mask_layer
  c.adautomix.generator.scale = scale
  c.adautomix.generator.upsample = "nearest"
  c.adautomix.generator.lam_concat = True
  if arg.model == "swin_t":
    c.adautomix.is_random = True
    c.adautomix.lam_margin = 0.0
  # The generator's group: lr 1e-3 -> 1e-4 with the same warm-up (the
  # reference's ``addtional_scheduler``), weight decay as the classifier.
  c.generator_optimizer.shared = False
  c.generator_optimizer.lr = 1e-3
  c.generator_optimizer.min_lr = 1e-4
  c.generator_optimizer.warmup_start_lr = 1e-3 * 1e-5
  return c
