"""The README's mixer section runs as written."""

from tests._docs import run_section


def test_readme_mixer_section_runs():
  scope = run_section("README.md", "## Mixers as JAX functions", 2)
  assert scope["mixed"].shape == scope["images"].shape
  assert scope["targets"].shape == (8, 10)
