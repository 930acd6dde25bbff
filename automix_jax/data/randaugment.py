"""RandAugment as timm's ``rand-m9-mstd0.5-inc1`` (host, Pillow).

RandAugment: Cubuk, Zoph, Shlens and Le, "RandAugment: Practical automated
data augmentation with a reduced search space", CVPR Workshops 2020. The op
set, magnitude rules and policy string are timm's
(github.com/huggingface/pytorch-image-models, ``timm/data/auto_augment.py``),
which DeiT (Touvron et al., ICML 2021, github.com/facebookresearch/deit
``main.py``: ``--aa rand-m9-mstd0.5-inc1``) and the Swin / OpenMixup ViT
recipes use:

* each image gets ``n`` ops (default 2) drawn uniformly *with* replacement
  from 15 ops; each is applied with probability ``p`` (default 0.5);
* its magnitude is ``N(m, mstd)`` clipped to [0, 10] (``mstd`` > 100: ``U(0,
  m)``), level ``= magnitude / 10``;
* signed ops (rotate, shear, translate, the ``*Increasing`` enhancements)
  negate their argument with probability 0.5;
* ``inc1`` selects the variants whose strength grows with the magnitude.

The ops are Pillow's, called as timm calls them, so an op at a given
magnitude and sign gives timm's image to the bit (tests/data/test_peers_224.py).
Geometric ops fill with ``fill`` (timm: the dataset mean ``round(255 * mean)``)
and resample with ``interpolation`` (DeiT: bicubic).
"""

from __future__ import annotations

import re
from typing import Dict, Sequence

import numpy as np

DEFAULT_POLICY = "rand-m9-mstd0.5-inc1"

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS.
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize",
            "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness",
            "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
    "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
    "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
SIGNED_OPS = frozenset((
    "Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing"))
_MAX_LEVEL = 10.0
_TRANSLATE_PCT = 0.45


def parse_policy(policy: str) -> Dict[str, float]:
  """timm's ``rand-...`` string -> ``{num_ops, magnitude, magnitude_std, prob,
  increasing}``.

  Sections (any order, dash-separated after ``rand``): ``m`` magnitude (int,
  default 10), ``n`` ops per image (2), ``p`` probability per op (0.5),
  ``mstd`` magnitude std (0; > 100 = uniform), ``inc`` 0/1 (0). ``mmax`` and
  ``t`` (weighted op sets) are not supported.
  """
  if not isinstance(policy, str) or not policy.startswith("rand"):
    raise ValueError(
        f"`randaugment` must be a timm RandAugment string like "
        f"'{DEFAULT_POLICY}'; got {policy!r}.")
  out = {"num_ops": 2, "magnitude": 10.0, "magnitude_std": 0.0, "prob": 0.5,
         "increasing": False}
  parts = policy.split("-")
  if parts[0] != "rand":
    raise ValueError(f"`randaugment` must start with 'rand-'; got {policy!r}.")
  for part in parts[1:]:
    m = re.fullmatch(r"(mstd|inc|m|n|p)(\d+(?:\.\d*)?)", part)
    if m is None:
      raise ValueError(
          f"`randaugment` section {part!r} of {policy!r} is not one of "
          "m<int>, n<int>, p<float>, mstd<float>, inc<0|1>.")
    key, val = m.groups()
    if key == "m":
      out["magnitude"] = float(int(float(val)))
    elif key == "n":
      out["num_ops"] = int(float(val))
    elif key == "p":
      out["prob"] = float(val)
    elif key == "mstd":
      out["magnitude_std"] = float("inf") if float(val) > 100 else float(val)
    else:
      out["increasing"] = bool(int(float(val)))
  if not 0.0 <= out["prob"] <= 1.0:
    raise ValueError(f"`randaugment` p must be in [0, 1]; got {policy!r}.")
  return out


def _affine(img, matrix, fill, resample):
  from PIL import Image
  return img.transform(img.size, Image.Transform.AFFINE, matrix,
                       resample=resample, fillcolor=fill)


