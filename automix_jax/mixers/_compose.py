"""Composition: a registry of mixers by name, a random switch, per-device mixing."""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C

Mixer = Callable[..., tuple[jax.Array, jax.Array, dict]]

_REGISTRY: dict[str, Mixer] = {}
_CHECKS: dict[str, Mapping[str, Callable[[Any], Any]]] = {}
_NEEDS: dict[str, tuple[str, ...]] = {}
_SALIENCY_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {}
_RELABEL_OUTPUTS: dict[str, tuple[str, ...]] = {}

# What a model-aware mixer may ask of the model (docs/interfaces.md,
# "Model-aware mixers"). "saliency", "cam" and "token_attention" arrive as
# keyword-only call arguments of those names; "feature_mix" and "relabel"
# change what the mixer returns (a function in place of the images or of the
# labels).
NEEDS = ("saliency", "cam", "token_attention", "feature_mix", "relabel")
# The needs that are call arguments: never hyperparameters, never bound by get.
MODEL_INPUTS = ("saliency", "cam", "token_attention")
# The needs whose mixers return a function, which cannot leave a shard_map.
RETURNS_FUNCTION = ("feature_mix", "relabel")


def register(name: str, *, checks: Mapping[str, Callable[[Any], Any]] | None
             = None, needs: Sequence[str] = (),
             saliency_fn: Callable[[jax.Array], jax.Array] | None = None,
             relabel_outputs: Sequence[str] = ()
             ) -> Callable[[Mixer], Mixer]:
  """Decorator: makes a mixer reachable from configs as ``get(name)``.

  ``checks`` maps hyperparameter names to the validators the mixer itself
  uses (each raises ``ValueError`` naming the argument), so that ``get``
  refuses a bad value when it binds it. The shared hyperparameters
  (``alpha``, ``lam_scope``, ``partner``, ``data_format``, ...) are checked
  without being listed.

  Model-aware mixers (docs/interfaces.md) declare what they need from the
  model in ``needs``, a subset of ``NEEDS``:

  * ``"saliency"``: the mixer takes a keyword-only ``saliency`` ``[B, H, W]``;
    ``saliency_fn(input_grad [B, H, W, C]) -> [B, H, W]`` (required with this
    need, refused without it) is how a trainer turns the input gradient of
    the clean-batch loss into that argument.
  * ``"cam"``: the mixer takes a keyword-only ``cam`` ``[B, h, w]`` (each
    image's class activation map for its own label,
    ``models.class_activation_map``).
  * ``"token_attention"``: the mixer takes a keyword-only ``token_attention``
    ``[B, h, w]`` (each image's per-token attention on the model's token
    grid, summing to 1, from a clean forward pass: the model output of that
    name).
  * ``"feature_mix"``: the mixer returns ``(feature_mix, mixed_labels, aux)``
    with ``feature_mix(stage, x) -> x'`` for the model to call.
  * ``"relabel"``: the mixer returns ``(mixed_images, relabel, aux)``; the
    labels are known only after the forward pass on ``mixed_images``:
    ``relabel(out) -> (mixed_labels, aux)`` is pure, ``out`` the model's
    output dict of that same pass, and the returned ``aux`` is the mixer's
    ``aux`` with the final ``lam``. ``relabel_outputs`` (required with this
    need, refused without it) names the keys of ``out`` it reads, e.g.
    ``("cls_attention",)``; ``"attention"`` means the model must be called
    with ``return_attention=True``.
  """
  needs = _check_needs(name, needs, saliency_fn)
  relabel_outputs = _check_relabel_outputs(name, needs, relabel_outputs)

  def wrap(fn: Mixer) -> Mixer:
    if name in _REGISTRY and _REGISTRY[name] is not fn:
      raise ValueError(f"a mixer named {name!r} is already registered.")
    params = inspect.signature(fn).parameters
    for need in needs:
      if need in MODEL_INPUTS and (
          need not in params or
          params[need].kind is not inspect.Parameter.KEYWORD_ONLY):
        raise ValueError(
            f"mixer {name!r} declares need {need!r}, so it must take a "
            f"keyword-only argument `{need}` (def {fn.__name__}(key, images, "
            f"labels, *, {need}, ...)).")
    _REGISTRY[name] = fn
    _CHECKS[name] = dict(checks or {})
    _NEEDS[name] = needs
    if saliency_fn is not None:
      _SALIENCY_FNS[name] = saliency_fn
    if relabel_outputs:
      _RELABEL_OUTPUTS[name] = relabel_outputs
    return fn
  return wrap


