#!/usr/bin/env python
r"""Summarises a multi-method, multi-seed sweep and compares it with the paper.

    python scripts/summarize_runs.py runs/reproduce_cpu \
        --out results/reproduce_cpu.md --paper-table

Reads every ``RUN_ROOT/<method>_seed<k>/summary.json`` (as written by
``python -m experiments.train``) and writes a markdown report:

* per run and per method: EMA and online top-1, each the **median over the last
  10 % of the epochs (at least one epoch)**, recomputed from the run's
  ``history`` so that every run is scored by the same rule whatever its
  ``report_last_epochs`` was; the final-epoch top-1; wall time and train
  images/s. Per method: mean, sample std and min-max over the seeds.
* a ranking of the methods by mean EMA top-1. A run without an EMA variant
  (``ema_one``) is scored by its online top-1 instead; the table marks it.
* the ranking against the paper's CIFAR-100 ResNet-18 ranking (AdAutoMix
  paper and README / OpenMixup model zoo; 800 and 200
  epochs): Kendall's tau (tau-b) over the methods present in both, and a
  paragraph listing, in plain words, where the two rankings agree and every
  pair they order differently.
* curves (unless ``--no-curves``): ``<curves-dir>/<method>.png`` comparing the
  seeds of one method (``scripts/plot_run.py``, from ``metrics.jsonl``) and
  ``<curves-dir>/overall_seed<k>.png``, the test top-1 of every method's lowest
  seed per epoch (from ``summary.json``).
* learned masks over training: for every run whose ``metrics.jsonl`` has the
  learned methods' ``train/mask_*`` statistics (``generators.mask_statistics``
  of the generator's own sample, logged every log step),
  ``<curves-dir>/<method>_masks.png`` (one line per seed) and a table with a
  verdict per run, by the threshold rule of ``mask_verdict``: *saturated* when
  more than half of the mask pixels are within 0.01 of 0 or 1
  (``mask_saturated_frac`` > 0.5), *collapsed to whole-image picks* when more
  than half of the samples take over 90 % of the image from one source
  (``mask_whole_image_frac`` > 0.5), both as means over the last 10 % of the
  logged steps; *generator gradient vanished* when the generator's gradient
  norm over that window is below 1 % of its mean over the first 10 %;
  *spatially uniform throughout* when a sample's mask never varied over its
  pixels (``mask_spatial_std`` peak below 0.01).
* time: train seconds per epoch and seconds per evaluation of every run (from
  ``summary.json``'s ``train_time_s``, ``eval_time_s``, ``eval_seconds``).
* a closing verdict on the paper's claims (every mixer beats vanilla; the
  learned mixers beat every static one; AdAutoMix >= AutoMix), on the EMA
  teacher and on the online model: *reproduced* only when every pair goes the
  paper's way with the seeds' min-max ranges apart (``verdict_section``).
* ``--appendix FILE`` (repeatable) appends a markdown file, e.g. the pilot that
  chose the sweep's setting (results/proxy_calibration.md).

The output depends only on the inputs (no dates, sorted iteration): running it
twice on the same runs gives the same markdown. ``--command`` sets the command
line printed at the top (``scripts/reproduce_cpu.sh`` passes its own).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from typing import Any, Iterable, Sequence

RUN_DIR_RE = re.compile(r"^(?P<method>.+)_seed(?P<seed>\d+)$")
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
EMA_VARIANT = "ema_one"
ONLINE_VARIANT = "online_one"

# Display order and names of the methods this repository trains; other method
# directory names sort after these, alphabetically.
# The learned methods report their EMA teacher, as the papers do.
LEARNED = ("automix", "samix", "adautomix")
METHOD_ORDER = ("vanilla", "mixup", "cutmix", "fmix", "resizemix", "automix",
                "samix", "adautomix")
DISPLAY = {"vanilla": "Vanilla", "mixup": "MixUp", "cutmix": "CutMix",
           "fmix": "FMix", "resizemix": "ResizeMix", "automix": "AutoMix",
           "samix": "SAMix", "adautomix": "AdAutoMix",
           "saliencymix": "SaliencyMix",
           "gridmix": "GridMix", "smoothmix": "SmoothMix",
           "maskmix": "MaskMix"}

# CIFAR-100, CIFAR ResNet-18, top-1 % (median of the last 10 epochs), from
# the AdAutoMix paper (arXiv 2312.11954) and README, and the OpenMixup model
# zoo for the static mixers and AutoMix. Keys: epochs.
PAPER_C100_R18 = {
    800: {"vanilla": 78.04, "mixup": 79.12, "cutmix": 78.17, "fmix": 79.69,
          "resizemix": 80.01, "automix": 82.04, "adautomix": 82.32},
    400: {"vanilla": 77.73, "mixup": 79.34, "cutmix": 79.58, "fmix": 79.91,
          "resizemix": 79.19, "automix": 81.78, "adautomix": 81.97},
    200: {"vanilla": 76.42, "mixup": 78.52, "cutmix": 79.45, "fmix": 78.91,
          "resizemix": 79.56, "automix": 80.12, "adautomix": 81.55},
}
# CIFAR-100 ResNeXt-50 (32x4d), 800 epochs, same source (for --paper-table).
PAPER_C100_RX50_800 = {
    "vanilla": 81.09, "mixup": 82.10, "cutmix": 78.32, "fmix": 79.02,
    "resizemix": 80.35, "automix": 83.64, "adautomix": 84.22}
PAPER_SOURCE = ("CIFAR-100, CIFAR ResNet-18, top-1 % (median of the last 10 "
                "epochs), AdAutoMix README / OpenMixup model zoo "
                "(AdAutoMix paper, Qin et al., ICLR 2024, arXiv 2312.11954, and "
                "its README; OpenMixup model zoo, "
                "github.com/Westlake-AI/openmixup)")


DEFAULT_TITLE = "CPU-scale reproduction: mixing methods, several seeds"

# Learned-mask statistics logged by AutoMix / AdAutoMix every log step
# (automix_jax.train._learned.mask_metrics) and the verdict thresholds.
MASK_STATS = ("mask_saturated_frac", "mask_whole_image_frac",
              "mask_spatial_std", "mask_dominance", "mask_area_lam_gap",
              "grad_norm_generator")
SATURATED_ABOVE = 0.5      # mean mask_saturated_frac over the last 10 %
WHOLE_IMAGE_ABOVE = 0.5    # mean mask_whole_image_frac over the last 10 %
GRAD_VANISHED_BELOW = 0.01  # last-10 % / first-10 % generator gradient norm
# Peak over the run of mask_spatial_std (std over pixels of a sample's mask,
# weights in [0, 1]): a binary cut of area a has std sqrt(a (1 - a)), 0.3 at
# a = 0.1, so below 0.01 every pixel of a sample takes nearly the same weight.
SPATIALLY_UNIFORM_BELOW = 0.01


class NoRunsError(FileNotFoundError):
  """RUN_ROOT holds no ``<method>_seed<k>/summary.json``."""


# ---------------------------------------------------------------------------
# Scoring one run.
# ---------------------------------------------------------------------------


def last_fraction_window(num_epochs: int, fraction: float = 0.1) -> int:
  """Number of final epochs scored: ``max(1, floor(fraction * num_epochs))``.

  10 epochs -> 1, 19 -> 1, 20 -> 2, 800 -> 80.
  """
  if num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1; got {num_epochs}.")
  return max(1, int(math.floor(fraction * num_epochs + 1e-9)))


def _median(values: Sequence[float]) -> float:
  vals = sorted(float(v) for v in values)
  n = len(vals)
  if n == 0:
    raise ValueError("median of no values")
  mid = n // 2
  return vals[mid] if n % 2 else 0.5 * (vals[mid - 1] + vals[mid])


def median_last_fraction(history: list[dict], variant: str,
                         fraction: float = 0.1) -> float | None:
  """Median top-1 of ``variant`` over the evaluations in the last 10 % of epochs.

  The window is ``k = max(1, floor(0.1 * E))`` epochs where E is the epoch of
  the last evaluation; every evaluation with ``epoch > E - k`` counts (so a run
  evaluated every epoch uses its last k evaluations; one evaluated more
  sparsely uses those that fall in the window, at least its last one). Returns
  None when the last evaluation lacks ``variant``.
  """
  if not history or variant not in history[-1].get("variants", {}):
    return None
  last_epoch = int(history[-1]["epoch"])
  k = last_fraction_window(max(last_epoch, 1), fraction)
  vals = [h["variants"][variant]["top1"] for h in history
          if int(h["epoch"]) > last_epoch - k
          and variant in h.get("variants", {})]
  return _median(vals or [history[-1]["variants"][variant]["top1"]])


def load_run(run_dir: str) -> dict:
  """Reads ``run_dir/summary.json`` and scores it (see module docstring)."""
  name = os.path.basename(os.path.normpath(run_dir))
  m = RUN_DIR_RE.match(name)
  if not m:
    raise ValueError(f"{run_dir!r}: expected a directory named "
                     "<method>_seed<k>.")
  path = os.path.join(run_dir, SUMMARY_FILE)
  with open(path, encoding="utf-8") as f:
    s = json.load(f)
  history = s.get("history") or []
  if not history:
    raise ValueError(f"{path}: no evaluation history; cannot score the run.")
  ema = median_last_fraction(history, EMA_VARIANT)
  online = median_last_fraction(history, ONLINE_VARIANT)
  if online is None and ema is None:
    raise ValueError(f"{path}: history has neither {EMA_VARIANT!r} nor "
                     f"{ONLINE_VARIANT!r}.")
  last = history[-1]["variants"]
  cfg = s.get("config") or {}
  last_epoch = int(history[-1]["epoch"])
  has_metrics = os.path.isfile(os.path.join(run_dir, METRICS_FILE))
  timed = s.get("eval_seconds")  # this invocation's evaluations
  n_evals = len(timed) if timed is not None else len(history)
  return {
      "dir": run_dir, "name": name, "method": m.group("method"),
      "seed": int(m.group("seed")),
      "ema": ema, "online": online,
      "has_ema": ema is not None,
      "score": ema if ema is not None else online,
      "final_ema": last.get(EMA_VARIANT, {}).get("top1"),
      "final_online": last.get(ONLINE_VARIANT, {}).get("top1"),
      "epochs": last_epoch,
      "window": last_fraction_window(max(last_epoch, 1)),
      "planned_epochs": cfg.get("num_epochs"),
      "complete": "stopped_at_step" not in s,
      "wall_time_s": s.get("wall_time_s"),
      # A resumed run's times are its last invocation's only.
      "resumed_from_step": s.get("resumed_from_step"),
      "images_per_s": s.get("train_images_per_s"),
      "reported_variant": s.get("reported_variant"),
      "reported_top1": s.get("reported_top1"),
      "history": history,
      "config": cfg,
      "has_metrics": has_metrics,
      "train_s_per_epoch": s.get("train_seconds_per_epoch") or (
          s["train_time_s"] / s["epochs"]
          if s.get("train_time_s") and s.get("epochs") else None),
      "eval_s_per_eval": (s["eval_time_s"] / n_evals
                          if s.get("eval_time_s") and n_evals else None),
      "num_evals": len(history),
      "masks": mask_series(run_dir) if has_metrics else {},
  }


# ---------------------------------------------------------------------------
# Learned masks over training.
# ---------------------------------------------------------------------------


def mask_series(run_dir: str) -> dict[str, tuple[list, list]]:
  """``{stat: (steps, values)}`` of the ``train/<stat>`` in ``MASK_STATS``
  found in ``run_dir/metrics.jsonl`` (empty for runs that log none)."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import plot_run  # pylint: disable=g-import-not-at-top
  entries = plot_run.load_metrics(run_dir)
  if not any(f"train/{MASK_STATS[0]}" in e for e in entries):
    return {}
  out = {}
  for stat in MASK_STATS:
    pts = [(e["step"], e[f"train/{stat}"]) for e in entries
           if e.get(f"train/{stat}") is not None]
    if pts:
      out[stat] = ([x for x, _ in pts], [y for _, y in pts])
  return out


