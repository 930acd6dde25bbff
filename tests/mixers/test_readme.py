"""The README's mixer section runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_mixer_section_runs():
  text = README.read_text()
  section = text[text.index("## Mixers as JAX functions"):]
  section = section[:section.index("\n## ", 1)]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 2
  scope = {}
  for block in blocks:  # later blocks use the names of earlier ones
    exec(compile(block, str(README), "exec"), scope)  # pylint: disable=exec-used
  assert scope["mixed"].shape == scope["images"].shape
  assert scope["targets"].shape == (8, 10)