def _check_relabel_outputs(name: str, needs: tuple[str, ...],
                           outputs: Any) -> tuple[str, ...]:
  if (isinstance(outputs, str) or not isinstance(outputs, Sequence) or
      not all(isinstance(k, str) and k for k in outputs)):
    raise ValueError(
        f"`relabel_outputs` of mixer {name!r} must be a tuple of model output "
        f"keys, e.g. (\"cls_attention\",); got {outputs!r}.")
  outputs = tuple(outputs)
  if ("relabel" in needs) != bool(outputs):
    raise ValueError(
        f"mixer {name!r}: `relabel_outputs` (the model outputs its "
        "relabel(out) reads) must be given exactly when `needs` holds "
        f"\"relabel\"; got needs={needs!r}, relabel_outputs={outputs!r}.")
  return outputs


def _check_needs(name: str, needs: Any, saliency_fn: Any) -> tuple[str, ...]:
  if isinstance(needs, str) or not isinstance(needs, Sequence):
    raise ValueError(
        f"`needs` of mixer {name!r} must be a tuple of kinds from {NEEDS}, "
        f"e.g. (\"saliency\",); got {needs!r}.")
  needs = tuple(needs)
  for need in needs:
    if need not in NEEDS:
      raise ValueError(f"`needs` of mixer {name!r}: unknown kind {need!r}; "
                       f"expected kinds from {NEEDS}.")
  if len(set(needs)) != len(needs):
    raise ValueError(f"`needs` of mixer {name!r} repeats a kind: {needs!r}.")
  if ("saliency" in needs) != (saliency_fn is not None):
    raise ValueError(
        f"mixer {name!r}: `saliency_fn` (input gradient [B, H, W, C] -> "
        "saliency [B, H, W]) must be given exactly when `needs` holds "
        f"\"saliency\"; got needs={needs!r}, saliency_fn={saliency_fn!r}.")
  if saliency_fn is not None and not callable(saliency_fn):
    raise ValueError(f"`saliency_fn` of mixer {name!r} must be callable; got "
                     f"{saliency_fn!r}.")
  return needs


def needs(name: str) -> tuple[str, ...]:
  """What mixer ``name`` needs from the model (``()`` for a static mixer)."""
  _lookup(name)
  return _NEEDS[name]


def saliency_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """The ``saliency_fn`` registered with ``name`` (which needs "saliency")."""
  _lookup(name)
  if name not in _SALIENCY_FNS:
    raise ValueError(
        f"mixer {name!r} does not need \"saliency\" (its needs: "
        f"{_NEEDS[name] or '()'}), so it has no `saliency_fn`.")
  return _SALIENCY_FNS[name]


def relabel_outputs(name: str) -> tuple[str, ...]:
  """The model outputs that mixer ``name``'s ``relabel(out)`` reads (``()``
  for a mixer without the need ``"relabel"``). ``"attention"`` among them
  means the forward pass must run with ``return_attention=True``."""
  _lookup(name)
  return _RELABEL_OUTPUTS.get(name, ())


def _needs_of(fn: Any) -> tuple[str, ...]:
  """The needs of a registered mixer given as a callable (or ``get``'s partial)."""
  inner = getattr(fn, "func", fn)
  for name, registered in _REGISTRY.items():
    if registered is inner:
      return _NEEDS[name]
  return ()


def names() -> tuple[str, ...]:
  """Registered mixer names, sorted."""
  return tuple(sorted(_REGISTRY))


def hyperparameter_names(name: str) -> tuple[str, ...]:
  """The hyperparameters (keywords after ``key, images, labels``) of ``name``."""
  params = list(inspect.signature(_lookup(name)).parameters.values())[3:]
  kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD,
           inspect.Parameter.KEYWORD_ONLY)
  # Model inputs (`saliency=`, `cam=`) are call arguments, not hyperparameters.
  inputs = set(_NEEDS[name]) & set(MODEL_INPUTS)
  return tuple(p.name for p in params
               if p.kind in kinds and p.name not in inputs)


def _takes_any_keyword(name: str) -> bool:
  params = inspect.signature(_lookup(name)).parameters.values()
  return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _lookup(name: Any) -> Mixer:
  if not isinstance(name, str) or name not in _REGISTRY:
    raise ValueError(
        f"unknown mixer {name!r}; registered mixers: {', '.join(names())}.")
  return _REGISTRY[name]


