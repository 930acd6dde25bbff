r"""AdAutoMix on ImageNet-1k (224 px), ResNet-18 / ResNet-50, 100 epochs.

The authors' ImageNet config (github.com/JinXins/Adversarial-AutoMixup): SGD lr 0.1 -> 0 (per-epoch cosine), momentum 0.9, wd 1e-4;
generator param group lr 0.1 -> 1e-3 (its own cosine); batch 4 x 64 = 256;
N = 2 (``is_random=False``: the reference's ``mixup`` path), β = 0.1, α = 1,
lam_margin 0.03; generator on stage-3 features (256 ch R-18 / 1024 ch R-50,
14x14), bilinear x16, ``lam_concat=True``; EMA 0.999 -> 0.99999. Reported: R-18
70.86, R-50 78.04.

Data (OpenMixup ``_base_/datasets/imagenet/basic_sz224_4xbs64.py``):
RandomResizedCrop 224 (scale 0.08-1, bicubic) + flip; eval resize 256 (bicubic)
+ centre crop 224: ``data.augment = "imagenet"`` with ``resize_method =
"bicubic"``, ``crop_pct = 0.875``.

Not reproduced: the R-50 config puts a BatchNorm after the generator's q and k
convs; ``AdaptiveMask`` has no such option (docs/learned_mixing.md, gaps).
TFDS ``imagenet2012`` images vary in size: the crops run on the host, per
image, from the decoded image (``Augment.for_variable_size``), as in the
reference's torchvision pipeline.

Args (``:k=v,...``): model (r18 | r50), epochs.
"""

from automix_jax.configs import common
from automix_jax.configs.adautomix import cifar100


def get_config(arg=None):
  arg = common.parse_arg(arg, model="r18", epochs=100)
  models = {"r18": "resnet18", "r50": "resnet50"}
  if arg.model not in models:
    raise ValueError(f"`model` must be one of {sorted(models)}; got {arg.model!r}.")
  c = cifar100.base(model=models[arg.model], epochs=arg.epochs)
  c.batch_size = 256
  common.imagenet_224(c, augment="imagenet")
  c.optimizer.lr = 0.1
  c.optimizer.min_lr = 0.0
  c.ema.end_momentum = 0.99999
  c.adautomix.mix_samples = 2
  c.adautomix.beta_radio = 0.1
  c.adautomix.generator.scale = 16
  c.adautomix.generator.lam_concat = True
  c.generator_optimizer.shared = False
  c.generator_optimizer.lr = 0.1
  c.generator_optimizer.min_lr = 1e-3
  c.checkpoint.every_steps = 5000
  return c
