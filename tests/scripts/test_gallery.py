"""experiments/gallery.py: the figure says what the mask colours mean."""

import numpy as np

from experiments import gallery


def test_gallery_masks_have_a_labelled_colour_bar_and_named_classes(
    monkeypatch):
  # Two mask mixers and one blend keep the test to seconds.
  monkeypatch.setattr(gallery.mixers, "names",
                      lambda: ("cutmix", "fmix", "mixup", "none"))
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 32, 32, 3)).astype(np.float32)
  names = ["cat", "dog", "ship"]
  fig = gallery.build_gallery(images, class_names=names)
  grid = [ax for ax in fig.axes if ax.images and ax.get_subplotspec()]
  bars = [ax for ax in fig.axes if ax not in grid]
  assert len(bars) == 1                      # one colour bar, for the masks
  assert "own image" in bars[0].get_ylabel()
  assert bars[0].get_ylim() == (0.0, 1.0)
  rows = {}
  for ax in grid:
    rows.setdefault(ax.get_subplotspec().rowspan.start, []).append(ax)
  names_of_rows = {r: axs[0].get_ylabel() for r, axs in rows.items()
                   if axs[0].get_ylabel()}
  mask_rows = [r for r, n in names_of_rows.items() if n.endswith(" mask")]
  assert sorted(names_of_rows.values()) == [
      "clean", "cutmix", "cutmix mask", "fmix", "fmix mask", "mixup"]
  for r in mask_rows:
    for ax in rows[r]:
      im = ax.images[0]
      # Grey scale from 0 (partner) to 1 (own image), as the bar says.
      assert im.get_cmap().name == "gray" and im.get_clim() == (0.0, 1.0)
  clean = sorted(rows[0], key=lambda ax: ax.get_subplotspec().colspan.start)
  assert [ax.get_title() for ax in clean] == names