def get(name: str, **hyperparameters: Any) -> Mixer:
  """The mixer called ``name``, with ``hyperparameters`` bound as keywords.

  ``get("cutmix", alpha=0.2)(key, images, labels)`` equals
  ``cutmix(key, images, labels, alpha=0.2)``. Keyword names and static values
  are validated here, when a config is built, not at the first call: an
  unknown name (``alhpa=1``) or a bad value (``alpha=-1``,
  ``lam_scope="pixel"``) raises ``ValueError``. Array arguments (``lam``,
  ``index``, ``scores``, ...) depend on the batch and are checked per call.
  Model inputs of a model-aware mixer (``saliency``, ``cam``) are given per
  call, never bound here.
  """
  fn = _lookup(name)
  allowed = hyperparameter_names(name)
  for key, value in hyperparameters.items():
    if key in _NEEDS[name] and key in MODEL_INPUTS:
      raise ValueError(
          f"mixer {name!r}: `{key}` is a model input, computed per batch and "
          f"passed per call (`mixer(key, images, labels, {key}=...)`), not a "
          "hyperparameter to bind with `get`.")
    if key not in allowed and not _takes_any_keyword(name):
      close = difflib.get_close_matches(key, allowed, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ValueError(
          f"mixer {name!r} has no hyperparameter {key!r}.{hint} Its "
          f"hyperparameters: {', '.join(allowed) or 'none'}.")
    check = _CHECKS[name].get(key, C.HYPERPARAMETER_CHECKS.get(key))
    if check is not None and value is not None:
      check(value)
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
      ``[get("mixup", alpha=0.8), get("cutmix", alpha=1.0)]``, or registered
      names (``["mixup", "cutmix"]``, default hyperparameters). Every branch
      must return the images' shape and dtype and ``[B]`` ``lam``/``index``;
      a mismatch raises ``ValueError`` naming the branch at trace time.
    probs: probability of each mixer given that mixing happens; uniform if None.
    p_none: probability of no mixing at all (timm's ``1 - prob``).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux`` holds ``lam`` and ``index``
    (``[B]`` each) and ``choice`` (int32 scalar: position in ``mixers``, or
    ``len(mixers)`` for no mixing). Branch-specific entries such as masks are
    dropped, since the branches do not share them.
  """
  if isinstance(mixers, (str, bytes)) or not isinstance(mixers, Sequence):
    raise ValueError(
        "`mixers` must be a list of mixers (callables or registered names), "
        f"e.g. [\"mixup\", get(\"cutmix\", alpha=1.0)]; got {mixers!r}.")
  if not mixers:
    raise ValueError("`mixers` must name at least one mixer.")
  C.check_images(images, ranks=(2, 3, 4, 5))
  C.check_labels(labels, images.shape[0])
  mixers = [_as_mixer(m, i) for i, m in enumerate(mixers)]
  for i, m in enumerate(mixers):
    if _needs_of(m):
      raise ValueError(
          f"`mixers[{i}]` ({_mixer_name(m)}) is model-aware (needs "
          f"{_needs_of(m)}): `switch` takes static mixers only, since its "
          "branches share one call without model inputs. Use it as "
          "`config.mixer` instead.")
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
  expected = {"mixed images": (tuple(images.shape), images.dtype),
              "mixed labels": (tuple(labels.shape), labels.dtype),
              "aux['lam']": ((images.shape[0],), jnp.float32),
              "aux['index']": ((images.shape[0],), jnp.int32)}

  def branch(fn, position):
    def run(operands):
      x, y = operands
      mx, my, aux = fn(k_mix, x, y)
      got = {"mixed images": mx, "mixed labels": my,
             "aux['lam']": aux.get("lam"), "aux['index']": aux.get("index")}
      for what, (shape, dtype) in expected.items():
        value = got[what]
        form = (tuple(value.shape), value.dtype) if value is not None else None
        if form != (shape, dtype):
          raise ValueError(
              f"`mixers[{position}]` ({_mixer_name(fn)}) returns {what} of "
              f"(shape, dtype) {form}; every branch of `switch` must return "
              f"{(shape, jnp.dtype(dtype))}, i.e. a two-image mixer with "
              "[B] `lam` and `index` (N-way mixers such as nway_mixup "
              "cannot be branches).")
      return mx, my, {"lam": aux["lam"], "index": aux["index"]}
    return run

  branches = [branch(fn, i) for i, fn in enumerate(mixers)]
  branches.append(branch(no_mix, n))
  mixed, mixed_labels, aux = jax.lax.switch(choice, branches, (images, labels))
  aux["choice"] = choice.astype(jnp.int32)
  return mixed, mixed_labels, aux


def _as_mixer(mixer: Any, position: int) -> Mixer:
  """A ``switch`` entry: a callable, or a registered name (``get(name)``)."""
  if isinstance(mixer, str):
    return get(mixer)
  if not callable(mixer):
    raise ValueError(
        f"`mixers[{position}]` must be a mixer callable or a registered name "
        f"({', '.join(names())}); got {mixer!r}.")
  return mixer


def _mixer_name(fn: Any) -> str:
  inner = getattr(fn, "func", fn)
  return getattr(inner, "__name__", type(inner).__name__)


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
  returned = set(_needs_of(mixer)) & set(RETURNS_FUNCTION)
  if returned:
    raise ValueError(
        f"`mixer` ({_mixer_name(mixer)}) needs {sorted(returned)} and so "
        "returns a function (of the model's features or outputs), which "
        "cannot leave a shard_map: mix the whole batch instead.")
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

