"""ResNet (He et al., CVPR 2016, arXiv:1512.03385) and ResNeXt (Xie et al.,
CVPR 2017, arXiv:1611.05431) in Flax Linen, CIFAR and ImageNet variants.

Layout follows torchvision's ``resnet.py`` ("ResNet v1.5": the stride of a
bottleneck sits on its 3x3 conv) and the CIFAR variant used by the AutoMix and
AdAutoMix reference code (openmixup ``ResNet_CIFAR``): a 3x3 stride-1 stem
without max-pool, so a 32x32 image gives stage outputs of 32, 16, 8 and 4
pixels. ImageNet variants use the 7x7 stride-2 stem and a 3x3 stride-2 max-pool
(224 -> 56, 28, 14, 7).

Details that matter for parity with the PyTorch reference:
* convs have no bias and use kaiming-normal fan-out init (torchvision default);
* padding is explicit and symmetric as in torch (``"SAME"`` would pad stride-2
  convs asymmetrically and shift every feature map by half a pixel);
* ``zero_init_residual``: the last BatchNorm of every residual branch starts
  with gamma 0 (``bn2`` in a basic block, ``bn3`` in a bottleneck), as in the
  reference CIFAR configs;
* BatchNorm momentum 0.9 / eps 1e-5 (torch's 0.1 / 1e-5).

Parameter names: ``stem_conv``, ``stem_bn``, ``layer{s}_{b}`` (stage s in 1..4,
block b from 0) with ``conv1..3``, ``bn1..3``, ``downsample_conv``,
``downsample_bn``, and ``heads/{name}``.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from automix_jax.models import _heads

Array = jax.Array
Dtype = Any

_BLOCKS = ("basic", "bottleneck")
_STEMS = ("cifar", "imagenet")


def _conv(features: int, kernel: int, strides: int, dtype: Dtype,
          param_dtype: Dtype, name: str, groups: int = 1) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(
      features, (kernel, kernel), strides=(strides, strides),
      padding=((pad, pad), (pad, pad)), use_bias=False,
      feature_group_count=groups, kernel_init=_heads.conv_kernel_init,
      dtype=dtype, param_dtype=param_dtype, name=name)


class BasicBlock(nn.Module):
  """3x3 -> 3x3 residual block (expansion 1). ``[B, H, W, C] -> [B, H/s, W/s, F]``."""
  features: int
  strides: int = 1
  zero_init_residual: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out_features = self.features * self.expansion
    y = _conv(self.features, 3, self.strides, name="conv1", **kw)(x)
    y = nn.relu(_heads.batch_norm(train, name="bn1", **kw)(y))
    y = _conv(out_features, 3, 1, name="conv2", **kw)(y)
    y = _heads.batch_norm(train, zero_init=self.zero_init_residual, name="bn2",
                          **kw)(y)
    return nn.relu(y + _shortcut(x, out_features, self.strides, train, **kw))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, groups) -> 1x1 block, expansion 4.

  ``mid_features`` is the 3x3 conv width: ``features`` for ResNet, and
  ``groups * int(features * base_width / 64)`` for ResNeXt (torchvision rule).
  """
  features: int
  mid_features: int
  strides: int = 1
  groups: int = 1
  zero_init_residual: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out_features = self.features * self.expansion
    y = _conv(self.mid_features, 1, 1, name="conv1", **kw)(x)
    y = nn.relu(_heads.batch_norm(train, name="bn1", **kw)(y))
    y = _conv(self.mid_features, 3, self.strides, name="conv2",
              groups=self.groups, **kw)(y)
    y = nn.relu(_heads.batch_norm(train, name="bn2", **kw)(y))
    y = _conv(out_features, 1, 1, name="conv3", **kw)(y)
    y = _heads.batch_norm(train, zero_init=self.zero_init_residual, name="bn3",
                          **kw)(y)
    return nn.relu(y + _shortcut(x, out_features, self.strides, train, **kw))


def _shortcut(x: Array, out_features: int, strides: int, train: bool, *,
              dtype: Dtype, param_dtype: Dtype) -> Array:
  """Identity, or 1x1 strided conv + BN when the shape changes (option B)."""
  if strides == 1 and x.shape[-1] == out_features:
    return x
  # Called from inside a compact __call__, so these submodules attach to the
  # calling block and get the names below.
  x = _conv(out_features, 1, strides, dtype, param_dtype, "downsample_conv")(x)
  return _heads.batch_norm(train, dtype, param_dtype, name="downsample_bn")(x)


