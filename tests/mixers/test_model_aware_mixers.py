"""ManifoldMix, AlignMix and SnapMix: defining properties against numpy / torch
re-derivations, gradient routing, one trace, 8 devices == 1, bad inputs.

The trainer plumbing (what the step passes them) is tested in
tests/train/test_model_aware.py; the CAM itself in tests/models.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import mixers
from automix_jax import sharding

B, H, W, C, K = 8, 16, 16, 3, 5


def _batch(b=B, h=H, w=W, seed=0, classes=K):
  kx, ky = jax.random.split(jax.random.key(seed))
  x = jax.random.uniform(kx, (b, h, w, C))
  return x, mixers.one_hot(jax.random.randint(ky, (b,), 0, classes), classes)


def _sharded_equals_unsharded(fn, *arrays):
  """``jit(fn)`` on arrays batch-sharded over 8 devices == on one device."""
  mesh = sharding.make_mesh(jax.devices()[:8])
  spec = jax.sharding.NamedSharding(mesh, jax.P("data"))
  one = jax.jit(fn)(*arrays)
  eight = jax.jit(fn)(*[jax.device_put(a, spec) for a in arrays])
  chex.assert_trees_all_close(eight, one, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# ManifoldMix.
# ---------------------------------------------------------------------------


def test_manifoldmix_mixes_exactly_the_chosen_stage():
  x, y = _batch()
  index = np.roll(np.arange(B), 3)
  fm, labels, aux = mixers.manifoldmix(
      jax.random.key(0), x, y, stages=(0, 1, 2), stage=1, lam=0.3,
      index=index)
  feats = {s: jax.random.normal(jax.random.key(s), (B, 4, 4, 6))
           for s in range(5)}
  for s, h in feats.items():
    want = 0.3 * np.asarray(h) + 0.7 * np.asarray(h)[index] if s == 1 else h
    np.testing.assert_allclose(fm(s, h), want, rtol=1e-6, atol=1e-6)
  y_np = np.asarray(y)
  np.testing.assert_allclose(labels, 0.3 * y_np + 0.7 * y_np[index],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(labels).sum(-1), 1.0, atol=1e-6)
  assert int(aux["stage"]) == 1


def test_manifoldmix_draws_stages_uniformly_with_one_trace():
  x, y = _batch()
  h = jax.random.normal(jax.random.key(1), (B, 4, 4, 6))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key):
    fm, labels, aux = mixers.manifoldmix(key, x, y)
    changed = jnp.stack([jnp.any(fm(s, h) != h) for s in range(4)])
    return aux["stage"], changed, aux["lam"], labels

  counts = np.zeros(4, int)
  for i in range(240):
    stage, changed, lam, labels = run(jax.random.key(i))
    counts[int(stage)] += 1
    # Only the drawn stage changes (λ < 1 a.s.; the partner may be itself).
    assert not np.any(np.delete(np.asarray(changed), int(stage)))
    assert np.all(np.asarray(lam) == np.asarray(lam)[0])  # one λ per batch
  chex.clear_trace_counter()
  assert counts[3] == 0 and np.all(counts[:3] > 55), counts  # U{0, 1, 2}


def test_manifoldmix_in_a_model_mixes_stage_k_of_the_clean_forward():
  """Feature provenance in a real forward: stages < k untouched, stage k the
  λ-blend of the clean stage-k features, the logits from there on."""
  from automix_jax import models
  model = models.build("cifar_resnet18", num_classes=K, width=1 / 16,
                       stage_sizes=(1, 1, 1, 1))
  variables = models.init(model, jax.random.key(0), (H, W, C))
  x, y = _batch()
  index = np.roll(np.arange(B), 1)

  @jax.jit
  def forward(x, stage):  # stage < 0: the clean forward
    fm, _, _ = mixers.manifoldmix(jax.random.key(0), x, y, stages=(0, 2),
                                  stage=jnp.maximum(stage, 0), lam=0.25,
                                  index=index)
    mixed = model.apply(variables, x, train=False, feature_mix=fm)
    clean = model.apply(variables, x, train=False)
    return jax.tree.map(lambda m, c: jnp.where(stage < 0, c, m), mixed, clean)

  clean = forward(x, -1)
  # Stage 2: stage 1 untouched, stage 2 the blend of the clean stage 2.
  out = forward(x, 2)
  np.testing.assert_array_equal(out["stages"][0], clean["stages"][0])
  h = np.asarray(clean["stages"][1])
  np.testing.assert_allclose(out["stages"][1], 0.25 * h + 0.75 * h[index],
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(out["logits"]["one"], clean["logits"]["one"])
  # Stage 0 is MixUp of the input.
  out = forward(x, 0)
  xm = 0.25 * np.asarray(x) + 0.75 * np.asarray(x)[index]
  np.testing.assert_allclose(out["logits"]["one"],
                             forward(jnp.asarray(xm), -1)["logits"]["one"],
                             rtol=1e-4, atol=1e-5)


def test_manifoldmix_no_gradient_into_lam():
  x, y = _batch()
  h = jax.random.normal(jax.random.key(1), (B, 4, 4, 6))

  def total(lam):
    fm, labels, _ = mixers.manifoldmix(jax.random.key(0), x, y, stage=2,
                                       lam=lam)
    return jnp.sum(fm(2, h) ** 2) + jnp.sum(labels ** 2)
  assert float(jax.grad(total)(0.3)) == 0.0
  # ... while the features themselves are differentiated through the blend.
  fm, _, _ = mixers.manifoldmix(jax.random.key(0), x, y, stage=2, lam=0.3)
  assert float(jnp.abs(jax.grad(lambda f: jnp.sum(fm(2, f) ** 2))(h)).sum()) > 0


def test_manifoldmix_sharded_equals_unsharded():
  x, y = _batch(b=16)
  h = jax.random.normal(jax.random.key(1), (16, 4, 4, 6))

  def fn(x, y, h):
    fm, labels, aux = mixers.manifoldmix(jax.random.key(5), x, y, stage=1)
    return fm(1, h), labels, aux["lam"], aux["index"]
  _sharded_equals_unsharded(fn, x, y, h)


def test_manifoldmix_bad_inputs():
  x, y = _batch()
  with pytest.raises(ValueError, match="`stages` must be a non-empty tuple"):
    mixers.get("manifoldmix", stages=())
  with pytest.raises(ValueError, match="`stages` must be a non-empty tuple"):
    mixers.get("manifoldmix", stages=(0, -1))
  with pytest.raises(ValueError, match=r"`stage` must be one of `stages` \(0, 1, 2\)"):
    mixers.manifoldmix(jax.random.key(0), x, y, stage=3)
  fm, _, _ = mixers.manifoldmix(jax.random.key(0), x, y, stage=1)
  with pytest.raises(ValueError, match=r"`feature_mix\(1, x\)`: `x` must be"):
    fm(1, jnp.zeros((B // 2, 4, 4, 6)))


# ---------------------------------------------------------------------------
# AlignMix.
# ---------------------------------------------------------------------------


def _numpy_sinkhorn(x, y, eps=0.1, max_iter=100, thresh=0.1):
  """The authors' SinkhornDistance.forward (utils/OT.py) in float64 numpy."""
  cost = ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
  mu = np.full(x.shape[:2], 1.0 / x.shape[1])
  nu = np.full(y.shape[:2], 1.0 / y.shape[1])
  u, v = np.zeros_like(mu), np.zeros_like(nu)

  def m(u, v):
    return (-cost + u[:, :, None] + v[:, None, :]) / eps

  def lse(a, axis):
    top = a.max(axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis, keepdims=True))).squeeze(
        axis)
  its = 0
  for _ in range(max_iter):
    u1 = u
    u = eps * (np.log(mu + 1e-8) - lse(m(u, v), -1)) + u
    v = eps * (np.log(nu + 1e-8) - lse(np.swapaxes(m(u, v), -2, -1), -1)) + v
    err = np.abs(u - u1).sum(-1).mean()
    its += 1
    if err < thresh:
      break
  return np.exp(m(u, v)), its


