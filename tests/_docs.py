"""Runs the Python examples of a documentation section as written."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_section(relative_path: str, heading: str, blocks: int) -> dict:
  """Executes the ``python`` blocks under ``heading`` in one namespace, in order.

  Checks that the section holds ``blocks`` of them; returns the namespace.
  """
  path = REPO / relative_path
  text = path.read_text()
  section = text[text.index(heading):]
  end = section.find("\n## ", 1)
  section = section if end < 0 else section[:end]
  codes = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(codes) == blocks, (heading, len(codes))
  scope = {"__example_lines__": [len(c.strip().splitlines()) for c in codes]}
  for code in codes:
    exec(compile(code, str(path), "exec"), scope)  # pylint: disable=exec-used
  return scope
