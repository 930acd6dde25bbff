"""Benchmarks the train augmentations: numpy / Pillow host vs JAX on device.

Usage:
  .venv/bin/python scripts/bench_augment.py [--parts cifar,224] [--repeats 30]
      [--repeats-224 5] [--batch-224 32] [--out results/bench_augment.md]

Part ``cifar``: median ms per batch of 32x32x3 uint8 images, batch 100 and 256:
  numpy crop+flip (uint8)            what the default pipeline runs on the host;
  numpy crop+flip+normalise (f32)    everything on the host;
  jax normalise (device half)        what the default pipeline runs on device;
  jax augment_jax (jit, on device)   crop+flip+normalise all on device;
  numpy randaugment                  host RandAugment (Pillow, timm's policy);
  TrainIterator end to end           per batch, prefetch=0, both backends.

Part ``224``: images/s and ms per batch of ``--batch-224`` 256x256x3 uint8
source images cropped to 224 (``data.augment`` "imagenet" and "deit"): each op
on the host (Pillow / numpy) and on the device (jit), and the TrainIterator end
to end (prefetch=0: host and device work add up in one thread).

Each run rewrites the sections of the parts it measured and keeps the others
(and the hand-written "## Decision" section) of ``--out``.
"""

import argparse
import functools
import os
import platform
import re
import sys
import time

import jax
import numpy as np

from automix_jax import data


def median_ms(fn, repeats):
  fn()  # warm-up (jit compile)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * float(np.median(times))


def _machine():
  dev = jax.devices()[0]
  return (f"Machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs (shared with other processes: load "
          f"average {os.getloadavg()[0]:.0f} at the start of the part), "
          f"jax {jax.__version__} on `{dev.platform}` ({dev.device_kind}), "
          f"numpy {np.__version__}, python {sys.version.split()[0]}.")


