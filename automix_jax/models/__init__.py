"""Model zoo (Flax Linen): CIFAR/ImageNet ResNets, WideResNet, ViT/DeiT.

Every model follows docs/interfaces.md ("Models")::

  model = models.build("cifar_resnet18", num_classes=100, heads=("one", "mix"))
  variables = models.init(model, jax.random.key(0), (32, 32, 3))
  out, updates = model.apply(variables, images, train=True,
                             mutable=["batch_stats"])
  out["logits"]["one"]   # [B, 100] float32
  out["stages"][2]       # [B, 8, 8, 256], the AutoMix/AdAutoMix mask feature
  out["pooled"]          # [B, 512] float32

ViTs have no BatchNorm (``mutable=["batch_stats"]`` returns empty updates) and
also return ``"cls_attention"``; they need a ``"dropout"`` rng when trained with
a nonzero dropout or drop-path rate.
"""

import dataclasses
import functools
import math
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.models import _heads
from automix_jax.models import resnet
from automix_jax.models import vit
from automix_jax.models import wide_resnet
from automix_jax.models._heads import LinearHeads  # noqa: F401
from automix_jax.models.resnet import ResNet
from automix_jax.models.vit import ViT
from automix_jax.models.wide_resnet import WideResNet

# name -> (module class, preset fields).
_REGISTRY = {
    **{n: (ResNet, p) for n, p in resnet.PRESETS.items()},
    **{n: (WideResNet, p) for n, p in wide_resnet.PRESETS.items()},
    **{n: (ViT, p) for n, p in vit.PRESETS.items()},
}
# Set by build() itself; the remaining dataclass fields may be overridden.
_BUILD_ARGS = ("num_classes", "width", "heads", "dtype")


def names() -> tuple:
  """Registered model names, sorted."""
  return tuple(sorted(_REGISTRY))


def _check_dtype(dtype: Any, arg: str) -> Any:
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    dt = None
  if dt is None or not jnp.issubdtype(dt, jnp.floating):
    raise ValueError(
        f"`{arg}` must be a floating dtype (jnp.float32, jnp.bfloat16, ...); "
        f"got {dtype!r}.")
  return dt