def test_sinkhorn_plan_equals_the_reference_loop_and_has_the_marginals():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 4, 3)) * 0.6
  y = rng.uniform(size=(2, 5, 3)) * 0.6
  plan, its = mixers.sinkhorn_plan(jnp.asarray(x, jnp.float32),
                                   jnp.asarray(y, jnp.float32))
  want, want_its = _numpy_sinkhorn(x, y)
  assert int(its) == want_its and want_its > 1
  np.testing.assert_allclose(plan, want, rtol=1e-4, atol=1e-7)
  # Column marginal exact after every iteration; rows at convergence.
  np.testing.assert_allclose(np.asarray(plan).sum(1), 1 / 5, rtol=1e-4)
  tight, _ = mixers.sinkhorn_plan(jnp.asarray(x, jnp.float32),
                                  jnp.asarray(y, jnp.float32),
                                  threshold=1e-7, max_iter=5000)
  np.testing.assert_allclose(np.asarray(tight).sum(2), 1 / 4, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(tight).sum(1), 1 / 5, rtol=1e-3)
  # max_iter caps the loop.
  _, one = mixers.sinkhorn_plan(jnp.asarray(x, jnp.float32),
                                jnp.asarray(y, jnp.float32), max_iter=1)
  assert int(one) == 1


def _align_inputs(direction):
  x, y = _batch()
  index = np.roll(np.arange(B), 2)
  fm, labels, aux = mixers.alignmix(
      jax.random.key(0), x, y, stage=4, lam=0.3, index=index,
      use_input=False, direction=direction)
  feats = jax.random.uniform(jax.random.key(3), (B, 2, 2, 3)) * 0.5
  return fm, labels, aux, feats, index, y


