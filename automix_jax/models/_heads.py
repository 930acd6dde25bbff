"""Pieces shared by every model family: input checks, pooling, linear heads.

The heads follow AutoMix (Liu et al., ECCV 2022, arXiv:2103.13027) and AdAutoMix
(Qin et al., ICLR 2024, arXiv:2312.11954): every classifier head is global
pooling followed by one fully connected layer initialised N(0, 0.01) with zero
bias, and a model carries one head per name (``("one", "mix")`` for those
methods: clean CE and mixed CE go through separate heads).
"""

import numbers
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# torchvision's default conv init (kaiming_normal_, mode="fan_out",
# nonlinearity="relu"): an untruncated normal with std sqrt(2 / fan_out).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# The AutoMix/AdAutoMix heads: N(0, 0.01), bias 0.
head_kernel_init = nn.initializers.normal(stddev=0.01)


def scaled(channels: int, width: float) -> int:
  """``channels * width`` rounded, at least 1 (the width multiplier rule)."""
  return max(1, int(round(channels * width)))


def check_images(images: Any, *, arg: str = "images") -> Tuple[int, ...]:
  """Raises ``ValueError`` unless ``images`` is a floating ``[B, H, W, C]`` array.

  Only static shape and dtype are inspected, so this runs at trace time.

  Returns:
    The shape as a tuple of ints.
  """
  shape = getattr(images, "shape", None)
  dtype = getattr(images, "dtype", None)
  if shape is None or dtype is None:
    raise ValueError(
        f"`{arg}` must be a [B, H, W, C] float array; got "
        f"{type(images).__name__}.")
  if len(shape) != 4:
    raise ValueError(
        f"`{arg}` must have shape [B, H, W, C] (channels last); got shape "
        f"{tuple(shape)}.")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"`{arg}` must be floating point, already normalised (e.g. "
        f"`(images / 255 - mean) / std`); got dtype {dtype}.")
  if min(shape) < 1:
    raise ValueError(f"`{arg}` must have no empty axis; got shape {tuple(shape)}.")
  return tuple(int(s) for s in shape)


def check_head_names(heads: Any, *, arg: str = "heads") -> Tuple[str, ...]:
  """Returns ``heads`` as a tuple after checking it names >= 1 unique heads."""
  if isinstance(heads, str) or not isinstance(heads, (tuple, list)):
    raise ValueError(
        f"`{arg}` must be a non-empty tuple of unique head names, e.g. "
        f"(\"one\",) or (\"one\", \"mix\"); got {heads!r}.")
  heads = tuple(heads)
  if not heads:
    raise ValueError(f"`{arg}` must name at least one head; got ().")
  for h in heads:
    # Head names become Flax submodule names and parameter paths.
    if not isinstance(h, str) or not h.isidentifier():
      raise ValueError(
          f"`{arg}` entries must be identifier-like strings (they become "
          f"parameter names); got {h!r} in {heads!r}.")
  if len(set(heads)) != len(heads):
    raise ValueError(f"`{arg}` must be unique; got {heads!r}.")
  return heads


def check_positive_int(value: Any, arg: str, *, minimum: int = 1) -> int:
  """Raises ``ValueError`` unless ``value`` is an int >= ``minimum``."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < minimum):
    raise ValueError(f"`{arg}` must be an integer >= {minimum}; got {value!r}.")
  return int(value)


def check_rate(value: Any, arg: str) -> float:
  """Raises ``ValueError`` unless ``value`` is a probability in [0, 1)."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not 0.0 <= value < 1.0):
    raise ValueError(f"`{arg}` must be a rate in [0, 1); got {value!r}.")
  return float(value)


def check_feature_mix(feature_mix: Any) -> None:
  """Raises ``ValueError`` unless ``feature_mix`` is None or a callable."""
  if feature_mix is not None and not callable(feature_mix):
    raise ValueError(
        "`feature_mix` must be None or a callable `feature_mix(stage: int, x) "
        "-> x'` (a model-aware mixer's output, docs/interfaces.md); got "
        f"{type(feature_mix).__name__}.")


def mix_features(feature_mix: Any, stage: int, x: Array) -> Array:
  """``feature_mix(stage, x)`` (``x`` itself when None), same shape and dtype.

  The model calls this on its input (stage 0) and after every stage, so a
  model-aware mixer (ManifoldMix, AlignMix) can mix hidden features in the
  one forward pass that is differentiated. A result of another shape or dtype
  raises ``ValueError`` at trace time.
  """
  if feature_mix is None:
    return x
  y = feature_mix(stage, x)
  got = (tuple(getattr(y, "shape", ())), getattr(y, "dtype", type(y)))
  if got != (tuple(x.shape), x.dtype):
    raise ValueError(
        f"`feature_mix({stage}, x)` must return x's shape and dtype "
        f"{(tuple(x.shape), x.dtype)}; got {got}.")
  return y


def global_avg_pool(x: Array) -> Array:
  """``[B, H, W, C] -> [B, C]`` float32 mean over space (reduced in float32)."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class LinearHeads(nn.Module):
  """One ``nn.Dense`` per head name on the pooled features.

  Attributes:
    names: head names, e.g. ``("one", "mix")``.
    num_classes: K.
    dtype: compute dtype of the matmul; the logits are returned as float32.
    param_dtype: parameter dtype.
  """
  names: Sequence[str]
  num_classes: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: Array) -> dict:
    """``pooled`` ``[B, D]`` -> ``{name: [B, num_classes] float32}``."""
    return {
        name: nn.Dense(
            self.num_classes, kernel_init=head_kernel_init,
            bias_init=nn.initializers.zeros, dtype=self.dtype,
            param_dtype=self.param_dtype, name=name)(pooled).astype(jnp.float32)
        for name in self.names
    }


def batch_norm(train: bool, dtype: Dtype, param_dtype: Dtype, *,
               zero_init: bool = False, name: str = None) -> nn.BatchNorm:
  """The BatchNorm of docs/interfaces.md (torch's momentum 0.1, eps 1e-5).

  Args:
    train: batch statistics and a ``batch_stats`` update when True, running
      averages when False.
    dtype: compute dtype (statistics are still reduced in float32 by Flax).
    param_dtype: dtype of scale/bias.
    zero_init: zero gamma, the "zero_init_residual" trick (Goyal et al. 2017,
      arXiv:1706.02677) that makes each residual block start as the identity.
    name: submodule name.
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
      name=name)
