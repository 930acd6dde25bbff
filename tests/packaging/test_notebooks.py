"""Notebooks write to a scratch directory unless told otherwise.

Running a notebook with its defaults must not overwrite committed results
(e.g. the trained masks in results/masks/): no code cell names a path under
results/, and the output directory a notebook assigns resolves outside it.
"""

import ast
import json
import os
import pathlib
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _code(path):
  nb = json.loads(path.read_text())
  return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_code_cell_writes_under_results(path):
  for code in _code(path):
    for node in ast.walk(ast.parse(code)):
      if isinstance(node, ast.Constant) and isinstance(node.value, str):
        assert not node.value.lstrip("./").startswith("results"), (
            f"{path.name}: {node.value!r}")


def test_mask_notebook_default_output_dir_is_scratch(monkeypatch):
  path = REPO / "notebooks" / "visualize_masks.ipynb"
  monkeypatch.delenv("AUTOMIX_NOTEBOOK_OUT", raising=False)
  monkeypatch.chdir(REPO)   # the notebook's first cell changes to the root
  scope = {"os": os, "tempfile": tempfile}
  assigned = False
  for code in _code(path):
    for stmt in ast.parse(code).body:
      if isinstance(stmt, ast.Assign) and any(
          isinstance(t, ast.Name) and t.id == "OUTPUT_DIR"
          for t in stmt.targets):
        exec(compile(ast.Module([stmt], []), path.name, "exec"), scope)  # pylint: disable=exec-used
        assigned = True
      # Every figure goes to OUTPUT_DIR.
      for node in ast.walk(stmt):
        if isinstance(node, ast.Call) and getattr(
            node.func, "attr", None) == "visualize":
          assert isinstance(node.args[1], ast.Name), ast.dump(node)
          assert node.args[1].id == "OUTPUT_DIR"
  assert assigned
  out = pathlib.Path(scope["OUTPUT_DIR"]).resolve()
  try:
    assert not out.is_relative_to(REPO / "results")
    assert not out.is_relative_to(REPO)
  finally:
    if out.is_dir() and not any(out.iterdir()):
      out.rmdir()