def _window_mean(values: Sequence[float], first: bool) -> float:
  k = last_fraction_window(len(values))
  part = values[:k] if first else values[-k:]
  return sum(part) / len(part)


def mask_verdict(series: dict[str, tuple[list, list]]) -> dict | None:
  """Last-10 % means, peaks and the threshold verdict of one run's masks.

  Rule (module docstring): saturated if the mean ``mask_saturated_frac`` over
  the last 10 % of the logged steps (at least one) exceeds
  ``SATURATED_ABOVE``; collapsed to whole-image picks if the mean
  ``mask_whole_image_frac`` there exceeds ``WHOLE_IMAGE_ABOVE``; generator
  gradient vanished if its norm's mean there is below ``GRAD_VANISHED_BELOW``
  times its mean over the first 10 %; spatially uniform throughout if
  ``mask_spatial_std`` never reaches ``SPATIALLY_UNIFORM_BELOW`` (the mask is
  then a per-sample mixing weight, not a spatial mask). None without mask
  statistics.
  """
  if "mask_saturated_frac" not in series:
    return None
  last = {k: _window_mean(v[1], first=False) for k, v in series.items()}
  peak = {k: max(v[1]) for k, v in series.items()}
  grad_ratio = None
  if "grad_norm_generator" in series:
    first = _window_mean(series["grad_norm_generator"][1], first=True)
    grad_ratio = (last["grad_norm_generator"] / first if first > 0
                  else float("nan"))
  flags = []
  if last["mask_saturated_frac"] > SATURATED_ABOVE:
    flags.append("saturated")
  if last.get("mask_whole_image_frac", 0.0) > WHOLE_IMAGE_ABOVE:
    flags.append("collapsed to whole-image picks")
  if grad_ratio is not None and grad_ratio < GRAD_VANISHED_BELOW:
    flags.append("generator gradient vanished")
  if peak.get("mask_spatial_std", 1.0) < SPATIALLY_UNIFORM_BELOW:
    flags.append("spatially uniform throughout")
  return {"last": last, "peak": peak, "grad_ratio": grad_ratio,
          "flags": flags, "steps": len(series["mask_saturated_frac"][0])}


