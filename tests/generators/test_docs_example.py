"""The AdaptiveMask training example of docs/interfaces.md runs as written."""

import pathlib
import re

import jax
import numpy as np

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "interfaces.md"


def _example():
  text = DOC.read_text()
  section = text[text.index("## Learned masks: one layout"):]
  section = section[:section.index("\n## ", 1)]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 1
  return blocks[0]


def test_adaptive_mask_training_example_runs_and_learns():
  code = _example()
  assert len(code.strip().splitlines()) <= 20
  scope = {}
  exec(compile(code, str(DOC), "exec"), scope)  # pylint: disable=exec-used
  first = scope["gen"].init(scope["key"], scope["features"], scope["index"],
                            scope["lam"])["params"]
  assert np.isfinite(float(scope["value"]))
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), first,
                       scope["params"])
  assert max(jax.tree.leaves(moved)) > 0        # the generator was trained
  # Its masks are in the one layout and feed apply_masks unchanged.
  masks = scope["gen"].apply({"params": scope["params"]}, scope["features"],
                             scope["index"], scope["lam"])
  assert masks.shape == (8, 16, 16, 3)
