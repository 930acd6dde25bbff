"""Mask statistics (``generators.mask_statistics``) and the opt-in logit bound
of the learned generators (``logit_bound``)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import generators
from automix_jax.generators import _apply as G


# ---------------------------------------------------------------------------
# mask_statistics.
# ---------------------------------------------------------------------------


def _nway(area_or_masks):
  return jnp.asarray(area_or_masks, jnp.float32)


def test_statistics_of_masks_of_known_form():
  b, hw = 4, 8
  # A uniform three-way blend: no structure, nothing saturated or whole.
  s = generators.mask_statistics(jnp.full((b, hw, hw, 3), 1 / 3), jnp.full(3, 1 / 3))
  assert float(s["dominance"]) == pytest.approx(1 / 3)
  assert float(s["spatial_std"]) == pytest.approx(0.0, abs=1e-6)
  assert float(s["saturated_frac"]) == 0.0
  assert float(s["whole_image_frac"]) == 0.0
  assert float(s["area_lam_gap"]) == pytest.approx(0.0, abs=1e-6)
  # A hard left/right cut: every pixel saturated, half of each image.
  m = np.zeros((b, hw, hw, 2), np.float32)
  m[:, :, : hw // 2, 0] = 1.0
  m[..., 1] = 1.0 - m[..., 0]
  s = generators.mask_statistics(m, jnp.array([0.5, 0.5]))
  assert float(s["saturated_frac"]) == 1.0
  assert float(s["spatial_std"]) == pytest.approx(0.5)
  assert float(s["whole_image_frac"]) == 0.0
  # Whole-image picks in 3 of 4 samples (area 1 > 0.9), one half-cut sample.
  m[:3, ..., 0] = 1.0
  m[:3, ..., 1] = 0.0
  s = generators.mask_statistics(m, jnp.array([0.5, 0.5]))
  assert float(s["whole_image_frac"]) == 0.75
  assert float(s["area_lam_gap"]) == pytest.approx(0.75 * 0.5)


def test_saturation_threshold_is_one_hundredth_of_either_end():
  # Two-way own weight m as [m, 1 - m]: m = 0.995 and 0.004 are saturated,
  # 0.98 and 0.5 are not.
  m = jnp.array([0.995, 0.004, 0.98, 0.5]).reshape(4, 1, 1, 1)
  s = generators.mask_statistics(jnp.concatenate([m, 1 - m], -1),
                                 jnp.array([0.5, 0.5]))
  assert float(s["saturated_frac"]) == 0.5


def test_numpy_and_jit_paths_agree():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 8, 8, 3)) * 4
  masks = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  lam = rng.dirichlet(np.ones(3), size=6)
  ref = generators.mask_statistics(masks, lam, xp=np)
  got = jax.jit(generators.mask_statistics)(jnp.asarray(masks, jnp.float32),
                                            jnp.asarray(lam, jnp.float32))
  assert set(got) == set(ref)
  for k in ref:
    assert float(got[k]) == pytest.approx(float(ref[k]), abs=1e-5), k
  assert 0 < float(ref["saturated_frac"]) < 1  # the case is not degenerate


def test_statistics_bad_input_raises():
  with pytest.raises(ValueError, match=r"`masks` must be \[B, H, W, N\]"):
    generators.mask_statistics(jnp.zeros((2, 4, 4, 1)), jnp.zeros(1))
  with pytest.raises(ValueError, match="`lam` must be"):
    generators.mask_statistics(jnp.zeros((2, 4, 4, 3)), jnp.zeros(2))
  with pytest.raises(ValueError, match="`saturation`"):
    generators.mask_statistics(jnp.zeros((2, 4, 4, 2)), jnp.zeros(2),
                               saturation=0.7)


# ---------------------------------------------------------------------------
# logit_bound.
# ---------------------------------------------------------------------------


def test_bound_off_is_no_operation():
  z = jnp.arange(5.0)
  assert G.bound_logits(z, None) is z
  assert generators.PixelMixBlock().logit_bound is None
  assert generators.AdaptiveMask().logit_bound is None


@pytest.mark.parametrize("module", [generators.PixelMixBlock,
                                    generators.AdaptiveMask])
def test_default_program_is_the_reference_one(module):
  """Off by default: the traced program has no soft clip (so the numbers of
  tests/generators and tests/learned, checked against the authors' code, are
  those of the same program); with a bound it has one."""
  f = jnp.zeros((2, 4, 4, 8))
  idx = (jnp.array([1, 0], jnp.int32) if module is generators.PixelMixBlock
         else jnp.array([[0, 1], [1, 0]], jnp.int32))
  def program(gen):
    params = jax.eval_shape(gen.init, jax.random.key(0), f, idx)
    jaxpr = jax.make_jaxpr(gen.apply)(params, f, idx)
    return [e.primitive.name for e in jaxpr.eqns], str(jaxpr)
  default, explicit_off = program(module(scale=4)), program(
      module(scale=4, logit_bound=None))
  assert default[0] == explicit_off[0]   # same operations, in the same order
  assert "rsqrt" not in default[1]
  assert "rsqrt" in program(module(scale=4, logit_bound=4.0))[1]


def test_bound_is_near_identity_for_small_logits_and_bounded():
  z = jnp.array([-1e6, -50.0, -0.1, 0.0, 0.1, 50.0, 1e6])
  y = G.bound_logits(z, 6.0)
  assert float(jnp.max(jnp.abs(y))) < 6.0
  np.testing.assert_allclose(y[2:5], z[2:5], rtol=2e-4)  # z - z^3 / (2 b^2)
  assert np.all(np.diff(np.asarray(y)) > 0)             # monotone


@pytest.mark.parametrize("z", [50.0, 1e3, 1e6, -1e6])
def test_bounded_sigmoid_gradient_never_vanishes(z):
  b = 4.0
  unbounded = jax.grad(jax.nn.sigmoid)(jnp.float32(abs(z)))
  assert float(unbounded) == 0.0               # saturated: no gradient at all
  g = float(jax.grad(lambda x: jax.nn.sigmoid(G.bound_logits(x, b)))(
      jnp.float32(z)))
  # sigmoid'(y) >= sigmoid'(b) with |y| < b, times the clip's derivative.
  sig_b = 1 / (1 + np.exp(-b))
  lower = sig_b * (1 - sig_b) * (1 + (z / b) ** 2) ** -1.5
  assert g >= 0.99 * lower > 0
  # tanh-clipping would not have helped: its derivative rounds to 0.
  g_tanh = jax.grad(lambda x: jax.nn.sigmoid(b * jnp.tanh(x / b)))(
      jnp.float32(abs(z)))
  assert float(g_tanh) == 0.0


def test_bounded_softmax_gradient_never_vanishes():
  z = jnp.array([100.0, -100.0, 0.0])
  first = lambda f: jax.grad(lambda x: jax.nn.softmax(f(x))[0])(z)
  assert float(jnp.abs(first(lambda x: x)).max()) == 0.0
  assert float(jnp.abs(first(lambda x: G.bound_logits(x, 4.0))).min()) > 0


def _saturating(gen, f, idx):
  """The generator's params with the value conv scaled so |logits| ~ 1e3."""
  params = jax.jit(gen.init)(jax.random.key(0), f, idx)["params"]
  name = "value" if "value" in params else "conv_v"
  params = {**params, name: {**params[name],
                             "kernel": params[name]["kernel"] * 1e5}}
  return params


