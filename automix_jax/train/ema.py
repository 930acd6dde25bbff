"""EMA ("momentum encoder") update and its momentum schedules.

The update follows AutoMix / AdAutoMix's ``momentum_update``:
``k <- k * m + q * (1 - m)``, after the optimizer step, every iteration.

Numerics. The reference forms ``(1 - m)`` from a Python float (float64) and
rounds it to float32 once. ``1 - float32(m)`` is not the same: at
``m = 0.999999`` it gives 1.0133e-6 instead of 1e-6, a 1.3 % error on the
online weight (docs/learned_mixing.md). Every schedule here therefore returns
the *pair* ``(m, one_minus_m)`` with ``one_minus_m`` computed directly in a
cancellation-free form (never as ``1 - m`` in float32):

* constant: both are Python float64 constants, rounded to float32 once.
* cosine: ``1 - m = (1 - end) + (end - base) * h`` where ``(1 - end)`` and
  ``(end - base)`` are float64 constants and ``h = (cos(pi t/T) + 1)/2`` is
  evaluated as ``sin^2(pi (T - t) / (2T))`` with ``T - t`` an exact integer, so
  ``h`` has small *relative* error even where it tends to 0 (at ``t -> T``). The
  result agrees with the float64 formula to about 1e-6 relative (tested).

``ema_update`` then uses ``m`` and ``one_minus_m`` as given.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("constant", "cosine")

# step (int32 scalar, may be traced) -> (m, one_minus_m), both float32 scalars.
MomentumSchedule = Callable[[Any], tuple[jax.Array, jax.Array]]


def _check_momentum(m: float, arg: str) -> float:
  m = float(m)
  if not 0.0 <= m <= 1.0:
    raise ValueError(f"`{arg}` must lie in [0, 1]; got {m}.")
  return m


def constant(momentum: float) -> MomentumSchedule:
  """``m(t) = momentum`` for all t."""
  m = _check_momentum(momentum, "ema.momentum")
  one_minus = 1.0 - m  # float64, rounded to float32 once below.

  def schedule(step):
    del step
    return jnp.float32(m), jnp.float32(one_minus)

  return schedule


def cosine_momentum_np(t: Any, total_steps: int, *, base: float = 0.999,
                       end: float = 0.999999,
                       warmup_frac: float = 0.1) -> np.ndarray:
  """Float64 reference of OpenMixup's ``CosineScheduleHook`` (host side).

  ``m(t) = base`` for ``t < int(warmup_frac * T)``, else
  ``end - (end - base) * (cos(pi t / T) + 1) / 2`` (the argument is t/T, not
  measured from the warm-up end, so m jumps at ``t = 0.1 T``: from 0.999 to
  0.99902445 for the CIFAR setting). ``t`` counts iterations from 0 and is the
  index of the iteration whose EMA update uses m(t).
  """
  t = np.asarray(t, np.float64)
  cos_m = end - (end - base) * (np.cos(np.pi * t / total_steps) + 1.0) / 2.0
  return np.where(t < int(warmup_frac * total_steps), base, cos_m)


def cosine(total_steps: int, *, base: float = 0.999, end: float = 0.999999,
           warmup_frac: float = 0.1) -> MomentumSchedule:
  """Jittable ``CosineScheduleHook`` (see ``cosine_momentum_np``).

  Returns ``(m, 1 - m)`` as float32 with ``1 - m`` computed accurately.
  Steps beyond ``total_steps`` keep ``m = end``.
  """
  base = _check_momentum(base, "ema.momentum")
  end = _check_momentum(end, "ema.end_momentum")
  if not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
    raise ValueError(f"`total_steps` must be a positive int; got "
                     f"{total_steps!r}.")
  if not 0.0 <= warmup_frac <= 1.0:
    raise ValueError(f"`ema.warmup_frac` must lie in [0, 1]; got "
                     f"{warmup_frac}.")
  total = int(total_steps)
  warm = int(warmup_frac * total)
  one_minus_end = 1.0 - end        # float64 constants
  span = end - base
  one_minus_base = 1.0 - base

  def schedule(step):
    step = jnp.asarray(step, jnp.int32)
    remaining = jnp.maximum(total - step, 0).astype(jnp.float32)  # exact int
    h = jnp.sin((math.pi / (2 * total)) * remaining) ** 2
    one_minus = jnp.float32(one_minus_end) + jnp.float32(span) * h
    m = jnp.float32(end) - jnp.float32(span) * h
    in_warmup = step < warm
    one_minus = jnp.where(in_warmup, jnp.float32(one_minus_base), one_minus)
    m = jnp.where(in_warmup, jnp.float32(base), m)
    return m, one_minus

  return schedule


def _get(cfg: Any, name: str, default: Any) -> Any:
  if isinstance(cfg, Mapping):
    return cfg.get(name, default)
  return getattr(cfg, name, default)


def from_config(ema_config: Any, *, total_steps: int) -> MomentumSchedule:
  """The schedule named by ``config.ema`` (``schedule`` in SCHEDULES)."""
  kind = _get(ema_config, "schedule", "constant")
  if kind == "constant":
    return constant(_get(ema_config, "momentum", 0.999))
  if kind == "cosine":
    return cosine(total_steps, base=_get(ema_config, "momentum", 0.999),
                  end=_get(ema_config, "end_momentum", 0.999999),
                  warmup_frac=float(_get(ema_config, "warmup_frac", 0.1)))
  raise ValueError(f"`ema.schedule` must be one of {SCHEDULES}; got {kind!r}.")


def ema_update(ema_tree: Any, online_tree: Any, m: jax.Array,
               one_minus_m: jax.Array) -> Any:
  """``ema * m + online * one_minus_m`` leaf-wise, in each leaf's dtype."""
  def upd(k, q):
    return (k * m.astype(k.dtype) + q * one_minus_m.astype(k.dtype)
            ).astype(k.dtype)
  return jax.tree.map(upd, ema_tree, online_tree)
