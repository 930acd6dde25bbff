"""The 224-px transforms against torchvision / timm on fixed inputs.

Tolerances (grey levels on the 0-255 scale):

* device crop / eval resize (float32, antialiased) vs torchvision on float
  tensors: atol 2e-3 at 24 px, 1e-2 at 224 px (float32 sums over up to 300
  taps); rounded, vs torchvision on uint8 tensors: +-1.
* host crop (Pillow) vs torchvision on PIL images: exact; vs torchvision on
  uint8 tensors: +-1 on smooth images. (Pillow's bicubic clips to uint8
  between its horizontal and vertical passes, so on white noise, where the
  first pass overshoots, it differs from the float / tensor result by up to
  ~25 levels: a property of Pillow, which the reference pipelines run.)
* colour jitter vs torchvision tensor ops: atol 1e-5 (hue 1e-5).
* RandAugment ops vs timm's: exact (the same Pillow calls).
* random erasing boxes vs timm's rule: exact.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from automix_jax import data
from automix_jax.data import randaugment as ra
from automix_jax.data import transforms as T

MODES = {"bilinear": InterpolationMode.BILINEAR,
         "bicubic": InterpolationMode.BICUBIC}


def _smooth(n, h, w, seed=0):
  """Smooth uint8 RGB images (sums of sines), like natural images."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  out = []
  for k in range(n):
    ph = rng.random(6) * 6
    out.append(np.stack([
        127.5 + 120 * np.sin(xx / (3 + k) + ph[c]) * np.cos(yy / (4 + c) + ph[3 + c])
        for c in range(3)], -1))
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _noise(n, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), np.uint8)


def _chw(a):
  return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)


def _hwc(t):
  return t.permute(1, 2, 0).numpy()


# ----------------------------------------------------- RandomResizedCrop
@pytest.mark.parametrize("interp,h,w,size", [("bilinear", 32, 32, 24),
                                             ("bicubic", 40, 28, 24),
                                             ("bicubic", 17, 33, 50)])
def test_resized_crop_matches_torchvision(interp, h, w, size):
  x = _noise(4, h, w, seed=h + w)
  boxes = T.rrc_boxes(np, np.random.default_rng(1).random((4, 22)), height=h,
                      width=w)
  flip = np.array([False, True, False, True])
  crop = jax.jit(functools.partial(data.resized_crop_jax, size=size,
                                   interpolation=interp))
  dev = np.asarray(crop(x, boxes, flip=flip))
  host = data.resized_crop_np(x, boxes, size=size, interpolation=interp,
                              flip=flip)
  smooth = _smooth(4, h, w)
  host_s = data.resized_crop_np(smooth, boxes, size=size, interpolation=interp)
  assert dev.shape == (4, size, size, 3) and host.dtype == np.uint8
  for i, (t, l, bh, bw) in enumerate(boxes.tolist()):
    args = (t, l, bh, bw, [size, size], MODES[interp])
    ref_f = _hwc(TF.resized_crop(_chw(x[i]).float(), *args, antialias=True))
    ref_u = _hwc(TF.resized_crop(_chw(x[i]), *args, antialias=True))
    ref_pil = np.asarray(TF.resized_crop(Image.fromarray(x[i]), *args))
    if flip[i]:
      ref_f, ref_u, ref_pil = ref_f[:, ::-1], ref_u[:, ::-1], ref_pil[:, ::-1]
    np.testing.assert_allclose(dev[i], np.clip(ref_f, 0, 255), atol=2e-3)
    assert np.abs(np.round(dev[i]) - ref_u).max() <= 1
    np.testing.assert_array_equal(host[i], ref_pil)
    ref_su = _hwc(TF.resized_crop(_chw(smooth[i]), *args, antialias=True))
    assert np.abs(host_s[i].astype(int) - ref_su).max() <= 1


def test_resized_crop_224_matches_torchvision():
  x = _smooth(1, 256, 300)
  boxes = np.array([[10, 20, 200, 260]], np.int32)
  dev = np.asarray(jax.jit(functools.partial(
      data.resized_crop_jax, size=224, interpolation="bicubic"))(x, boxes))
  for i, (t, l, bh, bw) in enumerate(boxes.tolist()):
    args = (t, l, bh, bw, [224, 224], InterpolationMode.BICUBIC)
    ref = _hwc(TF.resized_crop(_chw(x[i]).float(), *args, antialias=True))
    np.testing.assert_allclose(dev[i], np.clip(ref, 0, 255), atol=1e-2)


