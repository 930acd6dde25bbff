"""Mask generators of AutoMix (PixelMixBlock) and AdAutoMix (AdaptiveMask), and
``apply_masks``: defining properties, a naive re-computation of the reference
formulas (numpy, and torch's F.interpolate for the upsampling), shapes at 32 and
224 px, and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import generators
from automix_jax import mixers

B, H, W, C = 4, 4, 4, 8


def _feats(seed=0, shape=(B, H, W, C)):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _perms(n, b=B, seed=1):
  """``[B, N]`` sources, column i a permutation (the one index layout)."""
  keys = jax.random.split(jax.random.key(seed), n)
  return jnp.stack([jax.random.permutation(k, b) for k in keys],
                   axis=1).astype(jnp.int32)


def _randomise(params, seed=3, std=0.5):
  """Larger weights than the N(0, 0.01) init so the masks are far from uniform."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [std * jax.random.normal(k, l.shape)
                                   for k, l in zip(keys, leaves)])


def _np_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


# ----------------------------------------------------------------------------
# AdaptiveMask (AdAutoMix).
# ----------------------------------------------------------------------------


def _adaptive(n=3, lam_concat=False, upsample="bilinear", scale=4, feats=None,
              seed=0):
  feats = _feats(seed) if feats is None else feats
  perms = _perms(n, feats.shape[0])
  lam = jnp.asarray(np.random.default_rng(seed).dirichlet(np.ones(n)),
                    jnp.float32)
  gen = generators.AdaptiveMask(scale=scale, upsample=upsample,
                                lam_concat=lam_concat)
  params = _randomise(gen.init(jax.random.key(2), feats, perms, lam)["params"])
  return gen, params, feats, perms, lam