def bench_cifar(args):
  rng = np.random.default_rng(0)
  rows = []
  for b in (100, 256):
    x = rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8)
    g = np.random.default_rng(1)
    xd = jax.device_put(x)
    aug_jax = jax.jit(data.augment_jax)
    norm = data.eval_transform()
    key = jax.random.key(0)
    res = {
        "numpy crop+flip (uint8, host half)":
            median_ms(lambda: data.random_crop_flip_np(x, g), args.repeats),
        "numpy crop+flip+normalise (f32)":
            median_ms(lambda: data.normalize_np(data.random_crop_flip_np(x, g)),
                      args.repeats),
        "jax normalise (device half, jit)":
            median_ms(lambda: norm.device(xd).block_until_ready(), args.repeats),
        "jax augment_jax crop+flip+normalise (jit)":
            median_ms(lambda: aug_jax(key, xd).block_until_ready(), args.repeats),
        "numpy randaugment rand-m9-mstd0.5-inc1 (PIL)":
            median_ms(lambda: data.randaugment_np(x, g), max(5, args.repeats // 3)),
    }
    src = data.ArraySource(rng.integers(0, 256, (b * 20, 32, 32, 3),
                                        dtype=np.uint8), np.arange(b * 20) % 10)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for backend in ("numpy", "jax"):
      it = data.TrainIterator(src, global_batch_size=b, seed=0, prefetch=0,
                              augment=data.Augment("cifar", backend=backend),
                              sharding=sharding)
      res[f"TrainIterator end to end, backend={backend}"] = median_ms(
          lambda: next(it)["image"].block_until_ready(), args.repeats)
    for k, v in res.items():
      rows.append((b, k, v))
      print(f"batch {b:4d}  {k:45s} {v:8.3f} ms", flush=True)
  lines = [
      "## CIFAR (32 px)", "",
      f"Command: `.venv/bin/python scripts/bench_augment.py --parts cifar "
      f"--repeats {args.repeats}`", "", _machine(), "",
      "Median ms per batch of uint8 [B, 32, 32, 3]:", "",
      "| batch | operation | median ms |", "|---:|---|---:|"]
  lines += [f"| {b} | {k} | {v:.3f} |" for b, k, v in rows]
  return "\n".join(lines) + "\n"


def bench_224(args):
  b, s, src_hw = args.batch_224, 224, 256
  reps = args.repeats_224
  machine = _machine()
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (b, src_hw, src_hw, 3), dtype=np.uint8)
  x224 = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
  xd, x224d = jax.device_put(x), jax.device_put(x224)
  g = np.random.default_rng(1)
  key = jax.random.key(0)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  floats = jax.device_put(x224.astype(np.float32) / 255.0)
  normed = jax.device_put((x224.astype(np.float32) / 255.0 - 0.45) / 0.225)

  def jit(fn, **kw):
    return jax.jit(functools.partial(fn, **kw))

  rrc = {m: jit(data.random_resized_crop_jax, size=s, interpolation=m)
         for m in ("bilinear", "bicubic")}
  jitter = jit(data.color_jitter_jax, color_jitter=(0.4, 0.4, 0.4, 0.1))
  jitter3 = jit(data.color_jitter_jax, color_jitter=0.4)
  erase = jit(data.random_erasing_jax, prob=0.25, mode="pixel")
  center = jit(data.center_crop_jax, size=s, crop_pct=0.875,
               interpolation="bicubic")
  imnet = {be: data.Augment("imagenet", image_size=s, backend=be, mean=mean,
                            std=std) for be in ("jax", "numpy")}
  ops = [
      ("RandomResizedCrop+flip, bilinear", "host (Pillow)",
       lambda: data.random_resized_crop_np(x, g, size=s)),
      ("RandomResizedCrop+flip, bilinear", "device (jit)",
       lambda: rrc["bilinear"](key, xd).block_until_ready()),
      ("RandomResizedCrop+flip, bicubic", "host (Pillow)",
       lambda: data.random_resized_crop_np(x, g, size=s,
                                           interpolation="bicubic")),
      ("RandomResizedCrop+flip, bicubic", "device (jit)",
       lambda: rrc["bicubic"](key, xd).block_until_ready()),
      ("imagenet device half (crop+flip+normalise)", "device (jit)",
       lambda: imnet["jax"].device(xd).block_until_ready()),
      ("normalise only (device half of backend=numpy)", "device (jit)",
       lambda: imnet["numpy"].device(x224d).block_until_ready()),
      ("colour jitter 0.4 (b, c, s)", "device (jit)",
       lambda: jitter3(key, floats).block_until_ready()),
      ("colour jitter (0.4, 0.4, 0.4, 0.1) with hue", "device (jit)",
       lambda: jitter(key, floats).block_until_ready()),
      ("eval: resize 256 + centre crop 224, bicubic", "device (jit)",
       lambda: center(xd).block_until_ready()),
      ("RandAugment rand-m9-mstd0.5-inc1", "host (Pillow)",
       lambda: data.randaugment_np(x224, g, fill=(124, 116, 104))),
      ("random erasing p 0.25, pixel", "device (jit)",
       lambda: erase(key, normed).block_until_ready()),
  ]
  rows = []
  for name, where, fn in ops:
    ms = median_ms(fn, reps)
    rows.append((name, where, ms))
    print(f"{name:50s} {where:14s} {ms:9.1f} ms {1e3 * b / ms:8.0f} img/s",
          flush=True)
  src = data.ArraySource(
      rng.integers(0, 256, (b * 8, src_hw, src_hw, 3), dtype=np.uint8),
      np.arange(b * 8) % 10)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  for kind, backend in (("imagenet", "jax"), ("imagenet", "numpy"),
                        ("deit", "numpy")):
    aug = data.Augment(kind, image_size=s, backend=backend, mean=mean, std=std)
    it = data.TrainIterator(src, global_batch_size=b, seed=0, prefetch=0,
                            augment=aug, sharding=sharding)
    ms = median_ms(lambda: next(it)["image"].block_until_ready(), reps)
    where = "host + device" if backend == "numpy" else "device"
    name = f"TrainIterator end to end, {kind}, backend={backend}"
    rows.append((name, where, ms))
    print(f"{name:50s} {where:14s} {ms:9.1f} ms {1e3 * b / ms:8.0f} img/s",
          flush=True)
  lines = [
      "## 224 px (\"imagenet\" and \"deit\")", "",
      f"Command: `.venv/bin/python scripts/bench_augment.py --parts 224 "
      f"--repeats-224 {reps} --batch-224 {b}`", "", machine, "",
      f"Median over {reps} batches of {b} uint8 {src_hw}x{src_hw} source images "
      f"(224x224 for the ops that take the crop's output); images/s = {b} / "
      "median. On this CPU \"device\" is the same two cores as the host, so "
      "the device rows say what the ops cost in XLA, not what a GPU would do.",
      "", "| operation | where | median ms / batch | images/s |",
      "|---|---|---:|---:|"]
  lines += [f"| {n} | {w} | {ms:.1f} | {1e3 * b / ms:.0f} |"
            for n, w, ms in rows]
  return "\n".join(lines) + "\n"


def _sections(text):
  """``{"## header": body}`` of a markdown file, in order (title under "")."""
  out, cur = {}, ""
  for line in text.splitlines(keepends=True):
    if re.match(r"^## ", line):
      cur = line.strip()
      out[cur] = ""
    out[cur] = out.get(cur, "") + line
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--parts", default="cifar,224")
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--repeats-224", type=int, default=5)
  p.add_argument("--batch-224", type=int, default=32)
  p.add_argument("--out", default="results/bench_augment.md")
  args = p.parse_args()
  parts = args.parts.split(",")
  unknown = set(parts) - {"cifar", "224"}
  if unknown:
    raise SystemExit(f"--parts takes cifar and/or 224, got {sorted(unknown)}")
  old = _sections(open(args.out).read()) if os.path.exists(args.out) else {}
  new = {}
  if "cifar" in parts:
    new["## CIFAR (32 px)"] = bench_cifar(args)
  if "224" in parts:
    new["## 224 px (\"imagenet\" and \"deit\")"] = bench_224(args)
  title = ("# Augmentation benchmark (host numpy / Pillow vs JAX on device)\n\n"
           "Written by `scripts/bench_augment.py`, one section per `--parts` "
           "entry; each section names its command and machine.\n\n")
  body = [title]
  for header in ("## CIFAR (32 px)", "## 224 px (\"imagenet\" and \"deit\")",
                 "## Decision"):
    text = new.get(header, old.get(header))
    if text:
      body.append(text.rstrip("\n") + "\n\n")
  with open(args.out, "w") as f:
    f.write("".join(body).rstrip("\n") + "\n")
  print("wrote", args.out)


if __name__ == "__main__":
  main()
