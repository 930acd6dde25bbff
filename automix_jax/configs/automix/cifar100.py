r"""AutoMix (Liu et al., ECCV 2022, arXiv 2103.13027) on CIFAR-100.

OpenMixup ``configs/classification/cifar100/automix/basic/
r18_l2_a2_near_L1_01_mlr5e_2.py`` (OpenMixup, github.com/Westlake-AI/openmixup):

* ResNet-18 (CIFAR stem) or ResNeXt-50 32x4d, heads ``one`` and ``mix``;
* α = 2 (λ_mb, λ_bb ~ Beta(2, 2) independently), lam_margin 0.08;
* Mix Block on stage-3 features (``mask_layer=2``), C -> C/2 shared query conv,
  nearest upsampling x4 (the reference's rule: 2**mask_layer for images <= 64
  px), ``lam_concat=False``;
* bounded L1 mask loss, weight 0.1 (constant on CIFAR), margin 0.1;
* EMA teacher, momentum 0.999 -> 0.999999 (CosineScheduleHook, constant for the
  first 10 % of iterations);
* SGD lr 0.1, momentum 0.9, wd 1e-4 on every parameter (generator included, one
  shared schedule), per-epoch cosine to min_lr 0.05; batch 100 on 1 device;
  RandomCrop 32 pad 4 + flip; mean/std (0.4914, 0.4822, 0.4465)/(0.2023,
  0.1994, 0.201).
* AutoMix's paper tables use 200/400/800 epochs (default here 800).
* Reported: median top-1 of the EMA teacher's ``one`` head over the last 10
  epochs.

Args (``:k=v,...``): model (r18 | rx50), epochs, runlocal.

Run:
  python -m experiments.train --config configs/automix/cifar100.py:epochs=800 \
    --workdir runs/c100_r18_automix_800e
"""

import ml_collections as mlc

from automix_jax.configs import common

MODELS = {"r18": ("cifar_resnet18", 256), "rx50": ("cifar_resnext50", 1024)}


def automix_block(*, alpha=2.0, lam_margin=0.08, mask_loss=0.1,
                  mask_loss_margin=0.1, mask_loss_schedule="constant",
                  scale=4, upsample="nearest", lam_concat=False, mask_layer=2):
  """``config.automix``: every key the AutoMix method reads."""
  return mlc.ConfigDict({
      "alpha": alpha,                  # λ ~ Beta(α, α)
      "lam_margin": lam_margin,        # plain mixup for the classifier sample
                                       # when λ_bb <= m or 1 - λ_bb <= m
      "mask_layer": mask_layer,        # backbone stage feeding the Mix Block
      "mask_loss": mask_loss,          # weight of the bounded L1 mask loss
      "mask_loss_margin": mask_loss_margin,
      "mask_loss_schedule": mask_loss_schedule,  # "constant" | "cosine" (->0)
      "teacher_bn": "batch_stats",     # "batch_stats" (reference) | "running"
      "generator": mlc.ConfigDict({
          "reduction": 2, "scale": scale,        # 0: the reference's rule
          "upsample": upsample, "lam_concat": lam_concat}),
  })


def get_config(arg=None):
  arg = common.parse_arg(arg, model="r18", epochs=800, runlocal=False)
  if arg.model not in MODELS:
    raise ValueError(f"`model` must be one of {sorted(MODELS)}; got {arg.model!r}.")
  c = common.base_config()
  c.method = "automix"
  c.num_epochs = arg.epochs
  common.openmixup_cifar100(c, min_lr=0.05)
  c.model.name = MODELS[arg.model][0]
  common.automix_ema(c)
  c.automix = automix_block()
  c.log_images_every_steps = common.LEARNED_MASK_IMAGES_EVERY
  # The generator shares the classifier's optimizer and schedule (CIFAR).
  c.generator_optimizer = mlc.ConfigDict({"shared": True})
  c.checkpoint.every_steps = 5000
  if arg.runlocal:
    common.shrink_for_local_run(c)
  return c
