r"""AdAutoMix on Tiny-ImageNet (64 px, 200 classes), ResNet-18 / ResNeXt-50.

The authors' ``configs/classification/tiny_imagenet/.../r18_adautomix_blinear.py``
and its RX-50 sibling (github.com/JinXins/Adversarial-AutoMixup):

| | R-18 | RX-50 |
|---|---|---|
| backbone lr -> min | 0.2 -> 0 | 0.2 -> 0.05 |
| generator lr -> min | 0.1 -> 0 (same cosine) | 0.1 -> 1e-3 |
| batch | 100 | 2 x 50 (fp16; here ``bf16=True``) |
| epochs | 400 | 400 |
| N, β | 3, 0.4 | 3, 0.4 |
| generator | 256 ch, bilinear x4 | 1024 ch, bilinear x4 |

SGD momentum 0.9, wd 1e-4, EMA 0.999 -> 0.999999, α = 1, lam_margin 0.03,
a = 0.5, ``lam_concat=False``. (The reference files write ``co_mix=3``, not a
constructor argument; ``mix_samples`` defaults to 3 anyway.) CIFAR-stem
ResNets, so 64-px images give 16x16 stage-3 maps (x4 = 64). Reported: R-18
69.19, RX-50 72.89.

Data: ``data.name="tiny_imagenet"`` must resolve to a TFDS builder (the
dataset is not in the TFDS catalogue; register one or point ``tfds_data_dir`` at
a prepared copy). mean/std: ImageNet's.

Args (``:k=v,...``): model (r18 | rx50), epochs.
"""

from automix_jax.configs import common
from automix_jax.configs.adautomix import cifar100

IMAGENET_MEAN, IMAGENET_STD = common.IMAGENET_MEAN, common.IMAGENET_STD


def get_config(arg=None):
  arg = common.parse_arg(arg, model="r18", epochs=400)
  models = {"r18": "cifar_resnet18", "rx50": "cifar_resnext50"}
  if arg.model not in models:
    raise ValueError(f"`model` must be one of {sorted(models)}; got {arg.model!r}.")
  c = cifar100.base(model=models[arg.model], epochs=arg.epochs)
  c.data.name = "tiny_imagenet"
  c.data.mean, c.data.std = IMAGENET_MEAN, IMAGENET_STD
  c.adautomix.beta_radio = 0.4
  c.optimizer.lr = 0.2
  c.generator_optimizer.shared = False
  c.generator_optimizer.lr = 0.1
  if arg.model == "r18":
    c.optimizer.min_lr = 0.0
    c.generator_optimizer.min_lr = 0.0
  else:
    c.optimizer.min_lr = 0.05
    c.generator_optimizer.min_lr = 1e-3
    c.bf16 = True
  return c