def build(name: str, *, num_classes: int, width: float = 1.0,
          heads: Sequence[str] = ("one",), dtype: Any = jnp.float32, **kwargs):
  """Builds a registered model (a Linen module, not yet initialised).

  Args:
    name: one of ``names()``.
    num_classes: classes per head, >= 1.
    width: channel (ResNet/WRN) or embedding (ViT) multiplier, > 0. Widths are
      rounded and kept >= 1, so tiny test models (1/16, 1/32) stay valid.
    heads: non-empty tuple of unique head names; one linear head each.
    dtype: compute dtype (``jnp.bfloat16`` for mixed precision); parameters
      stay float32 and logits are float32.
    **kwargs: other fields of the module class, e.g. ``depth``/``widen_factor``
      for ``"wrn"``, ``patch_size``/``drop_path_rate`` for ViTs,
      ``zero_init_residual`` for ResNets.

  Returns:
    A ``flax.linen.Module``.

  Raises:
    ValueError: unknown name or keyword, or an invalid argument.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model `name` {name!r}; expected one of {names()}.")
  _heads.check_positive_int(num_classes, "num_classes")
  if (isinstance(width, bool) or not isinstance(width, numbers.Real)
      or not math.isfinite(width) or width <= 0):
    raise ValueError(f"`width` must be a finite number > 0; got {width!r}.")
  heads = _heads.check_head_names(heads)
  _check_dtype(dtype, "dtype")
  cls, preset = _REGISTRY[name]
  allowed = sorted(f.name for f in dataclasses.fields(cls)
                   if f.name not in ("parent", "name") + _BUILD_ARGS)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(
        f"Unknown keyword(s) {unknown} for model {name!r}; expected a subset of "
        f"{allowed}.")
  if "param_dtype" in kwargs:
    _check_dtype(kwargs["param_dtype"], "param_dtype")
  # Lists -> tuples: modules must stay hashable (e.g. as static jit args).
  fields = {**preset, **{k: tuple(v) if isinstance(v, list) else v
                         for k, v in kwargs.items()}}
  model = cls(num_classes=int(num_classes), width=float(width), heads=heads,
              dtype=dtype, **fields)
  model.check_config()  # Bad field values fail here, not at first apply.
  return model


def init(model, key: jax.Array, image_shape: Sequence[int],
         batch_size: int = 2) -> dict:
  """Initialises ``model`` on zeros ``[batch_size, *image_shape]`` (train=False).

  Args:
    model: a module from ``build``.
    key: a PRNG key (``jax.random.key`` or legacy ``PRNGKey``) for ``params``.
    image_shape: ``(H, W, C)``.
    batch_size: dummy batch size; parameters do not depend on it.

  Returns:
    The variables dict: ``{"params": ..., "batch_stats": ...}`` (no
    ``batch_stats`` for ViTs).
  """
  if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3
      or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
             for s in image_shape)):
    raise ValueError(
        f"`image_shape` must be (H, W, C) positive ints; got {image_shape!r}.")
  _heads.check_positive_int(batch_size, "batch_size")
  images = jnp.zeros((batch_size, *image_shape), jnp.float32)
  # jit: initialising op by op is much slower for big models.
  return jax.jit(functools.partial(model.init, train=False))(key, images)


def class_activation_map(out: dict, params: Any, head: str,
                         labels: Any) -> jax.Array:
  """Each sample's class activation map for its own label, ``[B, h, w]`` float32.

  ``cam[b] = stages[-1][b] @ kernel[:, labels[b]] + bias[labels[b]]``: the
  last-stage features (``out["stages"][-1]`` ``[B, h, w, D]``) times the
  column of ``head``'s linear kernel that belongs to the sample's own class,
  un-normalised -- SnapMix's map (Huang et al., AAAI 2021, ``get_spm`` in
  github.com/Shaoli-Huang/SnapMix ``utils/mixmethod.py``: a 1x1 conv of the
  feature maps with the classifier's weight and bias, the target class's
  channel). For the ResNets and WRN, whose heads see the spatial mean of that
  map, ``cam[b].mean() == out["logits"][head][b, labels[b]]``; for ViTs the
  map is taken on the final patch tokens while the head reads the CLS token.
  The bias shifts every position equally, so it vanishes under SnapMix's
  min-subtract-and-normalise.

  Args:
    out: the model's output dict (needs ``"stages"``).
    params: the model's ``params`` (``variables["params"]``).
    head: a head name of the model, e.g. ``"one"``.
    labels: ``[B]`` integer class ids.
  """
  stages = out.get("stages") if isinstance(out, dict) else None
  if not stages:
    raise ValueError("`out` must be a model output dict with \"stages\"; got "
                     f"{type(out).__name__}.")
  features = stages[-1]
  heads = params.get("heads", {}) if hasattr(params, "get") else {}
  if head not in heads:
    raise ValueError(f"`head` {head!r} is not a head of these params; heads: "
                     f"{tuple(heads)}.")
  kernel = heads[head]["kernel"]
  bias = heads[head]["bias"]
  shape = getattr(labels, "shape", None)
  if (shape is None or tuple(shape) != (features.shape[0],) or
      not jnp.issubdtype(labels.dtype, jnp.integer)):
    raise ValueError(
        f"`labels` must be [B] = ({features.shape[0]},) integer class ids; got "
        f"{tuple(shape) if shape is not None else type(labels).__name__}.")
  if features.ndim != 4 or features.shape[-1] != kernel.shape[0]:
    raise ValueError(
        f"`out[\"stages\"][-1]` must be [B, h, w, D] with D = "
        f"{kernel.shape[0]} (the head's input width); got {features.shape}.")
  columns = jnp.take(kernel, labels, axis=1).T.astype(jnp.float32)  # [B, D]
  cam = jnp.einsum("bhwd,bd->bhw", features.astype(jnp.float32), columns)
  return cam + jnp.take(bias, labels).astype(jnp.float32)[:, None, None]


def num_params(params: Any) -> int:
  """Total number of parameter entries in a pytree (pass ``variables["params"]``)."""
  return int(sum(np.prod(np.shape(x), dtype=np.int64)
                 for x in jax.tree_util.tree_leaves(params)))


__all__ = ["build", "names", "init", "num_params", "class_activation_map",
           "ResNet", "WideResNet", "ViT", "LinearHeads"]
