"""Defining properties of the box mixers: CutMix, ResizeMix, SaliencyMix, GridMix.

Every expected box / source location / hole lattice here is recomputed with
independent NumPy code (float64, Python loops) from the formulas in
the published algorithms (timm, torchvision, OpenMixup), not with the helpers under
test.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import mixers
from automix_jax.mixers import _cutmix
from automix_jax.mixers import _resizemix
from automix_jax.mixers import _saliencymix

B, H, W, C, K = 6, 16, 12, 3, 5  # non-square on purpose: catches H/W swaps
BOX_MIXERS = ("cutmix", "resizemix", "saliencymix", "gridmix")


_JITTED = {}


def _run(name, key, images, labels, **kw):
  """``mixers.get(name)(key, images, labels, **kw)`` under a cached ``jax.jit``.

  Array keyword arguments are traced; everything else is bound statically. Eager
  op-by-op dispatch is several times slower on CPU, and only
  ``test_jit_equals_eager_and_traces_once`` needs it.
  """
  arrays = {k: v for k, v in kw.items() if isinstance(v, (jax.Array, np.ndarray))}
  static = {k: v for k, v in kw.items() if k not in arrays}
  cache_key = (name, repr(sorted(static.items())), tuple(sorted(arrays)),
               images.shape, str(images.dtype))
  if cache_key not in _JITTED:
    _JITTED[cache_key] = jax.jit(
        lambda k, x, y, **a: mixers.get(name, **static)(k, x, y, **a))
  return _JITTED[cache_key](key, images, labels, **arrays)


_OUTPUTS = {}


def _outputs(name, lam_scope="batch", dtype=jnp.float32, seed=3):
  """Jitted default-hyperparameter run of ``name``, compiled once per config.

  The traced function is wrapped in ``chex.assert_max_traces(n=1)`` under a
  per-config name, so any retrace across the calls of this module fails.
  """
  cfg = (name, lam_scope, jnp.dtype(dtype).name)
  if cfg not in _OUTPUTS:
    fn = mixers.get(name, lam_scope=lam_scope)

    def run(key, x, y):
      return fn(key, x, y)
    run.__name__ = "run_" + "_".join(cfg)
    _OUTPUTS[cfg] = jax.jit(chex.assert_max_traces(run, n=1))
  images, labels = _batch(dtype)
  return images, labels, _OUTPUTS[cfg](jax.random.key(seed), images, labels)


def _batch(dtype=jnp.float32, b=B, h=H, w=W, seed=0):
  kx, ky = jax.random.split(jax.random.key(seed))
  # Distinct values per pixel so provenance cannot pass by accident.
  images = jax.random.uniform(kx, (b, h, w, C), jnp.float32).astype(dtype)
  labels = mixers.one_hot(jax.random.randint(ky, (b,), 0, K), K)
  return images, labels


def _np_box(lam, cy, cx, h, w, rule="symmetric"):
  """timm/torchvision's rand_bbox in float64 Python."""
  r = math.sqrt(1.0 - float(lam))
  cut_h, cut_w = int(h * r), int(w * r)
  up_h = cut_h // 2 if rule == "symmetric" else (cut_h + 1) // 2
  up_w = cut_w // 2 if rule == "symmetric" else (cut_w + 1) // 2
  return (int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cy + up_h, 0, h)),
          int(np.clip(cx - cut_w // 2, 0, w)), int(np.clip(cx + up_w, 0, w)))


def _box_mask(box, h, w):
  m = np.ones((h, w), np.float32)
  y1, y2, x1, x2 = box
  m[y1:y2, x1:x2] = 0
  return m


# ----------------------------------------------------------------------------
# Shared properties.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", BOX_MIXERS)
@pytest.mark.parametrize("lam_scope", ["batch", "sample"])
def test_labels_lam_and_mask_agree(name, lam_scope):
  images, labels, (mixed, mixed_labels, aux) = _outputs(name, lam_scope)
  lam, index, mask = aux["lam"], aux["index"], aux["mask"]
  chex.assert_shape(mask, (B, H, W, 1))
  assert mask.dtype == jnp.float32 and lam.dtype == jnp.float32
  assert index.dtype == jnp.int32
  # Binary masks, and λ is the own image's share of pixels (corrected λ).
  assert set(np.unique(np.asarray(mask))) <= {0.0, 1.0}
  np.testing.assert_allclose(lam, np.asarray(mask).mean(axis=(1, 2, 3)),
                             atol=1e-6)
  np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, atol=1e-6)
  expected = lam[:, None] * labels + (1 - lam[:, None]) * labels[index]
  np.testing.assert_allclose(mixed_labels, expected, atol=1e-6)
  # Outside the box every mixer keeps the own pixel bit for bit.
  keep = np.asarray(mask)[..., 0] == 1
  np.testing.assert_array_equal(np.asarray(mixed)[keep],
                                np.asarray(images)[keep])


@pytest.mark.parametrize("name", BOX_MIXERS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pixel_provenance_is_exact_and_dtype_kept(name, dtype):
  images, labels, (mixed, mixed_labels, aux) = _outputs(name, dtype=dtype)
  assert mixed.dtype == dtype and mixed_labels.dtype == labels.dtype
  if name == "resizemix":  # pastes a resized partner: see its own test
    return
  mask = np.asarray(aux["mask"])
  own = np.asarray(images.astype(jnp.float32))
  other = own[np.asarray(aux["index"])]
  expected = np.where(mask == 1, own, other)  # mask * own + (1 - mask) * other
  np.testing.assert_array_equal(np.asarray(mixed.astype(jnp.float32)),
                                expected)


@pytest.mark.parametrize("name", BOX_MIXERS)
def test_jit_equals_eager_and_traces_once(name):
  images, labels, jitted = _outputs(name, "sample")
  eager = mixers.get(name, lam_scope="sample")(jax.random.key(3), images,
                                                labels)
  # Pixels, masks, boxes, partners agree exactly; λ and labels up to XLA's
  # fusion rounding (an ulp).
  exact = ("mask", "box", "index", "center", "crop", "patch", "hole")
  chex.assert_trees_all_equal(
      (jitted[0], {k: v for k, v in jitted[2].items() if k in exact}),
      (eager[0], {k: v for k, v in eager[2].items() if k in exact}))
  chex.assert_trees_all_close((jitted[1], jitted[2]), (eager[1], eager[2]),
                              atol=1e-6, rtol=1e-6)
  # More keys through the same compiled program (assert_max_traces guards it);
  # different keys give different mixes.
  masks = [_outputs(name, "sample", seed=s)[2][2]["mask"] for s in (4, 5)]
  assert not np.array_equal(masks[0], masks[1])


@pytest.mark.parametrize("name", BOX_MIXERS)
def test_sample_scope_gives_each_sample_its_own_box(name):
  _, _, (_, _, aux_b) = _outputs(name, "batch")
  _, _, (_, _, aux_s) = _outputs(name, "sample")
  masks_b = np.asarray(aux_b["mask"])
  masks_s = np.asarray(aux_s["mask"])
  if name != "saliencymix":  # SaliencyMix centres follow each partner anyway
    assert all(np.array_equal(masks_b[0], m) for m in masks_b)
  assert len({m.tobytes() for m in masks_s}) > 1
  assert len(np.unique(np.asarray(aux_s["lam"]))) > 1
  if "box" in aux_s:
    assert len({tuple(b) for b in np.asarray(aux_s["box"])}) > 1


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", BOX_MIXERS)
def test_bad_input_raises_value_error_naming_the_argument(name):
  fn = mixers.get(name)
  key = jax.random.key(0)
  images, labels = _batch()
  with pytest.raises(ValueError, match="alpha"):
    fn(key, images, labels, alpha=0.0)
  with pytest.raises(ValueError, match="alpha"):
    fn(key, images, labels, alpha=-1.0)
  with pytest.raises(ValueError, match="floating"):
    fn(key, (images * 255).astype(jnp.uint8), labels)
  with pytest.raises(ValueError, match=r"\[B, K\]"):
    fn(key, images, jnp.argmax(labels, -1))
  with pytest.raises(ValueError, match="batch size"):
    fn(key, images, labels[:-2])
  with pytest.raises(ValueError, match="at least 2"):
    fn(key, images[:1], labels[:1])
  with pytest.raises(ValueError, match="even batch"):
    fn(key, images[:5], labels[:5], partner="flip")
  with pytest.raises(ValueError, match="lam_scope"):
    fn(key, images, labels, lam_scope="pixel")
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    fn(key, images[..., 0], labels)


def test_cutmix_center_outside_image_raises():
  images, labels = _batch()
  key = jax.random.key(0)
  for center in ([H, 0], [0, W], [-1, 3], np.array([[1, 1]] * (B - 1) +
                                                   [[1, W + 2]])):
    with pytest.raises(ValueError, match="center"):
      mixers.cutmix(key, images, labels, center=jnp.asarray(center))
  with pytest.raises(ValueError, match="center"):
    mixers.cutmix(key, images, labels, center=jnp.asarray([1.0, 2.0]))
  with pytest.raises(ValueError, match="center"):
    mixers.cutmix(key, images, labels, center=jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="lam"):
    mixers.cutmix(key, images, labels, lam=1.5)
  with pytest.raises(ValueError, match="index"):
    mixers.cutmix(key, images, labels, index=jnp.arange(B) + 1)
  with pytest.raises(ValueError, match="correct_lam"):
    mixers.cutmix(key, images, labels, correct_lam="yes")
  with pytest.raises(ValueError, match="box_rule"):
    mixers.cutmix(key, images, labels, box_rule="round")


def test_other_mixers_specific_bad_input():
  images, labels = _batch()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="scope"):
    mixers.resizemix(key, images, labels, scope=(0.8, 0.1))
  with pytest.raises(ValueError, match="center"):
    mixers.resizemix(key, images, labels, center=jnp.asarray([0, W]))
  with pytest.raises(ValueError, match="nearest"):
    mixers.resizemix(key, images, labels, nearest="bilinear")
  with pytest.raises(ValueError, match="saliency"):
    mixers.saliencymix(key, images, labels, saliency=jnp.zeros((B, W, H)))
  with pytest.raises(ValueError, match="n_holes"):
    mixers.gridmix(key, images, labels, n_holes=(3, 2))
  with pytest.raises(ValueError, match="n_holes"):
    mixers.gridmix(key, images, labels, n_holes=2.5)
  with pytest.raises(ValueError, match="cut_area_ratio"):
    mixers.gridmix(key, images, labels, cut_area_ratio=(0.5, 1.5))


# ----------------------------------------------------------------------------
# CutMix.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["symmetric", "exact"])
def test_cutmix_explicit_lam_center_index_give_reference_box(rule):
  images, labels = _batch()
  rng = np.random.default_rng(0)
  lam = rng.uniform(0, 1, B).astype(np.float32)
  center = np.stack([rng.integers(0, H, B), rng.integers(0, W, B)], 1)
  index = rng.permutation(B)
  mixed, mixed_labels, aux = _run(
      "cutmix", jax.random.key(0), images, labels, lam=jnp.asarray(lam),
      center=jnp.asarray(center, jnp.int32),
      index=jnp.asarray(index, jnp.int32), box_rule=rule)
  for b in range(B):
    box = _np_box(lam[b], *center[b], H, W, rule)
    assert tuple(np.asarray(aux["box"][b])) == box
    np.testing.assert_array_equal(aux["mask"][b, ..., 0], _box_mask(box, H, W))
    y1, y2, x1, x2 = box
    expected = np.array(images[b])
    expected[y1:y2, x1:x2] = np.asarray(images[index[b]])[y1:y2, x1:x2]
    np.testing.assert_array_equal(mixed[b], expected)
    area = (y2 - y1) * (x2 - x1)
    np.testing.assert_allclose(aux["lam"][b], 1 - area / (H * W), atol=1e-7)
  np.testing.assert_array_equal(aux["index"], index)


def _explicit(lam, center, index=None):
  """Explicit-override arrays: λ ``[B]``, centre ``[B, 2]``, partner ``[B]``."""
  index = np.arange(B)[::-1] if index is None else index
  return dict(lam=jnp.broadcast_to(jnp.float32(lam), (B,)),
              center=jnp.broadcast_to(jnp.asarray(center, jnp.int32), (B, 2)),
              index=jnp.asarray(index, jnp.int32))


def test_cutmix_without_correction_keeps_drawn_lam():
  images, labels = _batch()
  # Corner centre: the box is clipped, so the area is far from 1 - λ.
  _, mixed_labels, aux = _run("cutmix", jax.random.key(0), images, labels,
                              correct_lam=False, **_explicit(0.3, [0, 0]))
  np.testing.assert_allclose(aux["lam"], 0.3)
  assert float(aux["mask"].mean()) > 0.3 + 0.2
  expected = 0.3 * labels + 0.7 * labels[aux["index"]]
  np.testing.assert_allclose(mixed_labels, expected, atol=1e-6)


def test_cutmix_lam_one_returns_inputs_unchanged():
  images, labels = _batch()
  mixed, mixed_labels, aux = _run("cutmix", jax.random.key(0), images, labels,
                                  **_explicit(1.0, [3, 4]))
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(mixed_labels, labels)
  np.testing.assert_array_equal(aux["lam"], 1.0)
  # λ = 0 at the image centre replaces everything.
  mixed, mixed_labels, aux = _run("cutmix", jax.random.key(0), images, labels,
                                  **_explicit(0.0, [H // 2, W // 2]))
  np.testing.assert_array_equal(aux["lam"], 0.0)
  np.testing.assert_array_equal(mixed, images[::-1])
  np.testing.assert_array_equal(mixed_labels, labels[::-1])


def test_cut_size_is_exact_where_float32_is_not():
  size = 224
  c = np.arange(size + 1)
  lam = (1 - (c / size) ** 2).astype(np.float32)  # products near integers
  ref = np.array([int(size * math.sqrt(1 - float(v))) for v in lam])
  np.testing.assert_array_equal(_cutmix.cut_size(jnp.asarray(lam), size), ref)
  naive = np.floor(np.float32(size) * np.sqrt(np.float32(1) - lam))
  assert (naive != ref).any()  # the case the threshold method exists for


def test_cutmix_center_draw_covers_the_grid_uniformly():
  images, labels = _batch(b=2, h=4, w=3)
  keys = jax.random.split(jax.random.key(0), 1200)
  run = jax.jit(jax.vmap(lambda k: mixers.cutmix(k, images, labels, lam=0.5)
                         [2]["box"][0]))
  boxes = np.asarray(run(keys))
  # lam = 0.5: cut = (2, 2) -> half (1, 1); y1 = max(cy - 1, 0), x1 likewise.
  cy = np.minimum(boxes[:, 1] - 1, 3)  # y2 = min(cy + 1, 4)
  counts = np.bincount(cy, minlength=4)
  assert counts.min() > 200 and counts.max() < 400


# ----------------------------------------------------------------------------
# ResizeMix.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("nearest", ["exact", "torch"])
def test_resizemix_pixels_come_from_the_computed_source_locations(nearest):
  images, labels = _batch()
  rng = np.random.default_rng(1)
  tau = rng.uniform(0.1, 0.9, B).astype(np.float32)
  center = np.stack([rng.integers(0, H, B), rng.integers(0, W, B)], 1)
  index = rng.permutation(B)
  mixed, _, aux = _run(
      "resizemix", jax.random.key(0), images, labels, tau=jnp.asarray(tau),
      center=jnp.asarray(center, jnp.int32),
      index=jnp.asarray(index, jnp.int32), nearest=nearest)
  x = np.asarray(images)
  for b in range(B):
    cut_h, cut_w = int(H * float(tau[b])), int(W * float(tau[b]))
    y1, y2 = np.clip([center[b][0] - cut_h // 2, center[b][0] + cut_h // 2],
                     0, H)
    x1, x2 = np.clip([center[b][1] - cut_w // 2, center[b][1] + cut_w // 2],
                     0, W)
    assert tuple(np.asarray(aux["box"][b])) == (y1, y2, x1, x2)
    expected = x[b].copy()
    for i in range(y1, y2):
      for j in range(x1, x2):
        if nearest == "exact":
          si, sj = (i - y1) * H // (y2 - y1), (j - x1) * W // (x2 - x1)
        else:
          si = min(int(np.floor(np.float32(i - y1) *
                                (np.float32(H) / np.float32(y2 - y1)))), H - 1)
          sj = min(int(np.floor(np.float32(j - x1) *
                                (np.float32(W) / np.float32(x2 - x1)))), W - 1)
        expected[i, j] = x[index[b], si, sj]
    np.testing.assert_array_equal(mixed[b], expected)
    np.testing.assert_allclose(aux["lam"][b],
                               1 - (y2 - y1) * (x2 - x1) / (H * W), atol=1e-7)


def _explicit_tau(tau, center):
  return dict(tau=jnp.broadcast_to(jnp.float32(tau), (B,)),
              center=jnp.broadcast_to(jnp.asarray(center, jnp.int32), (B, 2)),
              index=jnp.asarray(np.arange(B)[::-1], jnp.int32))


def test_resizemix_whole_partner_appears_when_box_is_the_image():
  # τ = 1 at the centre: the box is the whole image and the "resize" is the
  # identity, so the output is the partner exactly and λ = 0.
  images, labels = _batch()
  mixed, mixed_labels, aux = _run("resizemix", jax.random.key(0), images,
                                  labels, nearest="exact",
                                  **_explicit_tau(1.0, [H // 2, W // 2]))
  np.testing.assert_array_equal(mixed, images[::-1])
  np.testing.assert_array_equal(aux["lam"], 0.0)
  np.testing.assert_array_equal(mixed_labels, labels[::-1])


def test_resizemix_empty_box_returns_inputs_unchanged():
  images, labels = _batch()
  mixed, mixed_labels, aux = _run("resizemix", jax.random.key(0), images,
                                  labels, nearest="exact",
                                  **_explicit_tau(0.0, [3, 3]))
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(mixed_labels, labels)
  np.testing.assert_array_equal(aux["lam"], 1.0)


TAU_CONFIGS = ((True, 0.2), (True, 5.0), (False, 1.0))


@pytest.fixture(scope="module")
def tau_draws():
  # One compiled program for all configs (Beta sampling is slow to compile).
  draw = jax.jit(lambda k: [
      _resizemix.draw_tau(k, 512, alpha=a, scope=(0.3, 0.6), use_alpha=u)
      for u, a in TAU_CONFIGS])
  return dict(zip(TAU_CONFIGS, (np.asarray(t) for t in
                                draw(jax.random.key(0)))))


@pytest.mark.parametrize("use_alpha,alpha", TAU_CONFIGS)
def test_resizemix_tau_stays_in_scope(tau_draws, use_alpha, alpha):
  tau = tau_draws[(use_alpha, alpha)]
  # Strictly inside: out-of-scope draws are redrawn, not clipped to the ends.
  assert tau.min() > 0.3 and tau.max() < 0.6
  assert len(np.unique(tau)) > 256
  # OpenMixup's rule replayed in NumPy: a Beta draw outside the scope is
  # replaced by a uniform one. Compare the share of τ near the middle.
  rs = np.random.RandomState(0)
  ref = rs.uniform(0.3, 0.6, 20000)
  if use_alpha:
    beta = rs.beta(alpha, alpha, 20000)
    ref = np.where((beta < 0.3) | (beta > 0.6), ref, beta)
  share = lambda t: np.mean(np.abs(t - 0.45) < 0.05)
  assert abs(share(tau) - share(ref)) < 0.07, (share(tau), share(ref))


# ----------------------------------------------------------------------------
# SaliencyMix.
# ----------------------------------------------------------------------------


def test_saliencymix_box_is_centred_on_partner_saliency_peak():
  images, labels = _batch()
  rng = np.random.default_rng(2)
  peaks = np.stack([rng.integers(0, H, B), rng.integers(0, W, B)], 1)
  yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  saliency = np.stack([np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / 4.0)
                       for py, px in peaks]).astype(np.float32)
  index = rng.permutation(B)
  lam = rng.uniform(0.2, 0.9, B).astype(np.float32)
  mixed, _, aux = _run(
      "saliencymix", jax.random.key(0), images, labels,
      saliency=jnp.asarray(saliency),
      index=jnp.asarray(index, jnp.int32), lam=jnp.asarray(lam))
  for b in range(B):
    py, px = peaks[index[b]]  # the partner's peak, not the own image's
    np.testing.assert_array_equal(aux["center"][b], (py, px))
    box = _np_box(lam[b], py, px, H, W)
    assert tuple(np.asarray(aux["box"][b])) == box
    np.testing.assert_array_equal(aux["mask"][b, ..., 0], _box_mask(box, H, W))


def test_saliencymix_lam_one_returns_inputs_unchanged():
  images, labels = _batch()
  mixed, mixed_labels, _ = _run(
      "saliencymix", jax.random.key(0), images, labels,
      saliency=jax.random.uniform(jax.random.key(1), (B, H, W)),
      index=jnp.asarray(np.arange(B)[::-1], jnp.int32),
      lam=jnp.ones((B,), jnp.float32))
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(mixed_labels, labels)


@pytest.mark.parametrize("h", [32, 96])  # native grid; downsized to 64
def test_spectral_residual_finds_the_odd_blob(h):
  # A smooth periodic background (repetitive, so its spectrum is "expected")
  # with one small bright square: spectral residual saliency peaks on it.
  w = h
  s = h // 32
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  background = 0.3 + 0.1 * np.sin(2 * np.pi * xx / (8 * s)) * np.sin(
      2 * np.pi * yy / (8 * s))
  spots = [(6 * s, 22 * s), (24 * s, 9 * s)]
  imgs = []
  for sy, sx in spots:
    img = background.copy()
    img[sy - s:sy + 2 * s, sx - s:sx + 2 * s] = 1.0
    imgs.append(np.repeat(img[..., None], 3, -1))
  sal = jax.jit(_saliencymix.spectral_residual_saliency)(
      jnp.asarray(np.stack(imgs), jnp.float32))
  chex.assert_shape(sal, (2, h, w))
  np.testing.assert_allclose(sal.max(axis=(1, 2)), 1.0, atol=1e-6)
  peak = np.asarray(_saliencymix.saliency_peak(sal))
  for (sy, sx), (py, px) in zip(spots, peak):
    assert abs(py - sy) <= 2 * s and abs(px - sx) <= 2 * s, (sy, sx, py, px)


# ----------------------------------------------------------------------------
# GridMix.
# ----------------------------------------------------------------------------


def _np_grid_mask(crop, patch, hole, h, w):
  """OpenMixup's hole loop (holes at each patch's top-left, clipped to crop)."""
  y0, y_end, x0, x_end = crop
  height, width = y_end - y0, x_end - x0
  ph, pw = patch
  hh, hw = hole
  mask = np.ones((h, w), np.float32)
  n_x = math.ceil(width / pw)
  n_y = math.ceil(height / max(ph, 1))
  for i in range(n_x + 1):
    for j in range(n_y + 1):
      x1 = min(pw * i, width)
      y1 = min(ph * j, height)
      x2 = min(x1 + hw, width)
      y2 = min(y1 + hh, height)
      mask[y0 + y1:y0 + y2, x0 + x1:x0 + x2] = 0
  return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gridmix_hole_lattice_matches_openmixup_geometry(seed):
  h, w = 32, 24
  images, labels = _batch(b=8, h=h, w=w, seed=seed)
  lam = np.random.default_rng(seed).uniform(0, 1, 8).astype(np.float32)
  mixed, _, aux = _run("gridmix", jax.random.key(seed), images, labels,
                                 lam=jnp.asarray(lam), lam_scope="sample")
  for b in range(8):
    crop = tuple(int(v) for v in aux["crop"][b])
    patch = tuple(int(v) for v in aux["patch"][b])
    hole = tuple(int(v) for v in aux["hole"][b])
    n = int(aux["n_holes"][b])
    y1, y2, x1, x2 = crop
    assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w  # crop inside the image
    assert 2 <= n <= 6
    assert patch[1] == math.ceil((x2 - x1) / n)
    r = math.sqrt(1 - float(lam[b]))
    for side, p in zip(hole, patch):
      assert side == min(max(int(p * r), 1), p - 1)
    expected = _np_grid_mask(crop, patch, hole, h, w)
    np.testing.assert_array_equal(aux["mask"][b, ..., 0], expected)
    # Number of holes = full/partial patch cells in the crop.
    n_cols = len(range(0, x2 - x1, patch[1]))
    n_rows = len(range(0, y2 - y1, patch[0]))
    holes = 1 - expected
    assert holes.sum() > 0
    assert int((np.diff(np.pad(holes.max(0), (1, 0))) == 1).sum()) == n_cols
    assert int((np.diff(np.pad(holes.max(1), (1, 0))) == 1).sum()) == n_rows
    np.testing.assert_allclose(aux["lam"][b], 1 - holes.sum() / (h * w),
                               atol=1e-6)


def test_gridmix_crop_never_overflows_the_image():
  # OpenMixup: area ratio 1 with aspect q != 1 gives a crop side longer than
  # the image (cut_h = 45 > 32 for q = 2); its crop origin then goes negative.
  # Here the crop is clipped to the image.
  images, labels = _batch(b=16, h=32, w=32)
  _, _, aux = _run("gridmix", jax.random.key(0), images, labels,
                   cut_area_ratio=1.0, cut_aspect_ratio=(0.5, 2.0),
                   lam_scope="sample")
  crop = np.asarray(aux["crop"])
  assert crop.min() >= 0 and crop[:, 1].max() <= 32 and crop[:, 3].max() <= 32
  heights, widths = crop[:, 1] - crop[:, 0], crop[:, 3] - crop[:, 2]
  assert ((heights == 32) & (widths < 32)).any()  # tall crops, clipped
  assert ((widths == 32) & (heights < 32)).any()  # wide crops, clipped
  assert (np.asarray(aux["mask"]) == 0).any(axis=(1, 2, 3)).all()


def test_gridmix_lam_one_keeps_one_pixel_holes():
  # OpenMixup clips the hole side to at least 1 pixel, so λ = 1 still mixes a
  # little and the returned (corrected) λ is below 1.
  images, labels = _batch(b=8, h=32, w=24)
  _, _, aux = _run("gridmix", jax.random.key(0), images, labels,
                   lam=jnp.ones((8,), jnp.float32), lam_scope="sample")
  np.testing.assert_array_equal(aux["hole"], 1)
  mask = np.asarray(aux["mask"])[..., 0]
  assert (np.asarray(aux["lam"]) < 1).all()
  # Every hole is a single pixel: no two partner pixels are 4-neighbours.
  holes = mask == 0
  assert not (holes[:, 1:] & holes[:, :-1]).any()
  assert not (holes[:, :, 1:] & holes[:, :, :-1]).any()


def test_gridmix_small_images_clip_the_hole_count():
  images, labels = _batch(b=4, h=8, w=8)
  _, _, aux = _run("gridmix", jax.random.key(0), images, labels,
                             n_holes=(6, 6), lam_scope="sample")
  crop = np.asarray(aux["crop"])
  n = np.asarray(aux["n_holes"])
  assert (n <= np.maximum((crop[:, 3] - crop[:, 2]) // 2, 1)).all()
