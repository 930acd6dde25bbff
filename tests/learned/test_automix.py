"""AutoMix (Liu et al., ECCV 2022): gradient routing, generator loss, EMA teacher,
λ-margin, sharding and bad inputs.

Tiny shapes: 1/32-width CIFAR ResNet-18 on 16x16 images (stage-3 features 4x4,
upsampled x4 by the reference's width rule), batch 8, 4 classes. Each compiled
function is compiled once per module.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax.train import automix
from configs.automix import cifar10_cpu

from tests.learned._shared import B, HW, K, STEPS_PER_EPOCH  # noqa: F401
from tests.learned import _shared as S


pytestmark = pytest.mark.usefixtures("fast_compile")


def make_config(generator=None, **block):
  c = S.tiny(cifar10_cpu.get_config(), "automix", block)
  for k, v in (generator or {}).items():
    c.automix.generator[k] = v
  c.lock()
  return c


make_batch = S.make_batch
_leaves = S.leaves


@pytest.fixture(scope="module")
def setup():
  return S.setup(automix.AutoMix, make_config())


def _probe(method, state, batch, key):
  """One unsharded step the long way (separate VJPs) + direct references."""
  ctx = method.prepare(state, batch, jax.random.fold_in(key, state.step))

  def two_losses(params):
    l_cls, l_gen, aux = method.losses(params, state, ctx)
    return (l_cls, l_gen), aux
  (l_cls, l_gen), vjp, aux = jax.vjp(two_losses, state.params, has_aux=True)
  (g_cls,) = vjp((jnp.float32(1), jnp.float32(0)))
  (g_gen,) = vjp((jnp.float32(0), jnp.float32(1)))
  new_state, _ = method.apply_update(state, jax.tree.map(jnp.add, g_cls, g_gen),
                                     aux["stats"], aux["teacher_stats"])
  # Direct generator loss: teacher (train-mode BN) on x_mb, λ-weighted CE,
  # bounded L1 mask loss with weight 0.1 and margin 0.1.
  x, y = ctx["images"], batch["label"]
  s = aux["s_mb"]
  perm, lam = ctx["perm_mb"], ctx["lam_mb"]
  x_mb = x * (1 - s) + x[perm] * s
  teacher = lambda stats, imgs: method.model.apply(
      {"params": state.ema_params, "batch_stats": stats}, imgs, train=True,
      mutable=["batch_stats"])
  _, u1 = teacher(state.ema_batch_stats, x)
  out, u2 = teacher(u1["batch_stats"], x_mb)
  logp = jax.nn.log_softmax(out["logits"]["mix"])
  ce = -(lam * jnp.mean(logp[jnp.arange(B), y])
         + (1 - lam) * jnp.mean(logp[jnp.arange(B), y[perm]]))
  mask_loss = jnp.maximum(jnp.abs(1 - lam - jnp.mean(s)) - 0.1, 0.0)
  return {"l_cls": l_cls, "l_gen": l_gen, "g_cls": g_cls, "g_gen": g_gen,
          "new_state": new_state, "s_mb": s, "x_mb": aux["x_mb"],
          "x_mb_direct": x_mb, "gen_direct": ce + 0.1 * mask_loss,
          "mask_loss": mask_loss, "teacher_stats": aux["teacher_stats"],
          "naive_stats": u2["batch_stats"], "online_stats": aux["stats"],
          "online_stats_direct": _online_stats_clean_then_mixed(
              method, state, ctx)}


def _online_stats_clean_then_mixed(method, state, ctx):
  """The reference's forward_q: online net on the clean batch, then on the
  classifier's mixed sample, running statistics chained in that order."""
  online = lambda stats, imgs: method.model.apply(
      {"params": state.params["classifier"], "batch_stats": stats}, imgs,
      train=True, mutable=["batch_stats"])[1]["batch_stats"]
  return online(online(state.batch_stats, ctx["images"]), ctx["x_bb"])