class ResNet(nn.Module):
  """ResNet / ResNeXt classifier with the automix_jax model contract.

  ``apply(variables, images, train=...)`` with ``images`` ``[B, H, W, C]``
  float returns

  * ``"logits"``: ``{head: [B, num_classes] float32}``,
  * ``"stages"``: the 4 stage outputs ``[B, h_s, w_s, C_s]`` in ``dtype``;
    ``C_s = scaled(64 * 2**s, width) * expansion`` and, for a 32x32 CIFAR input,
    ``h_s = 32, 16, 8, 4``. ``stages[2]`` ("stage 3") is the AutoMix/AdAutoMix
    mask feature, ``[B, 8, 8, 256]`` for CIFAR ResNet-18 at width 1;
  * ``"pooled"``: ``[B, C_3]`` float32 global average of ``stages[3]``.

  Attributes:
    stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    block: ``"basic"`` or ``"bottleneck"``.
    num_classes: classes per head.
    width: channel multiplier; every stage width is rounded, at least 1. For
      ResNeXt the per-group width is scaled (at least 1) and ``groups`` is kept.
    heads: head names.
    stem: ``"cifar"`` (3x3/1 conv, no pool) or ``"imagenet"`` (7x7/2 + pool).
    groups: 3x3 conv groups (ResNeXt cardinality, 32 for 32x4d).
    base_width: ResNeXt width per group at width 1 (4 for 32x4d; 64 = ResNet).
    zero_init_residual: zero gamma of the last BN of every residual branch.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); logits are float32.
    param_dtype: parameter dtype.
  """
  stage_sizes: Sequence[int]
  block: str
  num_classes: int
  width: float = 1.0
  heads: Sequence[str] = ("one",)
  stem: str = "cifar"
  groups: int = 1
  base_width: int = 64
  zero_init_residual: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_feature_stages(self) -> int:
    """Stages ``feature_mix`` is called after (1..4; 0 is the input)."""
    return len(self.stage_sizes)

  def check_config(self) -> None:
    """Raises ``ValueError`` on invalid fields (no compute)."""
    if self.block not in _BLOCKS:
      raise ValueError(f"`block` must be one of {_BLOCKS}; got {self.block!r}.")
    if self.stem not in _STEMS:
      raise ValueError(f"`stem` must be one of {_STEMS}; got {self.stem!r}.")
    if len(self.stage_sizes) != 4 or any(
        _heads.check_positive_int(n, "stage_sizes") < 1
        for n in self.stage_sizes):
      raise ValueError(
          f"`stage_sizes` must be 4 positive ints; got {self.stage_sizes!r}.")
    _heads.check_positive_int(self.groups, "groups")
    _heads.check_positive_int(self.base_width, "base_width")
    if self.block == "basic" and (self.groups != 1 or self.base_width != 64):
      raise ValueError(
          "`groups`/`base_width` apply to bottleneck blocks only (torchvision "
          f"BasicBlock supports groups=1, base_width=64); got groups="
          f"{self.groups}, base_width={self.base_width}.")

  @nn.compact
  def __call__(self, images: Array, *, train: bool,
               feature_mix: Callable[[int, Array], Array] | None = None
               ) -> dict:
    """Forward pass; see the class docstring for shapes.

    ``feature_mix(stage, x) -> x'`` (a model-aware mixer's, see
    docs/interfaces.md) is applied to the input (stage 0, ``[B, H, W, C]`` in
    ``dtype``) and to the output of every stage s = 1..4 (the tensors
    ``"stages"`` reports, which then hold the mixed features).
    """
    _heads.check_images(images)
    _heads.check_feature_mix(feature_mix)
    self.check_config()
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _heads.mix_features(feature_mix, 0, images.astype(self.dtype))
    stem_features = _heads.scaled(64, self.width)
    if self.stem == "cifar":
      x = _conv(stem_features, 3, 1, name="stem_conv", **kw)(x)
      x = nn.relu(_heads.batch_norm(train, name="stem_bn", **kw)(x))
    else:
      x = _conv(stem_features, 7, 2, name="stem_conv", **kw)(x)
      x = nn.relu(_heads.batch_norm(train, name="stem_bn", **kw)(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    stages = []
    for s, num_blocks in enumerate(self.stage_sizes):
      features = _heads.scaled(64 * 2**s, self.width)
      for b in range(num_blocks):
        strides = 2 if (s > 0 and b == 0) else 1
        name = f"layer{s + 1}_{b}"
        if self.block == "basic":
          x = BasicBlock(features, strides, self.zero_init_residual, name=name,
                         **kw)(x, train=train)
        else:
          per_group = max(1, int(features * self.base_width / 64))
          x = Bottleneck(features, per_group * self.groups, strides,
                         self.groups, self.zero_init_residual, name=name,
                         **kw)(x, train=train)
      x = _heads.mix_features(feature_mix, s + 1, x)
      stages.append(x)

    pooled = _heads.global_avg_pool(x)
    logits = _heads.LinearHeads(tuple(self.heads), self.num_classes,
                                name="heads", **kw)(pooled)
    return {"logits": logits, "stages": tuple(stages), "pooled": pooled}


# name -> ResNet fields (all but num_classes/width/heads/dtype).
PRESETS = {
    "cifar_resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic",
                           stem="cifar"),
    "cifar_resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic",
                           stem="cifar"),
    "cifar_resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck",
                           stem="cifar"),
    "cifar_resnext50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck",
                            stem="cifar", groups=32, base_width=4),
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic", stem="imagenet"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck",
                     stem="imagenet"),
}
