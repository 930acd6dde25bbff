"""SAMix (Li et al., arXiv 2111.15454, 2021): the Mix Block re-computed by hand
from its equations, the η-weighted soft CE, the L1 + variance mask loss,
mask_adjust, gradient routing, EMA, sharding and bad configs.

Tiny shapes: the Mix Block on ``[4, 4, 4, 8]`` features; the trainer on a
1/32-width CIFAR ResNet-18, 16x16 images (stage-3 features 4x4 with 8 channels,
bilinear x4), batch 8, 4 classes. Each compiled function is compiled once per
module.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import generators
from automix_jax.generators import pixel_mix_block
from automix_jax.train import methods
from automix_jax.train import samix
from configs.samix import cifar100 as samix_cifar100
from configs.samix import cifar10_cpu

from tests.learned._shared import K, STEPS_PER_EPOCH
from tests.learned import _shared as S


pytestmark = pytest.mark.usefixtures("fast_compile")

# ----------------------------------------------------------------------------
# The Mix Block with SAMix's options, against numpy float64 from the equations.
# ----------------------------------------------------------------------------

FB, FH, FC = 4, 4, 8         # features [FB, FH, FH, FC]
SCALE = 4


def _samix_block(**kw):
  opts = dict(scale=SCALE, upsample="bilinear", lam_mul=1.0, lam_mul_k=0.25,
              lam_residual=True, x_qk_concat=True, value_reduction=2)
  opts.update(kw)
  return generators.PixelMixBlock(**opts)


def _noisy(params, seed):
  """Every parameter (BN scale and bias included) drawn N(0, 0.5²), so that the
  mask is far from its near-uniform initialisation."""
  flat, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
      tree, [jnp.asarray(rng.normal(0.0, 0.5, p.shape), jnp.float32)
             for p in flat])


def _bilinear_rows(n, s):
  """``[n*s, n]`` interpolation matrix of torch's
  ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis."""
  u = np.zeros((n * s, n))
  for o in range(n * s):
    src = max((o + 0.5) / s - 0.5, 0.0)       # half-pixel centres, clamped
    lo = int(math.floor(src))
    hi = min(lo + 1, n - 1)
    u[o, lo] += 1.0 - (src - lo)
    u[o, hi] += src - lo
  return u


def _hand_partner_logits(params, feats, index, lam, k=0.25):
  """SAMix's Mix Block, step by step in float64: the upsampled logit z of the
  partner weight s = sigmoid(z)."""
  x = np.asarray(feats, np.float64)
  lam = np.broadcast_to(np.asarray(lam, np.float64), (FB,)).reshape(FB, 1, 1, 1)
  lam_hat = (4 / 3 * lam ** 3 - 2 * lam ** 2 + (k + 1) * lam) / (k + 1 - 2 / 3)
  own = x * (1 + lam_hat)                                 # λ-rescaled residual
  partner = x[np.asarray(index)] * (1 + (1 - lam_hat))
  w = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  kernel = lambda p: p["kernel"][0, 0]      # 1x1 conv [1, 1, in, out] -> matmul
  # Value: conv1x1 (no bias) -> BN (batch statistics, biased var) -> ELU ->
  # conv1x1 (no bias).
  hid = partner @ kernel(w["value"]["conv_hidden"])
  mu = hid.mean(axis=(0, 1, 2))
  var = hid.var(axis=(0, 1, 2))
  hid = ((hid - mu) / np.sqrt(var + 1e-5) * w["value"]["norm"]["scale"]
         + w["value"]["norm"]["bias"])
  hid = np.where(hid > 0, hid, np.expm1(hid))
  v = (hid @ kernel(w["value"]["conv_out"])).reshape(FB, FH * FH, 1)
  # q and k: separate convs, both on concat(x, x[π]).
  pair = np.concatenate([own, partner], axis=-1)
  q = (pair @ kernel(w["query"]) + w["query"]["bias"]).reshape(FB, FH * FH, -1)
  kk = (pair @ kernel(w["key"]) + w["key"]["bias"]).reshape(FB, FH * FH, -1)
  att = q @ kk.transpose(0, 2, 1) / np.sqrt(FC // 2)
  att = np.exp(att - att.max(-1, keepdims=True))
  att = att / att.sum(-1, keepdims=True)
  z = (att @ v).reshape(FB, FH, FH)
  u = _bilinear_rows(FH, SCALE)
  return np.einsum("Hh,bhw,Ww->bHW", u, z, u)[..., None]


@pytest.mark.parametrize("lam", [0.3, (0.1, 0.5, 0.8, 0.95)])
def test_mix_block_matches_hand_computation(lam):
  feats = jax.random.normal(jax.random.key(0), (FB, FH, FH, FC))
  index = jnp.asarray([2, 0, 3, 1], jnp.int32)
  lam = jnp.asarray(lam, jnp.float32)
  gen = _samix_block()
  variables = gen.init(jax.random.key(1), feats, index, lam)
  params = _noisy(variables["params"], seed=2)
  (own, own_logits), _ = gen.apply({"params": params}, feats, index, lam,
                                   return_logits=True, mutable=["batch_stats"])
  z = _hand_partner_logits(params, feats, index, lam)
  np.testing.assert_allclose(own_logits, -z, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(own, 1 / (1 + np.exp(z)), rtol=1e-5, atol=1e-6)
  assert own.shape == (FB, FH * SCALE, FH * SCALE, 1)
  assert np.std(np.asarray(own)) > 0.02         # not a constant mask
  assert set(params) == {"query", "key", "value"}
  assert set(params["value"]) == {"conv_hidden", "norm", "conv_out"}
  assert params["value"]["conv_hidden"]["kernel"].shape == (1, 1, FC, FC // 2)


def test_mix_block_reads_lambda():
  """λ enters through the rescaled residual: another λ, another mask (AutoMix's
  block without lam_concat is λ-blind)."""
  feats = jax.random.normal(jax.random.key(3), (FB, FH, FH, FC))
  index = jnp.asarray([1, 2, 3, 0], jnp.int32)
  gen = _samix_block()
  params = _noisy(gen.init(jax.random.key(1), feats, index, 0.5)["params"], 4)
  mask = lambda lam: gen.apply({"params": params}, feats, index, lam,
                               mutable=["batch_stats"])[0]
  assert float(jnp.max(jnp.abs(mask(0.2) - mask(0.7)))) > 1e-3


def test_lambda_rescale():
  rescale = pixel_mix_block.samix_rescale_lam
  np.testing.assert_allclose(rescale(jnp.asarray([0.0, 0.5, 1.0]), 0.25),
                             [0.0, 0.5, 1.0], atol=1e-6)
  # k = 0.25: (4/3·0.027 - 2·0.09 + 1.25·0.3) / (1.25 - 2/3) = 0.396.
  assert float(rescale(0.3, 0.25)) == pytest.approx(0.396, abs=1e-6)
  assert float(rescale(0.3, -1.0)) == pytest.approx(0.3)   # k < 0: unchanged


@pytest.mark.parametrize("kw,match", [
    ({"lam_mul": 1.5}, "lam_mul"), ({"lam_mul_k": 11.0}, "lam_mul_k"),
    ({"lam_mul_k": math.nan}, "lam_mul_k"),
    ({"value_reduction": -1}, "value_reduction"),
    ({"lam_concat": True, "x_qk_concat": False}, "lam_concat.*lam_mul"),
    ({"lam_concat": True, "lam_mul": 0.0}, "lam_concat.*x_qk_concat"),
])
def test_mix_block_options_are_checked(kw, match):
  feats = jnp.zeros((FB, FH, FH, FC))
  index = jnp.arange(FB, dtype=jnp.int32)
  with pytest.raises(ValueError, match=match):
    _samix_block(**kw).init(jax.random.key(0), feats, index, 0.5)


def test_mix_block_needs_lambda():
  feats = jnp.zeros((FB, FH, FH, FC))
  with pytest.raises(ValueError, match="lam.*lam_mul"):
    _samix_block().init(jax.random.key(0), feats, jnp.arange(FB))


# ----------------------------------------------------------------------------
# Losses and mask_adjust, against hand-computed values.
# ----------------------------------------------------------------------------

LOGITS = np.array([[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -0.4, 1.5]], np.float32)


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_eta_ce_with_one_hot_targets_is_the_mixup_ce(eta):
  """Row 0 mixes classes 0 and 1 (λ = 0.3), row 1 class 3 with itself: the other
  classes carry zero target, so η does not change the loss (the reference's
  CIFAR head)."""
  lam = 0.3
  targets = np.array([[lam, 1 - lam, 0, 0], [0, 0, 0, 1]], np.float32)
  logp = _log_softmax(LOGITS)
  want = -0.5 * ((lam * logp[0, 0] + (1 - lam) * logp[0, 1]) + logp[1, 3])
  got = samix.eta_soft_ce(jnp.asarray(LOGITS), jnp.asarray(targets),
                          jnp.asarray(targets > 0), eta=eta)
  assert float(got) == pytest.approx(want, rel=1e-6)


def test_eta_ce_weights_the_other_classes_by_eta():
  """Label-smoothed targets (ε = 0.2 over K = 4): the mass on the classes
  outside the mix is weighted by η."""
  lam, eps = 0.3, 0.2
  hard = np.array([[lam, 1 - lam, 0, 0], [0, 0, 0, 1]], np.float64)
  smooth = hard * (1 - eps) + eps / 4
  logp = _log_softmax(LOGITS)
  for eta in (0.5, 1.0):
    want = 0.0
    for b in range(2):
      for k in range(4):
        weight = 1.0 if hard[b, k] > 0 else eta
        want -= weight * smooth[b, k] * logp[b, k] / 2
    got = samix.eta_soft_ce(jnp.asarray(LOGITS),
                            jnp.asarray(smooth, jnp.float32),
                            jnp.asarray(hard > 0), eta=eta)
    assert float(got) == pytest.approx(want, rel=1e-6)
  with pytest.raises(ValueError, match="positive"):
    samix.eta_soft_ce(jnp.asarray(LOGITS), jnp.asarray(smooth, jnp.float32),
                      jnp.ones((2, 3), bool), eta=0.5)


def _tiny_method(**block):
  c = S.tiny(cifar10_cpu.get_config(), "samix", block)
  c.lock()
  return samix.SAMix(c, num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)


def test_generator_loss_is_eta_ce_plus_l1_minus_twice_the_variance():
  method = _tiny_method()
  # Sample 0: 8 pixels 0.9 and 8 pixels 0.1; sample 1: 16 pixels 0.2.
  s = np.zeros((2, 4, 4, 1), np.float32)
  s[0, :2], s[0, 2:], s[1] = 0.9, 0.1, 0.2
  lam = np.float32(0.45)
  targets = np.array([[lam, 1 - lam, 0, 0], [0, lam, 1 - lam, 0]], np.float32)
  ctx = {"y_mb": jnp.asarray(targets), "positive_mb": jnp.asarray(targets > 0),
         "lam_mb": jnp.asarray(lam), "mask_w": jnp.float32(0.1),
         "adjust": jnp.asarray(False)}
  loss, metrics = method.generator_loss(jnp.asarray(LOGITS), jnp.asarray(s),
                                        ctx)
  logp = _log_softmax(LOGITS)
  ce = -0.5 * (lam * logp[0, 0] + (1 - lam) * logp[0, 1]
               + lam * logp[1, 1] + (1 - lam) * logp[1, 2])
  mean = (8 * 0.9 + 8 * 0.1 + 16 * 0.2) / 32                # 0.35
  l1 = max(abs(1 - 0.45 - mean) - 0.1, 0.0)                 # 0.1
  var = (8 * (0.9 - mean) ** 2 + 8 * (0.1 - mean) ** 2
         + 16 * (0.2 - mean) ** 2) / 32                      # one global mean
  assert float(metrics["mask_var"]) == pytest.approx(var, rel=1e-5)
  assert float(metrics["mask_l1"]) == pytest.approx(l1, rel=1e-5)
  assert float(metrics["mask_loss"]) == pytest.approx(l1 - 2 * var, rel=1e-5)
  assert float(loss) == pytest.approx(ce + 0.1 * (l1 - 2 * var), rel=1e-5)
  # The "L1" mode drops the variance term (AutoMix's loss).
  l1_only = _tiny_method(mask_loss_mode="L1")
  loss_l1, _ = l1_only.generator_loss(jnp.asarray(LOGITS), jnp.asarray(s), ctx)
  assert float(loss_l1) == pytest.approx(ce + 0.1 * l1, rel=1e-5)


def test_adjust_mask_mean_by_hand():
  """Own-image means 0.75 (> λ), 0.25 (< λ) and 0.5 (= λ) with λ = 0.5."""
  own = np.zeros((3, 2, 2, 1), np.float32)
  own[0] = [[[1.0], [0.5]], [[0.5], [1.0]]]
  own[1] = [[[0.0], [0.5]], [[0.5], [0.0]]]
  own[2] = [[[0.2], [0.8]], [[0.8], [0.2]]]
  s = 1 - own
  got = np.asarray(samix.adjust_mask_mean(jnp.asarray(s), jnp.float32(0.5)))
  want = s.copy()
  want[0] = 1 - own[0] * 0.5 / 0.75                        # own scaled down
  want[1] = (1 - np.clip(own[1], 1e-8, 1)) * 0.5 / 0.75    # partner scaled down
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose((1 - got).mean(axis=(1, 2, 3)), 0.5, atol=1e-6)
  # Per-sample λ.
  got = samix.adjust_mask_mean(jnp.asarray(s), jnp.asarray([0.6, 0.1, 0.5]))
  np.testing.assert_allclose((1 - np.asarray(got)).mean(axis=(1, 2, 3)),
                             [0.6, 0.1, 0.5], atol=1e-6)


# ----------------------------------------------------------------------------
# The method: registry, config, gradient routing, EMA, sharding.
# ----------------------------------------------------------------------------


def test_registered_and_configured_like_openmixup():
  assert methods.get("samix") is samix.SAMix
  c = samix_cifar100.get_config()
  blk = c.samix
  assert (c.method, c.num_epochs, c.batch_size) == ("samix", 800, 100)
  assert (blk.alpha, blk.lam_margin, blk.mask_loss, blk.mask_loss_margin) == (
      2.0, 0.08, 0.1, 0.1)
  assert (blk.eta, blk.mask_loss_mode, blk.mask_adjust) == (
      0.5, "L1+Variance", 0.25)
  g = blk.generator
  assert (g.upsample, g.lam_mul, g.lam_mul_k, g.lam_residual, g.x_qk_concat,
          g.value_reduction, g.lam_concat) == (
              "bilinear", 1.0, 0.25, True, True, 2, False)
  assert (c.optimizer.lr, c.optimizer.min_lr, c.optimizer.weight_decay) == (
      0.1, 0.05, 1e-4)
  assert samix_cifar100.get_config("mask_adjust=0").samix.mask_adjust == 0.0


@pytest.fixture(scope="module")
def setup():
  return S.setup(samix.SAMix, S.tiny(cifar10_cpu.get_config(), "samix", {}))


def _two_gradients_probe(method, state, batch, key):
  """Each loss's gradient (one VJP pulled back twice), the update they make,
  and the generator loss re-done from explicit teacher passes."""
  ctx = method.prepare(state, batch, jax.random.fold_in(key, state.step))

  def both(params):
    l_cls, l_gen, aux = method.losses(params, state, ctx)
    return jnp.stack([l_cls, l_gen]), aux

  _, pullback, aux = jax.vjp(both, state.params, has_aux=True)
  g_cls, g_gen = (pullback(jnp.asarray(e, jnp.float32))[0]
                  for e in ([1, 0], [0, 1]))
  new_state, _ = method.apply_update(state, jax.tree.map(jnp.add, g_cls, g_gen),
                                     aux["stats"], aux["teacher_stats"])
  # By hand: the teacher (train-mode BN, stats chained from the clean pass)
  # on x(1 - s) + x[π]s, λ-weighted CE, 0.1 (L1 - 2 Var).
  s, perm, lam = aux["s_mb"], ctx["perm_mb"], ctx["lam_mb"]
  x, y = ctx["images"], batch["label"]
  run = lambda stats, imgs: method.model.apply(
      {"params": state.ema_params, "batch_stats": stats}, imgs, train=True,
      mutable=["batch_stats"])
  _, clean_vars = run(state.ema_batch_stats, x)
  out, _ = run(clean_vars["batch_stats"], x * (1 - s) + x[perm] * s)
  logp = jax.nn.log_softmax(out["logits"]["mix"])
  rows = jnp.arange(y.shape[0])
  ce = -jnp.mean(lam * logp[rows, y] + (1 - lam) * logp[rows, y[perm]])
  mean = jnp.mean(s)
  mask_term = (jnp.maximum(jnp.abs(1 - lam - mean) - 0.1, 0.0)
               - 2 * jnp.mean((s - mean) ** 2))
  return {"g_cls": g_cls, "g_gen": g_gen, "new_state": new_state,
          "l_gen": aux["metrics"]["loss_generator"],
          "l_gen_hand": ce + 0.1 * mask_term}


@pytest.fixture(scope="module")
def probe(setup):
  method, state, batch = setup
  return jax.device_get(jax.jit(
      lambda st, b: _two_gradients_probe(method, st, b, jax.random.key(1)))(
          state, batch))


def _nonzero(tree):
  return any(np.any(g != 0) for g in S.leaves(tree))


def test_generator_loss_trains_only_the_mix_block(probe):
  assert not _nonzero(probe["g_gen"]["classifier"])
  assert _nonzero(probe["g_gen"]["generator"])
  for part in ("query", "key", "value"):     # every Mix Block part is reached
    assert _nonzero(probe["g_gen"]["generator"][part]), part


def test_classifier_loss_trains_only_the_backbone(probe):
  assert not _nonzero(probe["g_cls"]["generator"])
  assert _nonzero(probe["g_cls"]["classifier"])
  assert set(probe["g_cls"]) == {"classifier", "generator"}   # no teacher


def test_generator_loss_matches_explicit_teacher_passes(probe):
  np.testing.assert_allclose(probe["l_gen"], probe["l_gen_hand"], rtol=1e-5)


def test_mask_adjust_rescales_the_classifier_mask(setup):
  """mask_adjust=1 (always) with no λ-margin: x_bb uses the detached mask whose
  own-image mean per sample is the reference's target λ_mb."""
  _, state, batch = setup
  m = _tiny_method(mask_adjust=1.0, lam_margin=0.0)
  keep = ("x_bb", "images", "perm_bb", "lam_mb", "lam_bb", "features",
          "adjust", "fire")

  def run(st, b, k):
    ctx = m.prepare(st, b, k)
    raw = m.mask(st.params["generator"], ctx["features"], ctx["perm_bb"],
                 ctx["lam_bb"], ctx["image_hw"])
    return {"raw": raw, **{n: ctx[n] for n in keep}}
  ctx = jax.device_get(jax.jit(run)(state, batch, jax.random.key(5)))
  assert bool(ctx["adjust"]) and not bool(ctx["fire"])
  s = np.asarray(samix.adjust_mask_mean(jnp.asarray(ctx["raw"]),
                                        ctx["lam_mb"]))
  x, perm = ctx["images"], ctx["perm_bb"]
  np.testing.assert_allclose(ctx["x_bb"], x * (1 - s) + x[perm] * s,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose((1 - s).mean(axis=(1, 2, 3)), ctx["lam_mb"],
                             atol=1e-5)


@pytest.fixture(scope="module")
def sharded_run(setup):
  """Three jitted steps on 8 fake devices (``run_sharded``: one trace)."""
  method, state, batch = setup
  # Other tests in this worker may have traced a function of the same name.
  chex.clear_trace_counter()
  return S.run_sharded(method, state, batch, steps=3)


def test_sharded_steps_trace_once_and_train_the_mix_block(sharded_run):
  states, metrics = sharded_run
  assert np.array_equal([st.step for st in states], np.arange(4))
  assert np.all([m["finite"] for m in metrics])
  assert {"mask_var", "mask_l1", "mask_adjust", "ce_teacher_mix"} <= set(
      metrics[0])
  first, last = (S.leaves(st.params["generator"]) for st in (states[0],
                                                             states[-1]))
  assert any(not np.array_equal(a, b) for a, b in zip(first, last))


def test_sharded_step_equals_unsharded(probe, sharded_run):
  states, _ = sharded_run
  for got, want in zip(S.leaves(states[1]), S.leaves(probe["new_state"])):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_ema_teacher_is_exact(setup, sharded_run):
  S.assert_ema_is_exact(setup[0], *sharded_run)


@pytest.mark.parametrize("block,match", [
    ({"eta": 1.5}, "samix.eta"), ({"mask_loss_mode": "L2"}, "mask_loss_mode"),
    ({"mask_adjust": 2.0}, "mask_adjust"),
    ({"mask_adjust_lam": "both"}, "mask_adjust_lam"),
    ({"alpha": 0.0}, "samix.alpha"),
])
def test_bad_config_raises_at_construction(block, match):
  with pytest.raises(ValueError, match=match):
    _tiny_method(**block)


def test_bad_generator_option_raises_at_construction():
  c = S.tiny(cifar10_cpu.get_config(), "samix", {})
  c.samix.generator.lam_mul_k = 20.0
  with pytest.raises(ValueError, match="samix.generator.*lam_mul_k"):
    samix.SAMix(c, num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
