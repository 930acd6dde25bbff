#!/usr/bin/env bash
# Sets up .venv and runs the main job on the offline default: the mixer gallery on
# real CIFAR-10 images from ../shared/data/cifar10-jpeg.tar.gz (override with
# AUTOMIX_CIFAR10_ARCHIVE=/path/to/cifar10-jpeg.tar.gz).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec .venv/bin/python -m experiments.gallery "$@"