@pytest.fixture(scope="module")
def probe(setup):
  method, state, batch = setup
  return jax.device_get(
      jax.jit(functools.partial(_probe, method))(state, batch,
                                                 jax.random.key(1)))


def test_gradients_are_routed_to_disjoint_groups(probe):
  p = probe
  assert all(np.all(g == 0) for g in _leaves(p["g_cls"]["generator"]))
  assert all(np.all(g == 0) for g in _leaves(p["g_gen"]["classifier"]))
  assert sum(np.abs(g).sum() for g in _leaves(p["g_cls"]["classifier"])) > 0
  assert sum(np.abs(g).sum() for g in _leaves(p["g_gen"]["generator"])) > 0
  assert set(p["g_gen"]) == {"classifier", "generator"}   # no teacher group


def test_generator_loss_is_teacher_ce_plus_bounded_mask_loss(probe):
  p = probe
  np.testing.assert_allclose(p["x_mb"], p["x_mb_direct"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(p["l_gen"], p["gen_direct"], rtol=1e-5)
  for g, w in zip(_leaves(p["teacher_stats"]), _leaves(p["naive_stats"])):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_online_passes_run_clean_first_then_mixed(probe):
  p = probe
  for g, w in zip(_leaves(p["online_stats"]), _leaves(p["online_stats_direct"])):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_mask_is_partner_weight_in_unit_interval(probe):
  s = probe["s_mb"]
  assert s.shape == (B, HW, HW, 1)
  assert s.min() >= 0 and s.max() <= 1
  # Nearest x4 upsampling: constant 4x4 blocks.
  np.testing.assert_array_equal(s, np.repeat(np.repeat(s[:, ::4, ::4], 4, 1),
                                             4, 2))


@pytest.mark.parametrize("lam,fires", [
    (0.25, True), (0.75, True),            # boundaries: m >= λ, m >= 1 - λ
    (0.5, False), (0.375, False), (0.625, False),
    (0.125, True), (0.875, True), (0.0, True), (1.0, True)])
def test_lam_margin_boundaries(lam, fires):
  m = automix.AutoMix(make_config(lam_margin=0.25), num_classes=K,
                      steps_per_epoch=STEPS_PER_EPOCH)
  assert bool(m.margin_fires(jnp.float32(lam))) == fires


def test_reference_margin_fires_at_0_08():
  m = automix.AutoMix(make_config(), num_classes=K,
                      steps_per_epoch=STEPS_PER_EPOCH)
  assert m.lam_margin == 0.08
  assert bool(m.margin_fires(jnp.float32(0.08)))
  assert bool(m.margin_fires(jnp.float32(0.92)))  # f32(1 - 0.92) <= 0.08
  assert not bool(m.margin_fires(jnp.float32(0.081)))
  assert not bool(m.margin_fires(jnp.float32(0.919)))


def test_margin_replaces_the_classifier_mask_by_constant_lambda(setup):
  _, state, batch = setup
  m = automix.AutoMix(make_config(lam_margin=0.5), num_classes=K,
                      steps_per_epoch=STEPS_PER_EPOCH)   # always fires
  keys = ("x_bb", "lam_bb", "perm_bb", "images", "fire")
  ctx = jax.device_get(jax.jit(lambda s, b, k: {
      n: v for n, v in m.prepare(s, b, k).items() if n in keys})(
          state, batch, jax.random.key(2)))
  assert bool(ctx["fire"])
  lam, x = ctx["lam_bb"], ctx["images"]
  want = x * lam + x[ctx["perm_bb"]] * (1 - lam)
  np.testing.assert_allclose(ctx["x_bb"], want, rtol=1e-6, atol=1e-6)


def test_mask_loss_weight_schedules():
  const = automix.AutoMix(make_config(), num_classes=K,
                          steps_per_epoch=STEPS_PER_EPOCH)
  cos = automix.AutoMix(make_config(mask_loss_schedule="cosine"), num_classes=K,
                        steps_per_epoch=STEPS_PER_EPOCH)
  assert float(const.mask_loss_weight(jnp.int32(7))) == pytest.approx(0.1)
  assert float(cos.mask_loss_weight(jnp.int32(0))) == pytest.approx(0.1)
  assert float(cos.mask_loss_weight(jnp.int32(10))) == pytest.approx(0.05)
  assert float(cos.mask_loss_weight(jnp.int32(20))) == pytest.approx(0.0,
                                                                      abs=1e-9)


@pytest.fixture(scope="module")
def sharded_run(setup):
  return S.run_sharded(*setup)


def test_three_sharded_steps_train_and_trace_once(sharded_run):
  states, metrics = sharded_run
  assert [int(s.step) for s in states] == [0, 1, 2, 3]
  for m in metrics:
    assert bool(m["finite"])
    assert {"loss", "lr", "finite", "loss_generator", "mask_loss"} <= set(m)
  assert any(not np.array_equal(a, b) for a, b in
             zip(_leaves(states[0].params["generator"]),
                 _leaves(states[3].params["generator"])))


def test_sharded_step_equals_unsharded(probe, sharded_run):
  states, _ = sharded_run
  for g, w in zip(_leaves(states[1]), _leaves(probe["new_state"])):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_ema_teacher_is_exact_momentum_update(setup, sharded_run):
  method, _, _ = setup
  states, metrics = sharded_run
  S.assert_ema_is_exact(method, states, metrics)


@pytest.mark.parametrize("block,match", [
    ({"alpha": 0.0}, "alpha"), ({"alpha": -2.0}, "alpha"),
    ({"lam_margin": 0.7}, "lam_margin"),
    ({"mask_loss_schedule": "linear"}, "mask_loss_schedule"),
    ({"teacher_bn": "frozen"}, "teacher_bn"),
])
def test_bad_config_raises_at_construction(block, match):
  with pytest.raises(ValueError, match=match):
    automix.AutoMix(make_config(**block), num_classes=K,
                    steps_per_epoch=STEPS_PER_EPOCH)


def test_missing_feature_layer_raises_before_compute():
  m = automix.AutoMix(make_config(mask_layer=5), num_classes=K,
                      steps_per_epoch=STEPS_PER_EPOCH)
  with pytest.raises(ValueError, match="mask_layer.*4 stages"):
    m.init(jax.random.key(0), jnp.zeros((2, HW, HW, 3)))


def test_scale_that_misses_the_image_size_raises():
  m = automix.AutoMix(make_config(generator={"scale": 8}), num_classes=K,
                      steps_per_epoch=STEPS_PER_EPOCH)
  with pytest.raises(ValueError, match="scale.*4x4.*16x16"):
    m.init(jax.random.key(0), jnp.zeros((2, HW, HW, 3)))


def test_bad_batch_raises_at_trace_time(setup):
  method, state, _ = setup
  with pytest.raises(ValueError, match="at least 2"):
    jax.eval_shape(method.train_step, state,
                   {"image": jnp.zeros((1, HW, HW, 3)),
                    "label": jnp.zeros((1,), jnp.int32)}, jax.random.key(0))
  with pytest.raises(ValueError, match="image"):
    jax.eval_shape(method.train_step, state,
                   {"image": jnp.zeros((B, HW, HW)),
                    "label": jnp.zeros((B,), jnp.int32)}, jax.random.key(0))


def test_eval_variants_and_predict(setup):
  method, state, batch = setup
  v = method.eval_variants(state)
  assert set(v) == {"online_one", "online_mix", "ema_one", "ema_mix"}
  assert method.reported_variant == "ema_one"
  out = jax.eval_shape(functools.partial(method.predict, head="mix"),
                       v["ema_mix"][0], images=batch["image"])
  assert out.shape == (B, K) and out.dtype == jnp.float32
