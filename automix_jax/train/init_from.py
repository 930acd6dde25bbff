"""Fine-tuning: initialise a fresh train state from saved weights.

``config.init_from = {"path", "kind", "skip", "weights"}`` (docs/training.md,
"Fine-tuning") is applied once, right after ``method.init`` and only when the
work directory holds no checkpoint (a resume restores its own state):

* ``kind="checkpoint"``: a checkpoint of this project, read with
  ``automix_jax.checkpoint.read_state`` whatever mesh or process count wrote
  it. ``path`` is a run's work directory, its ``checkpoints/`` folder (newest
  step) or one step folder ``checkpoints/<step>``.
* ``kind="converted"``: an ``.npz`` file of flat ``"params/<flax path>"`` and
  ``"batch_stats/<flax path>"`` arrays (big_vision's npz layout, keys joined by
  ``/``) plus a JSON ``"meta"`` entry, as written by
  ``scripts/convert_torch_weights.py`` from torchvision / timm ResNet and ViT
  (DeiT) state dicts (``save_converted`` / ``load_converted``).

What is loaded, as flat paths (the names ``skip`` is matched against):

* ``params/...`` and ``batch_stats/...``: the classifier's variables (for
  AutoMix / AdAutoMix ``state.params["classifier"]``). They initialise the
  online model *and* its EMA / teacher copy, as a fresh ``method.init`` does.
  From a checkpoint, ``weights="online"`` (default) takes the source's online
  weights, ``"ema"`` its EMA / teacher weights.
* ``generator/...``: the AutoMix / AdAutoMix mask generator, loaded only when
  both the source (a learned-method checkpoint) and the target have one; a
  source generator without a target generator is ignored, a target generator
  without a source generator keeps its initialisation.

Every target path must be filled from the source (same shape) or match
``skip`` (``re.search``); every source path must be used or match ``skip``
(torch's ``load_state_dict(strict=True)``). Otherwise a ValueError lists the
missing, unused and mismatched paths with their shapes, before the state is
touched. Typical ``skip``: ``"^params/heads/"`` when the class count differs
(the heads keep their fresh N(0, 0.01) initialisation). The step, the optimizer
state and the data position start fresh.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Mapping

from flax import traverse_util
import jax
import numpy as np

KINDS = ("checkpoint", "converted")
WEIGHTS = ("online", "ema")
# Top-level groups of a flat path.
_MODEL_GROUPS = ("params", "batch_stats")
_GENERATOR = "generator"
_META_KEY = "meta"
_LISTED = 8  # paths named per kind of problem in an error


# ---------------------------------------------------------------------------
# Converted weights (.npz).
# ---------------------------------------------------------------------------


def flatten(tree: Any, prefix: str) -> dict[str, np.ndarray]:
  """``{"<prefix>/<a>/<b>": array}`` of a nested dict (empty dict -> {})."""
  if not tree:
    return {}
  flat = traverse_util.flatten_dict(dict(tree), sep="/")
  return {f"{prefix}/{k}": v for k, v in flat.items()}


def unflatten(flat: Mapping[str, Any], prefix: str) -> dict:
  """Inverse of ``flatten`` for the entries under ``prefix``."""
  head = prefix + "/"
  inner = {k[len(head):]: v for k, v in flat.items() if k.startswith(head)}
  return traverse_util.unflatten_dict(inner, sep="/") if inner else {}


def save_converted(path: str | os.PathLike, variables: Mapping[str, Any], *,
                   meta: Mapping[str, Any] | None = None) -> None:
  """Writes model ``variables`` (``{"params", "batch_stats"}``) as an .npz.

  Keys are ``params/<flax path>`` and ``batch_stats/<flax path>``; ``meta``
  (JSON-serialisable: the source, the ``models.build`` arguments) is stored as
  a JSON string under ``"meta"``.
  """
  unknown = sorted(set(variables) - set(_MODEL_GROUPS))
  if unknown:
    raise ValueError(f"`variables` may only hold {_MODEL_GROUPS}; got "
                     f"{unknown}.")
  arrays = {}
  for group in _MODEL_GROUPS:
    arrays.update({k: np.asarray(v) for k, v in
                   flatten(variables.get(group, {}), group).items()})
  arrays[_META_KEY] = np.asarray(json.dumps(dict(meta or {}), sort_keys=True))
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def load_converted(path: str | os.PathLike
                   ) -> tuple[dict[str, np.ndarray], dict]:
  """``(flat arrays, meta)`` of a ``save_converted`` file."""
  with np.load(path, allow_pickle=False) as npz:
    flat = {k: npz[k] for k in npz.files if k != _META_KEY}
    meta = json.loads(str(npz[_META_KEY])) if _META_KEY in npz.files else {}
  bad = sorted(k for k in flat if k.split("/", 1)[0] not in _MODEL_GROUPS)
  if bad:
    raise ValueError(
        f"`config.init_from.path` {os.fspath(path)!r} is not a converted "
        f"weights file: keys must start with params/ or batch_stats/; got "
        f"{bad[:_LISTED]} (write it with scripts/convert_torch_weights.py).")
  return flat, meta


# ---------------------------------------------------------------------------
# Project checkpoints.
# ---------------------------------------------------------------------------


def _checkpoint_location(path: str) -> tuple[str, int | None]:
  """``(checkpoints root, step or None)`` of a workdir / root / step folder."""
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  name = os.path.basename(os.path.normpath(path))
  if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return os.path.dirname(os.path.normpath(path)), int(name)
  return path, None


def _get(tree: Any, name: str) -> Any:
  if isinstance(tree, Mapping):
    return tree.get(name)
  return getattr(tree, name, None)


def _is_learned(params: Any) -> bool:
  """The AutoMix / AdAutoMix layout: ``params = {"classifier", "generator"}``."""
  return (isinstance(params, Mapping)
          and set(params) == {"classifier", _GENERATOR})


def source_from_state(state: Any, *, weights: str = "online",
                      where: str = "the checkpoint") -> dict[str, np.ndarray]:
  """Flat ``params/ batch_stats/ generator/`` arrays of a saved train state.

  ``state``: a ``TrainState`` or its orbax dict (``read_state``). ``weights``
  picks the online or the EMA / teacher classifier.
  """
  params = _get(state, "params")
  if params is None:
    raise ValueError(f"{where} holds no `params`; is it a checkpoint of this "
                     "project?")
  generator = None
  if _is_learned(params):
    params, generator = params["classifier"], params[_GENERATOR]
  stats = _get(state, "batch_stats")
  if weights == "ema":
    params, stats = _get(state, "ema_params"), _get(state, "ema_batch_stats")
    if not params:
      raise ValueError(
          f"`config.init_from.weights='ema'`: {where} has no EMA weights "
          "(trained with ema.enabled=False); use weights='online'.")
  out = {**flatten(params, "params"), **flatten(stats or {}, "batch_stats")}
  if generator is not None:
    out.update(flatten(generator, _GENERATOR))
  return {k: np.asarray(v) for k, v in out.items()}


def read_source(init_cfg: Any) -> dict[str, np.ndarray]:
  """The flat source arrays named by ``config.init_from``."""
  path, kind = str(init_cfg.path), str(init_cfg.kind)
  if kind == "converted":
    return load_converted(path)[0]
  from automix_jax import checkpoint  # pylint: disable=import-outside-toplevel
  root, step = _checkpoint_location(path)
  step, state = checkpoint.read_state(root, step)
  return source_from_state(state, weights=str(init_cfg.get("weights", "online")),
                           where=f"checkpoint step {step} in {root}")


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------


def enabled(config: Any) -> bool:
  init_cfg = config.get("init_from", None)
  return init_cfg is not None and bool(init_cfg.get("path", ""))


def check_config(config: Any, *, files: bool = True) -> None:
  """Device-free checks of ``config.init_from`` (ValueError naming the key)."""
  if not enabled(config):
    return
  init_cfg = config.init_from
  kind = init_cfg.get("kind", "checkpoint")
  if kind not in KINDS:
    raise ValueError(f"`config.init_from.kind` must be one of {KINDS}; got "
                     f"{kind!r}.")
  weights = init_cfg.get("weights", "online")
  if weights not in WEIGHTS:
    raise ValueError(f"`config.init_from.weights` must be one of {WEIGHTS}; "
                     f"got {weights!r}.")
  if kind == "converted" and weights != "online":
    raise ValueError("`config.init_from.weights='ema'` needs kind='checkpoint'"
                     " (converted weights are one set).")
  try:
    re.compile(init_cfg.get("skip", ""))
  except re.error as e:
    raise ValueError(f"`config.init_from.skip` {init_cfg.skip!r} is not a "
                     f"regular expression ({e}).") from None
  path = str(init_cfg.path)
  if files and not (os.path.isfile(path) if kind == "converted"
                    else os.path.isdir(path)):
    raise FileNotFoundError(
        f"`config.init_from.path` {path!r} does not exist (kind={kind!r}: "
        + ("an .npz from scripts/convert_torch_weights.py" if kind ==
           "converted" else "a work directory or its checkpoints folder")
        + f"; cwd {os.getcwd()!r}).")


# ---------------------------------------------------------------------------
# Applying.
# ---------------------------------------------------------------------------


def _target_parts(state: Any) -> dict[str, Any]:
  """``{"params", "batch_stats", "generator"}`` trees of a fresh TrainState."""
  params = state.params
  if _is_learned(params):
    return {"params": params["classifier"], "batch_stats": state.batch_stats,
            _GENERATOR: params[_GENERATOR]}
  return {"params": params, "batch_stats": state.batch_stats}


def _shape(x) -> str:
  return str(list(np.shape(x)))


def match(target: Mapping[str, Any], source: Mapping[str, Any], *,
          skip: str, where: str) -> tuple[dict[str, Any], list[str]]:
  """The source array for every target path, after ``skip``.

  Args:
    target: flat ``{path: array}`` of the fresh state.
    source: flat ``{path: array}`` read from ``where``.
    skip: regex (``re.search``) of paths kept at their initialisation.
    where: the source, for messages.

  Returns:
    ``({path: source array}, skipped target paths)``.

  Raises:
    ValueError: missing, unused or shape-mismatched paths, all listed.
  """
  pattern = re.compile(skip) if skip else None
  skipped = lambda p: pattern is not None and pattern.search(p) is not None
  loaded, kept, missing, mismatched = {}, [], [], []
  for p, t in target.items():
    if skipped(p):
      kept.append(p)
    elif p not in source:
      missing.append(f"{p} {_shape(t)}")
    elif np.shape(source[p]) != np.shape(t):
      mismatched.append(f"{p} (source {_shape(source[p])}, model "
                        f"{_shape(t)})")
    else:
      loaded[p] = source[p]
  unused = [f"{p} {_shape(v)}" for p, v in source.items()
            if p not in target and not skipped(p)]
  problems = [(n, what) for n, what in (
      (mismatched, "shape mismatch"), (missing, "missing in the source"),
      (unused, "in the source but not in the model")) if n]
  if problems:
    text = "; ".join(
        f"{what} ({len(n)}): {', '.join(n[:_LISTED])}"
        f"{' ...' if len(n) > _LISTED else ''}" for n, what in problems)
    raise ValueError(
        f"`config.init_from`: {where} does not fit the model: {text}. Check "
        "config.model (name, width, kwargs, image size for a ViT's pos_embed) "
        "against the source, or keep such paths at their initialisation with "
        "--config.init_from.skip=REGEX (re.search on these paths, e.g. "
        "'^params/heads/' when the class count differs).")
  if pattern is not None and not kept and not any(skipped(p) for p in source):
    logging.warning("config.init_from.skip=%r matches no parameter path.",
                    skip)
  return loaded, kept


def _placed(values: Mapping[str, Any], like: Mapping[str, jax.Array]) -> dict:
  """``values`` as global arrays with the dtype and sharding of ``like``."""
  out = {}
  for p, v in values.items():
    ref = like[p]
    host = np.asarray(v, dtype=ref.dtype)
    out[p] = jax.make_array_from_callback(ref.shape, ref.sharding,
                                          lambda index, h=host: h[index])
  return out


def apply(state: Any, init_cfg: Any, *,
          source: Mapping[str, np.ndarray] | None = None) -> Any:
  """``state`` with the weights of ``config.init_from`` (see the module doc).

  Args:
    state: a freshly initialised ``TrainState`` (static or learned layout),
      its leaves placed as the loop places them.
    init_cfg: ``config.init_from``.
    source: the flat source arrays (default: ``read_source(init_cfg)``).

  Returns:
    A new state: online and EMA classifier variables (and a generator found in
    both) replaced, everything else as in ``state``.
  """
  where = f"{init_cfg.kind} {str(init_cfg.path)!r}"
  if source is None:
    source = read_source(init_cfg)
  parts = _target_parts(state)
  if _GENERATOR in parts and not any(k.startswith(_GENERATOR + "/")
                                     for k in source):
    parts.pop(_GENERATOR)  # a classifier source: the generator stays fresh
  elif _GENERATOR not in parts:
    source = {k: v for k, v in source.items()
              if not k.startswith(_GENERATOR + "/")}
  target = {}
  for name, tree in parts.items():
    target.update(flatten(tree, name))
  loaded, kept = match(target, source, skip=str(init_cfg.get("skip", "")),
                       where=where)
  new = {**target, **_placed(loaded, target)}
  params = unflatten(new, "params")
  stats = unflatten(new, "batch_stats")
  replace = {"params": params, "batch_stats": stats}
  if _is_learned(state.params):
    replace["params"] = {"classifier": params,
                         _GENERATOR: (unflatten(new, _GENERATOR)
                                      if _GENERATOR in parts
                                      else state.params[_GENERATOR])}
  if state.ema_params is not None:
    # Fresh copies, so donating the state never aliases online and EMA.
    replace["ema_params"] = jax.tree.map(lambda x: x.copy(), params)
    replace["ema_batch_stats"] = jax.tree.map(lambda x: x.copy(), stats)
  logging.info("init_from %s: loaded %d arrays, kept %d at initialisation "
               "(skip=%r).", where, len(loaded), len(kept),
               init_cfg.get("skip", ""))
  return state.replace(**replace)


def maybe_apply(state: Any, config: Any) -> Any:
  """``apply(state, config.init_from)`` when ``config.init_from.path`` is set."""
  return apply(state, config.init_from) if enabled(config) else state
