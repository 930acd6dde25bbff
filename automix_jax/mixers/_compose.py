"""Composition: a registry of mixers by name, a random switch, per-device mixing."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C

Mixer = Callable[..., tuple[jax.Array, jax.Array, dict]]

_REGISTRY: dict[str, Mixer] = {}


def register(name: str) -> Callable[[Mixer], Mixer]:
  """Decorator: makes a mixer reachable from configs as ``get(name)``."""
  def wrap(fn: Mixer) -> Mixer:
    if name in _REGISTRY and _REGISTRY[name] is not fn:
      raise ValueError(f"a mixer named {name!r} is already registered.")
    _REGISTRY[name] = fn
    return fn
  return wrap


def names() -> tuple[str, ...]:
  """Registered mixer names, sorted."""
  return tuple(sorted(_REGISTRY))


def get(name: str, **hyperparameters: Any) -> Mixer:
  """The mixer called ``name``, with ``hyperparameters`` bound as keywords.

  ``get("cutmix", alpha=0.2)(key, images, labels)`` equals
  ``cutmix(key, images, labels, alpha=0.2)``.
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown mixer {name!r}; registered mixers: {', '.join(names())}.")
  fn = _REGISTRY[name]
  return functools.partial(fn, **hyperparameters) if hyperparameters else fn


@register("none")
def no_mix(key: jax.Array, images: jax.Array, labels: jax.Array
           ) -> tuple[jax.Array, jax.Array, dict]:
  """The identity mixer (vanilla training): λ = 1 and every sample its own partner."""
  del key
  batch_size = labels.shape[0]
  C.check_images(images, ranks=(2, 3, 4, 5))
  C.check_labels(labels, images.shape[0])
  aux = {"lam": jnp.ones((batch_size,), jnp.float32),
         "index": jnp.arange(batch_size, dtype=jnp.int32)}
  return images, labels, aux


def switch(key: jax.Array, images: jax.Array, labels: jax.Array, *,
           mixers: Sequence[Mixer], probs: Sequence[float] | None = None,
           p_none: float = 0.0) -> tuple[jax.Array, jax.Array, dict]:
  """Applies one of ``mixers`` per call, chosen at random (DeiT's MixUp/CutMix).

  Args:
    key: PRNG key.
    images, labels: as for any mixer.
    mixers: two-image mixers with their hyperparameters bound, e.g.
      ``[get("mixup", alpha=0.8), get("cutmix", alpha=1.0)]``.
    probs: probability of each mixer given that mixing happens; uniform if None.
    p_none: probability of no mixing at all (timm's ``1 - prob``).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux`` holds ``lam`` and ``index``
    (``[B]`` each) and ``choice`` (int32 scalar: position in ``mixers``, or
    ``len(mixers)`` for no mixing). Branch-specific entries such as masks are
    dropped, since the branches do not share them.
  """
  if not mixers:
    raise ValueError("`mixers` must name at least one mixer.")
  n = len(mixers)
  if probs is None:
    probs = [1.0 / n] * n
  probs = [C.check_probability(p, arg="probs") for p in probs]
  if len(probs) != n or not np.isclose(sum(probs), 1.0):
    raise ValueError(
        f"`probs` must hold one probability per mixer ({n}) summing to 1; got "
        f"{probs}.")
  p_none = C.check_probability(p_none, arg="p_none")
  weights = [(1.0 - p_none) * p for p in probs] + [p_none]
  k_choice, k_mix = jax.random.split(key)
  choice = jax.random.choice(k_choice, n + 1, p=jnp.asarray(weights))

  def branch(fn):
    def run(operands):
      x, y = operands
      mx, my, aux = fn(k_mix, x, y)
      return mx, my, {"lam": aux["lam"], "index": aux["index"]}
    return run

  branches = [branch(fn) for fn in mixers] + [branch(no_mix)]
  mixed, mixed_labels, aux = jax.lax.switch(choice, branches, (images, labels))
  aux["choice"] = choice.astype(jnp.int32)
  return mixed, mixed_labels, aux


def per_device(mixer: Mixer, mesh: jax.sharding.Mesh, axis: str = "data"
               ) -> Mixer:
  """Runs ``mixer`` inside ``jax.shard_map`` so partners stay on their device.

  Each device mixes only its own shard of the batch with a key folded with its
  position on ``axis``, so no image crosses devices (big_vision's approach).
  ``images``/``labels`` are split along the batch over ``axis``; the returned
  ``aux`` arrays are sharded likewise and ``aux['index']`` holds *global*
  indices into the batch, so ``mixed_labels`` still equal
  ``lam * labels + (1 - lam) * labels[index]``. Scalar entries of a device's
  ``aux`` (a switch's ``choice``) come back as one value per device,
  ``[n_devices]``.

  Per-sample inputs that a mixer takes besides the batch (attentive mixing's
  ``scores`` ``[B, gh, gw]``) are passed to the returned function as keywords,
  ``fn(key, images, labels, scores=scores)``, and split over the devices with
  the batch.

  Args:
    mixer: any mixer with its hyperparameters bound.
    mesh: device mesh with an axis called ``axis``.
    axis: mesh axis that shards the batch.
  """
  if axis not in mesh.axis_names:
    raise ValueError(f"`axis` {axis!r} is not an axis of the mesh "
                     f"{mesh.axis_names}.")
  n_shards = mesh.shape[axis]
  spec = jax.P(axis)

  def local(key, images, labels, batch_inputs):
    shard = jax.lax.axis_index(axis)
    key = jax.random.fold_in(key, shard)
    mixed, mixed_labels, aux = mixer(key, images, labels, **batch_inputs)
    offset = (shard * images.shape[0]).astype(jnp.int32)
    # Per-device scalars (a switch's choice) become one entry per device.
    aux = {k: v[None] if v.ndim == 0 else v for k, v in aux.items()}
    aux["index"] = aux["index"] + offset
    return mixed, mixed_labels, aux

  def wrapped(key, images, labels, **batch_inputs):
    batch_size = images.shape[0]
    if batch_size % n_shards:
      raise ValueError(
          f"`images` batch size {batch_size} must be divisible by the "
          f"{n_shards} devices on mesh axis {axis!r}.")
    if batch_size // n_shards < 2:
      raise ValueError(
          f"each device needs at least 2 samples to mix; batch size "
          f"{batch_size} over {n_shards} devices gives "
          f"{batch_size // n_shards}.")
    for name, value in batch_inputs.items():
      shape = getattr(value, "shape", None)
      if not shape or shape[0] != batch_size:
        raise ValueError(
            f"`{name}` is split over the devices with the batch, so it must "
            f"be an array with leading dimension B = {batch_size}; got "
            f"{tuple(shape) if shape is not None else type(value).__name__}.")
    fn = jax.shard_map(local, mesh=mesh, in_specs=(jax.P(), spec, spec, spec),
                       out_specs=spec, check_vma=False)
    # Lay the batch out along the axis first: a no-op when it already is (the
    # trainer's batches are), a scatter when a caller passes a local array.
    batch_sharding = jax.sharding.NamedSharding(mesh, spec)
    explicit = jax.sharding.AxisType.Explicit in tuple(mesh.axis_types)
    place = jax.reshard if explicit else jax.lax.with_sharding_constraint
    images, labels, batch_inputs = jax.tree.map(
        lambda x: place(x, batch_sharding), (images, labels, batch_inputs))
    return fn(key, images, labels, batch_inputs)

  return wrapped