def test_pixel_mix_block_bound_keeps_gradient_at_saturation():
  rng = np.random.default_rng(0)
  f = jnp.asarray(rng.normal(size=(4, 4, 4, 8)), jnp.float32)
  idx = jnp.array([1, 2, 3, 0], jnp.int32)
  weights = jnp.arange(16.0)[None, :, None, None]
  grads = {}
  for bound in (None, 4.0):
    gen = generators.PixelMixBlock(scale=4, logit_bound=bound)
    params = _saturating(gen, f, idx)
    m, logits = jax.jit(functools.partial(gen.apply, return_logits=True))(
        {"params": params}, f, idx)
    if bound is None:
      assert float(jnp.min(jnp.abs(logits))) > 100      # saturated
    else:
      assert float(jnp.max(jnp.abs(logits))) < bound
      sig_b = 1 / (1 + np.exp(-bound))
      assert 1 - sig_b - 1e-6 <= float(m.min()) <= float(m.max()) <= sig_b + 1e-6
    g = jax.jit(jax.grad(lambda p: jnp.mean(
        gen.apply({"params": p}, f, idx) * weights)))(params)
    grads[bound] = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g))
  assert grads[None] == 0.0
  assert grads[4.0] > 0.0


def test_adaptive_mask_bound_keeps_every_weight_off_zero_and_one():
  rng = np.random.default_rng(0)
  f = jnp.asarray(rng.normal(size=(4, 4, 4, 8)), jnp.float32)
  n, bound = 3, 4.0
  ids = jnp.arange(4, dtype=jnp.int32)
  idx = jnp.stack([jnp.roll(ids, i) for i in range(n)], axis=1)
  for b in (None, bound):
    gen = generators.AdaptiveMask(scale=4, logit_bound=b)
    masks = jax.jit(gen.apply)({"params": _saturating(gen, f, idx)}, f, idx)
    np.testing.assert_allclose(masks.sum(-1), 1.0, atol=1e-5)
    if b is None:
      assert float(masks.min()) == 0.0 and float(masks.max()) == 1.0
    else:
      floor = 1 / (1 + (n - 1) * np.exp(2 * b))
      assert float(masks.min()) >= floor * (1 - 1e-4)
      assert float(masks.max()) <= 1 - floor * (1 - 1e-4)


def test_bad_logit_bound_raises():
  f = jnp.zeros((2, 4, 4, 8))
  for bad in (0.0, -1.0, float("inf"), True):
    with pytest.raises(ValueError, match="`logit_bound` must be None"):
      generators.PixelMixBlock(logit_bound=bad).init(
          jax.random.key(0), f, jnp.array([1, 0], jnp.int32))
