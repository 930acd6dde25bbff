"""Optimizers and learning-rate schedules as in OpenMixup / mmcv.

``make_optimizer(opt_config, steps_per_epoch=..., num_epochs=...)`` returns an
optax transformation whose update equals ``torch.optim.SGD(lr, momentum,
weight_decay, nesterov)``: torch adds ``weight_decay * param`` to the gradient
(coupled L2) *before* the momentum buffer, which is
``optax.add_decayed_weights`` chained before ``optax.sgd``. Gradient clipping
(``torch.nn.utils.clip_grad_norm_``, applied to the raw gradient) comes first.
``weight_decay_exclude`` (regular expressions searched in each parameter's
``/``-joined path) turns weight decay off for the parameters it matches, as
mmcv's ``paramwise_options={'norm': dict(weight_decay=0.), ...}`` in the
OpenMixup / AdAutoMix ViT configs and timm's no-decay group for DeiT/Swin.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[Any], Any]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


def _get(cfg: Any, name: str, default: Any) -> Any:
  if isinstance(cfg, Mapping):
    return cfg.get(name, default)
  return getattr(cfg, name, default)


def lr_schedule(opt_config: Any, *, steps_per_epoch: int,
                num_epochs: int) -> Schedule:
  """``step -> lr`` (float32), jittable; ``step`` counts updates from 0.

  * ``schedule="cosine"``: ``min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2`` with
    ``p = epoch / num_epochs`` (``by_epoch=True``, mmcv's default: the lr is
    constant within an epoch, ``epoch = step // steps_per_epoch``) or
    ``p = step / (steps_per_epoch * num_epochs)`` (``by_epoch=False``).
  * ``schedule="constant"``: ``lr``.
  * Warm-up (``warmup_epochs > 0``, per step, mmcv's "linear"):
    ``regular_lr(step) * (r + (1 - r) * step / warmup_steps)`` for
    ``step < warmup_steps``, where ``r = warmup_start_lr / lr``.
  """
  base = float(_get(opt_config, "lr", 0.1))
  min_lr = float(_get(opt_config, "min_lr", 0.0))
  kind = _get(opt_config, "schedule", "cosine")
  by_epoch = bool(_get(opt_config, "by_epoch", True))
  warmup_epochs = float(_get(opt_config, "warmup_epochs", 0))
  warmup_start = float(_get(opt_config, "warmup_start_lr", 0.0))
  if kind not in SCHEDULES:
    raise ValueError(f"`optimizer.schedule` must be one of {SCHEDULES}; got "
                     f"{kind!r}.")
  if steps_per_epoch < 1 or num_epochs < 1:
    raise ValueError(
        f"`steps_per_epoch` and `num_epochs` must be >= 1; got "
        f"{steps_per_epoch} and {num_epochs}.")
  if base <= 0 or min_lr < 0 or warmup_epochs < 0:
    raise ValueError(
        f"need optimizer.lr > 0, min_lr >= 0, warmup_epochs >= 0; got "
        f"{base}, {min_lr}, {warmup_epochs}.")
  total = steps_per_epoch * num_epochs
  warmup_steps = int(round(warmup_epochs * steps_per_epoch))
  ratio = warmup_start / base

  def regular(step):
    if kind == "constant":
      return jnp.full((), base, jnp.float32)
    if by_epoch:
      progress = (step // steps_per_epoch).astype(jnp.float32) / num_epochs
    else:
      progress = step.astype(jnp.float32) / total
    progress = jnp.minimum(progress, 1.0)
    return min_lr + (base - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))

  def schedule(step):
    step = jnp.asarray(step, jnp.int32)
    lr = regular(step)
    if warmup_steps > 0:
      frac = step.astype(jnp.float32) / warmup_steps
      lr = jnp.where(step < warmup_steps, lr * (ratio + (1.0 - ratio) * frac),
                     lr)
    return lr.astype(jnp.float32)

  return schedule


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def decay_mask(exclude: Any) -> Callable[[Any], Any] | None:
  """``params -> bool tree`` (True: decayed) for optax's ``mask=``, or None.

  A parameter is excluded when any pattern of ``exclude`` is found
  (``re.search``) in its path joined by ``/``, e.g. ``"block0/norm1/scale"``
  or, in the learned methods' joint tree, ``"classifier/block0/attn/qkv/
  bias"``. OpenMixup's DeiT/Swin rules are ``("norm", "bias", "cls_token",
  "pos_embed")`` and ``("norm", "bias", "relative_position_bias_table")``.
  """
  if not exclude:
    return None
  if isinstance(exclude, str) or not all(isinstance(p, str) for p in exclude):
    raise ValueError(
        "`optimizer.weight_decay_exclude` must be a tuple of regular "
        f"expressions, e.g. (\"norm\", \"bias\"); got {exclude!r}.")
  try:
    patterns = [re.compile(p) for p in exclude]
  except re.error as e:
    raise ValueError(f"`optimizer.weight_decay_exclude`: bad pattern "
                     f"({e}); got {exclude!r}.") from None

  def mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(p.search(_path_name(path)) for p in patterns),
        params)

  return mask


def make_optimizer(opt_config: Any, *, steps_per_epoch: int, num_epochs: int
                   ) -> tuple[optax.GradientTransformation, Schedule]:
  """Returns ``(tx, schedule)`` for ``config.optimizer`` (see config_schema.md)."""
  name = _get(opt_config, "name", "sgd")
  if name not in OPTIMIZERS:
    raise ValueError(f"`optimizer.name` must be one of {OPTIMIZERS}; got "
                     f"{name!r}.")
  schedule = lr_schedule(opt_config, steps_per_epoch=steps_per_epoch,
                         num_epochs=num_epochs)
  wd = float(_get(opt_config, "weight_decay", 0.0))
  clip = float(_get(opt_config, "grad_clip_norm", 0.0))
  if wd < 0 or clip < 0:
    raise ValueError(f"`optimizer.weight_decay` and `grad_clip_norm` must be "
                     f">= 0; got {wd} and {clip}.")
  mask = decay_mask(tuple(_get(opt_config, "weight_decay_exclude", ()) or ()))
  parts = []
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if name == "sgd":
    momentum = float(_get(opt_config, "momentum", 0.9))
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd, mask=mask))
    parts.append(optax.sgd(schedule, momentum=momentum or None,
                           nesterov=bool(_get(opt_config, "nesterov", False))))
  else:  # adamw: decoupled decay as torch.optim.AdamW (decay scaled by lr).
    parts.append(optax.adamw(schedule, b1=float(_get(opt_config, "b1", 0.9)),
                             b2=float(_get(opt_config, "b2", 0.999)),
                             eps=float(_get(opt_config, "eps", 1e-8)),
                             weight_decay=wd, mask=mask))
  return optax.chain(*parts), schedule