def method_sort_key(method: str) -> tuple:
  if method in METHOD_ORDER:
    return (0, METHOD_ORDER.index(method), method)
  return (1, 0, method)


def display(method: str) -> str:
  return DISPLAY.get(method, method)


def find_runs(run_root: str, *, finished_only: bool = False) -> list[dict]:
  """Every ``<run_root>/<method>_seed<k>/summary.json``, sorted by method, seed
  (with ``finished_only``, without the runs that stopped early).

  Raises:
    NoRunsError: ``run_root`` does not exist or holds no finished run.
  """
  if not os.path.isdir(run_root):
    raise NoRunsError(f"RUN_ROOT {run_root!r} is not a directory.")
  runs = []
  for name in sorted(os.listdir(run_root)):
    d = os.path.join(run_root, name)
    if (RUN_DIR_RE.match(name) and os.path.isdir(d)
        and os.path.isfile(os.path.join(d, SUMMARY_FILE))):
      run = load_run(d)
      if run["complete"] or not finished_only:
        runs.append(run)
  if not runs:
    raise NoRunsError(
        f"RUN_ROOT {run_root!r} holds no runs: expected "
        f"<method>_seed<k>/{SUMMARY_FILE} (e.g. mixup_seed0/{SUMMARY_FILE}). "
        "Train first, e.g. with scripts/reproduce_cpu.sh.")
  runs.sort(key=lambda r: (method_sort_key(r["method"]), r["seed"]))
  return runs


# ---------------------------------------------------------------------------
# Aggregation and ranking.
# ---------------------------------------------------------------------------


def mean(xs: Sequence[float]) -> float:
  return sum(xs) / len(xs)


def std(xs: Sequence[float]) -> float:
  """Sample standard deviation (ddof=1); 0 for a single value."""
  if len(xs) < 2:
    return 0.0
  mu = mean(xs)
  return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))


def _stats(xs: Sequence[float | None]) -> dict | None:
  xs = [x for x in xs if x is not None]
  if not xs:
    return None
  return {"mean": mean(xs), "std": std(xs), "min": min(xs), "max": max(xs),
          "n": len(xs)}


def aggregate(runs: list[dict]) -> list[dict]:
  """Per-method statistics over seeds, in display order (not yet ranked)."""
  by_method: dict[str, list[dict]] = {}
  for r in runs:
    by_method.setdefault(r["method"], []).append(r)
  out = []
  for method in sorted(by_method, key=method_sort_key):
    rs = by_method[method]
    n_ema = sum(r["has_ema"] for r in rs)
    out.append({
        "method": method,
        "seeds": [r["seed"] for r in rs],
        "runs": rs,
        "score": _stats([r["score"] for r in rs]),
        "ema": _stats([r["ema"] for r in rs]),
        "online": _stats([r["online"] for r in rs]),
        "wall_time_s": _stats([r["wall_time_s"] for r in rs]),
        "images_per_s": _stats([r["images_per_s"] for r in rs]),
        "score_source": ("ema" if n_ema == len(rs) else
                         "online" if n_ema == 0 else "mixed"),
        "epochs": sorted({r["epochs"] for r in rs}),
        "complete": all(r["complete"] for r in rs),
    })
  return out


def rank(methods: list[dict]) -> list[dict]:
  """Sorted by mean score, best first; ties broken by the display order."""
  return sorted(methods, key=lambda m: (-m["score"]["mean"],
                                        method_sort_key(m["method"])))


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
  """Kendall's tau-b of two paired score lists (tau-a when there are no ties).

  ``(C - D) / sqrt((n0 - n1) (n0 - n2))`` with C/D the concordant/discordant
  pairs, n0 = n(n-1)/2 and n1, n2 the pairs tied in xs, ys. NaN when fewer than
  two items or one list is constant.
  """
  if len(xs) != len(ys):
    raise ValueError("xs and ys must have the same length.")
  n = len(xs)
  c = d = tx = ty = 0
  for i in range(n):
    for j in range(i + 1, n):
      dx = (xs[i] > xs[j]) - (xs[i] < xs[j])
      dy = (ys[i] > ys[j]) - (ys[i] < ys[j])
      if dx == 0:
        tx += 1
      if dy == 0:
        ty += 1
      if dx and dy:
        if dx == dy:
          c += 1
        else:
          d += 1
  n0 = n * (n - 1) // 2
  denom = math.sqrt((n0 - tx) * (n0 - ty))
  return (c - d) / denom if denom > 0 else float("nan")


def compare_with_paper(ranked: list[dict], paper: dict[str, float]) -> dict:
  """Kendall tau, agreeing and disagreeing pairs of ours vs ``paper``."""
  common = [m for m in ranked if m["method"] in paper]
  ours = {m["method"]: m["score"]["mean"] for m in common}
  spread = {m["method"]: m["score"] for m in common}
  names = [m["method"] for m in common]
  tau = kendall_tau([ours[n] for n in names], [paper[n] for n in names])
  agree, disagree = [], []
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      p = (paper[a] > paper[b]) - (paper[a] < paper[b])
      o = (ours[a] > ours[b]) - (ours[a] < ours[b])
      # Order the pair as the paper does (the paper's better method first).
      hi, lo = (a, b) if p >= 0 else (b, a)
      # Seeds resolve the order when the min-max ranges do not overlap.
      sa, sb = spread[hi], spread[lo]
      resolved = sa["min"] > sb["max"] or sb["min"] > sa["max"]
      item = {"paper_hi": hi, "paper_lo": lo,
              "paper_diff": paper[hi] - paper[lo],
              "ours_hi": ours[hi], "ours_lo": ours[lo],
              "ours_diff": ours[hi] - ours[lo], "resolved": resolved,
              "tie": p == 0 or o == 0}
      (agree if p * o > 0 else disagree).append(item)
  disagree.sort(key=lambda x: (-abs(x["ours_diff"]), x["paper_hi"],
                               x["paper_lo"]))
  return {"methods": names, "tau": tau, "agree": agree, "disagree": disagree,
          "paper": paper, "ours": ours}