class _FeedRandom:
  """Stands in for the ``random`` module: uniform / randint from given u's."""

  def __init__(self, uniforms, randints, coin=None):
    self._u, self._r, self._coin = list(uniforms), list(randints), coin

  def uniform(self, a, b):
    return a + (b - a) * self._u.pop(0)

  def randint(self, a, b):
    return a + min(int(math.floor(self._r.pop(0) * (b - a + 1))), b - a)

  def random(self):
    return self._coin


@pytest.mark.parametrize("h,w,scale", [(32, 32, (0.08, 1.0)), (40, 28, (0.5, 1.0)),
                                       (8, 64, (0.08, 1.0)), (64, 9, (0.8, 1.0))])
def test_crop_rule_matches_timm_get_params(monkeypatch, h, w, scale):
  """Fed the same uniforms, timm's get_params (torchvision's rule) = ours."""
  from timm.data import transforms as timm_t
  ratio = T.IMAGENET_RATIO
  u = np.random.default_rng(h * w).random((600, 22))
  ours = T.rrc_boxes(np, u, height=h, width=w, scale=scale, ratio=ratio)
  img = Image.new("RGB", (w, h))
  fallback = T._crop_fallback(h, w, ratio)
  n_fallback = 0
  for row, box in zip(u, ours.tolist()):
    feed = _FeedRandom([v for k in range(10) for v in (row[k], row[10 + k])],
                       row[20:])
    monkeypatch.setattr(timm_t, "random", feed)
    ref = timm_t.RandomResizedCropAndInterpolation.get_params(img, scale, ratio)
    assert tuple(box) == ref
    if len(feed._r) == 2:  # no offset drawn: the fallback path
      assert ref == fallback
      n_fallback += 1
  # The extreme aspect ratios take the centre-crop fallback often.
  if (h, w) in ((8, 64), (64, 9)):
    assert n_fallback > 100, n_fallback


@pytest.mark.parametrize("h,w", [(32, 32), (8, 64)])
def test_crop_distribution_matches_torchvision(h, w):
  """Our sampler vs torchvision's get_params, 3000 draws each (loosely)."""
  n = 2000
  torch.manual_seed(0)
  img = torch.zeros(3, h, w)
  ref = np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
                  for _ in range(n)])
  got = T.rrc_boxes(np, np.random.default_rng(0).random((n, 22)), height=h,
                    width=w)
  boxes_jax = jax.jit(lambda u: T.rrc_boxes(jnp, u, height=h, width=w))
  dev = np.asarray(boxes_jax(jax.random.uniform(jax.random.key(0), (n, 22))))
  for boxes in (got, dev):
    t, l, bh, bw = boxes.T
    assert (t >= 0).all() and (l >= 0).all() and (bh > 0).all() and (bw > 0).all()
    assert (t + bh <= h).all() and (l + bw <= w).all()
    for stat in (lambda b: b[:, 2] * b[:, 3] / (h * w),        # area fraction
                 lambda b: np.log(b[:, 3] / b[:, 2]),            # log aspect
                 lambda b: (b[:, 0] + b[:, 2] / 2) / h):          # centre row
      assert abs(stat(boxes).mean() - stat(ref).mean()) < 0.03
      assert abs(stat(boxes).std() - stat(ref).std()) < 0.03
    fb = np.all(boxes == np.array(T._crop_fallback(h, w, T.IMAGENET_RATIO)), 1)
    fb_ref = np.all(ref == np.array(T._crop_fallback(h, w, T.IMAGENET_RATIO)), 1)
    assert abs(fb.mean() - fb_ref.mean()) < 0.03
  # Device (float32) and host (float64) samplers follow one rule.
  u32 = np.asarray(jax.random.uniform(jax.random.key(1), (1000, 22)))
  np.testing.assert_array_equal(
      np.asarray(boxes_jax(jnp.asarray(u32))),
      T.rrc_boxes(np, u32.astype(np.float64), height=h, width=w))


# ---------------------------------------------------------------- eval
@pytest.mark.parametrize("interp,h,w,size,crop_pct", [
    ("bilinear", 32, 40, 24, 0.875), ("bicubic", 45, 30, 24, 0.875),
    ("bicubic", 8, 8, 24, 1.0), ("bilinear", 300, 256, 224, 0.875)])
