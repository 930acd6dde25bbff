"""The AdaptiveMask training example of docs/interfaces.md runs as written."""

import jax
import numpy as np

from tests._docs import run_section


def test_adaptive_mask_training_example_runs_and_learns():
  scope = run_section("docs/interfaces.md", "## Learned masks: one layout", 1)
  assert scope["__example_lines__"] == [20]            # at most 20 lines
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
