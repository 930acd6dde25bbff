r"""AdAutoMix on fine-grained classification (CUB-200, Stanford Cars, FGVC
Aircraft) at 224 px, ImageNet-pretrained backbones, 200 epochs.

The authors' code (github.com/JinXins/Adversarial-AutoMixup, ``configs/classification/{cub200,cars,
aircrafts}/...``). Common: SGD momentum 0.9, wd 5e-4, batch 16, backbone lr
1e-3 -> min (per-epoch cosine), generator group lr 0.1 -> 1e-3 (its own cosine),
α = 1, a = 0.5, bilinear x16 on stage-3 features, ``lam_concat=True``, EMA
0.999 -> 0.99999.

| dataset | model | backbone min lr | generator min lr | N / random | β | lam_margin |
|---|---|---|---|---|---|---|
| cub | r18 | 0 | 1e-3 | 3 / random | 0.3 | 0.03 |
| cub | r50 | 0 | 1e-3 | 3 / fixed | 0.1 | 0.03 |
| cub | rx50 | 0 | 5e-4 | 3 / fixed | 0.1 | 0.03 |
| cars | r18 | 0 | 1e-3 | 3 / fixed | 0.5 | 0.03 |
| cars | rx50 | 0 | 1e-3 | 3 / fixed | 0.3 | 0.03 |
| aircraft | r18 | 5e-4 | 1e-3 | 3 / random | 0.3 | 0 |
| aircraft | rx50 | 0 | 1e-3 | 3 / random | 0.6 | 0.03 |

Reported (CUB R18/R50, FGVC R18/RX50, Cars R18/RX50): 80.88 / 84.57,
81.73 / 87.16, 89.19 / 91.59. (The Cars/CUB files write ``mixed_radio``, a typo
that leaves ``mixup_radio`` at its default 0.5.)

Data (OpenMixup ``_base_/datasets/cub200/sz224_bs16.py``, the same for Cars and
Aircraft): resize 256, RandomResizedCrop 224 (scale 0.5-1, bilinear) + flip;
eval resize 256 + centre crop 224: ``data.augment = "imagenet"`` with
``crop_scale = (0.5, 1)``, ``crop_pct = 0.875``. (The crop fractions are
relative, so cropping the decoded image directly instead of its 256-px resize
changes only the resampling.)

ImageNet-pretrained initialisation (the reference's, e.g. the CUB-R18 log loads
``resnet18-pytorch.pth``): convert the torchvision weights once and pass the
file as ``init`` (docs/training.md, "Fine-tuning")::

  python scripts/convert_torch_weights.py --torchvision resnet18 --pretrained \
    --out weights/r18_in1k.npz      # resnet50 / resnext50_32x4d likewise
  ... --config adautomix/fine_grained:dataset=cub,model=r18,init=weights/r18_in1k.npz

which sets ``config.init_from = {path: init, kind: "converted", skip:
"^params/heads/"}``: backbone and BatchNorm statistics from ImageNet for the
classifier and its EMA teacher, fresh heads (``one``, ``mix``) for the new
classes, a fresh generator. Without ``init`` the backbone starts from scratch.

The TFDS datasets' images vary in size: the crops run on the host, per image,
from the decoded image (``Augment.for_variable_size``).

ResNeXt-50 is ``resnet50`` with ``groups=32, base_width=4``.

Args (``:k=v,...``): dataset (cub | cars | aircraft), model (r18 | r50 | rx50),
epochs, init (path of a converted .npz; "" = from scratch).
"""

from automix_jax.configs import common
from automix_jax.configs.adautomix import cifar100
from automix_jax.configs.adautomix import tiny_imagenet

DATASETS = {"cub": "caltech_birds2011", "cars": "cars196",
            "aircraft": "fgvc_aircraft"}
# (dataset, model) -> (backbone min lr, generator min lr, is_random, β, margin)
SETTINGS = {
    ("cub", "r18"): (0.0, 1e-3, True, 0.3, 0.03),
    ("cub", "r50"): (0.0, 1e-3, False, 0.1, 0.03),
    ("cub", "rx50"): (0.0, 5e-4, False, 0.1, 0.03),
    ("cars", "r18"): (0.0, 1e-3, False, 0.5, 0.03),
    ("cars", "rx50"): (0.0, 1e-3, False, 0.3, 0.03),
    ("aircraft", "r18"): (5e-4, 1e-3, True, 0.3, 0.0),
    ("aircraft", "rx50"): (0.0, 1e-3, True, 0.6, 0.03),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, dataset="cub", model="r18", epochs=200, init="")
  key = (arg.dataset, arg.model)
  if key not in SETTINGS:
    raise ValueError(f"(dataset, model) must be one of {sorted(SETTINGS)}; got "
                     f"{key}.")
  min_lr, gen_min_lr, is_random, beta, margin = SETTINGS[key]
  name = "resnet18" if arg.model == "r18" else "resnet50"
  c = cifar100.base(model=name, epochs=arg.epochs)
  if arg.model == "rx50":
    c.model.kwargs = {"groups": 32, "base_width": 4}
  c.batch_size = 16
  c.data.name = DATASETS[arg.dataset]
  c.data.augment = "imagenet"
  c.data.image_size = 224
  c.data.crop_scale = (0.5, 1.0)
  c.data.resize_method = "bilinear"
  c.data.crop_pct = 0.875
  c.data.mean, c.data.std = tiny_imagenet.IMAGENET_MEAN, tiny_imagenet.IMAGENET_STD
  c.optimizer.lr = 1e-3
  c.optimizer.min_lr = min_lr
  c.optimizer.weight_decay = 5e-4
  c.ema.end_momentum = 0.99999
  c.adautomix.is_random = is_random
  c.adautomix.beta_radio = beta
  c.adautomix.lam_margin = margin
  c.adautomix.generator.scale = 16
  c.adautomix.generator.lam_concat = True
  c.generator_optimizer.shared = False
  c.generator_optimizer.lr = 0.1
  c.generator_optimizer.min_lr = gen_min_lr
  if arg.init:
    c.init_from.path = arg.init
    c.init_from.kind = "converted"
    c.init_from.skip = "^params/heads/"
  return c
