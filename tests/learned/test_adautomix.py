"""AdAutoMix (Qin et al., ICLR 2024): gradient routing, alternating generator
objective, EMA teacher, λ-margin, the exact speed-ups, sharding and bad inputs.

Tiny shapes: 1/32-width CIFAR ResNet-18 on 16x16 images (stage-3 features 4x4,
upsampled x4), batch 8, 4 classes. Each compiled function is compiled once per
module (module-scoped fixtures) to keep the file fast on a shared 2-core CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax.train import _learned as L
from automix_jax.train import adautomix
from configs.adautomix import cifar10_cpu

from tests.learned._shared import B, HW, K, STEPS_PER_EPOCH  # noqa: F401
from tests.learned import _shared as S


pytestmark = pytest.mark.usefixtures("fast_compile")


def make_config(**block):
  c = S.tiny(cifar10_cpu.get_config(), "adautomix", block)
  c.lock()
  return c


make_batch = S.make_batch
_leaves = S.leaves


@pytest.fixture(scope="module")
def setup():
  return S.setup(adautomix.AdAutoMix, make_config())


def _probe(method, state, batch, key):
  """One unsharded step computed the long way, plus independent references.

  * grads of L_classifier and L_generator separately (one forward, two VJPs);
  * the updated state from their sum;
  * the teacher's logits and running stats from N explicit passes on the
    permuted clean batches (lax.scan: sequential, as the reference);
  * the generator objective recomputed from the masks with test-local code.
  """
  n = method.max_mix
  ctx = method.prepare(n, state, batch, jax.random.fold_in(key, state.step))
  def two_losses(params):
    l_cls, l_gen, aux = method.losses(params, state, ctx)
    return (l_cls, l_gen), aux
  (l_cls, l_gen), vjp, aux = jax.vjp(two_losses, state.params, has_aux=True)
  (g_cls,) = vjp((jnp.float32(1), jnp.float32(0)))
  (g_gen,) = vjp((jnp.float32(0), jnp.float32(1)))
  grads = jax.tree.map(jnp.add, g_cls, g_gen)
  new_state, _ = method.apply_update(state, grads, aux["stats"],
                                     aux["teacher_stats"])

  model = method.model
  x, y = ctx["images"], batch["label"]
  teacher = lambda stats, imgs: model.apply(
      {"params": state.ema_params, "batch_stats": stats}, imgs, train=True,
      mutable=["batch_stats"])

  # The reference's teacher passes: clean (features), x_mb, then N permuted
  # clean batches, each updating the running stats.
  masks = aux["m_mb"]                                          # [B, N, H, W]
  x_mb = sum(masks[:, i, :, :, None] * x[ctx["perm_mb"][i]] for i in range(n))
  _, upd1 = teacher(state.ema_batch_stats, x)
  out_mb, upd2 = teacher(upd1["batch_stats"], x_mb)

  def body(stats, perm):
    out, upd = teacher(stats, x[perm])
    return upd["batch_stats"], out["logits"]["mix"]
  naive_stats, naive_logits = jax.lax.scan(body, upd2["batch_stats"],
                                           ctx["perm_mb"])
  p_mb = out_mb["logits"]["mix"]
  onehot = jax.nn.one_hot(y, K)
  logp = jax.nn.log_softmax(p_mb)
  lam = ctx["lam_mb"]
  ce = sum(lam[i] * -jnp.mean(jnp.sum(onehot[ctx["perm_mb"][i]] * logp, -1))
           for i in range(n))
  cos = 0.0
  for i in range(n):
    q = naive_logits[i]
    c = jnp.sum(p_mb * q, -1) / (jnp.linalg.norm(p_mb, axis=-1)
                                 * jnp.linalg.norm(q, axis=-1))
    cos = cos + lam[i] * c
  cos = jnp.mean(cos)
  return {"l_cls": l_cls, "l_gen": l_gen, "g_cls": g_cls, "g_gen": g_gen,
          "new_state": new_state, "x_mb": aux["x_mb"], "x_mb_direct": x_mb,
          "masks": masks, "ce_direct": ce, "cos_direct": cos,
          "cos": aux["metrics"]["cos"], "ce": aux["metrics"]["ce_teacher_mix"],
          "teacher_stats": aux["teacher_stats"], "naive_stats": naive_stats,
          "reused_logits": ctx["teacher_logits"][ctx["perm_mb"]],
          "naive_logits": naive_logits}


@pytest.fixture(scope="module")
def probes(setup):
  method, state, batch = setup
  fn = jax.jit(functools.partial(_probe, method))
  key = jax.random.key(1)
  even = fn(state, batch, key)
  odd = fn(state.replace(step=jnp.int32(1)), batch, key)
  return jax.device_get(even), jax.device_get(odd)


def test_gradients_are_routed_to_disjoint_groups(probes):
  for p in probes:
    # Classifier loss: no gradient on the generator (its mask is detached) ...
    assert all(np.all(g == 0) for g in _leaves(p["g_cls"]["generator"]))
    # ... generator loss: none on the classifier (it only sees the teacher).
    assert all(np.all(g == 0) for g in _leaves(p["g_gen"]["classifier"]))
    # And each loss does reach its own group (so the test can fail).
    assert sum(np.abs(g).sum() for g in _leaves(p["g_cls"]["classifier"])) > 0
    gen = [np.abs(g).sum() for g in _leaves(p["g_gen"]["generator"])]
    assert sum(gen) > 0
    # The teacher is not an optimisation target at all.
    assert set(p["g_cls"]) == {"classifier", "generator"}


def test_generator_objective_alternates_with_step_parity(setup, probes):
  method, _, _ = setup
  even, odd = probes
  beta = method.beta_radio
  for p in probes:
    np.testing.assert_allclose(p["x_mb"], p["x_mb_direct"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(p["ce"], p["ce_direct"], rtol=1e-5)
    np.testing.assert_allclose(p["cos"], p["cos_direct"], rtol=1e-5, atol=1e-6)
  # Step 0 (even): adversarial -β CE + (1-β) cos (cosine_sign=+1, the code).
  np.testing.assert_allclose(
      even["l_gen"], -beta * even["ce_direct"] + (1 - beta) * even["cos_direct"],
      rtol=1e-5, atol=1e-6)
  # Step 1 (odd): cooperative +CE.
  np.testing.assert_allclose(odd["l_gen"], odd["ce_direct"], rtol=1e-5)
  assert not np.isclose(even["l_gen"], even["ce_direct"], rtol=1e-3)


@pytest.mark.parametrize("a,b,want", [
    ([1e-5, 0, 0], [1e-5, 0, 0], 1.0),      # torch: each norm clamped alone
    ([1e-5, 0, 0], [2.0, 0, 0], 1.0),       # |a| = 1e-5 > eps: exact cosine
    ([3.0, 4.0, 0], [4.0, -3.0, 0], 0.0),
    ([1.0, 2.0, 2.0], [2.0, 4.0, 4.0], 1.0),
    ([1e-9, 0, 0], [1.0, 0, 0], 1e-9 / 1e-8),  # |a| < eps: a·b / (eps |b|)
    ([0.0, 0, 0], [1.0, 0, 0], 0.0),
])
def test_cosine_similarity_clamps_each_norm_like_current_torch(a, b, want):
  got = float(L.cosine_similarity(jnp.asarray(a), jnp.asarray(b)))
  assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_generator_weights_and_cosine_sign():
  m = adautomix.AdAutoMix(make_config(beta_radio=0.25, cosine_sign=-1),
                          num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
  assert [float(w) for w in m.generator_weights(jnp.bool_(True))] == [-0.25,
                                                                     -0.75]
  assert [float(w) for w in m.generator_weights(jnp.bool_(False))] == [1.0, 0.0]


def test_masks_of_the_generator_sample_sum_to_one(probes):
  for p in probes:
    masks = p["masks"]
    assert masks.shape == (B, 3, HW, HW)
    np.testing.assert_allclose(masks.sum(1), 1.0, rtol=0, atol=1e-6)
    assert masks.min() >= 0


def test_teacher_logits_on_permutations_equal_permuted_clean_logits(probes):
  for p in probes:
    np.testing.assert_allclose(p["reused_logits"], p["naive_logits"],
                               rtol=1e-5, atol=1e-5)


def test_closed_form_teacher_running_stats_equal_sequential_passes(setup, probes):
  _, state, _ = setup
  for p in probes:
    got, want = _leaves(p["teacher_stats"]), _leaves(p["naive_stats"])
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
    # The passes do move the stats (so the comparison is not vacuous).
    moved = [np.abs(g - s).max() for g, s in
             zip(got, _leaves(state.ema_batch_stats))]
    assert max(moved) > 1e-3


def test_repeat_stat_update_closed_form():
  r0 = {"mean": jnp.array([0.5, -1.0]), "var": jnp.array([2.0, 1.0])}
  a = {"mean": jnp.array([3.0, 0.25]), "var": jnp.array([0.5, 4.0])}
  upd = lambda r: jax.tree.map(lambda r, a: 0.9 * r + 0.1 * a, r, a)
  r1 = upd(r0)
  start = {"mean": jnp.array([7.0, 1.0]), "var": jnp.array([3.0, 3.0])}
  seq = start
  for _ in range(4):
    seq = upd(seq)
  got = L.repeat_stat_update(start, r0, r1, 4)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(seq)):
    np.testing.assert_allclose(g, w, rtol=1e-6)


@pytest.mark.parametrize("scope,lam,fires", [
    # N >= 3, reference comparison on λ_0: m >= λ_0 or m > 1 - λ_0.
    ("first", (0.25, 0.5, 0.25), True),      # λ_0 == m: fires (>=)
    ("first", (0.375, 0.375, 0.25), False),
    ("first", (0.75, 0.125, 0.125), False),  # 1 - λ_0 == m: strict, no
    ("first", (0.875, 0.0625, 0.0625), True),
    ("first", (0.5, 0.375, 0.125), False),   # small λ_2 ignored (reference)
    ("all", (0.5, 0.375, 0.125), True),      # ... but not with "all"
    ("all", (0.375, 0.375, 0.25), True),     # λ_2 == m
    ("all", (0.375, 0.3125, 0.3125), False),
])
def test_lam_margin_boundaries_three_images(scope, lam, fires):
  m = adautomix.AdAutoMix(make_config(lam_margin=0.25, margin_scope=scope),
                          num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
  assert bool(m.margin_fires(jnp.asarray(lam, jnp.float32))) == fires


@pytest.mark.parametrize("lam0,fires", [(0.25, True), (0.75, True),
                                        (0.375, False), (0.625, False),
                                        (0.125, True), (0.875, True)])
def test_lam_margin_boundaries_two_images(lam0, fires):
  # N = 2: m >= λ or m >= 1 - λ (both inclusive).
  m = adautomix.AdAutoMix(make_config(lam_margin=0.25, mix_samples=2),
                          num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
  lam = jnp.asarray([lam0, 1 - lam0], jnp.float32)
  assert bool(m.margin_fires(lam)) == fires


def test_margin_fallback_replaces_every_channel_with_lambda(setup):
  # With N = 4 every channel becomes λ_i (the reference hard-codes channels
  # 0-2 and leaves channel 3 to the generator, so its masks no longer sum to 1).
  # lam_margin 0.49 with scope "all" always fires: some λ_i <= 1/4.
  _, state, batch = setup
  method = adautomix.AdAutoMix(
      make_config(lam_margin=0.49, mix_samples=4, margin_scope="all"),
      num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
  prep = jax.jit(lambda s, b, k: {
      k2: v for k2, v in method.prepare(4, s, b, k).items()
      if k2 in ("m_bb", "lam_bb", "fire", "x_bb", "x_lin")})
  ctx = jax.device_get(prep(state, batch, jax.random.key(3)))
  assert bool(ctx["fire"])
  want = np.broadcast_to(ctx["lam_bb"][None, :, None, None], (B, 4, HW, HW))
  np.testing.assert_array_equal(ctx["m_bb"], want)
  np.testing.assert_allclose(ctx["m_bb"].sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(ctx["x_bb"], ctx["x_lin"], rtol=1e-6, atol=1e-6)


def test_lambda_draws(setup):
  method, _, _ = setup
  draw = jax.jit(method.draw, static_argnums=(1, 2))
  d = jax.device_get(draw(jax.random.key(5), 3, B))
  np.testing.assert_allclose(float(d["lam_mb"].sum()), 1.0, rtol=1e-6)
  assert d["perm_mb"].shape == d["perm_bb"].shape == (3, B)
  for p in np.concatenate([d["perm_mb"], d["perm_bb"]]):
    assert sorted(p.tolist()) == list(range(B))
  d2 = jax.device_get(draw(jax.random.key(5), 2, B))
  assert d2["perm_mb"][0].tolist() == list(range(B))   # channel 0 unpermuted
  np.testing.assert_allclose(np.asarray(d2["lam_bb"]).sum(), 1.0, rtol=1e-6)
  assert float(d2["lam_mb"][0]) != float(d2["lam_bb"][0])  # independent


@pytest.fixture(scope="module")
def sharded_run(setup):
  return S.run_sharded(*setup)


def test_three_sharded_steps_train_and_trace_once(sharded_run):
  states, metrics = sharded_run
  assert [int(s.step) for s in states] == [0, 1, 2, 3]
  assert [float(m["adversarial"]) for m in metrics] == [1.0, 0.0, 1.0]
  for m in metrics:
    assert bool(m["finite"]) and int(m["n_mix"]) == 3
  for a, b in zip(_leaves(states[0].params), _leaves(states[3].params)):
    assert a.shape == b.shape
  assert any(not np.array_equal(a, b) for a, b in
             zip(_leaves(states[0].params["generator"]),
                 _leaves(states[3].params["generator"])))


def test_sharded_step_equals_unsharded(probes, sharded_run):
  states, _ = sharded_run
  want = probes[0]["new_state"]   # unsharded, separate-VJP computation
  got = states[1]
  for g, w in zip(_leaves(got), _leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_ema_teacher_is_exact_momentum_update(setup, sharded_run):
  method, _, _ = setup
  states, metrics = sharded_run
  ref = S.assert_ema_is_exact(method, states, metrics)
  assert ref[0] == ref[1] == 0.999 and ref[2] > 0.999


def test_random_n_dispatches_to_a_branch_per_n(setup):
  _, state, batch = setup
  method = adautomix.AdAutoMix(make_config(is_random=True, mix_samples=3),
                               num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
  out_state, metrics = jax.eval_shape(method.train_step, state, batch,
                                      jax.random.key(0))
  assert metrics["n_mix"].dtype == jnp.int32
  # Which branch runs: N uniform over {2, 3} from the step key.
  ns = {2 + int(jax.random.randint(jax.random.split(jax.random.fold_in(
      jax.random.key(0), t))[0], (), 0, 2)) for t in range(12)}
  assert ns == {2, 3}


@pytest.mark.parametrize("block,match", [
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": -1.0}, "alpha"),
    ({"mix_samples": 9}, "batch size"),
    ({"mix_samples": 1}, "mix_samples"),
    ({"cosine_sign": 0.5}, "cosine_sign"),
    ({"teacher_bn": "ema"}, "teacher_bn"),
    ({"margin_scope": "some"}, "margin_scope"),
    ({"beta_radio": 1.5}, "beta_radio"),
])
def test_bad_config_raises_at_construction(block, match):
  with pytest.raises(ValueError, match=match):
    adautomix.AdAutoMix(make_config(**block), num_classes=K,
                        steps_per_epoch=STEPS_PER_EPOCH)


def test_bad_generator_settings_raise_at_construction():
  for gen, match in [({"scale": 0}, "scale"), ({"upsample": "cubic"}, "upsample")]:
    c = make_config()
    c.unlock()
    c.adautomix.generator.update(gen)
    c.lock()
    with pytest.raises(ValueError, match=match):
      adautomix.AdAutoMix(c, num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
  c = make_config()
  c.unlock()
  c.generator_optimizer.min_lr_typo = 0.1
  c.lock()
  with pytest.raises(ValueError, match="generator_optimizer.*min_lr_typo"):
    adautomix.AdAutoMix(c, num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)


def test_missing_feature_layer_raises_before_compute():
  m = adautomix.AdAutoMix(make_config(mask_layer=4), num_classes=K,
                          steps_per_epoch=STEPS_PER_EPOCH)
  with pytest.raises(ValueError, match="mask_layer.*4 stages"):
    m.init(jax.random.key(0), jnp.zeros((2, HW, HW, 3)))


def test_scale_that_misses_the_image_size_raises():
  c = make_config()
  c.unlock()
  c.adautomix.generator.scale = 2
  c.lock()
  m = adautomix.AdAutoMix(c, num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
  with pytest.raises(ValueError, match="scale.*4x4.*16x16"):
    m.init(jax.random.key(0), jnp.zeros((2, HW, HW, 3)))


def test_batch_smaller_than_n_raises(setup):
  method, state, _ = setup
  small = {"image": jnp.zeros((2, HW, HW, 3)), "label": jnp.zeros((2,), jnp.int32)}
  with pytest.raises(ValueError, match="at least 3"):
    jax.eval_shape(method.train_step, state, small, jax.random.key(0))
  with pytest.raises(ValueError, match="label"):
    jax.eval_shape(method.train_step, state,
                   {"image": jnp.zeros((B, HW, HW, 3)),
                    "label": jnp.zeros((B,), jnp.float32)}, jax.random.key(0))


def test_eval_variants(setup):
  method, state, _ = setup
  v = method.eval_variants(state)
  assert set(v) == {"online_one", "online_mix", "ema_one", "ema_mix"}
  assert method.reported_variant == "ema_one"
  assert v["ema_mix"][1] == "mix" and v["online_one"][1] == "one"


def test_grad_clip_is_global_over_classifier_and_generator():
  c = cifar10_cpu.get_config()
  c.batch_size = B
  c.optimizer.grad_clip_norm = 1.0
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.generator_optimizer.shared = False
  c.generator_optimizer.lr = 0.5
  c.lock()
  m = adautomix.AdAutoMix(c, num_classes=K, steps_per_epoch=STEPS_PER_EPOCH)
  params = {"classifier": {"w": jnp.zeros(2)}, "generator": {"w": jnp.zeros(1)}}
  grads = {"classifier": {"w": jnp.array([3.0, 0.0])},
           "generator": {"w": jnp.array([4.0])}}       # global norm 5
  upd, _ = m.tx.update(grads, m.tx.init(params), params)
  # One global factor 1/5 (per-group clipping would give 1 and 1).
  np.testing.assert_allclose(upd["classifier"]["w"], [-0.1 * 3 / 5, 0],
                             rtol=1e-6)
  np.testing.assert_allclose(upd["generator"]["w"], [-0.5 * 4 / 5], rtol=1e-6)


def test_generator_param_group_has_its_own_schedule():
  from configs.adautomix import tiny_imagenet
  c = tiny_imagenet.get_config("model=rx50")
  c.lock()
  m = adautomix.AdAutoMix(c, num_classes=200, steps_per_epoch=5)
  assert float(m.lr_fn(0)) == pytest.approx(0.2)
  assert float(m.lr_gen_fn(0)) == pytest.approx(0.1)
  last = 5 * 400 - 1
  assert float(m.lr_fn(last)) == pytest.approx(0.05, rel=1e-3)
  assert float(m.lr_gen_fn(last)) == pytest.approx(1e-3, rel=1e-2)


@pytest.mark.parametrize("module,arg", [
    ("configs.adautomix.cifar100", "model=r18"),
    ("configs.adautomix.cifar100", "model=rx50"),
    ("configs.adautomix.tiny_imagenet", "model=r18"),
    ("configs.adautomix.imagenet", "model=r50"),
    ("configs.adautomix.fine_grained", "dataset=cub,model=r18"),
    ("configs.adautomix.fine_grained", "dataset=cars,model=rx50"),
    ("configs.adautomix.fine_grained", "dataset=aircraft,model=rx50"),
    ("configs.adautomix.cifar100_vit", "model=deit_s"),
    ("configs.adautomix.cifar100_vit", "model=swin_t"),
    ("configs.automix.cifar100", "model=r18"),
])
def test_reference_configs_build(module, arg):
  import importlib
  from automix_jax.train import methods
  c = importlib.import_module(module).get_config(arg)
  c.lock()
  m = methods.get(c.method)(c, num_classes=100, steps_per_epoch=5)
  assert m.reported_variant == "ema_one"


@pytest.mark.parametrize("model,feature", [
    ("swin_t", (7, 7, 768)),     # stage 4, x32 -> 224
    ("deit_s", (14, 14, 384)),   # tokens after block 6, x16 -> 224
])
def test_vit_configs_build_with_their_mask_features(model, feature):
  """The 224-px ViT configs: the model builds, the generator's feature map
  and scale fit the image (shapes only, no compute)."""
  from configs.adautomix import cifar100_vit
  c = cifar100_vit.get_config(f"model={model}")
  c.lock()
  m = adautomix.AdAutoMix(c, num_classes=100, steps_per_epoch=5)
  sample = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  assert m.check_features(sample)[1:] == feature
  assert m.is_random == (model == "swin_t")


def test_running_teacher_uses_eval_mode_and_online_statistics(setup):
  _, state, batch = setup
  m = adautomix.AdAutoMix(make_config(teacher_bn="running"), num_classes=K,
                          steps_per_epoch=STEPS_PER_EPOCH)
  stats = jax.tree.map(lambda x: x + 0.5, state.ema_batch_stats)

  def run(st):
    out, new_stats = m.teacher_apply(st.ema_params, stats, batch["image"],
                                     jax.random.key(0))
    ref = m.model.apply({"params": st.ema_params, "batch_stats": stats},
                        batch["image"], train=False)
    zero = jax.tree.map(jnp.zeros_like, st.params)
    online = jax.tree.map(lambda x: x + 1.0, st.batch_stats)
    new_state, _ = m.apply_update(st, zero, online, stats)
    return out["logits"]["mix"], ref["logits"]["mix"], new_stats, new_state, online

  got, ref, new_stats, new_state, online = jax.device_get(jax.jit(run)(state))
  np.testing.assert_array_equal(got, ref)                  # eval mode
  for a, b in zip(_leaves(new_stats), _leaves(stats)):     # no stat update
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_leaves(new_state.ema_batch_stats), _leaves(online)):
    np.testing.assert_array_equal(a, b)                    # copy of online