@pytest.mark.parametrize("direction", [False, True])
def test_alignmix_is_the_authors_aligned_mix(direction):
  fm, labels, aux, feats, index, y = _align_inputs(direction)
  out = fm(4, feats)
  a = np.asarray(feats, np.float64).reshape(B, 4, 3)
  a2 = a[index]
  plan, _ = _numpy_sinkhorn(a, a2)
  r = plan * 4
  if not direction:   # λ A + (1 - λ) R A'  (A'Rᵀ in [C, HW])
    want = 0.3 * a + 0.7 * np.einsum("bij,bjc->bic", r, a2)
  else:               # λ Rᵀ A + (1 - λ) A'  (AR in [C, HW])
    want = 0.3 * np.einsum("bij,bic->bjc", r, a) + 0.7 * a2
  np.testing.assert_allclose(np.asarray(out).reshape(B, 4, 3), want,
                             rtol=1e-4, atol=1e-5)
  y_np = np.asarray(y)
  np.testing.assert_allclose(labels, 0.3 * y_np + 0.7 * y_np[index],
                             rtol=1e-6)
  # Other stages, the input included, are left alone on this branch.
  for s in (0, 1, 2, 3):
    h = feats if s else jnp.ones((B, H, W, C))
    np.testing.assert_array_equal(fm(s, h), h)


def test_alignmix_alignment_undoes_a_spatial_shuffle():
  """The defining property: a partner that is the sample with its positions
  shuffled is aligned back before mixing, so the mix is the sample itself
  (plain ManifoldMix would average mismatched positions)."""
  x, y = _batch(b=2)
  own = 3.0 * jnp.eye(4)[None].repeat(2, 0).reshape(2, 2, 2, 4)
  perm = np.array([2, 0, 3, 1])
  feats = jnp.concatenate(
      [own[:1], own[:1].reshape(1, 4, 4)[:, perm].reshape(1, 2, 2, 4)], 0)
  fm, _, _ = mixers.alignmix(jax.random.key(0), x, y, lam=0.5,
                             index=np.array([1, 0]), use_input=False,
                             direction=False)
  out = np.asarray(fm(4, feats))
  np.testing.assert_allclose(out, feats, atol=1e-5)
  plain = 0.5 * np.asarray(feats) + 0.5 * np.asarray(feats)[[1, 0]]
  assert np.abs(plain - np.asarray(feats)).max() > 1


def test_alignmix_input_branch_is_mixup_of_the_images():
  x, y = _batch()
  index = np.roll(np.arange(B), 1)
  fm, _, aux = mixers.alignmix(jax.random.key(0), x, y, lam=0.4, index=index,
                               use_input=True)
  np.testing.assert_allclose(
      fm(0, x), 0.4 * np.asarray(x) + 0.6 * np.asarray(x)[index], rtol=1e-6)
  feats = jnp.ones((B, 2, 2, 3))
  np.testing.assert_array_equal(fm(4, feats), feats)
  # Drawn: about half the batches take the input branch (the authors'
  # layer_mix = randint(0, 1)).
  draws = [bool(mixers.alignmix(jax.random.key(i), x, y)[2]["use_input"])
           for i in range(200)]
  assert 70 < sum(draws) < 130


