#!/usr/bin/env bash
# Creates (or reuses) .venv at the repository root and installs automix-jax into it
# with the train, test and peer (torch/torchvision/timm) extras. Idempotent and quiet.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.automix-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[train,test,peer]"
  touch "$stamp"
fi
