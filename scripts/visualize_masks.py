r"""Grids of learned mixing masks: sources, generator masks, mixed images.

For an AutoMix (ECCV 2022) or AdAutoMix (ICLR 2024) config, loads the newest
checkpoint of a training run (``--workdir``, via ``automix_jax.checkpoint``) or
initialises the method (``--init``), runs the EMA teacher on a few test images
and the generator on its stage features, and writes one PNG per config: each row
is one mixed sample, with its N source images, the N masks (AdAutoMix, summing
to 1 per pixel) or the partner mask ``s`` (AutoMix), and the mixed image.

  python scripts/visualize_masks.py --init --out results/masks   # both CPU configs
  python scripts/visualize_masks.py \
    --config configs/adautomix/cifar10_cpu.py --workdir runs/cpu_adautomix \
    --out results/masks

With ``--stats-num K`` (default 256) it also measures the masks of K test
images and writes ``<method>_mask_stats.json`` beside the PNG (see
``mask_statistics``): how far the masks are from a plain blend, from a hard
whole-image pick, and from the label weights λ.

The functions (``load_method``, ``compute``, ``plot``, ``mask_statistics``) are
used by notebooks/visualize_masks.ipynb.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from automix_jax import generators  # noqa: E402

DEFAULT_CONFIGS = ("configs/automix/cifar10_cpu.py",
                   "configs/adautomix/cifar10_cpu.py")


def load_config(spec: str):
  """``path.py[:arg]`` -> the locked ConfigDict of ``get_config(arg)``."""
  path, _, arg = spec.partition(":")
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(_ROOT, path)
  if not os.path.exists(path):
    raise ValueError(f"`config` file {path!r} does not exist.")
  module_spec = importlib.util.spec_from_file_location("_vis_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  if config.method not in ("automix", "samix", "adautomix"):
    raise ValueError(f"`config` must be an AutoMix/SAMix/AdAutoMix config; "
                     f"{spec!r} has method {config.method!r}.")
  return config


def test_images(config, num: int, seed: int = 0):
  """``num`` normalised test images ``[num, H, W, C]``, their labels and the
  number of classes: as many distinct classes as possible (round-robin over
  the classes of a ``seed``-shuffled test split), so every row of the figure
  shows another class and every mix pairs different classes."""
  from automix_jax import data
  _, test = data.build_sources(config.data)
  order = np.random.default_rng(seed).permutation(len(test))
  labels = test[order]["label"]
  idx = order[data.distinct_class_indices(labels, num)]
  batch = test[idx]
  norm = data.augment_from_config(config.data, train=False)
  images = norm.device(jnp.asarray(batch["image"]))
  return images, batch["label"], int(test.num_classes)


def load_method(config, num_classes: int, sample_images, *,
                workdir: Optional[str] = None, seed: int = 0):
  """``(method, state)``: the newest checkpoint in ``workdir`` or a fresh init."""
  from automix_jax.train import methods
  method = methods.get(config.method)(config, num_classes=num_classes,
                                      steps_per_epoch=1)
  key = jax.random.key(seed)
  sample = jnp.zeros((2,) + tuple(sample_images.shape[1:]), jnp.float32)
  if workdir is None:
    return method, method.init(key, sample)
  from automix_jax import checkpoint
  abstract = jax.eval_shape(method.init, key, sample)
  rep = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    restored = ckpt.restore_latest(abstract)
  finally:
    ckpt.close()
  if restored is None:
    raise ValueError(f"`workdir` {workdir!r} holds no checkpoint; pass --init "
                     "to visualise an untrained generator.")
  return method, restored[1]


def compute(method, state, images, *, lam: Optional[Sequence[float]] = None,
            seed: int = 0) -> dict:
  """Teacher features -> generator masks -> mixed images
  (``method.preview_masks``, jitted).

  Sample b mixes its own image ``x[b]`` with ``x[(b + i) % B]`` (i = 1..N-1).

  Returns:
    ``{"sources": [B, N, H, W, C], "masks": [B, N, H, W], "mixed": [B, H, W, C],
    "lam": [N]}`` as numpy; for AutoMix N = 2, ``masks[:, 0]`` is the own-image
    weight ``1 - s`` and ``masks[:, 1]`` the partner mask s.
  """
  fn = jax.jit(method.preview_masks)
  return jax.device_get(fn(state, images, lam=lam, key=jax.random.key(seed)))


def mask_statistics(masks, lam, *, whole_image_area: float = 0.9) -> dict:
  """Summary numbers of learned masks ``[B, N, H, W]`` (sum over N is 1 per pixel).

  ``automix_jax.generators.mask_statistics`` (the numbers the learned methods
  log as ``train/mask_*`` during training; all means over samples):
  ``dominance`` (mean over pixels of ``max_i M_i``: 1/N for a uniform blend,
  1.0 for a hard per-pixel pick), ``spatial_std`` (0 when every mask is
  constant over the image), ``saturated_frac`` (pixels whose weights are all
  within 0.01 of 0 or 1), ``whole_image_frac`` (samples where one source
  covers more than ``whole_image_area`` of the mixed image), ``area_lam_gap``
  (mean |mask area - λ_i|); plus ``area_mean``, the mean mask area per source
  ``[N]``, and ``lam``, the λ used.
  """
  masks = np.asarray(masks, np.float64)
  lam = np.asarray(lam, np.float64)
  if masks.ndim != 4 or lam.shape != (masks.shape[1],):
    raise ValueError(f"`masks` must be [B, N, H, W] and `lam` [N]; got "
                     f"{masks.shape} and {lam.shape}.")
  stats = generators.mask_statistics(np.moveaxis(masks, 1, -1), lam,
                                     whole_image_area=whole_image_area, xp=np)
  return {
      "num_samples": int(masks.shape[0]),
      "num_sources": int(masks.shape[1]),
      **{k: float(v) for k, v in stats.items()},
      "area_mean": [float(a) for a in masks.mean(axis=(2, 3)).mean(axis=0)],
      "lam": [float(v) for v in lam],
  }


def plot(result: dict, path: str, *, mean, std, title: str = "",
         labels=None, class_names=None) -> str:
  """Writes the grid PNG (``automix_jax.train.mask_images.mask_figure``: own
  image first, masks with a colour bar, rows labelled by class) to ``path``;
  returns ``path``."""
  from automix_jax.train import mask_images
  fig = mask_images.mask_figure(result, mean=mean, std=std, labels=labels,
                                class_names=class_names, title=title)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return path


def visualize(config_spec: str, out_dir: str, *, workdir: Optional[str] = None,
              num: int = 6, seed: int = 0, stats_num: int = 0) -> str:
  """One config -> one PNG in ``out_dir`` (+ mask statistics of ``stats_num``
  test images as JSON when > 0); returns the PNG's path."""
  from automix_jax import data
  config = load_config(config_spec)
  images, labels, num_classes = test_images(config, max(num, stats_num), seed)
  method, state = load_method(config, num_classes, images, workdir=workdir,
                              seed=seed)
  result = compute(method, state, images[:num], seed=seed)
  tag = "init" if workdir is None else f"step {int(state.step)}"
  if stats_num:
    stats = mask_statistics(
        compute(method, state, images[:stats_num], seed=seed)["masks"],
        result["lam"])
    stats.update(method=config.method, step=int(state.step),
                 workdir=workdir or "init")
    stats_path = os.path.join(out_dir, f"{config.method}_mask_stats.json")
    os.makedirs(out_dir, exist_ok=True)
    with open(stats_path, "w") as f:
      json.dump(stats, f, indent=1)
    print(json.dumps(stats))
  name = f"{config.method}_masks.png"
  names = (data.CIFAR10_CLASSES if config.data.name == data.ARCHIVE_NAME
           else None)
  return plot(result, os.path.join(out_dir, name), mean=config.data.mean,
              std=config.data.std, title=f"{config.method} ({tag})",
              labels=labels[:num], class_names=names)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", nargs="+", default=list(DEFAULT_CONFIGS),
                      help="config file(s), path.py[:arg]")
  parser.add_argument("--workdir", nargs="*", default=None,
                      help="training run dir(s), one per config")
  parser.add_argument("--init", action="store_true",
                      help="initialise instead of loading a checkpoint")
  parser.add_argument("--out", default="results/masks", help="output folder")
  parser.add_argument("--num", type=int, default=6, help="mixed samples (rows)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--stats-num", type=int, default=256,
                      help="test images for <method>_mask_stats.json (0: none)")
  args = parser.parse_args(argv)
  if args.init == bool(args.workdir):
    parser.error("pass exactly one of --init or --workdir")
  if args.workdir and len(args.workdir) != len(args.config):
    parser.error("--workdir needs one directory per --config")
  if args.num < 3:
    parser.error("--num must be >= 3 (AdAutoMix mixes 3 images)")
  if args.stats_num != 0 and args.stats_num < 3:
    parser.error("--stats-num must be 0 or >= 3")
  workdirs = args.workdir or [None] * len(args.config)
  for spec, wd in zip(args.config, workdirs):
    print(visualize(spec, args.out, workdir=wd, num=args.num, seed=args.seed,
                    stats_num=args.stats_num))
  return 0


if __name__ == "__main__":
  sys.exit(main())
