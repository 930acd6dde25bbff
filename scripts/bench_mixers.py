"""Benchmarks every registered mixer on this machine's CPU (a script, not a test).

For each mixer in ``automix_jax.mixers.names()`` (``none`` and the model-aware
mixers skipped) and each batch shape, it reports

* the compile time of the jitted mixer (``jit(...).lower(...).compile()``),
* the median wall time per batch of the compiled mixer (``block_until_ready``,
  warm-up excluded),
* the same for a jitted copy of the batch, ``x * s`` with ``s = 1`` passed at run
  time so XLA cannot fold it away: one read and one write of the batch, the
  memory floor any mixer pays; the ratio mixer / floor is reported,
* timm ``Mixup`` (mixup, cutmix; batch mode, in place on a pre-made clone) and
  torchvision v2 ``MixUp`` / ``CutMix`` on the same batch when installed, with
  ``torch.set_num_threads`` equal to the cores JAX uses.

Mixers whose module is still a placeholder (``NotImplementedError``) show
``n/a``; any other failure shows ``error``.

Usage::

  .venv/bin/python scripts/bench_mixers.py [--repeats 15] [--repeats-large 5]
      [--out results/bench_mixers.md] [--shapes 128x32x32x3,64x224x224x3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax import mixers

K = 100  # classes


def _hparams(name: str, images_shape) -> tuple[dict, dict]:
  """(static hyperparameters, traced batch inputs) for mixers that need them."""
  b, h, w, _ = images_shape
  if name == "attentivemix":
    # A 7x7 score grid (ResNet at 224 px) where it divides the image, else 4x4.
    g = 7 if h % 7 == 0 and w % 7 == 0 else 4
    scores = jax.random.uniform(jax.random.key(7), (b, g, g))
    return {}, {"scores": scores}
  if name == "maskmix":
    return {"mask_patch": max(h // 4, 1)}, {}
  return {}, {}


def _median_time(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # warm-up, excluded
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _bench_jax(name, images, labels, repeats):
  static, traced = _hparams(name, images.shape)
  fn = mixers.get(name, **static)

  def run(key, x, y, extra):
    return fn(key, x, y, **extra)

  key = jax.random.key(0)
  t0 = time.perf_counter()
  try:
    compiled = jax.jit(run).lower(key, images, labels, traced).compile()
  except NotImplementedError:
    return None, None, "n/a"
  except Exception as e:  # noqa: BLE001 -- report, keep benchmarking others
    return None, None, f"error: {type(e).__name__}: {str(e)[:80]}"
  compile_s = time.perf_counter() - t0
  return compile_s, _median_time(compiled, (key, images, labels, traced),
                                 repeats), ""


def _bench_floor(images, repeats):
  copy = jax.jit(lambda x, s: x * s)
  return _median_time(copy, (images, jnp.float32(1.0)), repeats)


def _bench_torch(images_np, labels_np, repeats):
  """Peer timings in seconds, {name: median} (empty if torch is missing)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return {}, None
  torch.set_num_threads(os.cpu_count() or 1)
  x = torch.from_numpy(np.ascontiguousarray(images_np.transpose(0, 3, 1, 2)))
  t = torch.from_numpy(labels_np)
  peers = {}
  try:
    from timm.data import Mixup  # pylint: disable=import-outside-toplevel
    peers["timm Mixup(mixup)"] = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0,
                                       label_smoothing=0.0, num_classes=K)
    peers["timm Mixup(cutmix)"] = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0,
                                        label_smoothing=0.0, num_classes=K)
  except ImportError:
    pass
  try:
    from torchvision.transforms import v2  # pylint: disable=import-outside-toplevel
    peers["torchvision v2.MixUp"] = v2.MixUp(alpha=1.0, num_classes=K)
    peers["torchvision v2.CutMix"] = v2.CutMix(alpha=1.0, num_classes=K)
  except ImportError:
    pass
  out = {}
  for name, tf in peers.items():
    # timm mixes in place: hand it a fresh clone made outside the timed region.
    clones = [x.clone() for _ in range(repeats + 1)]
    times = []
    for i, xc in enumerate(clones):
      t0 = time.perf_counter()
      tf(xc, t)
      if i:  # first call is warm-up
        times.append(time.perf_counter() - t0)
    out[name] = statistics.median(times)
    del clones
  return out, torch.get_num_threads()


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default="128x32x32x3,64x224x224x3")
  parser.add_argument("--repeats", type=int, default=15,
                      help="timed calls per mixer at the smaller shapes")
  parser.add_argument("--repeats-large", type=int, default=5,
                      help="timed calls per mixer at >= 128 px")
  parser.add_argument("--out", default="results/bench_mixers.md")
  args = parser.parse_args(argv)

  # Model-aware mixers need a model (scripts/bench_step.py times them).
  names = [n for n in mixers.names() if n != "none" and not mixers.needs(n)]
  shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
  rows = []  # (shape, name, compile_s, median_s, ratio, note)
  torch_threads = None
  for shape in shapes:
    repeats = args.repeats_large if shape[1] >= 128 else args.repeats
    rs = np.random.RandomState(0)
    images_np = rs.standard_normal(shape).astype(np.float32)
    labels_int = rs.randint(0, K, shape[0])
    images = jnp.asarray(images_np)
    labels = mixers.one_hot(jnp.asarray(labels_int), K)
    floor = _bench_floor(images, repeats)
    rows.append((shape, "copy floor (x * s)", None, floor, 1.0, "jitted"))
    for name in names:
      compile_s, med, note = _bench_jax(name, images, labels, repeats)
      ratio = med / floor if med is not None else None
      rows.append((shape, name, compile_s, med, ratio, note))
      print(f"{'x'.join(map(str, shape)):>14} {name:>24} "
            f"{'-' if med is None else f'{med * 1e3:9.2f} ms'} {note}",
            flush=True)
    peer, torch_threads = _bench_torch(images_np, labels_int, repeats)
    for name, med in peer.items():
      rows.append((shape, name, None, med, med / floor, "torch, in place"))
      print(f"{'x'.join(map(str, shape)):>14} {name:>24} {med * 1e3:9.2f} ms",
            flush=True)

  table = ["| batch | mixer | compile (s) | median / batch (ms) | × copy floor "
           "| note |", "|---|---|---|---|---|---|"]
  for shape, name, compile_s, med, ratio, note in rows:
    table.append(
        f"| {'x'.join(map(str, shape))} | {name} | "
        f"{'' if compile_s is None else f'{compile_s:.2f}'} | "
        f"{'n/a' if med is None else f'{med * 1e3:.2f}'} | "
        f"{'' if ratio is None else f'{ratio:.1f}'} | {note} |")
  print("\n".join(table))

  versions = f"jax {jax.__version__}"
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import timm  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel
    versions += (f", torch {torch.__version__}, torchvision "
                 f"{torchvision.__version__}, timm {timm.__version__}")
  except ImportError:
    pass
  load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
  header = [
      "# Mixer throughput on CPU",
      "",
      f"* Command: `{' '.join([os.path.basename(sys.executable)] + sys.argv)}`"
      " (from the repository root, `.venv/bin/python`)",
      f"* Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
      f"* Machine: {os.cpu_count()} cores (nproc), {_cpu_model()}; "
      f"JAX backend {jax.default_backend()}, {jax.device_count()} device(s); "
      f"load average at the end {', '.join(f'{v:.1f}' for v in load)} "
      "(the machine is shared, so absolute times are noisy)",
      f"* Versions: {versions}, numpy {np.__version__}, Python "
      f"{platform.python_version()}",
      f"* Torch threads: {torch_threads} (set to the core count, as XLA's CPU "
      "backend uses all cores)",
      f"* Repeats: {args.repeats} (small images), {args.repeats_large} "
      "(224 px); median of the timed calls after one warm-up call",
      "* Copy floor: jitted `x * s` with `s = 1.0` passed at run time (not "
      "foldable), i.e. one read and one write of the batch. The ratio column "
      "is the row's median over this floor, both measured in the same run.",
      "* Compile: `jax.jit(f).lower(...).compile()` wall time, separate from "
      "the per-batch median. `n/a`: the mixer is still a placeholder.",
      "* Peers run in place on NCHW clones prepared outside the timed region; "
      "they draw their own parameters with NumPy/torch RNGs.",
      "* Caveat: this machine is shared (about 8 processes on 2 cores). Single "
      "numbers can swing severalfold between runs, and a ratio can drop below "
      "1 when the floor was measured during a busier moment. Compare rows "
      "within one run, and rerun before drawing conclusions.",
      "",
  ]
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      f.write("\n".join(header + table) + "\n")
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