def test_center_crop_eval_matches_torchvision(interp, h, w, size, crop_pct):
  x = _smooth(2, h, w)
  dev = np.asarray(jax.jit(functools.partial(
      data.center_crop_jax, size=size, crop_pct=crop_pct,
      interpolation=interp))(x))
  scale_size = math.floor(size / crop_pct)
  for i in range(2):
    ref = TF.resize(_chw(x[i]).float(), scale_size, MODES[interp], antialias=True)
    ref = _hwc(TF.center_crop(ref, [size, size]))
    np.testing.assert_allclose(dev[i], np.clip(ref, 0, 255),
                               atol=1e-2 if size == 224 else 2e-3)


def test_eval_transform_of_deit_is_resize_256_center_crop_224_normalised():
  x = _smooth(2, 60, 50)
  aug = data.Augment("deit", image_size=24, mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225))
  ev = aug.eval_version()
  assert (ev.name, ev.crop_pct, ev.resize_method) == ("none", 0.875, "bicubic")
  out = np.asarray(ev.device(jnp.asarray(x)))
  for i in range(2):  # DeiT's eval: Resize(int(24 / 0.875)), CenterCrop, Normalize
    ref = TF.resize(_chw(x[i]).float() / 255, 27, InterpolationMode.BICUBIC,
                    antialias=True)
    ref = TF.normalize(TF.center_crop(ref, [24, 24]).clamp(0, 1),
                       [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[i], _hwc(ref), atol=1e-4)


# ---------------------------------------------------------- colour jitter
def test_color_jitter_ops_match_torchvision():
  x = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
  x[0, :2] = 0.5  # grey pixels: the hue of r == g == b
  x[1, 0, 0] = (0.9, 0.9, 0.2)  # a tie of maximum channels
  tv = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation,
        TF.adjust_hue]
  factors = np.array([[1.3, 0.6, 1.7, 0.08], [0.7, 1.4, 0.3, -0.1],
                      [0.0, 0.0, 0.0, 0.5]], np.float32)
  apply = jax.jit(T.jitter_apply)
  identity = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
  order = np.array([[2, 0, 3, 1], [3, 2, 1, 0], [0, 1, 2, 3]])
  for op in range(4):  # one op at a time: the others at their identity
    f = np.where(np.arange(4) == op, factors, identity)
    got = np.asarray(apply(x, order, f))
    for i in range(3):
      ref = _hwc(tv[op](_chw(x[i]), float(factors[i, op])))
      np.testing.assert_allclose(got[i], ref, atol=1e-5, err_msg=f"op {op}")
  # All four in a given order per image (torchvision's randperm order).
  got = np.asarray(apply(x, order, factors))
  for i in range(3):
    ref = _chw(x[i])
    for op in order[i]:
      ref = tv[op](ref, float(factors[i, op]))
    np.testing.assert_allclose(got[i], _hwc(ref), atol=1e-5)


def test_color_jitter_factor_ranges():
  x = jnp.full((400, 2, 2, 3), 0.5)
  out = np.asarray(jax.jit(functools.partial(
      data.color_jitter_jax, color_jitter=(0.4, 0, 0, 0)))(jax.random.key(0), x))
  f = out[:, 0, 0, 0] / 0.5  # brightness only: the factor itself
  assert f.min() >= 0.6 - 1e-6 and f.max() <= 1.4 + 1e-6
  assert f.min() < 0.62 and f.max() > 1.38 and abs(f.mean() - 1) < 0.03
  assert np.allclose(T.jitter_ranges(0.4), [(0.6, 1.4)] * 3 + [(0, 0)])
  assert np.allclose(T.jitter_ranges((1.5, 0, 0, 0.1)),
                     [(0, 2.5), (1, 1), (1, 1), (-0.1, 0.1)])  # clipped at 0
  with pytest.raises(ValueError, match="color_jitter"):
    T.jitter_strengths((0.4, 0.4, 0.4, 0.6))  # hue > 0.5