def _naive_adaptive_logits(params, feats, perms, lam, lam_concat):
  """The reference's co_mix / normal_mix before upsampling, in numpy float64:
  logits summed over j != i of q_i k_jᵀ (N >= 3) or the single partner (N = 2)."""
  z = np.asarray(feats, np.float64)[np.asarray(perms).T]         # [N,B,h,w,C]
  n, b, h, w, _ = z.shape
  if lam_concat:
    lam_map = np.broadcast_to(np.asarray(lam, np.float64)[:, None, None, None,
                                                          None], (n, b, h, w, 1))
    z = np.concatenate([z, lam_map], -1)
  conv = lambda x, p: x @ np.asarray(p["kernel"], np.float64)[0, 0] + np.asarray(
      p["bias"], np.float64)
  q = np.maximum(conv(z, params["conv_q"]), 0).reshape(n, b, h * w, -1)
  k = np.maximum(conv(z, params["conv_k"]), 0).reshape(n, b, h * w, -1)
  v = conv(z, params["conv_v"]).reshape(n, b, h * w, 1)
  d = q.shape[-1]
  out = []
  for i in range(n):
    logits = sum(q[i] @ np.swapaxes(k[j], 1, 2) for j in range(n) if j != i)
    att = _np_softmax(logits / np.sqrt(d), -1)
    out.append((att @ v[i]).reshape(b, h, w))
  return np.stack(out, -1)                                        # [B,h,w,N]


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("lam_concat", [False, True])
def test_adaptive_mask_matches_naive_reference_with_nearest(n, lam_concat):
  gen, params, feats, perms, lam = _adaptive(n, lam_concat, upsample="nearest")
  masks, logits = gen.apply({"params": params}, feats, perms, lam,
                            return_logits=True)
  want = _naive_adaptive_logits(params, feats, perms, lam, lam_concat)
  want = np.repeat(np.repeat(want, 4, 1), 4, 2)
  np.testing.assert_allclose(logits, want, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(masks, _np_softmax(want, -1), rtol=2e-5, atol=2e-6)


def test_adaptive_mask_bilinear_matches_torch_interpolate():
  torch = pytest.importorskip("torch")
  gen, params, feats, perms, lam = _adaptive(3, upsample="bilinear")
  masks = gen.apply({"params": params}, feats, perms, lam)
  raw = _naive_adaptive_logits(params, feats, perms, lam, False)
  up = torch.nn.functional.interpolate(
      torch.tensor(np.moveaxis(raw, -1, 1)), scale_factor=4,
      mode="bilinear")                                     # align_corners=False
  want = np.moveaxis(torch.softmax(up, dim=1).numpy(), 1, -1)
  np.testing.assert_allclose(masks, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_adaptive_masks_sum_to_one_at_every_pixel(upsample):
  gen, params, feats, perms, lam = _adaptive(3, upsample=upsample)
  masks = np.asarray(gen.apply({"params": params}, feats, perms, lam))
  assert masks.shape == (B, 16, 16, 3)
  np.testing.assert_allclose(masks.sum(-1), 1.0, rtol=0, atol=1e-6)
  assert masks.min() >= 0 and masks.std() > 0.01   # not trivially uniform


def test_adaptive_mask_is_lambda_blind_without_lam_concat():
  # As the authors' code: with lam_concat=False the mask does not depend on λ.
  gen, params, feats, perms, lam = _adaptive(3)
  a = gen.apply({"params": params}, feats, perms, lam)
  b = gen.apply({"params": params}, feats, perms, lam[::-1])
  np.testing.assert_array_equal(a, b)
  gen, params, feats, perms, lam = _adaptive(3, lam_concat=True)
  a = gen.apply({"params": params}, feats, perms, lam)
  b = gen.apply({"params": params}, feats, perms, lam[::-1])
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


def test_adaptive_value_bias_cancels():
  # A shared shift of every v_i cancels in the image softmax.
  gen, params, feats, perms, lam = _adaptive(3)
  shifted = jax.tree.map(lambda x: x, params)
  shifted["conv_v"]["bias"] = params["conv_v"]["bias"] + 3.0
  a = gen.apply({"params": params}, feats, perms, lam)
  b = gen.apply({"params": shifted}, feats, perms, lam)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_adaptive_mask_handles_non_square_maps():
  feats = _feats(shape=(B, 2, 3, C))
  gen, params, feats, perms, lam = _adaptive(3, upsample="nearest", feats=feats)
  _, logits = gen.apply({"params": params}, feats, perms, lam,
                        return_logits=True)
  assert logits.shape == (B, 8, 12, 3)
  want = np.repeat(np.repeat(_naive_adaptive_logits(params, feats, perms, lam,
                                                    False), 4, 1), 4, 2)
  np.testing.assert_allclose(logits, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("feat_hw,channels,scale,image", [
    (8, 256, 4, 32),      # CIFAR ResNet-18 stage 3
    (14, 1024, 16, 224),  # ImageNet ResNet-50 stage 3
    (7, 768, 32, 224),    # Swin-T
])
def test_generator_output_shapes(feat_hw, channels, scale, image):
  feats = jax.ShapeDtypeStruct((3, feat_hw, feat_hw, channels), jnp.float32)
  perms = jax.ShapeDtypeStruct((3, 3), jnp.int32)
  lam = jax.ShapeDtypeStruct((3,), jnp.float32)
  gen = generators.AdaptiveMask(scale=scale, lam_concat=True)
  out, variables = jax.eval_shape(
      lambda f, p, l: gen.init_with_output(jax.random.key(0), f, p, l,
                                           image_size=(image, image)),
      feats, perms, lam)
  assert out.shape == (3, image, image, 3)
  assert variables["params"]["conv_q"]["kernel"].shape == (1, 1, channels + 1,
                                                           channels // 2)
  pmb = generators.PixelMixBlock(scale=scale)
  out = jax.eval_shape(
      lambda f, i: pmb.init_with_output(jax.random.key(0), f, i,
                                        image_size=(image, image))[0],
      feats, jax.ShapeDtypeStruct((3,), jnp.int32))
  assert out.shape == (3, image, image, 1)


def test_adaptive_mask_validation():
  feats = _feats()
  gen = generators.AdaptiveMask(scale=4)
  params = gen.init(jax.random.key(0), feats, _perms(3))
  with pytest.raises(ValueError, match="features"):
    gen.apply(params, feats[0], _perms(3))
  with pytest.raises(ValueError, match=r"2 <= N <= B"):
    gen.apply(params, feats, _perms(1))
  with pytest.raises(ValueError, match=r"2 <= N <= B"):
    gen.apply(params, feats, _perms(5))
  with pytest.raises(ValueError, match=r"indices.*\[B, N\]"):
    gen.apply(params, feats, _perms(3)[:2])
  with pytest.raises(ValueError, match="scale.*16x16.*32x32"):
    gen.apply(params, feats, _perms(3), image_size=(32, 32))
  with pytest.raises(ValueError, match="upsample"):
    generators.AdaptiveMask(upsample="bicubic").init(jax.random.key(0), feats,
                                                     _perms(3))
  with pytest.raises(ValueError, match="scale"):
    generators.AdaptiveMask(scale=0).init(jax.random.key(0), feats, _perms(3))
  with pytest.raises(ValueError, match="lam"):
    generators.AdaptiveMask(lam_concat=True).init(jax.random.key(0), feats,
                                                  _perms(3))
  with pytest.raises(ValueError, match=r"lam.*\[N\]"):
    generators.AdaptiveMask(lam_concat=True).init(jax.random.key(0), feats,
                                                  _perms(3), jnp.ones((2,)))


# ----------------------------------------------------------------------------
# PixelMixBlock (AutoMix).
# ----------------------------------------------------------------------------


def _pixel(lam_concat=False, scale=4, upsample="nearest"):
  feats = _feats()
  index = _perms(1)[:, 0]
  lam = jnp.float32(0.3)
  gen = generators.PixelMixBlock(scale=scale, lam_concat=lam_concat,
                                 upsample=upsample)
  params = _randomise(gen.init(jax.random.key(2), feats, index, lam)["params"])
  return gen, params, feats, index, lam


@pytest.mark.parametrize("lam_concat", [False, True])
def test_pixel_mix_block_matches_naive_reference(lam_concat):
  gen, params, feats, index, lam = _pixel(lam_concat)
  s = np.asarray(gen.apply({"params": params}, feats, index, lam))
  a = np.asarray(feats, np.float64)
  b_ = a[np.asarray(index)]
  if lam_concat:
    a = np.concatenate([a, np.full(a.shape[:3] + (1,), 0.3)], -1)
    b_ = np.concatenate([b_, np.full(b_.shape[:3] + (1,), 0.7)], -1)
  conv = lambda x, p: x @ np.asarray(p["kernel"], np.float64)[0, 0] + np.asarray(
      p["bias"], np.float64)
  q = conv(a, params["query"]).reshape(B, H * W, -1)   # shared query conv,
  k = conv(b_, params["query"]).reshape(B, H * W, -1)  # no activation
  v = conv(b_, params["value"]).reshape(B, H * W, 1)   # partner only
  p = _np_softmax(q @ np.swapaxes(k, 1, 2) / np.sqrt(q.shape[-1]), -1)
  logits = np.repeat(np.repeat((p @ v).reshape(B, H, W, 1), 4, 1), 4, 2)
  # The own-image weight 1 - sigmoid(z) (the reference's s is the partner's).
  np.testing.assert_allclose(s, 1 / (1 + np.exp(logits)), rtol=1e-5, atol=1e-6)
  assert set(params) == {"query", "value"}


def test_pixel_mix_block_mask_in_unit_interval():
  gen, params, feats, index, lam = _pixel(upsample="bilinear")
  params = jax.tree.map(lambda x: 20 * x, params)    # saturate the sigmoid
  s = np.asarray(gen.apply({"params": params}, feats, index, lam))
  assert s.shape == (B, 16, 16, 1)
  assert s.min() >= 0 and s.max() <= 1 and s.std() > 0.05


def test_generators_init_like_the_reference():
  gen = generators.PixelMixBlock()
  params = gen.init(jax.random.key(0), _feats(), _perms(1)[:, 0])["params"]
  for p in params.values():
    assert np.all(np.asarray(p["bias"]) == 0)
    assert abs(float(np.std(np.asarray(p["kernel"]))) - 0.01) < 0.005


def test_automix_scale_rule():
  # 2**mask_layer up to 64 px, else 2**(2 + mask_layer) (OpenMixup).
  assert generators.automix_scale(32) == 4
  assert generators.automix_scale(64) == 4
  assert generators.automix_scale(224) == 16


def test_pixel_mix_block_validation():
  gen, params, feats, index, lam = _pixel()
  with pytest.raises(ValueError, match="index"):
    gen.apply({"params": params}, feats, index[:2])
  with pytest.raises(ValueError, match="index"):
    gen.apply({"params": params}, feats, index.astype(jnp.float32))
  with pytest.raises(ValueError, match="scale"):
    gen.apply({"params": params}, feats, index, image_size=(32, 32))
  with pytest.raises(ValueError, match="lam"):
    generators.PixelMixBlock(lam_concat=True).init(jax.random.key(0), feats,
                                                   index)


# ----------------------------------------------------------------------------
# apply_masks.
# ----------------------------------------------------------------------------


def _batch(n_cls=5):
  x = jax.random.uniform(jax.random.key(4), (B, 16, 16, 3))
  y = mixers.one_hot(jnp.arange(B) % n_cls, n_cls)
  return x, y


def test_apply_masks_two_way_contract():
  x, y = _batch()
  mask = jax.random.uniform(jax.random.key(5), (B, 16, 16, 1))
  index = _perms(1)[:, 0]
  mixed, labels, aux = generators.apply_masks(x, y, mask, 0.3, index)
  np.testing.assert_allclose(mixed, mask * x + (1 - mask) * x[index], rtol=1e-6)
  np.testing.assert_allclose(labels, 0.3 * y + 0.7 * y[index], rtol=1e-6)
  assert aux["mask"].shape == (B, 16, 16, 1)
  assert aux["lam"].shape == (B,) and aux["index"].shape == (B,)


def test_apply_masks_n_way_contract():
  x, y = _batch()
  gen, params, feats, perms, lam = _adaptive(3)
  masks = gen.apply({"params": params}, feats, perms, lam)
  index = perms
  mixed, labels, aux = generators.apply_masks(x, y, masks, lam, index)
  want = sum(masks[..., i:i + 1] * x[index[:, i]] for i in range(3))
  np.testing.assert_allclose(mixed, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(labels).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(
      labels, np.einsum("bn,bnk->bk", np.broadcast_to(lam, (B, 3)),
                        np.asarray(y)[np.asarray(index)]), rtol=1e-6)
  assert aux["mask"].shape == (B, 16, 16, 3)
  assert aux["lam"].shape == (B, 3) and aux["index"].shape == (B, 3)
  # Pixel provenance: with one-hot masks every pixel comes from one source.
  hard = jax.nn.one_hot(jnp.argmax(masks, -1), 3)
  mixed, _, _ = generators.apply_masks(x, y, hard, lam, index)
  src = np.asarray(jnp.argmax(masks, -1))
  xs = np.asarray(x)[np.asarray(index)]            # [B, N, H, W, C]
  pick = np.take_along_axis(xs, src[:, None, :, :, None], 1)[:, 0]
  np.testing.assert_array_equal(mixed, pick)


def test_apply_masks_validation():
  x, y = _batch()
  with pytest.raises(ValueError, match="masks"):
    generators.apply_masks(x, y, jnp.ones((B, 8, 8, 1)), 0.5, _perms(1)[:, 0])
  with pytest.raises(ValueError, match="masks"):
    generators.apply_masks(x, y, jnp.ones((B, 16, 16, 2)), jnp.ones(3) / 3,
                           _perms(3))
  with pytest.raises(ValueError, match="lam"):
    generators.apply_masks(x, y, jnp.ones((B, 16, 16, 3)) / 3, jnp.ones(2),
                           _perms(3))
  with pytest.raises(ValueError, match="index"):
    generators.apply_masks(x, y, jnp.ones((B, 16, 16, 1)), 0.5,
                           jnp.zeros((B, 2, 2), jnp.int32))


def test_generators_import_without_optax_or_tfds():
  from tests._imports import heavy_modules_loaded
  heavy = heavy_modules_loaded(
      "import automix_jax.generators",
      ("optax", "tensorflow_datasets", "tensorflow", "orbax"))
  assert heavy == [], heavy
