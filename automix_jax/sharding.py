"""Device mesh and shardings for data-parallel training (jit + NamedSharding).

One mesh axis, ``"data"``, spans every device of every process. The train state
is replicated (``P()``) and batches are split along their leading axis
(``P("data")``), so XLA inserts the gradient all-reduce itself; there is no pmap.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh ``("data",)`` over ``devices`` (default: all devices, all hosts).

  The axis is ``AxisType.Auto``: shardings are hints that jit propagates, so
  gathers such as ``images[index]`` across the batch need no annotations.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("`devices` must hold at least one device.")
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Sharding of the train state: a full copy on every device."""
  return jax.sharding.NamedSharding(mesh, jax.P())


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Sharding of a batch ``[B, ...]``: the leading axis split over ``"data"``."""
  return jax.sharding.NamedSharding(mesh, jax.P(DATA_AXIS))


def num_data_shards(mesh: jax.sharding.Mesh) -> int:
  return int(mesh.shape[DATA_AXIS])


def check_batch_divisible(global_batch_size: int, mesh: jax.sharding.Mesh,
                          *, what: str = "batch_size") -> int:
  """Raises ``ValueError`` unless the global batch splits evenly over devices.

  Returns the per-device batch size.
  """
  n = num_data_shards(mesh)
  if (isinstance(global_batch_size, bool)
      or not isinstance(global_batch_size, (int, np.integer))
      or global_batch_size < 1):
    raise ValueError(
        f"`{what}` must be a positive int; got {global_batch_size!r}.")
  if global_batch_size % n:
    raise ValueError(
        f"`{what}` (global batch) {global_batch_size} is not divisible by the "
        f"{n} devices on the {DATA_AXIS!r} mesh axis; use a multiple of {n}.")
  return global_batch_size // n


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places every leaf of ``tree`` replicated on ``mesh`` (host or device input)."""
  return jax.device_put(tree, replicated(mesh))


def state_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """A pytree of replicated shardings matching ``tree`` (for in/out_shardings)."""
  rep = replicated(mesh)
  return jax.tree.map(lambda _: rep, tree)


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a host batch (the full global batch, single process) on the mesh.

  Multi-process runs build global arrays in ``data.TrainIterator`` instead.
  """
  sharding = batch_sharding(mesh)
  for leaf in jax.tree.leaves(batch):
    check_batch_divisible(int(np.shape(leaf)[0]), mesh)
  return jax.device_put(batch, sharding)