# ---------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------


def _resumed(run: dict) -> str:
  step = run.get("resumed_from_step")
  return f" (from step {step})" if step else ""


def _f(x: float | None, nd: int = 2) -> str:
  return "n/a" if x is None else f"{x:.{nd}f}"


def _ms(st: dict | None) -> str:
  if st is None:
    return "n/a"
  if st["n"] < 2:
    return f"{st['mean']:.2f}"
  return f"{st['mean']:.2f} ± {st['std']:.2f}"


def _range(st: dict | None) -> str:
  if st is None:
    return "n/a"
  return f"{st['min']:.2f}–{st['max']:.2f}"


def _paper_order(paper: dict[str, float], names: Iterable[str]) -> str:
  names = sorted(names, key=lambda n: (-paper[n], method_sort_key(n)))
  return " > ".join(f"{display(n)} {paper[n]:.2f}" for n in names)


def _tau_str(tau: float) -> str:
  return "n/a (fewer than 2 methods)" if math.isnan(tau) else f"{tau:+.3f}"


def _pair_words(x: dict) -> str:
  hi, lo = display(x["paper_hi"]), display(x["paper_lo"])
  if x["ours_diff"] == 0:
    here = f"here they tie at {x['ours_hi']:.2f}"
  else:
    here = (f"here {lo} is ahead, {x['ours_lo']:.2f} vs {x['ours_hi']:.2f} "
            f"({-x['ours_diff']:.2f} pp)")
  note = ("the seeds' min-max ranges do not overlap" if x["resolved"] else
          "within the seed spread (min-max ranges overlap)")
  return (f"the paper has {hi} above {lo} ({x['paper_diff']:+.2f} pp); "
          f"{here}, {note}")


def agreement_paragraph(cmp: dict, ranked: list[dict]) -> list[str]:
  """Plain-words agreements and disagreements of one paper column."""
  names, paper, ours = cmp["methods"], cmp["paper"], cmp["ours"]
  if len(names) < 2:
    return ["Fewer than two of the paper's methods were run; there is no "
            "ranking to compare."]
  lines = []
  n_pairs = len(cmp["agree"]) + len(cmp["disagree"])
  ours_sorted = [m["method"] for m in ranked if m["method"] in paper]
  paper_sorted = sorted(names, key=lambda n: (-paper[n], method_sort_key(n)))
  words = []
  words.append(f"Of the {n_pairs} pairs of methods, {len(cmp['agree'])} are "
               f"ordered as in the paper and {len(cmp['disagree'])} are not "
               f"(Kendall tau {_tau_str(cmp['tau'])}).")
  if ours_sorted[0] == paper_sorted[0]:
    words.append(f"Both put {display(ours_sorted[0])} first.")
  else:
    words.append(f"The paper's best is {display(paper_sorted[0])}; here it is "
                 f"{display(ours_sorted[0])} ({display(paper_sorted[0])} "
                 f"ranks {ours_sorted.index(paper_sorted[0]) + 1} of "
                 f"{len(names)}).")
  if ours_sorted[-1] == paper_sorted[-1]:
    words.append(f"Both put {display(ours_sorted[-1])} last.")
  else:
    words.append(f"The paper's worst is {display(paper_sorted[-1])}; here it "
                 f"is {display(ours_sorted[-1])}.")
  learned = [n for n in names if n in ("automix", "adautomix")]
  static = [n for n in names if n not in learned]
  if learned and static:
    best_static = max(static, key=lambda n: ours[n])
    beat = [n for n in learned if ours[n] > ours[best_static]]
    if len(beat) == len(learned):
      words.append("As in the paper, the learned mixers ("
                   + ", ".join(display(n) for n in learned)
                   + ") are ahead of every static mixer.")
    else:
      lag = [n for n in learned if n not in beat]
      words.append("Unlike the paper, where the learned mixers lead, "
                   + ", ".join(display(n) for n in lag)
                   + f" is not ahead of the best static method here "
                   f"({display(best_static)} {ours[best_static]:.2f}).")
  if "vanilla" in names and len(names) > 1:
    below = [n for n in names if n != "vanilla" and ours[n] < ours["vanilla"]]
    if not below:
      words.append("Every mixing method beats vanilla training, as in the "
                   "paper.")
    else:
      words.append("Vanilla training beats "
                   + ", ".join(display(n) for n in below)
                   + " here (in the paper every mixer beats vanilla in this "
                   "column).")
  lines.append(" ".join(words))
  if cmp["disagree"]:
    lines.append("")
    lines.append("Pairs ordered differently (largest gap here first):")
    lines.append("")
    for x in cmp["disagree"]:
      lines.append(f"- {display(x['paper_hi'])} vs {display(x['paper_lo'])}: "
                   f"{_pair_words(x)}.")
  unresolved = [x for x in cmp["agree"] if not x["resolved"]]
  if cmp["agree"]:
    lines.append("")
    verb = "is" if len(unresolved) == 1 else "are"
    lines.append(f"Pairs ordered as in the paper: {len(cmp['agree'])}, of "
                 f"which {len(unresolved)} {verb} within the seed spread "
                 "(min-max ranges overlap), so the seeds do not settle them.")
  return lines


def _setup_line(runs: list[dict]) -> list[str]:
  """Data/model/schedule values read from the runs' configs, and checks."""
  def values(getter):
    out = set()
    for r in runs:
      try:
        out.add(json.dumps(getter(r["config"]), sort_keys=True))
      except (KeyError, TypeError):
        out.add("?")
    return sorted(out)

  lines = []
  items = [
      ("epochs", lambda c: c["num_epochs"]),
      ("images per class", lambda c: c["data"]["images_per_class"]),
      ("subset seed", lambda c: c["data"]["subset_seed"]),
      ("model", lambda c: c["model"]["name"]),
      ("width", lambda c: c["model"]["width"]),
      ("batch", lambda c: c["batch_size"]),
      ("dataset", lambda c: c["data"]["name"]),
  ]
  parts = []
  for label, getter in items:
    vs = values(getter)
    parts.append(f"{label} {' / '.join(vs)}")
  lines.append("Setup read from the runs' configs: " + ", ".join(parts) + ".")
  emas = sorted({(r["method"], json.dumps(
      [r["config"].get("ema", {}).get("momentum"),
       r["config"].get("ema", {}).get("end_momentum")]))
                 for r in runs if r["config"].get("ema", {}).get("enabled")})
  if emas:
    by_val: dict[str, list[str]] = {}
    for method, v in emas:
      by_val.setdefault(v, []).append(display(method))
    parts = []
    for v, ms in sorted(by_val.items()):
      start, end = json.loads(v)
      parts.append(f"{', '.join(ms)}: {start} -> {end}")
    lines.append("EMA momentum (start -> end, cosine): " + "; ".join(parts)
                 + ".")
  epochs = sorted({r["epochs"] for r in runs})
  if len(epochs) > 1:
    lines.append(f"**Warning: the runs do not share one epoch count "
                 f"({', '.join(map(str, epochs))}); the comparison is not "
                 "like for like.**")
  incomplete = [r["name"] for r in runs if not r["complete"]]
  if incomplete:
    lines.append("**Warning: unfinished runs (stopped early): "
                 + ", ".join(incomplete) + ".**")
  return lines


