"""Losses on dense (soft) targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of ``-sum_k targets[b, k] * log_softmax(logits)[b, k]``.

  With mixed targets ``λ y_a + (1-λ) y_b`` this equals OpenMixup's
  ``λ CE(y_a) + (1-λ) CE(y_b)`` with a batch-mean CE.

  Args:
    logits: ``[B, K]`` (any float dtype; computed in float32).
    targets: ``[B, K]`` rows summing to 1.

  Returns:
    float32 scalar.
  """
  if logits.ndim != 2 or logits.shape != targets.shape:
    raise ValueError(
        f"`logits` and `targets` must both be [B, K] with equal shapes; got "
        f"{logits.shape} and {targets.shape}.")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(targets.astype(jnp.float32) * logp, axis=-1))


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """``[B]`` bool: is ``labels[b]`` among the ``k`` largest ``logits[b]``."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
  return jnp.any(top == labels[:, None], axis=-1)
