"""Writes a PNG gallery of every registered mixer applied to real CIFAR-10 images.

    python -m experiments.gallery [--archive PATH] [--out results/gallery.png]

Row 0 holds the clean images, one class per column (named above each); every
further row is one mixer applied to the same batch (each sample's partner is
the next image, ``partner="roll"``), with the weight of the sample's own label
printed under each tile. Mask mixers get a second row with the own-image mask
in grey scale: white = the sample's own image (weight 1), black = its partner
(weight 0), as the colour bar says.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax import mixers

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
TILE_INCHES, LABEL_INCHES = 0.9, 1.2
MASK_LABEL = ("own-image weight\n(white: the sample's own image,\n"
              "black: its partner)")


def _hyperparameters(name: str, images: jax.Array) -> dict:
  """Per-mixer settings that make each method visible at 32 px."""
  common = {"partner": "roll"}
  if name == "attentivemix":
    # A supplied per-cell score map: local contrast of each 8x8 cell stands in
    # for a pretrained network's feature activations.
    grey = images.mean(-1)
    cells = grey.reshape(grey.shape[0], 4, 8, 4, 8)
    return {**common, "scores": cells.std(axis=(2, 4)), "alpha": 2.0}
  if name == "maskmix":
    return {**common, "mask_patch": 8}
  if name == "nway_mixup":
    return {"num_images": 3}
  if name in ("mixup", "none"):
    return {**common} if name == "mixup" else {}
  return {**common, "alpha": 1.0}


def build_gallery(images: np.ndarray, seed: int = 0, *,
                  class_names=None):
  """images: [B, H, W, 3] float in [0, 1] (32 px for attentivemix's cells)
  -> a matplotlib Figure (one row per mixer, a colour bar for the masks).

  ``class_names`` (optional, one per image) title the clean row's columns.
  """
  from matplotlib import figure as mpl_figure  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(images, jnp.float32)
  b = x.shape[0]
  labels = mixers.one_hot(jnp.arange(b) % 10, 10)
  rows = [("clean", np.asarray(images), None, False)]
  key = jax.random.key(seed)
  for i, name in enumerate(n for n in mixers.names()
                           if n != "none" and not mixers.needs(n)):
    fn = mixers.get(name, **_hyperparameters(name, x))
    try:
      mixed, _, aux = fn(jax.random.fold_in(key, i), x, labels)
    except NotImplementedError:
      print(f"gallery: {name} is not implemented yet; skipped", file=sys.stderr)
      continue
    lam = np.asarray(aux["lam"])
    own = lam[:, 0] if lam.ndim == 2 else lam
    rows.append((name, np.asarray(mixed), [f"λ={v:.2f}" for v in own], False))
    if "mask" in aux:
      rows.append((f"{name} mask", np.asarray(aux["mask"])[..., 0], None,
                   True))
  fig = mpl_figure.Figure(
      figsize=(LABEL_INCHES + TILE_INCHES * (b + 1.2),
               TILE_INCHES * 1.25 * len(rows) + 0.6), dpi=100,
      layout="constrained")
  axes = fig.subplots(len(rows), b, squeeze=False)
  mask_im = None
  for r, (name, tiles, captions, is_mask) in enumerate(rows):
    for c in range(b):
      ax = axes[r, c]
      if is_mask:
        mask_im = ax.imshow(tiles[c], cmap="gray", vmin=0.0, vmax=1.0)
      else:
        ax.imshow(np.clip(tiles[c], 0.0, 1.0))
      ax.set_xticks([])
      ax.set_yticks([])
      if captions is not None:
        ax.set_xlabel(captions[c], fontsize=6, labelpad=1)
    axes[r, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right",
                          va="center")
  if class_names is not None:
    for c in range(b):
      axes[0, c].set_title(str(class_names[c]), fontsize=7)
  if mask_im is not None:
    cbar = fig.colorbar(mask_im, ax=list(axes.ravel()), location="right",
                        shrink=0.25, aspect=20)
    cbar.set_label(MASK_LABEL, fontsize=7)
    cbar.ax.tick_params(labelsize=6)
  fig.suptitle("mixers on CIFAR-10 (partner = the next column's image); "
               "λ = weight of the sample's own label", fontsize=8)
  return fig


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--archive", default=os.environ.get(
      "AUTOMIX_CIFAR10_ARCHIVE", str(DEFAULT_ARCHIVE)),
                      help="path of cifar10-jpeg.tar.gz (../shared/data/)")
  parser.add_argument("--cache_dir", default="",
                      help="where the decoded .npy cache lives")
  parser.add_argument("--out", default=str(REPO / "results" / "gallery.png"))
  parser.add_argument("--num_images", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  from automix_jax import data  # heavier import, only for the demo
  if not pathlib.Path(args.archive).is_file():
    parser.error(f"--archive: no CIFAR-10 archive at {args.archive} (expected "
                 "the cifar10-jpeg.tar.gz described in ../shared/data/README.md;"
                 " set --archive or AUTOMIX_CIFAR10_ARCHIVE).")
  arrays = data.load_cifar10_archive(args.archive,
                                     cache_dir=args.cache_dir or None)
  x_test, y_test = arrays["test"]
  # One image of each class in turn, so every tile pairs two different classes.
  picks = data.distinct_class_indices(y_test, args.num_images)
  images = x_test[picks].astype(np.float32) / 255.0
  gallery = build_gallery(
      images, seed=args.seed,
      class_names=[data.CIFAR10_CLASSES[y] for y in y_test[picks]])
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  gallery.savefig(out)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
