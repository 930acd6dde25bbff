"""Wide Residual Networks (Zagoruyko & Komodakis, BMVC 2016, arXiv:1605.07146).

WRN-d-k for 32x32 inputs: a 3x3 stem conv with 16 channels, then 3 groups of
``n = (d - 4) / 6`` pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-
[dropout]-conv3x3) with 16k, 32k and 64k channels and strides 1, 2, 2, a final
BN-ReLU, global average pooling and the linear heads. A block whose channel
count or stride changes projects its shortcut with a 1x1 conv applied to the
*activated* input (as in the authors' code). Convs have no bias and use
kaiming-normal fan-out init. WRN-28-8 is the ``"wrn28_8"`` preset.

Parameter names: ``stem_conv``, ``group{g}_{b}`` (g in 1..3, b from 0) with
``bn1``, ``conv1``, ``bn2``, ``conv2``, ``shortcut_conv``; ``final_bn``;
``heads/{name}``.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from automix_jax.models import _heads

Array = jax.Array
Dtype = Any


def _conv(features, kernel, strides, dtype, param_dtype, name):
  pad = (kernel - 1) // 2
  return nn.Conv(
      features, (kernel, kernel), strides=(strides, strides),
      padding=((pad, pad), (pad, pad)), use_bias=False,
      kernel_init=_heads.conv_kernel_init, dtype=dtype,
      param_dtype=param_dtype, name=name)


class PreActBlock(nn.Module):
  """Pre-activation wide basic block, ``[B, H, W, C] -> [B, H/s, W/s, F]``."""
  features: int
  strides: int = 1
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    o = nn.relu(_heads.batch_norm(train, name="bn1", **kw)(x))
    if self.strides == 1 and x.shape[-1] == self.features:
      shortcut = x
    else:
      shortcut = _conv(self.features, 1, self.strides, name="shortcut_conv",
                       **kw)(o)
    y = _conv(self.features, 3, self.strides, name="conv1", **kw)(o)
    y = nn.relu(_heads.batch_norm(train, name="bn2", **kw)(y))
    # nn.Dropout draws from the 'dropout' rng only when rate > 0 and train.
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = _conv(self.features, 3, 1, name="conv2", **kw)(y)
    return y + shortcut


class WideResNet(nn.Module):
  """WRN-depth-widen_factor with the automix_jax model contract.

  ``apply(variables, images, train=...)`` with ``images`` ``[B, H, W, C]``
  returns

  * ``"logits"``: ``{head: [B, num_classes] float32}``;
  * ``"stages"``: a 3-tuple, one entry per group; for a 32x32 input
    ``stages[0]``: ``[B, 32, 32, 16k]`` (group 1 output),
    ``stages[1]``: ``[B, 16, 16, 32k]`` (group 2 output),
    ``stages[2]``: ``[B, 8, 8, 64k]`` (group 3 output *after* the final
    BN-ReLU, i.e. the tensor that is pooled). Groups 1 and 2 are the raw
    pre-activation sums (the next block normalises them). ``stages[2]`` thus
    has the same 8x8 resolution as a CIFAR ResNet's ``stages[2]`` and is the
    feature to give a mask generator (x4 upsampling to 32x32).
    All widths are multiplied by ``width`` (rounded, at least 1).
  * ``"pooled"``: ``[B, 64k]`` float32.

  Attributes:
    num_classes: classes per head.
    width: channel multiplier on top of ``widen_factor``.
    heads: head names.
    depth: total depth d, with (d - 4) divisible by 6 (28 -> 4 blocks/group).
    widen_factor: k.
    dropout_rate: dropout between the two convs of each block ('dropout' rng).
    dtype: compute dtype; logits are float32.
    param_dtype: parameter dtype.
  """
  num_classes: int
  width: float = 1.0
  heads: Sequence[str] = ("one",)
  depth: int = 28
  widen_factor: int = 8
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_feature_stages(self) -> int:
    """Stages ``feature_mix`` is called after (the 3 groups; 0 is the input)."""
    return 3

  def check_config(self) -> None:
    """Raises ``ValueError`` on invalid fields (no compute)."""
    depth = _heads.check_positive_int(self.depth, "depth", minimum=10)
    if (depth - 4) % 6:
      raise ValueError(
          f"`depth` must satisfy (depth - 4) % 6 == 0 (e.g. 16, 22, 28, 40); "
          f"got {depth}.")
    _heads.check_positive_int(self.widen_factor, "widen_factor")
    _heads.check_rate(self.dropout_rate, "dropout_rate")

  @nn.compact
  def __call__(self, images: Array, *, train: bool,
               feature_mix: Callable[[int, Array], Array] | None = None
               ) -> dict:
    """Forward pass; see the class docstring for shapes.

    ``feature_mix(stage, x) -> x'`` (a model-aware mixer's, see
    docs/interfaces.md) is applied to the input (stage 0) and to the output
    of every group s = 1..3, each time to the tensor ``stages[s - 1]``
    reports (for s = 3 after the final BN-ReLU, the map that is pooled).
    A WRN has 3 stages, not 4.
    """
    _heads.check_images(images)
    _heads.check_feature_mix(feature_mix)
    self.check_config()
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n = (self.depth - 4) // 6
    x = _heads.mix_features(feature_mix, 0, images.astype(self.dtype))
    x = _conv(_heads.scaled(16, self.width), 3, 1, name="stem_conv", **kw)(x)
    stages = []
    for g, (base, strides) in enumerate(((16, 1), (32, 2), (64, 2))):
      features = _heads.scaled(base * self.widen_factor, self.width)
      for b in range(n):
        x = PreActBlock(features, strides if b == 0 else 1, self.dropout_rate,
                        name=f"group{g + 1}_{b}", **kw)(x, train=train)
      if g == 2:  # The last group's stage output is after the final BN-ReLU.
        x = nn.relu(_heads.batch_norm(train, name="final_bn", **kw)(x))
      x = _heads.mix_features(feature_mix, g + 1, x)
      stages.append(x)
    pooled = _heads.global_avg_pool(x)
    logits = _heads.LinearHeads(tuple(self.heads), self.num_classes,
                                name="heads", **kw)(pooled)
    return {"logits": logits, "stages": tuple(stages), "pooled": pooled}


PRESETS = {
    "wrn28_8": dict(depth=28, widen_factor=8),
    # Generic: pass depth=..., widen_factor=... to build().
    "wrn": dict(),
}