def apply_op(img, name: str, magnitude: float, *, negate: bool = False,
             fill: Sequence[int] = (128, 128, 128), resample=None):
  """One RandAugment op on a PIL image at ``magnitude`` in [0, 10].

  ``negate`` flips the sign of signed ops (timm's ``_randomly_negate``);
  ``resample`` is a PIL filter (default bicubic).
  """
  from PIL import Image, ImageEnhance, ImageOps

  if resample is None:
    resample = Image.Resampling.BICUBIC
  fill = tuple(int(v) for v in fill)
  level = magnitude / _MAX_LEVEL
  sign = -1.0 if negate and name in SIGNED_OPS else 1.0
  if name == "AutoContrast":
    return ImageOps.autocontrast(img)
  if name == "Equalize":
    return ImageOps.equalize(img)
  if name == "Invert":
    return ImageOps.invert(img)
  if name == "Rotate":
    return img.rotate(sign * 30.0 * level, resample=resample, fillcolor=fill)
  if name.startswith("Posterize"):
    bits = int(level * 4)
    bits = 4 - bits if name == "PosterizeIncreasing" else bits
    return img if bits >= 8 else ImageOps.posterize(img, bits)
  if name.startswith("Solarize") and name != "SolarizeAdd":
    thresh = min(256, int(level * 256))
    thresh = 256 - thresh if name == "SolarizeIncreasing" else thresh
    return ImageOps.solarize(img, thresh)
  if name == "SolarizeAdd":
    add = min(128, int(level * 110))
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))
  enhancers = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
               "Brightness": ImageEnhance.Brightness,
               "Sharpness": ImageEnhance.Sharpness}
  base = name[:-len("Increasing")] if name.endswith("Increasing") else name
  if base in enhancers:
    if name.endswith("Increasing"):
      factor = max(0.1, 1.0 + sign * level * 0.9)  # 1 = unchanged
    else:
      factor = level * 1.8 + 0.1
    return enhancers[base](img).enhance(factor)
  if name in ("ShearX", "ShearY"):
    f = sign * level * 0.3
    m = (1, f, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, f, 1, 0)
    return _affine(img, m, fill, resample)
  if name in ("TranslateXRel", "TranslateYRel"):
    pct = sign * level * _TRANSLATE_PCT
    m = ((1, 0, pct * img.size[0], 0, 1, 0) if name == "TranslateXRel" else
         (1, 0, 0, 0, 1, pct * img.size[1]))
    return _affine(img, m, fill, resample)
  raise ValueError(f"unknown RandAugment op {name!r}; expected one of "
                   f"{sorted(set(RAND_OPS) | set(RAND_INCREASING_OPS))}.")


def randaugment_np(images: np.ndarray, rng: np.random.Generator, *,
                   policy: str = DEFAULT_POLICY,
                   fill: Sequence[int] = (128, 128, 128),
                   interpolation: str = "bicubic") -> np.ndarray:
  """timm RandAugment on a uint8 batch (host, Pillow).

  Args:
    images: uint8 ``[B, H, W, 3]``.
    rng: numpy Generator; draws, per image and layer, the op, the apply coin,
      the magnitude noise and the sign.
    policy: timm RandAugment string (``parse_policy``).
    fill: RGB fill of geometric ops (timm: ``round(255 * mean)``).
    interpolation: "bicubic", "bilinear" or "nearest" for geometric ops.

  Returns:
    uint8 ``[B, H, W, 3]``.
  """
  from PIL import Image

  from automix_jax.data.transforms import _check_batch, _pil_resample

  b = _check_batch(images, uint8=True, channels=(3,))[0]
  cfg = parse_policy(policy)
  if interpolation not in ("bicubic", "bilinear", "nearest"):
    raise ValueError("`interpolation` must be 'bicubic', 'bilinear' or "
                     f"'nearest', got {interpolation!r}.")
  if len(tuple(fill)) != 3:
    raise ValueError(f"`fill` must be an RGB triple, got {fill!r}.")
  resample = _pil_resample(interpolation)
  names = RAND_INCREASING_OPS if cfg["increasing"] else RAND_OPS
  n = cfg["num_ops"]
  choice = rng.integers(0, len(names), size=(b, n))
  # timm applies an op unless random() > p.
  apply = rng.random((b, n)) <= cfg["prob"]
  m, mstd = cfg["magnitude"], cfg["magnitude_std"]
  if mstd == float("inf"):
    mags = rng.uniform(0.0, m, size=(b, n))
  elif mstd > 0:
    mags = rng.normal(m, mstd, size=(b, n))
  else:
    mags = np.full((b, n), m)
  mags = np.clip(mags, 0.0, _MAX_LEVEL)
  negate = rng.random((b, n)) > 0.5
  out = np.empty_like(images)
  for i in range(b):
    img = Image.fromarray(images[i])
    for j in range(n):
      if apply[i, j]:
        img = apply_op(img, names[choice[i, j]], float(mags[i, j]),
                       negate=bool(negate[i, j]), fill=fill, resample=resample)
    out[i] = np.asarray(img, np.uint8)
  return out
