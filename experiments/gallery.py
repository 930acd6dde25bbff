"""Writes a PNG gallery of every registered mixer applied to real CIFAR-10 images.

    python -m experiments.gallery [--archive PATH] [--out results/gallery.png]

Row 0 holds the clean images; every further row is one mixer applied to the same
batch (each sample's partner is the next image, ``partner="roll"``), with the weight
of the sample's own label printed under each tile. Mask mixers get a second row
showing the own-image mask (white = own image).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from automix_jax import mixers

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
TILE, SCALE, LABEL_W, TEXT_H = 32, 3, 150, 14


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


def _to_tile(img: np.ndarray) -> Image.Image:
  img = np.clip(np.asarray(img, np.float32), 0, 1)
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  pil = Image.fromarray((img * 255).round().astype(np.uint8))
  return pil.resize((TILE * SCALE, TILE * SCALE), Image.NEAREST)


def build_gallery(images: np.ndarray, seed: int = 0) -> Image.Image:
  """images: [B, 32, 32, 3] float in [0, 1] -> a PIL gallery image."""
  x = jnp.asarray(images, jnp.float32)
  b = x.shape[0]
  labels = mixers.one_hot(jnp.arange(b) % 10, 10)
  rows = [("clean", [_to_tile(im) for im in images], [""] * b)]
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
    rows.append((name, [_to_tile(im) for im in np.asarray(mixed)],
                 [f"lam={v:.2f}" for v in own]))
    if "mask" in aux:
      rows.append((f"{name} mask", [_to_tile(m) for m in np.asarray(aux["mask"])],
                   [""] * b))
  side = TILE * SCALE
  canvas = Image.new("RGB", (LABEL_W + b * (side + 4), len(rows) * (side + TEXT_H + 4)),
                     "white")
  draw = ImageDraw.Draw(canvas)
  for r, (name, tiles, captions) in enumerate(rows):
    y = r * (side + TEXT_H + 4)
    draw.text((4, y + side // 2), name, fill="black")
    for c, (tile, cap) in enumerate(zip(tiles, captions)):
      x0 = LABEL_W + c * (side + 4)
      canvas.paste(tile, (x0, y))
      draw.text((x0 + 2, y + side + 1), cap, fill="black")
  return canvas


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

  from automix_jax.data import offline  # heavier import, only for the demo
  if not pathlib.Path(args.archive).is_file():
    parser.error(f"--archive: no CIFAR-10 archive at {args.archive} (expected "
                 "the cifar10-jpeg.tar.gz described in ../shared/data/README.md;"
                 " set --archive or AUTOMIX_CIFAR10_ARCHIVE).")
  arrays = offline.load_cifar10_archive(args.archive,
                                        cache_dir=args.cache_dir or None)
  x_test, y_test = arrays["test"]
  # One image of each class in turn, so every tile pairs two different classes.
  picks = [int(np.flatnonzero(y_test == c % 10)[c // 10])
           for c in range(args.num_images)]
  images = x_test[picks].astype(np.float32) / 255.0
  gallery = build_gallery(images, seed=args.seed)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  gallery.save(out)
  print(f"wrote {out} ({gallery.size[0]}x{gallery.size[1]})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
