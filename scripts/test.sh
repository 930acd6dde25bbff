#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite on the CPU (8 fake devices for the
# sharding tests are configured in tests/conftest.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec .venv/bin/python -m pytest -n 2 --dist loadgroup --durations=15 "$@" tests
