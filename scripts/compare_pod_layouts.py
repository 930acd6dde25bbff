r"""Runs one config on several simulated-pod layouts and tabulates the results.

  python scripts/compare_pod_layouts.py --layouts 1x1,1x8,2x4,4x2 \
    --workroot runs/pod_layouts --out results/pod_layouts.md -- \
    --config configs/cifar10_cpu.py:mixer=mixup,epochs=1,images_per_class=50

Each layout ``PxD`` is P processes of D fake CPU devices, launched with
scripts/launch_local_pod.sh into ``<workroot>/PxD`` (a fresh directory). The
table gives, per layout: the last logged train loss, the reported top-1, a
CRC32 of the final parameters (bit identity), the largest parameter
difference from the first layout, and the wall time of the whole launch
(process start, compilation, training and evaluation). All layouts share the
global batch, so they compute the same function up to the order of float sums.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _params_crc(params) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  crc = 0
  for leaf in jax.tree.leaves(params):
    crc = zlib.crc32(np.ascontiguousarray(leaf).tobytes(), crc)
  return f"{crc & 0xFFFFFFFF:08x}"


def _run_layout(layout: str, workdir: str, train_args: list[str]) -> dict:
  from automix_jax import checkpoint  # pylint: disable=import-outside-toplevel
  procs, devices = layout.split("x")
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.setdefault("PYTHON", sys.executable)
  t0 = time.time()
  subprocess.run(["bash", os.path.join(ROOT, "scripts", "launch_local_pod.sh"),
                  procs, devices, "--", *train_args, "--workdir", workdir,
                  "--config.progress_bar=False"],
                 cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
  wall = time.time() - t0
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [json.loads(l) for l in f if "train/loss" in l]
  step, state = checkpoint.read_state(os.path.join(workdir, "checkpoints"))
  return {"layout": layout, "wall_s": wall, "step": step,
          "loss": losses[-1]["train/loss"], "loss_step": losses[-1]["step"],
          "top1": summary["reported_top1"], "params": state["params"],
          "crc": _params_crc(state["params"]),
          "train_images_per_s": summary["train_images_per_s"]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--layouts", default="1x1,1x8,2x4,4x2")
  parser.add_argument("--workroot", default="runs/pod_layouts")
  parser.add_argument("--out", default="results/pod_layouts.md")
  parser.add_argument("train_args", nargs="+",
                      help="experiments.train arguments after --, without "
                           "--workdir")
  args = parser.parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  rows = [_run_layout(l, os.path.join(args.workroot, l), args.train_args)
          for l in args.layouts.split(",")]
  base = rows[0]["params"]
  lines = [
      "# One config on several simulated-pod layouts",
      "",
      "Command:",
      "",
      "```",
      "python scripts/compare_pod_layouts.py --layouts " + args.layouts +
      f" --workroot {args.workroot} --out {args.out} -- " +
      " ".join(args.train_args),
      "```",
      "",
      "`PxD` = P processes x D fake CPU devices on loopback "
      "(scripts/launch_local_pod.sh), same global batch. Wall time is the "
      "whole launch on this machine's 2 cores (start-up, compilation, "
      "training, evaluation); several processes share the cores, so it "
      "measures overhead, not speed-up.",
      "",
      f"| layout | steps | last train loss (step) | reported top-1 | params CRC32 "
      f"| max abs param diff vs {rows[0]['layout']} | wall time (s) |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    diff = max(float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(r["params"]), jax.tree.leaves(base)))
    lines.append(
        f"| {r['layout']} | {r['step']} | {r['loss']:.6f} ({r['loss_step']}) "
        f"| {r['top1']:.2f} | `{r['crc']}` | {diff:.2e} | {r['wall_s']:.1f} |")
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
