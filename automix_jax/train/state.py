"""The train state: one pytree, replicated on the mesh, donated to every step."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. No RNG: keys are ``fold_in(root, step)``.

  Attributes:
    step: int32 scalar, number of optimizer updates applied so far.
    params: model parameters (float32 even when compute is bf16).
    batch_stats: BatchNorm running statistics (``{}`` for models without BN).
    opt_state: optax state of ``params``.
    ema_params: EMA ("teacher", momentum) copy of ``params``; None if disabled.
    ema_batch_stats: the teacher's BN statistics; None if EMA is disabled.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any = None
  ema_batch_stats: Any = None


def _copy(tree: Any) -> Any:
  # A real copy, so donating the state never aliases online and EMA buffers.
  return jax.tree.map(jnp.array, tree)


def create(*, params: Any, batch_stats: Any, tx: optax.GradientTransformation,
           ema: bool = False, step: int = 0) -> TrainState:
  """Builds a fresh state; the EMA copies start equal to the online weights."""
  return TrainState(
      step=jnp.asarray(step, jnp.int32),
      params=params,
      batch_stats=batch_stats if batch_stats is not None else {},
      opt_state=tx.init(params),
      ema_params=_copy(params) if ema else None,
      ema_batch_stats=_copy(batch_stats) if ema else None)
