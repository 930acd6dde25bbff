"""automix_jax: adversarial and learned mixing augmentation in JAX.

``import automix_jax as amx`` costs only jax and numpy: ``amx.mixers`` is loaded
eagerly, every other subpackage (models, data, train, generators, ...) on first
attribute access, so users who only want the mixers never import flax, optax or
tensorflow-datasets.
"""

import importlib

from automix_jax import mixers

__version__ = "0.1.0"

_LAZY = ("models", "data", "train", "generators", "evaluators", "checkpoint",
         "metrics", "sharding")


def __getattr__(name):
  if name in _LAZY:
    return importlib.import_module(f"automix_jax.{name}")
  raise AttributeError(f"module 'automix_jax' has no attribute {name!r}")
