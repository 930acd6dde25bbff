"""Benchmarks the CIFAR train augmentation: numpy host vs JAX on-device.

Usage:
  .venv/bin/python scripts/bench_augment.py [--repeats 30] [--out results/bench_augment.md]

Measures median ms per batch of 32x32x3 uint8 images, batch 100 and 256:
  numpy crop+flip (uint8)            what the default pipeline runs on the host;
  numpy crop+flip+normalise (f32)    everything on the host;
  jax normalise (device half)        what the default pipeline runs on device;
  jax augment_jax (jit, on device)   crop+flip+normalise all on device;
  numpy randaugment (N=2, M=9)       host RandAugment (PIL);
  TrainIterator end to end           per batch, prefetch=0, both backends.
"""

import argparse
import os
import platform
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


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--out", default="results/bench_augment.md")
  args = p.parse_args()
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
        "numpy randaugment N=2 M=9 (PIL)":
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

  dev = jax.devices()[0]
  lines = [
      "# CIFAR augmentation benchmark (host numpy vs JAX on-device)", "",
      f"Command: `.venv/bin/python scripts/bench_augment.py --repeats {args.repeats}`",
      "", f"Machine: {platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} logical CPUs (shared with other processes), "
      f"jax {jax.__version__} on `{dev.platform}` ({dev.device_kind}), "
      f"numpy {np.__version__}, python {sys.version.split()[0]}.", "",
      "Median ms per batch of uint8 [B, 32, 32, 3]:", "",
      "| batch | operation | median ms |", "|---:|---|---:|"]
  lines += [f"| {b} | {k} | {v:.3f} |" for b, k, v in rows]
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("wrote", args.out)


if __name__ == "__main__":
  main()
