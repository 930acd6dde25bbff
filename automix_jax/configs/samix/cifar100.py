r"""SAMix (Li et al., arXiv 2111.15454, 2021) on CIFAR-100.

OpenMixup ``configs/classification/cifar100/samix/basic/
r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2.py`` and its 800-epoch
R-18 run ``basic/r18/unsampling_modebilinear/
..._lam_mul_k0_25_mask_adjust0_25_ep800.py`` (OpenMixup,
github.com/Westlake-AI/openmixup), trained by the ``AutoMixup`` classifier:

* AutoMix's recipe (configs/automix/cifar100.py): ResNet-18 (CIFAR stem) or
  ResNeXt-50 32x4d, heads ``one``/``mix``, α = 2, lam_margin 0.08, Mix Block on
  stage-3 features, EMA teacher 0.999 -> 0.999999, SGD lr 0.1 momentum 0.9 wd
  1e-4 on every parameter (one shared schedule), per-epoch cosine to 0.05,
  batch 100, crop + flip.
* SAMix's Mix Block: ``lam_mul=True, lam_residual=True, lam_mul_k=0.25``
  (x·(1+λ̂), x[π]·(2-λ̂)), ``x_qk_concat=True`` (separate q/k convs on
  concat(x, x[π])), value ``ConvNeck`` 256 -> 128 -> 1 (conv-BN-ELU-conv,
  ``value_reduction=2``), ``unsampling_mode="bilinear"`` (x4).
* Mask loss ``"L1+Variance"``, weight 0.1 (constant), margin 0.1.
* Teacher head-``mix`` loss: soft CE with ``neg_weight`` η = 0.5.
* ``mask_adjust`` 0.25 as in the 800-epoch R-18 run (the ``basic`` file has 0;
  both say "0.25 for CIFAR"); pass ``mask_adjust=0`` for the basic file.
* Reported: median top-1 of the EMA teacher's ``one`` head over the last 10
  epochs.

Args (``:k=v,...``): model (r18 | rx50), epochs (default 800), mask_adjust
(default 0.25), runlocal.

Run:
  python -m experiments.train --config configs/samix/cifar100.py:epochs=800 \
    --workdir runs/c100_r18_samix_800e
"""

import ml_collections as mlc

from automix_jax.configs import common
from automix_jax.configs.automix import cifar100 as automix_cifar100


def samix_block(*, mask_adjust=0.25, **automix_keys):
  """``config.samix``: AutoMix's keys (``automix_block``) and SAMix's."""
  block = automix_cifar100.automix_block(upsample="bilinear", **automix_keys)
  block.update({
      "eta": 0.5,                      # weight of the non-mixed classes in the
                                       # teacher's soft CE (neg_weight)
      "mask_loss_mode": "L1+Variance",  # "L1" | "L1+Variance"
      "mask_adjust": mask_adjust,      # prob. of rescaling the classifier's
                                       # mask to the mean λ
      "mask_adjust_lam": "mb",         # "mb" (reference: λ_mb) | "bb"
  })
  block.generator.update({
      "lam_mul": 1.0, "lam_mul_k": 0.25, "lam_residual": True,
      "x_qk_concat": True,
      "value_reduction": 2,            # hidden C/2: 256 -> 128 -> 1
  })
  return block


def from_automix(c: mlc.ConfigDict, *, mask_adjust=0.25) -> mlc.ConfigDict:
  """An AutoMix config (``configs/automix/``) turned into SAMix: the method and
  its block; everything else (model, data, optimizer, EMA) is shared."""
  c.method = "samix"
  del c["automix"]
  c.samix = samix_block(mask_adjust=mask_adjust)
  return c


def get_config(arg=None):
  arg = common.parse_arg(arg, model="r18", epochs=800, mask_adjust=0.25,
                         runlocal=False)
  return from_automix(automix_cifar100.get_config(
      f"model={arg.model},epochs={arg.epochs},runlocal={arg.runlocal}"),
                      mask_adjust=arg.mask_adjust)
