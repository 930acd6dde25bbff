"""scripts/visualize_masks.py: the mask statistics on masks of known form."""

import importlib.util
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "visualize_masks", REPO / "scripts" / "visualize_masks.py")
vm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vm)


def _masks_from_area(area, hw=8):
  """[B, N] areas -> spatially constant masks [B, N, hw, hw]."""
  area = np.asarray(area, np.float64)
  return np.broadcast_to(area[:, :, None, None], area.shape + (hw, hw))


def test_uniform_blend():
  lam = np.full(3, 1 / 3)
  s = vm.mask_statistics(_masks_from_area(np.full((4, 3), 1 / 3)), lam)
  assert s["dominance"] == pytest.approx(1 / 3)
  assert s["spatial_std"] == pytest.approx(0.0)
  assert s["whole_image_frac"] == 0.0
  assert s["area_lam_gap"] == pytest.approx(0.0)


def test_whole_image_pick_is_flagged():
  area = np.eye(3)[[0, 1, 2, 0]]       # each sample: one source fills it
  lam = np.array([0.5, 0.3, 0.2])
  s = vm.mask_statistics(_masks_from_area(area), lam)
  assert s["dominance"] == pytest.approx(1.0)
  assert s["whole_image_frac"] == 1.0
  assert s["spatial_std"] == pytest.approx(0.0)
  # |1-.5|+.3+.2, .5+.7+.2, .5+.3+.8, then sample 0 again; mean over 12.
  assert s["area_lam_gap"] == pytest.approx((1.0 + 1.4 + 1.6 + 1.0) / 12)
  np.testing.assert_allclose(s["area_mean"], [0.5, 0.25, 0.25])


def test_half_image_cut_has_spatial_structure():
  m = np.zeros((2, 2, 4, 4))
  m[:, 0, :, :2] = 1.0                  # left half from source 0
  m[:, 1] = 1.0 - m[:, 0]
  s = vm.mask_statistics(m, np.array([0.5, 0.5]))
  assert s["dominance"] == pytest.approx(1.0)
  assert s["spatial_std"] == pytest.approx(0.5)
  assert s["whole_image_frac"] == 0.0
  assert s["area_lam_gap"] == pytest.approx(0.0)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="masks"):
    vm.mask_statistics(np.zeros((2, 3, 4)), np.zeros(3))
  with pytest.raises(ValueError, match="lam"):
    vm.mask_statistics(np.zeros((2, 3, 4, 4)), np.zeros(2))


def test_mask_figure_names_the_own_image_and_carries_a_colour_bar(tmp_path):
  b, n, hw = 3, 3, 4
  rng = np.random.default_rng(0)
  masks = rng.dirichlet(np.ones(n), size=(b, hw, hw)).transpose(0, 3, 1, 2)
  result = {"sources": rng.normal(size=(b, n, hw, hw, 3)), "masks": masks,
            "mixed": rng.normal(size=(b, hw, hw, 3)),
            "lam": np.full(n, 1 / n)}
  names = ("plane", "car", "bird")
  path = vm.plot(result, str(tmp_path / "m.png"), mean=(0.5,) * 3,
                 std=(0.2,) * 3, labels=np.array([2, 0, 1]), class_names=names)
  assert (tmp_path / "m.png").stat().st_size > 1000
  from automix_jax.train import mask_images
  fig = mask_images.mask_figure(result, mean=(0.5,) * 3, std=(0.2,) * 3,
                                labels=np.array([2, 0, 1]), class_names=names)
  ax_src, ax_mask, ax_mix, ax_bar = fig.axes
  assert "own image" in ax_bar.get_ylabel()
  assert ax_bar.get_ylim() == (0.0, 1.0)
  heads = [t.get_text() for t in ax_src.get_xticklabels()]
  assert len(heads) == n and heads[0].startswith("x0: own image")
  assert [t.get_text() for t in ax_mask.get_xticklabels()][0] == "mask 0 (own)"
  assert [t.get_text() for t in ax_src.get_yticklabels()] == [
      "bird", "plane", "car"]
  im = ax_mask.images[0]
  assert im.get_cmap().name.startswith("gray") and im.get_clim() == (0.0, 1.0)
  # The mask panel holds the masks, tile by tile (separators are NaN).
  tiles = np.asarray(im.get_array().filled(np.nan))
  step = hw + 2
  for r in range(b):
    for i in range(n):
      np.testing.assert_allclose(
          tiles[r * step:r * step + hw, i * step:i * step + hw], masks[r, i],
          rtol=1e-6)
  assert np.isnan(tiles[hw, 0]) and np.isnan(tiles[0, hw])
  assert ax_src.images[0].get_array().shape == (b * step, n * step, 3)
  assert ax_mix.images[0].get_array().shape == (b * step, step, 3)
  assert "own image" in fig._suptitle.get_text()
  with pytest.raises(ValueError, match="result"):
    mask_images.mask_figure({**result, "lam": np.ones(2)}, mean=(0.5,) * 3,
                            std=(0.2,) * 3)
