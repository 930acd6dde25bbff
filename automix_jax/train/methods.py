"""Registry of training methods, imported lazily by name.

A method class is constructed as
``cls(config, *, num_classes: int, steps_per_epoch: int, mesh: Mesh)`` and
provides ``init``, ``train_step``, ``eval_variants``, ``predict`` and
``reported_variant`` (docs/interfaces.md, "Training").
"""

from __future__ import annotations

import importlib

_METHODS = {
    "static": "automix_jax.train.static:StaticMixing",
    "automix": "automix_jax.train.automix:AutoMix",
    "adautomix": "automix_jax.train.adautomix:AdAutoMix",
    "samix": "automix_jax.train.samix:SAMix",
}


def names() -> tuple[str, ...]:
  return tuple(sorted(_METHODS))


def register(name: str, target: str) -> None:
  """Adds ``name -> "module.path:ClassName"`` (for out-of-tree methods)."""
  if name in _METHODS and _METHODS[name] != target:
    raise ValueError(f"a method named {name!r} is already registered.")
  _METHODS[name] = target


def get(name: str):
  """The method class registered as ``name``; ValueError if unknown/missing."""
  if name not in _METHODS:
    raise ValueError(f"unknown method {name!r}; registered methods: "
                     f"{', '.join(names())}.")
  module_name, attr = _METHODS[name].split(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise
    raise ValueError(f"method {name!r} is registered as {_METHODS[name]!r} "
                     f"but its module is not available ({e}).") from e
  try:
    return getattr(module, attr)
  except AttributeError:
    raise ValueError(f"method {name!r}: module {module_name!r} has no "
                     f"{attr!r}.") from None