def test_alignmix_plan_gets_no_gradient_and_jits_once():
  fm, _, _, feats, index, _ = _align_inputs(False)
  a = np.asarray(feats, np.float64).reshape(B, 4, 3)
  r = jnp.asarray(_numpy_sinkhorn(a, a[index])[0] * 4, jnp.float32)

  def fixed_plan(f):  # The same mix with R a constant.
    f = f.reshape(B, 4, 3)
    return 0.3 * f + 0.7 * jnp.einsum("bij,bjc->bic", r, f[index])
  g = jax.grad(lambda f: jnp.sum(jnp.sin(fm(4, f))))(feats)
  g_fixed = jax.grad(lambda f: jnp.sum(jnp.sin(fixed_plan(f))))(feats)
  np.testing.assert_allclose(g, g_fixed.reshape(g.shape), rtol=1e-3,
                             atol=1e-5)
  x, y = _batch()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key, f):
    fm, labels, aux = mixers.alignmix(key, x, y)
    return fm(4, f), labels, aux["use_input"]
  for i in range(3):
    run(jax.random.key(i), feats)
  chex.clear_trace_counter()


def test_alignmix_sharded_equals_unsharded():
  x, y = _batch(b=16)
  f = jax.random.uniform(jax.random.key(3), (16, 2, 2, 3)) * 0.5

  def fn(x, y, f):
    fm, labels, _ = mixers.alignmix(jax.random.key(2), x, y, use_input=False)
    return fm(4, f), labels
  _sharded_equals_unsharded(fn, x, y, f)


def test_alignmix_bad_inputs():
  x, y = _batch()
  with pytest.raises(ValueError, match="`stage` must be >= 1"):
    mixers.alignmix(jax.random.key(0), x, y, stage=0)
  with pytest.raises(ValueError, match="`eps` must be a number > 0"):
    mixers.get("alignmix", eps=0.0)
  with pytest.raises(ValueError, match="`input_prob` must be a number in"):
    mixers.get("alignmix", input_prob=1.5)
  with pytest.raises(ValueError, match="`direction` must be a bool"):
    mixers.alignmix(jax.random.key(0), x, y, direction=jnp.ones(3, bool))
  fm, _, _ = mixers.alignmix(jax.random.key(0), x, y)
  with pytest.raises(ValueError, match="aligns positions"):
    fm(4, jnp.ones((B, 6)))


def test_trainer_refuses_a_stage_the_model_lacks():
  import ml_collections
  from automix_jax.train import static
  from configs import cifar10_cpu
  c = cifar10_cpu.get_config("mixer=alignmix")
  c.model = ml_collections.ConfigDict(
      {"name": "wrn", "width": 1 / 16,
       "kwargs": {"depth": 10, "widen_factor": 1}})
  with pytest.raises(ValueError, match=r"`config.mixer.kwargs.stage` = 4: "
                     r"model 'wrn' calls `feature_mix` at stages 0..3"):
    static.StaticMixing(c, num_classes=10, steps_per_epoch=1)


# ---------------------------------------------------------------------------
# SnapMix.
# ---------------------------------------------------------------------------


def _torch_reference(x, y_int, cam, aux):
  """The authors' snapmix (utils/mixmethod.py) given our draws, in torch."""
  torch = pytest.importorskip("torch")
  f = torch.nn.functional
  xt = torch.tensor(np.moveaxis(np.asarray(x), -1, 1))
  index = np.asarray(aux["index"])
  box, box_p = np.asarray(aux["box"]), np.asarray(aux["box_partner"])
  # get_spm: upsample, shift to min 0, normalise.
  maps = f.interpolate(torch.tensor(np.asarray(cam))[:, None], (H, W),
                       mode="bilinear", align_corners=False)[:, 0]
  maps = maps - maps.amin((1, 2), keepdim=True)
  maps = maps / maps.sum((1, 2), keepdim=True)
  out = xt.clone()
  w_a, w_b = np.ones(B), np.zeros(B)
  for b in range(B):
    (y1, y2, x1, x2), (p1, p2, q1, q2) = box[b], box_p[b]
    if y2 <= y1 or x2 <= x1 or p2 <= p1 or q2 <= q1:
      continue
    patch = xt[index[b]:index[b] + 1, :, p1:p2, q1:q2]
    out[b, :, y1:y2, x1:x2] = f.interpolate(
        patch, size=(y2 - y1, x2 - x1), mode="bilinear",
        align_corners=True)[0]
    wa = 1 - maps[b, y1:y2, x1:x2].sum() / (maps[b].sum() + 1e-8)
    wb = maps[index[b], p1:p2, q1:q2].sum() / (maps[index[b]].sum() + 1e-8)
    if y_int[b] == y_int[index[b]]:
      wa, wb = wa + wb, wb + wa
    area = 1 - (y2 - y1) * (x2 - x1) / (H * W)
    w_a[b] = area if torch.isnan(wa) else float(wa)
    w_b[b] = 1 - area if torch.isnan(wb) else float(wb)
  return np.moveaxis(out.numpy(), 1, -1), w_a, w_b