def ranked_view(methods: list[dict], variant_of, title: str, intro: str
                ) -> list[str]:
  """A ranking section scored on ``variant_of(method) in {"ema", "online"}``,
  with Kendall tau against both paper columns and the pairs that disagree."""
  view = rank([{**m, "score": m[variant_of(m)], "score_source": variant_of(m)}
               for m in methods if m[variant_of(m)] is not None])
  if not view:
    return []
  L = [f"## {title}", "", intro, "",
       "| rank | method | model | top-1 (mean ± std) | min–max |",
       "|---|---|---|---|---|"]
  for i, m in enumerate(view, 1):
    L.append(f"| {i} | {display(m['method'])} | {m['score_source']} | "
             f"{_ms(m['score'])} | {_range(m['score'])} |")
  L += ["", "| paper column | methods compared | Kendall tau | pairs in "
        "agreement | pairs reversed |", "|---|---|---|---|---|"]
  for ep in (800, 200):
    c = compare_with_paper(view, PAPER_C100_R18[ep])
    L.append(f"| R-18 {ep} ep | {len(c['methods'])} | {_tau_str(c['tau'])} | "
             f"{len(c['agree'])} | {len(c['disagree'])} |")
  L.append("")
  L += agreement_paragraph(compare_with_paper(view, PAPER_C100_R18[200]), view)
  L.append("")
  return L


