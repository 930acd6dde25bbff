#!/usr/bin/env python
"""Plots training curves of one or more runs from their `metrics.jsonl`.

  python scripts/plot_run.py RUN_DIR [RUN_DIR ...] --out curves.png

Three panels: train loss vs step, test top-1 of every eval variant vs epoch,
learning rate vs step; one line per run (per variant in the middle panel),
labelled by the run directory's name. The loss is the classifier's: for the
learned methods (AutoMix, AdAutoMix) `"train/loss_classifier"`, not their
`"train/loss"`, which adds the generator's loss. A series of one point is
drawn as a marker. The file format is documented in
`automix_jax/metrics.py`: train lines carry `"train/loss"` and `"train/lr"`,
eval lines `"epoch"` and `"eval/<variant>/top1"` (`"test/<variant>/top1"` is
accepted too). When a resumed run logged a step twice the last line wins.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

METRICS_FILE = "metrics.jsonl"
_TOP1 = re.compile(r"^(?:eval|test)/(.+)/top1$")


def load_metrics(run_dir: str) -> list[dict]:
  """Reads `<run_dir>/metrics.jsonl`; returns its lines sorted by step.

  Lines of the same step are merged, later lines overriding earlier keys (a
  train line and an eval line of one step combine; a re-logged step after a
  resume replaces the old values). A truncated last line (a crash while
  writing) is skipped with a warning; any other malformed line is an error.

  Raises:
    FileNotFoundError: the directory or its metrics.jsonl does not exist.
    ValueError: a malformed line, naming file and line number.
  """
  path = os.path.join(run_dir, METRICS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"run_dir: {run_dir!r} has no {METRICS_FILE}.")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  by_step: dict[int, dict] = {}
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
      step = int(entry["step"])
    except (ValueError, KeyError, TypeError) as e:
      if i == len(lines):
        warnings.warn(f"{path}:{i}: skipping a truncated last line.")
        continue
      raise ValueError(f"{path}:{i}: malformed metrics line ({e}).") from e
    # Re-logged after a resume: drop what this step had before.
    if step in by_step and _kind(by_step[step]) & _kind(entry):
      by_step[step] = {}
    by_step.setdefault(step, {}).update(entry)
  return [by_step[s] for s in sorted(by_step)]


def _kind(entry: dict) -> set:
  kinds = set()
  for k in entry:
    if k.startswith("train/"):
      kinds.add("train")
    elif _TOP1.match(k) or k.startswith(("eval/", "test/")):
      kinds.add("eval")
  return kinds


def _series(entries, xkey, ykey):
  xs, ys = [], []
  for e in entries:
    if ykey in e and xkey in e and e[ykey] is not None:
      xs.append(e[xkey])
      ys.append(e[ykey])
  return xs, ys


# The learned methods (AutoMix, AdAutoMix) log `train/loss` as the sum of the
# classifier's and the generator's losses, the quantity their one backward
# pass differentiates; the classifier's own loss is `train/loss_classifier`.
# The loss panel shows the classifier loss wherever a run logged it.
LOSS_KEYS = ("train/loss_classifier", "train/loss")


def train_loss_key(entries) -> str | None:
  """The key the loss panel plots for one run (see ``LOSS_KEYS``)."""
  for key in LOSS_KEYS:
    if any(key in e for e in entries):
      return key
  return None


def plot_series(ax, xs, ys, **kwargs):
  """``ax.plot`` that keeps a one-point series visible (a line of one point
  draws nothing): such a series gets a round marker."""
  if len(xs) == 1:
    kwargs.update(marker="o", ms=max(kwargs.get("ms", 0), 5))
  return ax.plot(xs, ys, **kwargs)


def make_figure(run_dirs: list[str]):
  """The three panels for ``run_dirs``: a matplotlib Figure."""
  runs = {}
  for d in run_dirs:
    name = os.path.basename(os.path.normpath(d)) or d
    if name in runs:
      name = d
    runs[name] = load_metrics(d)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  ax_loss, ax_top1, ax_lr = axes
  learned = False
  for name, entries in runs.items():
    key = train_loss_key(entries)
    xs, ys = _series(entries, "step", key) if key else ([], [])
    if xs:
      learned |= key != "train/loss"
      label = name if key == "train/loss" else f"{name} (classifier loss)"
      plot_series(ax_loss, xs, ys, label=label, lw=1)
    xs, ys = _series(entries, "step", "train/lr")
    if xs:
      plot_series(ax_lr, xs, ys, label=name, lw=1)
    variants = sorted({m.group(1) for e in entries for k in e
                       if (m := _TOP1.match(k))})
    for v in variants:
      for prefix in ("eval", "test"):
        xs, ys = _series(entries, "epoch", f"{prefix}/{v}/top1")
        if xs:
          plot_series(ax_top1, xs, ys, label=f"{name}: {v}", lw=1, marker=".",
                      ms=3)
  loss_title = ("train loss (learned methods: the classifier's, without the "
                "generator's)" if learned else "train loss")
  for ax, title, xlabel, ylabel in (
      (ax_loss, loss_title, "step", "loss"),
      (ax_top1, "test top-1", "epoch", "top-1 (%)"),
      (ax_lr, "learning rate", "step", "lr")):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def plot_runs(run_dirs: list[str], out: str) -> str:
  """Draws the three panels for `run_dirs` into the PNG `out`; returns it."""
  fig = make_figure(run_dirs)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="run directories containing metrics.jsonl")
  parser.add_argument("--out", default="curves.png", help="output PNG path")
  args = parser.parse_args(argv)
  for d in args.run_dirs:
    if not os.path.isfile(os.path.join(d, METRICS_FILE)):
      parser.error(f"{d!r} has no {METRICS_FILE}")
  out = plot_runs(args.run_dirs, args.out)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