# ------------------------------------------------------------ RandAugment
@pytest.mark.parametrize("name", sorted(set(ra.RAND_OPS) | set(ra.RAND_INCREASING_OPS)))
def test_randaugment_op_matches_timm(monkeypatch, name):
  from timm.data import auto_augment as aa
  img = Image.fromarray(_smooth(1, 20, 24)[0])
  fill = (124, 116, 104)
  hparams = {"img_mean": fill, "interpolation": Image.Resampling.BICUBIC,
             "translate_const": 100}
  for magnitude in (9, 4.3):
    for negate in (False, True):
      # timm negates when random.random() > 0.5.
      monkeypatch.setattr(aa.random, "random", lambda n=negate: 0.9 if n else 0.1)
      ref = aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)(img)
      got = ra.apply_op(img, name, magnitude, negate=negate, fill=fill,
                        resample=Image.Resampling.BICUBIC)
      np.testing.assert_array_equal(np.asarray(got), np.asarray(ref),
                                    err_msg=f"{name} m={magnitude} neg={negate}")


def test_randaugment_policy_draws_timm_ops():
  x = _smooth(48, 16, 16)
  fill = (124, 116, 104)
  # One op per image, always applied, no magnitude noise: every output is one
  # of timm's 15 increasing ops at m=9 with either sign.
  out = data.randaugment_np(x, np.random.default_rng(0),
                            policy="rand-n1-m9-mstd0-p1.0-inc1", fill=fill)
  hits = set()
  for i in range(len(x)):
    img = Image.fromarray(x[i])
    cands = {(n, s): np.asarray(ra.apply_op(img, n, 9, negate=s, fill=fill))
             for n in ra.RAND_INCREASING_OPS for s in (False, True)}
    found = [k for k, v in cands.items() if np.array_equal(v, out[i])]
    assert found, f"image {i} is no timm op at m=9"
    hits.add(found[0][0])
  assert len(hits) >= 10
  # The DeiT policy: p=0.5 per op, so ~1/4 of the images get no op at all.
  a = data.randaugment_np(x, np.random.default_rng(1))
  np.testing.assert_array_equal(a, data.randaugment_np(x, np.random.default_rng(1)))
  unchanged = np.mean([np.array_equal(a[i], x[i]) for i in range(len(x))])
  assert 0.1 < unchanged < 0.45
  assert ra.parse_policy("rand-m9-mstd0.5-inc1") == {
      "num_ops": 2, "magnitude": 9.0, "magnitude_std": 0.5, "prob": 0.5,
      "increasing": True}
  assert ra.parse_policy("rand-m7-n3-mstd101")["magnitude_std"] == float("inf")
  for bad in ("rand-m9-tweights", "auto-m9", "rand-mm9", 9):
    with pytest.raises(ValueError, match="randaugment"):
      ra.parse_policy(bad)


# ---------------------------------------------------------- random erasing
def test_erasing_rule_matches_timm(monkeypatch):
  from timm.data import random_erasing as re_mod
  h, w = 12, 16
  timm_re = re_mod.RandomErasing(probability=0.4, mode="const", device="cpu")
  u = np.random.default_rng(0).random((400, 23))
  boxes, erase = T.erasing_boxes(np, u, height=h, width=w, prob=0.4)
  for row, box, er in zip(u, boxes.tolist(), erase):
    feed = [v for k in range(10) for v in (row[1 + k], row[11 + k])]
    monkeypatch.setattr(re_mod, "random", _FeedRandom(feed, row[21:], coin=row[0]))
    img = torch.ones(3, h, w)
    timm_re(img)
    ref = (img[0] == 0).numpy()
    ours = np.zeros((h, w), bool)
    if er:
      t, l, bh, bw = box
      ours[t:t + bh, l:l + bw] = True
    np.testing.assert_array_equal(ours, ref)
  assert 0.3 < erase.mean() < 0.45 and not (erase & (u[:, 0] >= 0.4)).any()


def test_random_erasing_fills_one_box_with_noise():
  x = jnp.full((200, 6, 6, 3), 7.0)
  out = np.asarray(jax.jit(functools.partial(data.random_erasing_jax, prob=0.25))(
      jax.random.key(0), x))
  erased = (out != 7.0).any(-1)
  frac = erased.any((1, 2)).mean()
  assert 0.15 < frac < 0.35
  for m in erased[erased.any((1, 2))]:
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    assert m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a rectangle
  vals = out[erased]
  assert abs(vals.mean()) < 0.1 and abs(vals.std() - 1) < 0.1
  assert len(np.unique(vals)) == vals.size  # a fresh draw for every value
  with pytest.raises(ValueError, match="mode"):
    data.random_erasing_jax(jax.random.key(0), x, mode="gauss")