def mask_section(runs: list[dict], curves: dict[str, str] | None
                 ) -> list[str]:
  """The learned-mask table and verdicts (nothing if no run logs masks)."""
  rows = [(r, mask_verdict(r["masks"])) for r in runs]
  rows = [(r, v) for r, v in rows if v is not None]
  learned_without = [r["name"] for r in runs
                     if r["method"] in LEARNED and not r["masks"]]
  if not rows and not learned_without:
    return []
  L = ["## Learned masks during training", ""]
  L += ["Statistics of the generator's own mixed sample, logged every log "
        "step (`train/mask_*`). Columns: mean over the last 10 % of the "
        "logged steps (peak over the run in parentheses). Verdict rule: "
        f"**saturated** if the saturated fraction (pixels whose weights are "
        f"all within 0.01 of 0 or 1) exceeds {SATURATED_ABOVE:g}; **collapsed "
        f"to whole-image picks** if the fraction of samples where one source "
        f"covers over 90 % of the image exceeds {WHOLE_IMAGE_ABOVE:g}; "
        f"**generator gradient vanished** if the generator's gradient norm "
        f"fell below {GRAD_VANISHED_BELOW:g} of its first-10 % mean; "
        f"**spatially uniform throughout** if the spatial std of a sample's "
        f"mask never reached {SPATIALLY_UNIFORM_BELOW:g} during the run "
        "(every pixel of a sample takes nearly the same weight: the "
        "generator mixes like a per-sample MixUp, not with a spatial mask; "
        "a binary cut of area 0.1 has std 0.3). A saturated mask is not "
        "wrong in itself (a hard cut is saturated); with a vanished "
        "generator gradient it means the generator stopped learning.", ""]
  if rows:
    L += ["| run | saturated frac | whole-image frac | spatial std | "
          "dominance | area-λ gap | generator grad norm (x its first-10 % "
          "mean) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r, v in rows:
      last, peak = v["last"], v["peak"]
      cell = lambda k: (f"{last[k]:.3f} ({peak[k]:.3f})" if k in last
                        else "n/a")
      ratio = ("n/a" if v["grad_ratio"] is None else
               f"{last['grad_norm_generator']:.3g} ({v['grad_ratio']:.3g}x)")
      L.append(f"| {r['name']} | {cell('mask_saturated_frac')} | "
               f"{cell('mask_whole_image_frac')} | "
               f"{cell('mask_spatial_std')} | {cell('mask_dominance')} | "
               f"{cell('mask_area_lam_gap')} | {ratio} | "
               f"{', '.join(v['flags']) or 'none of these'} |")
    L.append("")
    flagged = [f"{r['name']} ({', '.join(v['flags'])})" for r, v in rows
               if v["flags"]]
    L.append("By this rule: " + ("; ".join(flagged) + "." if flagged else
             "no run saturated, collapsed to whole-image picks, lost its "
             "generator gradient or kept spatially uniform masks."))
    L.append("")
  if learned_without:
    L += ["No mask statistics in the metrics of: "
          + ", ".join(learned_without) + " (no `metrics.jsonl`, or a run "
          "from before `train/mask_*` was logged).", ""]
  if curves:
    masks = [k for k in curves if k.endswith("mask statistics")]
    if masks:
      L += ["Mask statistics over steps: see Curves below.", ""]
  return L


def render(runs: list[dict], *, run_root: str, command: str,
           paper_table: bool, curves: dict[str, str] | None,
           out_path: str, title: str = "",
           appendix: Sequence[str] = ()) -> str:
  title = title or DEFAULT_TITLE
  methods = aggregate(runs)
  ranked = rank(methods)
  L = [f"# {title}", ""]
  L += ["Command:", "", "```", command, "```", ""]
  L += [f"Runs: `{run_root}` ({len(runs)} runs, {len(methods)} methods)."]
  L += _setup_line(runs)
  k_set = sorted({r["window"] for r in runs})
  L += ["", "Scoring: for every run, the **median test top-1 over the last "
        "10 % of its epochs** (at least one; here the last "
        f"{', '.join(map(str, k_set))} epoch(s)), computed from the "
        "evaluation history in `summary.json` for both the EMA teacher "
        f"(`{EMA_VARIANT}`) and the online model (`{ONLINE_VARIANT}`). Mean ± "
        "sample std and min–max are over seeds. Methods are ranked by mean "
        "EMA top-1; a run without an EMA variant is ranked by its online "
        "top-1 (marked †). Wall time includes per-epoch evaluation; images/s "
        "is training throughput only.", ""]

  L += ["## Ranking", ""]
  L += ["| rank | method | seeds | EMA top-1 (ranked) | EMA min–max | online "
        "top-1 | online min–max | final-epoch EMA / online | wall time (min) "
        "| train images/s |",
        "|---|---|---|---|---|---|---|---|---|---|"]
  for i, m in enumerate(ranked, 1):
    rs = m["runs"]
    if m["score_source"] == "ema":
      ranked_cell = _ms(m["ema"])
      ranked_range = _range(m["ema"])
    elif m["score_source"] == "online":
      ranked_cell = f"{_ms(m['score'])} †"
      ranked_range = _range(m["score"])
    else:
      ranked_cell = f"{_ms(m['score'])} †(mixed)"
      ranked_range = _range(m["score"])
    fe = [r["final_ema"] for r in rs if r["final_ema"] is not None]
    fo = [r["final_online"] for r in rs if r["final_online"] is not None]
    final = (f"{_f(mean(fe)) if fe else 'n/a'} / "
             f"{_f(mean(fo)) if fo else 'n/a'}")
    wt = m["wall_time_s"]
    ips = m["images_per_s"]
    L.append(
        f"| {i} | {display(m['method'])} | "
        f"{','.join(map(str, m['seeds']))} | {ranked_cell} | {ranked_range} | "
        f"{_ms(m['online'])} | {_range(m['online'])} | {final} | "
        f"{_f(wt['mean'] / 60, 1) if wt else 'n/a'} | "
        f"{_f(ips['mean'], 0) if ips else 'n/a'} |")
  if any(m["score_source"] != "ema" for m in ranked):
    L += ["", "† no EMA variant in (some of) these runs: the ranked number "
          "is the online model's top-1."]
  L.append("")

  L += ["## Runs", ""]
  L += ["| run | epochs | window | EMA top-1 | online top-1 | final EMA / "
        "online | summary's reported_top1 | wall time (min) | images/s | "
        "train s/epoch | evaluations | s/evaluation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in runs:
    rep = (f"{_f(r['reported_top1'])} ({r['reported_variant']})"
           if r["reported_top1"] is not None else "n/a")
    L.append(
        f"| {r['name']} | {r['epochs']}{'' if r['complete'] else ' (stopped)'}"
        f" | {r['window']} | {_f(r['ema'])} | {_f(r['online'])} | "
        f"{_f(r['final_ema'])} / {_f(r['final_online'])} | {rep} | "
        f"{_f(r['wall_time_s'] / 60, 1) if r['wall_time_s'] else 'n/a'}"
        f"{_resumed(r)} | "
        f"{_f(r['images_per_s'], 0) if r['images_per_s'] else 'n/a'} | "
        f"{_f(r['train_s_per_epoch'], 1)} | {r['num_evals']} | "
        f"{_f(r['eval_s_per_eval'], 1)} |")
  L += ["", "Train s/epoch excludes evaluation; s/evaluation averages every "
        "evaluation of the run's last invocation (the first one compiles the "
        "eval programs), all variants of the method included. A run resumed "
        "from a checkpoint (marked *from step N*) reports the wall time of "
        "its last invocation only."]
  L.append("")

  L += mask_section(runs, curves)

  L += ["## Against the paper's ranking", ""]
  L += [f"Paper: {PAPER_SOURCE}.", ""]
  cmps = {}
  for ep in (800, 200):
    paper = PAPER_C100_R18[ep]
    cmps[ep] = compare_with_paper(ranked, paper)
  names = cmps[800]["methods"]
  ours_order = " > ".join(f"{display(n)} {cmps[800]['ours'][n]:.2f}"
                          for n in names)
  L += [f"- Here (mean {'EMA ' if all(m['score_source'] == 'ema' for m in ranked) else ''}top-1): {ours_order or 'n/a'}"]
  for ep in (800, 200):
    L += [f"- Paper, R-18 {ep} epochs: "
          f"{_paper_order(PAPER_C100_R18[ep], names) or 'n/a'}"]
  L += ["", "| paper column | methods compared | Kendall tau | pairs in "
        "agreement | pairs reversed |", "|---|---|---|---|---|"]
  for ep in (800, 200):
    c = cmps[ep]
    L.append(f"| R-18 {ep} ep | {len(c['methods'])} | {_tau_str(c['tau'])} | "
             f"{len(c['agree'])} | {len(c['disagree'])} |")
  not_in_paper = [display(m["method"]) for m in ranked
                  if m["method"] not in PAPER_C100_R18[800]]
  if not_in_paper:
    L += ["", "Not in the paper's table (left out of tau): "
          + ", ".join(not_in_paper) + "."]
  L.append("")
  L += ["Caveat: the paper trains a full-width ResNet-18 on all 50,000 "
        "CIFAR-100 images for 200-800 epochs. A run on another dataset, a "
        "subset, a narrower network or fewer epochs (see Setup above) is not "
        "comparable in absolute numbers; only the ordering is compared.", ""]

  L += ["### Where it agrees and where it does not", ""]
  for ep in (800, 200):
    L += [f"**Against the 800-epoch column.**" if ep == 800 else
          "**Against the 200-epoch column** (closer to a short run)."]
    L.append("")
    L += agreement_paragraph(cmps[ep], ranked)
    L.append("")

  # The paper's own protocol: AutoMix/AdAutoMix report their EMA teacher
  # (acc_one_k), while OpenMixup's static-mixer baselines report the online
  # network (they train no EMA).
  L += ranked_view(
      methods, lambda m: "ema" if m["method"] in LEARNED else "online",
      "The paper's protocol: EMA for the learned mixers, online for the static "
      "ones",
      "AutoMix and AdAutoMix report their EMA teacher (`acc_one_k`); the "
      "static-mixer baselines in the same tables come from OpenMixup runs "
      "without an EMA model, i.e. the online network. Ranked that way:")
  # The EMA teacher lags the online weights in short runs, so the same
  # comparison is repeated on the online model.
  L += ranked_view(
      methods, lambda m: "online",
      "The same comparison on the online model",
      "The ranking above uses the EMA model, as the paper reports. In a run "
      "this short the EMA (time constant scaled to the run, see Setup) can "
      "lag the online weights, so here is the ranking by the online model's "
      "top-1 (same window rule).")

  if paper_table:
    L += ["## Paper numbers beside ours", ""]
    L += ["| method | here (mean, ranked metric) | rank here | paper R-18 200 "
          "| R-18 400 | R-18 800 | rank (R-18 800) | paper RX-50 800 |",
          "|---|---|---|---|---|---|---|---|"]
    paper800 = PAPER_C100_R18[800]
    paper_rank = {n: i for i, n in enumerate(
        sorted(paper800, key=lambda n: (-paper800[n], method_sort_key(n))), 1)}
    for i, m in enumerate(ranked, 1):
      n = m["method"]
      L.append(
          f"| {display(n)} | {_ms(m['score'])} | {i} | "
          + " | ".join(_f(PAPER_C100_R18[ep].get(n)) for ep in (200, 400, 800))
          + f" | {paper_rank.get(n, 'n/a')} | "
          f"{_f(PAPER_C100_RX50_800.get(n))} |")
    L.append("")

  if curves:
    L += ["## Curves", ""]
    base = os.path.dirname(os.path.abspath(out_path))
    for label, path in curves.items():
      rel = os.path.relpath(os.path.abspath(path), base)
      L.append(f"- {label}: [`{rel}`]({rel})")
    L.append("")
  L += verdict_section(methods)
  for path in appendix:
    L += appendix_lines(path, out_path)
  return "\n".join(L)


def appendix_lines(path: str, out_path: str) -> list[str]:
  """A markdown file appended to the report, its headings one level down
  and its relative links rewritten to the report's folder."""
  with open(path, encoding="utf-8") as f:
    text = f.read().rstrip("\n")
  src = os.path.dirname(os.path.abspath(path))
  dst = os.path.dirname(os.path.abspath(out_path))

  def relink(m):
    target = m.group(2)
    if re.match(r"^[a-z]+:|^#|^/", target):
      return m.group(0)
    new = os.path.relpath(os.path.join(src, target), dst)
    return f"{m.group(1)}({new})"

  lines = []
  for line in text.splitlines():
    if line.startswith("#"):
      line = "#" + line
    lines.append(re.sub(r"(\[[^\]]*\])\(([^)\s]+)\)", relink, line))
  rel = os.path.relpath(os.path.abspath(path), dst)
  return ["", f"<!-- appended from {rel} -->", ""] + lines + [""]


# ---------------------------------------------------------------------------
# Verdict on the paper's claims.
# ---------------------------------------------------------------------------

# The claims of the AdAutoMix paper's CIFAR tables that a sweep can test, as
# (claim, [(better, worse) method pairs]); "static" = every static mixer.
STATIC_MIXERS = ("mixup", "cutmix", "fmix", "resizemix")


def compare_pair(better: dict, worse: dict, key: str) -> dict:
  """``better`` vs ``worse`` on ``key`` ("ema" / "online" stats over seeds):
  ``holds`` (mean ahead), ``separated`` (every seed of one beyond every seed
  of the other), the gap in points."""
  b, w = better[key], worse[key]
  gap = b["mean"] - w["mean"]
  # One seed has no spread: it never counts as separated.
  separated = min(b["n"], w["n"]) >= 2 and (
      b["min"] > w["max"] if gap > 0 else w["min"] > b["max"])
  return {"better": better["method"], "worse": worse["method"], "gap": gap,
          "holds": gap > 0, "separated": separated,
          "seeds": (b["n"], w["n"])}


def claim_status(pairs: list[dict]) -> str:
  """One word for a claim made of pairwise comparisons."""
  if not pairs:
    return "not measured"
  if all(p["holds"] and p["separated"] for p in pairs):
    return "reproduced"
  if any(not p["holds"] and p["separated"] for p in pairs):
    return "contradicted"
  if all(p["holds"] for p in pairs):
    return "same direction, within the seed spread"
  return "not reproduced"


def paper_claims(methods: list[dict], key: str) -> list[tuple[str, list]]:
  """The three claims as pairwise comparisons of the methods present."""
  by = {m["method"]: m for m in methods if m[key] is not None}
  static = [by[n] for n in STATIC_MIXERS if n in by]
  learned = [by[n] for n in ("automix", "adautomix") if n in by]
  claims = []
  if "vanilla" in by:
    claims.append(("every mixer beats vanilla training",
                   [compare_pair(m, by["vanilla"], key)
                    for m in static + learned]))
  claims.append(("the learned mixers (AutoMix, AdAutoMix) beat every static "
                 "mixer", [compare_pair(l, s, key)
                           for l in learned for s in static]))
  claims.append(("AdAutoMix is at least as good as AutoMix",
                 [compare_pair(by["adautomix"], by["automix"], key)]
                 if "adautomix" in by and "automix" in by else []))
  return claims


def _pair_text(p: dict) -> str:
  where = ("one seed" if min(p["seeds"]) < 2 else
           "all seeds apart" if p["separated"] else "seed ranges overlap")
  if p["holds"]:
    return (f"{display(p['better'])} +{p['gap']:.2f} over "
            f"{display(p['worse'])} ({where})")
  return (f"{display(p['worse'])} ahead of {display(p['better'])} by "
          f"{-p['gap']:.2f} ({where})")


def verdict_section(methods: list[dict]) -> list[str]:
  """The report's closing verdict: each paper claim, per model view."""
  L = ["## Verdict on the paper's claims", "",
       "Each claim is tested as pairwise comparisons of the mean top-1 over "
       "seeds. *Reproduced*: every pair goes the paper's way and the seeds' "
       "min–max ranges do not overlap; *same direction, within the seed "
       "spread*: every pair goes the paper's way but some ranges overlap; "
       "*contradicted*: some pair goes the other way with separated ranges; "
       "*not reproduced*: otherwise; *not measured*: methods missing. A "
       "method with one seed has no spread, so it is never *reproduced*.", ""]
  seeds = sorted({len(m["seeds"]) for m in methods})
  missing = [n for n in ("vanilla",) + STATIC_MIXERS + ("automix",
                                                         "adautomix")
             if n not in {m["method"] for m in methods}]
  if missing:
    L += ["Methods not in this sweep (yet): "
          + ", ".join(display(n) for n in missing) + ".", ""]
  if len(seeds) > 1:
    L += ["Methods have different numbers of seeds ("
          + ", ".join(f"{display(m['method'])} {len(m['seeds'])}"
                      for m in methods) + "): a partial sweep.", ""]
  L += ["| claim | EMA teacher | online model |", "|---|---|---|"]
  views = {key: paper_claims(methods, key) for key in ("ema", "online")}
  for i, (claim, _) in enumerate(views["ema"]):
    L.append(f"| {claim} | {claim_status(views['ema'][i][1])} | "
             f"{claim_status(views['online'][i][1])} |")
  L.append("")
  for key, label in (("ema", "EMA teacher"), ("online", "online model")):
    L += [f"Evidence ({label}):", ""]
    for claim, pairs in views[key]:
      text = "; ".join(_pair_text(p) for p in pairs) or "n/a"
      L.append(f"- {claim}: {text}.")
    L.append("")
  return L


# ---------------------------------------------------------------------------
# Curves.
# ---------------------------------------------------------------------------


def _plot_run():
  """scripts/plot_run.py (curves from metrics.jsonl), beside this script."""
  here = os.path.dirname(os.path.abspath(__file__))
  if here not in sys.path:
    sys.path.insert(0, here)
  import plot_run  # pylint: disable=g-import-not-at-top
  return plot_run


def overall_figure(runs: list[dict]):
  """Test top-1 per epoch of each given run (EMA, else online; and online)."""
  plot_run = _plot_run()
  plt = plot_run.plt
  fig, (ax_r, ax_o) = plt.subplots(1, 2, figsize=(13, 4.5))
  for r in runs:
    ep = [h["epoch"] for h in r["history"]]
    var = EMA_VARIANT if r["has_ema"] else ONLINE_VARIANT
    ys = [h["variants"].get(var, {}).get("top1") for h in r["history"]]
    plot_run.plot_series(
        ax_r, ep, ys, marker=".", ms=3, lw=1,
        label=display(r["method"]) + ("" if r["has_ema"] else " †"))
    ys = [h["variants"].get(ONLINE_VARIANT, {}).get("top1")
          for h in r["history"]]
    plot_run.plot_series(ax_o, ep, ys, marker=".", ms=3, lw=1,
                         label=display(r["method"]))
  ax_r.set_title("test top-1, EMA teacher († online: no EMA)")
  ax_o.set_title("test top-1, online model")
  for ax in (ax_r, ax_o):
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
  return _finish_figure(fig, (ax_r, ax_o))


def _finish_figure(fig, axes):
  """Grid and legend on ``axes``; returns ``fig``."""
  for ax in axes:
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def _save_figure(plt, fig, out: str) -> str:
  """``fig`` to the PNG ``out`` (closed); returns ``out``."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110, metadata={"Software": None})
  plt.close(fig)
  return out


def plot_overall(runs: list[dict], out: str) -> str:
  """Writes ``overall_figure(runs)`` to the PNG ``out``; returns it."""
  return _save_figure(_plot_run().plt, overall_figure(runs), out)


def plot_masks(runs: list[dict], out: str) -> str:
  """The ``MASK_STATS`` of ``runs`` (one line each) over training steps."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
  thresholds = {"mask_saturated_frac": SATURATED_ABOVE,
                "mask_whole_image_frac": WHOLE_IMAGE_ABOVE}
  for ax, stat in zip(axes.flat, MASK_STATS):
    for r in runs:
      if stat in r["masks"]:
        xs, ys = r["masks"][stat]
        ax.plot(xs, ys, lw=1, label=r["name"])
    if stat in thresholds:
      ax.axhline(thresholds[stat], color="k", ls=":", lw=1,
                 label="verdict threshold")
    if stat == "grad_norm_generator":
      ax.set_yscale("log")
    ax.set_title(stat)
    ax.set_xlabel("step")
  return _save_figure(plt, _finish_figure(fig, axes.flat), out)


def write_curves(runs: list[dict], curves_dir: str) -> dict[str, str]:
  """One PNG per method (its seeds) + one overall PNG of the lowest seed."""
  plot_run = _plot_run()
  out: dict[str, str] = {}
  by_method: dict[str, list[dict]] = {}
  for r in runs:
    by_method.setdefault(r["method"], []).append(r)
  for method in sorted(by_method, key=method_sort_key):
    dirs = [r["dir"] for r in by_method[method] if r["has_metrics"]]
    if not dirs:
      continue
    path = os.path.join(curves_dir, f"{method}.png")
    plot_run.plot_runs(dirs, path)
    out[f"{display(method)}, seeds "
        f"{','.join(str(r['seed']) for r in by_method[method] if r['has_metrics'])}"] = path
    with_masks = [r for r in by_method[method] if r["masks"]]
    if with_masks:
      path = os.path.join(curves_dir, f"{method}_masks.png")
      plot_masks(with_masks, path)
      out[f"{display(method)}, seeds "
          f"{','.join(str(r['seed']) for r in with_masks)}, mask "
          "statistics"] = path
  seed0 = min(r["seed"] for r in runs)
  first = [r for r in runs if r["seed"] == seed0]
  path = os.path.join(curves_dir, f"overall_seed{seed0}.png")
  plot_overall(first, path)
  out[f"all methods, seed {seed0}"] = path
  return out


# ---------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------


def summarize(run_root: str, out: str, *, paper_table: bool = False,
              curves_dir: str | None = None, command: str | None = None,
              title: str = "", appendix: Sequence[str] = (),
              finished_only: bool = False) -> str:
  """Writes the markdown report (and curves when ``curves_dir``); returns it."""
  runs = find_runs(run_root, finished_only=finished_only)
  curves = write_curves(runs, curves_dir) if curves_dir else None
  text = render(runs, run_root=run_root, command=command or "",
                paper_table=paper_table, curves=curves, out_path=out,
                title=title, appendix=appendix)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    f.write(text)
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("run_root", metavar="RUN_ROOT",
                 help="folder of <method>_seed<k>/summary.json runs")
  p.add_argument("--out", default="results/reproduce_cpu.md",
                 help="markdown report to write")
  p.add_argument("--paper-table", action="store_true",
                 help="add a table of the paper's numbers beside ours")
  p.add_argument("--curves-dir", default=None,
                 help="where the PNGs go (default: --out without .md)")
  p.add_argument("--no-curves", action="store_true", help="skip the PNGs")
  p.add_argument("--title", default=DEFAULT_TITLE, help="report heading")
  p.add_argument("--command", default=None,
                 help="command line to print in the report (default: this "
                      "script's own command line)")
  p.add_argument("--appendix", action="append", default=[],
                 help="markdown file to append to the report (headings one "
                      "level down; repeatable), e.g. the pilot that chose the "
                      "setting")
  p.add_argument("--finished-only", action="store_true",
                 help="leave out runs that stopped early (a sweep in progress)")
  args = p.parse_args(argv)
  for path in args.appendix:
    if not os.path.isfile(path):
      print(f"error: --appendix {path!r} is not a file", file=sys.stderr)
      return 2
  curves_dir = None
  if not args.no_curves:
    curves_dir = args.curves_dir or os.path.splitext(args.out)[0]
  command = args.command or " ".join(
      ["python", "scripts/summarize_runs.py"] +
      [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])])
  try:
    summarize(args.run_root, args.out, paper_table=args.paper_table,
              curves_dir=curves_dir, command=command, title=args.title,
              appendix=args.appendix, finished_only=args.finished_only)
  except NoRunsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}" + (f" and curves under {curves_dir}/"
                               if curves_dir else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
