"""The shipped configs: each module exposes ``get_config(arg=None)`` (ml_collections).

They travel with the package, so an installed ``automix-train`` finds them by
name (``--config cifar10_cpu:mixer=cutmix``, ``--config adautomix/cifar10_cpu``);
``configs/`` at the repository root is a link to this folder, so the paths
``configs/<name>.py`` of a clone work as well. ``automix-train --list_configs``
lists them.
"""

import json


def to_json(config) -> str:
  """A resolved config as JSON text (``--print_config``, ``<workdir>/config.json``)."""
  return json.dumps(config.to_dict(), indent=1, sort_keys=True, default=str)
