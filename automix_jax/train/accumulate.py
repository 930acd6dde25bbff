"""Gradient accumulation: one optimizer update from k micro-batches.

``config.grad_accum_steps = k`` (default 1) splits the global batch of a step
into k micro-batches inside the jitted step (``jax.lax.scan``, so one
micro-batch's activations are alive at a time), averages their gradients and
applies one optimizer update: big_vision's ``utils.accumulate_gradient``
(github.com/google-research/big_vision, ``big_vision/utils.py``), with the
BatchNorm statistics threaded through the micro-batches.

Semantics (docs/training.md, "Gradient accumulation"):

* The mixing is done on the whole global batch *before* the split, as
  big_vision's train loop mixes before ``accumulate_gradient``: partners and λ
  are drawn over the global batch, so the mixed batch and its targets are the
  same as without accumulation. (timm's ``--grad-accum-steps`` mixes each
  loader batch, i.e. each micro-batch, on its own.)
* Micro-batch i holds rows ``i, i + k, i + 2k, ...`` of the global batch: with
  the batch sharded contiguously over devices, every micro-batch then spans all
  devices equally (no data moves), provided each device's rows split into k
  (checked).
* Loss and gradient are the means over micro-batches of the micro-batch means;
  micro-batches have equal size, so for a model without BatchNorm (ViT) the
  update equals the large-batch update up to float rounding (tested), dropout
  aside (micro-batch i uses ``fold_in(dropout_key, i)``).
* BatchNorm (ResNets) normalises each micro-batch with its own statistics, as
  PyTorch / timm accumulation does, so the update is not the large-batch one;
  the running statistics get one momentum update per micro-batch, chained in
  order (k updates per optimizer step, as k PyTorch forward passes would do).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def steps_of(config: Any) -> int:
  """``config.grad_accum_steps`` (1 when absent)."""
  return int(config.get("grad_accum_steps", 1))


def check_config(config: Any, *, mesh: jax.sharding.Mesh | None = None
                 ) -> None:
  """``grad_accum_steps`` a positive int that divides the batch (and, with
  ``mesh``, each device's share of it). ValueError naming the key."""
  k = config.get("grad_accum_steps", 1)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"`config.grad_accum_steps` must be a positive int (1: "
                     f"no accumulation); got {k!r}.")
  b = int(config.batch_size)
  if b % k:
    raise ValueError(f"`config.grad_accum_steps`={k} must divide `batch_size` "
                     f"{b} (micro-batches of equal size).")
  if mesh is not None and k > 1 and b % (k * mesh.size):
    raise ValueError(
        f"`config.grad_accum_steps`={k}: each device's share of the batch "
        f"({b // mesh.size} rows of batch_size {b} over {mesh.size} devices) "
        f"must split into {k} equal micro-batches, so that every micro-batch "
        f"spans all devices; use a batch_size divisible by {k * mesh.size}.")


def split(tree: Any, steps: int) -> Any:
  """``[B, ...]`` leaves -> ``[steps, B / steps, ...]``, micro-batch i = rows
  ``i, i + steps, ...``."""
  def one(x):
    b = x.shape[0]
    if b % steps:
      raise ValueError(f"batch {b} does not split into {steps} micro-batches.")
    return jnp.swapaxes(x.reshape(b // steps, steps, *x.shape[1:]), 0, 1)
  return jax.tree.map(one, tree)


LossFn = Callable[[Any, Any, Any, jax.Array],
                  tuple[jax.Array, tuple[Any, dict]]]


def value_and_grad(loss_fn: LossFn, params: Any, batch_stats: Any,
                   inputs: Any, key: jax.Array, *, steps: int = 1
                   ) -> tuple[tuple[jax.Array, tuple[Any, dict]], Any]:
  """``((loss, (new_batch_stats, extra)), grads)`` of ``loss_fn`` over
  ``steps`` micro-batches of ``inputs``.

  Args:
    loss_fn: ``(params, batch_stats, inputs, key) -> (scalar loss,
      (new_batch_stats, extra))``; the loss a mean over the rows of
      ``inputs``, ``extra`` a dict of scalar metrics (may be empty).
    params: differentiated.
    batch_stats: threaded through the micro-batches in order.
    inputs: pytree of ``[B, ...]`` arrays (mixed images, targets, labels).
    key: per-step key; micro-batch i gets ``fold_in(key, i)``.
    steps: k. 1 is exactly ``jax.value_and_grad(loss_fn)`` on the whole batch
      with ``key`` itself.

  Returns:
    Mean loss, gradient and ``extra`` over the micro-batches, final running
    statistics.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if steps == 1:
    return grad_fn(params, batch_stats, inputs, key)

  def body(carry, xs):
    stats, loss_sum, extra_sum, grad_sum = carry
    i, micro = xs
    (loss, (stats, extra)), grads = grad_fn(params, stats, micro,
                                            jax.random.fold_in(key, i))
    return (stats, loss_sum + loss, jax.tree.map(jnp.add, extra_sum, extra),
            jax.tree.map(jnp.add, grad_sum, grads)), None

  micro_batches = split(inputs, steps)
  extra_shapes = jax.eval_shape(
      lambda: loss_fn(params, batch_stats,
                      jax.tree.map(lambda x: x[0], micro_batches), key))[1][1]
  zeros = jax.tree.map(jnp.zeros_like, params)
  extra_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             extra_shapes)
  (stats, loss_sum, extra_sum, grad_sum), _ = jax.lax.scan(
      body, (batch_stats, jnp.zeros((), jnp.float32), extra_zeros, zeros),
      (jnp.arange(steps), micro_batches))
  grads = jax.tree.map(lambda g: g / steps, grad_sum)
  extra = jax.tree.map(lambda e: e / steps, extra_sum)
  return (loss_sum / steps, (stats, extra)), grads


def running_stats(stats_fn: Callable[[Any, Any, jax.Array], Any],
                  batch_stats: Any, inputs: Any, key: jax.Array, *,
                  steps: int = 1) -> Any:
  """Running statistics after train-mode passes over the micro-batches.

  ``stats_fn(batch_stats, inputs, key) -> new_batch_stats`` (a forward pass
  without gradient, e.g. the static EMA model's); the same split and keys as
  ``value_and_grad``, so the EMA model's statistics follow the online model's
  rule. ``steps == 1``: one pass on the whole batch with ``key``.
  """
  if steps == 1:
    return stats_fn(batch_stats, inputs, key)

  def body(stats, xs):
    i, micro = xs
    return stats_fn(stats, micro, jax.random.fold_in(key, i)), None

  stats, _ = jax.lax.scan(body, batch_stats,
                          (jnp.arange(steps), split(inputs, steps)))
  return stats
