"""Which heavy packages an import pulls in, measured in a fresh interpreter."""

import ast
import subprocess
import sys


def heavy_modules_loaded(import_stmt: str, packages: tuple[str, ...]) -> list[str]:
  """Modules of ``packages`` in ``sys.modules`` after ``import_stmt`` runs in a
  new Python process (this process has imported everything already)."""
  code = (f"import sys; {import_stmt}; "
          f"print(sorted(m for m in sys.modules if m.split('.')[0] in "
          f"{tuple(packages)!r}))")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stdout + res.stderr
  return ast.literal_eval(res.stdout.strip())
