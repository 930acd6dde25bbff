#!/usr/bin/env python
"""What the trainer's logging costs: TensorBoard scalars and the mask images.

  python scripts/bench_logging.py            # both parts, CPU, a few minutes
  python scripts/bench_logging.py --skip-masks

1. ``MetricWriter.write`` of a learned method's train line (21 scalars), with
   ``tensorboard`` off and on: one write every 20 ms (a log step between steps
   of compute; a tight loop would only measure the writer thread's backlog),
   300 writes, the write call timed (median).
2. One TensorBoard mask image (``config.log_images_every_steps``) of the AutoMix
   and AdAutoMix CPU configs (32-px CIFAR-10 archive, width 1/8, batch 50, a
   freshly initialised state): the jitted preview (EMA teacher + generator on 8
   images), the figure, the PNG encoding, against one train step. The steps in
   between run the unchanged train step: they cost nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from automix_jax import metrics  # noqa: E402

_LEARNED_KEYS = (
    "loss", "loss_classifier", "loss_generator", "ce_one", "ce_mix", "ce_lin",
    "ce_teacher_mix", "cos", "ema_momentum", "lr", "lr_generator",
    "grad_norm_classifier", "grad_norm_generator", "param_norm", "n_mix",
    "adversarial", "lam_margin", "lam_max", "finite", "images_per_s")


def _median_ms(fn, n):
  times = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times)) * 1e3


def bench_writer(writes: int = 300, gap_s: float = 0.02) -> None:
  line = {f"train/{k}": float(i) for i, k in enumerate(_LEARNED_KEYS)}
  line["epoch"] = 1.5
  for tb in (False, True):
    with tempfile.TemporaryDirectory() as d:
      w = metrics.MetricWriter(d, enabled=True, tensorboard=tb)
      w.write(0, line)  # opens the event file
      times = []
      for s in range(1, writes + 1):
        time.sleep(gap_s)
        t = time.perf_counter()
        w.write(s, line)
        times.append(time.perf_counter() - t)
      w.close()
    print(f"MetricWriter.write, tensorboard={tb}: {len(line)} scalars, median "
          f"{np.median(times) * 1e6:.0f} us, p90 "
          f"{np.percentile(times, 90) * 1e6:.0f} us")


def bench_masks(archive: str) -> None:
  import jax
  import jax.numpy as jnp
  from automix_jax import data
  from automix_jax import sharding
  from automix_jax.configs.adautomix import cifar10_cpu as adautomix_cpu
  from automix_jax.configs.automix import cifar10_cpu as automix_cpu
  from automix_jax.train import mask_images
  from automix_jax.train import methods
  mesh = sharding.make_mesh(jax.devices()[:1])
  for module in (automix_cpu, adautomix_cpu):
    c = module.get_config()
    c.data.archive_path = archive
    _, test = data.build_sources(c.data)
    method = methods.get(c.method)(c, num_classes=10, steps_per_epoch=20,
                                   mesh=mesh)
    state = jax.jit(method.init)(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    images = mask_images.MaskImages.from_config(c, method, test, mesh)
    t = time.perf_counter()
    first = images.render(state)
    compile_s = time.perf_counter() - t
    preview = _median_ms(lambda: jax.block_until_ready(
        images._fn(state, images._images)), 5)  # pylint: disable=protected-access
    render = _median_ms(lambda: images.render(state), 5)
    with tempfile.TemporaryDirectory() as d:
      w = metrics.MetricWriter(d, enabled=True, tensorboard=True)
      w.write(0, {"epoch": 0.0})
      write = _median_ms(lambda: w.write_images(1, first), 5)
      w.close()
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(c.batch_size, 32, 32, 3)),
                                  jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, c.batch_size),
                                  jnp.int32)}
    step = jax.jit(method.train_step)
    key = jax.random.key(1)
    st = step(state, batch, key)[0]
    step_ms = _median_ms(lambda: jax.block_until_ready(step(st, batch, key)),
                         5)
    print(f"{c.method} mask image {first[mask_images.IMAGE_TAG].shape}: first "
          f"call {compile_s:.1f} s (compile); then {render + write:.0f} ms = "
          f"preview {preview:.0f} ms + figure {render - preview:.0f} ms + PNG "
          f"and queue {write:.0f} ms; one train step (batch {c.batch_size}) "
          f"{step_ms:.0f} ms")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--archive", default=os.path.join(
      _ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"),
                      help="cifar10-jpeg.tar.gz for the mask part")
  parser.add_argument("--skip-masks", action="store_true")
  args = parser.parse_args(argv)
  bench_writer()
  if not args.skip_masks:
    bench_masks(args.archive)
  return 0


if __name__ == "__main__":
  sys.exit(main())
