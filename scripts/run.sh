#!/usr/bin/env bash
# Sets up .venv and runs the main job on the offline default: a CIFAR ResNet-18
# (width 1/8) trained with MixUp on 5,000 images of the offline CIFAR-10 archive
# (../shared/data/cifar10-jpeg.tar.gz; override with AUTOMIX_CIFAR10_ARCHIVE=...),
# evaluated every epoch on the 10,000 test images, then curves and the mixer
# gallery. A few minutes on 2 CPU cores. Extra arguments go to experiments.train
# (e.g. --config.num_epochs=20). Re-running resumes from the work directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
archive="${AUTOMIX_CIFAR10_ARCHIVE:-$root/../shared/data/cifar10-jpeg.tar.gz}"
workdir="${AUTOMIX_WORKDIR:-runs/cpu_mixup}"
.venv/bin/python -m experiments.train \
  --config "configs/cifar10_cpu.py:mixer=mixup,epochs=8,images_per_class=500" \
  --config.data.archive_path="$archive" --workdir "$workdir" "$@"
.venv/bin/python scripts/plot_run.py "$workdir" --out "$workdir/curves.png"
.venv/bin/python -m experiments.gallery --archive "$archive" \
  --out "$workdir/gallery.png"
echo "summary: $workdir/summary.json  curves: $workdir/curves.png  gallery: $workdir/gallery.png"