@pytest.mark.parametrize("lam_scope", ["batch", "sample"])
def test_snapmix_matches_the_authors_code(lam_scope):
  x, _ = _batch()
  y_int = np.array([0, 1, 2, 3, 0, 1, 2, 0])   # some pairs share a label
  y = mixers.one_hot(jnp.asarray(y_int), K)
  cam = jax.random.normal(jax.random.key(4), (B, 4, 4))
  cam = cam.at[5].set(2.0)                     # a constant map: area fallback
  fn = jax.jit(lambda k: mixers.snapmix(k, x, y, cam=cam, alpha=1.0,
                                        lam_scope=lam_scope))
  checked_same = False
  for seed in range(4):
    mixed, labels, aux = fn(jax.random.key(seed))
    want_x, w_a, w_b = _torch_reference(x, y_int, cam, aux)
    np.testing.assert_allclose(mixed, want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["weights"][:, 0], w_a, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(aux["weights"][:, 1], w_b, rtol=1e-4,
                               atol=1e-5)
    # Rows sum to 1 and carry the normalised weights.
    lam = w_a / np.where(w_a + w_b > 0, w_a + w_b, 1)
    y_np = np.asarray(y)
    index = np.asarray(aux["index"])
    np.testing.assert_allclose(labels, lam[:, None] * y_np +
                               (1 - lam[:, None]) * y_np[index], atol=1e-5)
    np.testing.assert_allclose(np.asarray(labels).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(aux["lam"], lam, atol=1e-5)
    checked_same |= bool(np.any(y_int == y_int[index]) &
                         np.any(y_int != y_int[index]))
  assert checked_same


def test_snapmix_raw_weights_and_no_mixing_cases():
  x, y = _batch()
  cam = jax.random.normal(jax.random.key(4), (B, 4, 4))
  mixed, labels, aux = mixers.snapmix(jax.random.key(1), x, y, cam=cam,
                                      normalize=False)
  w = np.asarray(aux["weights"])
  y_np = np.asarray(y)
  index = np.asarray(aux["index"])
  np.testing.assert_allclose(labels, w[:, :1] * y_np + w[:, 1:] * y_np[index],
                             rtol=1e-5, atol=1e-6)
  # prob = 0: nothing mixed, own labels.
  mixed, labels, aux = mixers.snapmix(jax.random.key(1), x, y, cam=cam,
                                      prob=0.0)
  np.testing.assert_array_equal(mixed, x)
  np.testing.assert_allclose(labels, y, atol=1e-6)
  np.testing.assert_array_equal(aux["lam"], 1.0)


def test_snapmix_no_gradient_into_the_cam_and_one_trace():
  x, y = _batch()
  cam = jax.random.normal(jax.random.key(4), (B, 4, 4))
  r = jax.random.normal(jax.random.key(5), (B, K))

  def total(c):
    _, labels, aux = mixers.snapmix(jax.random.key(2), x, y, cam=c)
    return jnp.sum(labels * r) + jnp.sum(aux["weights"])
  assert float(jnp.abs(jax.grad(total)(cam)).sum()) == 0.0

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key, c):
    return mixers.snapmix(key, x, y, cam=c)
  for i in range(3):
    run(jax.random.key(i), cam + i)
  chex.clear_trace_counter()


def test_snapmix_sharded_equals_unsharded():
  x, y = _batch(b=16)
  cam = jax.random.normal(jax.random.key(4), (16, 4, 4))
  _sharded_equals_unsharded(
      lambda x, y, c: mixers.snapmix(jax.random.key(3), x, y, cam=c,
                                     lam_scope="sample"), x, y, cam)


def test_snapmix_bad_inputs():
  x, y = _batch()
  for bad in (jnp.zeros((B, 4)), jnp.zeros((B - 1, 4, 4)),
              jnp.zeros((B, 32, 4)), jnp.zeros((B, 4, 4), jnp.int32)):
    with pytest.raises(ValueError, match=r"`cam` must be floating class "
                       r"activation maps \[B, h, w\]"):
      mixers.snapmix(jax.random.key(0), x, y, cam=bad)
  with pytest.raises(ValueError, match="`cam` is a model input"):
    mixers.get("snapmix", cam=jnp.zeros((B, 4, 4)))
  with pytest.raises(ValueError, match="`prob` must be a number in"):
    mixers.get("snapmix", prob=2)
