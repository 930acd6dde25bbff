"""DecoupleMix (Liu et al., NeurIPS 2023): the regulariser against the authors'
OpenMixup loss re-derived in torch, per-sample λ against a direct per-row
loop, and the option in the static step."""

import copy

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from automix_jax import mixers
from automix_jax import sharding
from automix_jax.train import losses
from tests.train.test_static_step import tiny_batch
from tests.train.test_static_step import tiny_config

pytestmark = pytest.mark.usefixtures("fast_compile")

K = 7


def openmixup_decouple_loss(pred, label, eta_weight, eps=1e-3):
  """OpenMixup's ``soft_mix_cross_entropy`` (``use_mix_decouple=True``,
  ``reduction='mean'``, ``avg_factor=N``) re-derived in torch: λ values and
  their class order come from sample 0; rows with fewer mixed classes get
  plain soft CE; the decoupled terms are skipped when sample 0's λ values
  coincide (λ = 0.5)."""
  torch = pytest.importorskip("torch")
  pred = torch.tensor(np.array(pred), dtype=torch.float64)
  label = torch.tensor(np.array(label), dtype=torch.float64)
  n = label.shape[0]
  hot = (label > eps).sum(-1)
  full = hot >= hot.max()
  p, y = pred[full], label[full]
  mixed = y > eps
  lam_k = y[0, y[0] > eps]
  loss = (-y * torch.log_softmax(p, -1)).sum(-1)
  if len(set(lam_k.tolist())) == lam_k.numel() and lam_k.numel() > 1:
    for i in range(lam_k.numel()):
      keep = (y == lam_k[i]) | ~mixed
      pk = p[keep].reshape(p.shape[0], -1)
      yk = (y[keep].reshape(p.shape[0], -1) > 0).double()
      loss = loss + eta_weight[i] * (-yk * torch.log_softmax(pk, -1)).sum(-1)
  total = loss.sum()
  if (~full).any():
    total = total + (-label[~full] * torch.log_softmax(pred[~full], -1)).sum()
  return float(total / n)


def openmixup_eta(lam, *, eta=0.1, scale="pow", thr_lam=1.0, idx=1.0,
                  mode="both", thr=0.5):
  """``ClsMixupHead``'s eta list ``[η_a, η_b]`` for one λ."""
  below = lam < thr
  weights = {"both": [lam, 1 - lam],
             "less": [lam, 0] if below else [0, 1 - lam],
             "more": [lam, 0] if not below else [0, 1 - lam]}[mode]
  out = []
  for w in weights:
    if w > 0:
      w = (1.0 if w >= thr_lam else thr_lam ** -abs(idx) * w ** abs(idx)
           ) if scale == "pow" else 1.0
      w *= eta
    out.append(w)
  return out


def _batch(lam, own, partner, seed=0):
  z = jax.random.normal(jax.random.key(seed), (len(own), K)) * 2.0
  own, partner = jnp.asarray(own), jnp.asarray(partner)
  hot = mixers.one_hot(own, K)
  targets = (jnp.asarray(lam)[:, None] * hot
             + (1 - jnp.asarray(lam))[:, None] * mixers.one_hot(partner, K))
  return z, targets, own


def _ours(z, targets, own, **kw):
  loss, reg = losses.mixed_cross_entropy(
      z, targets, own, decouple={**losses.DECOUPLE_DEFAULTS, **kw})
  return float(loss), float(reg)


# A batch OpenMixup handles as intended: one λ, and sample 0's own class has
# the smaller index (so eta[0] = 0.1 λ is paired with the λ-weighted class);
# sample 3 mixes two images of one class (plain CE in both).
OWN, PARTNER = [1, 4, 0, 2, 6], [3, 2, 5, 2, 1]


@pytest.mark.peer
@pytest.mark.parametrize("kw", [
    {},                                                    # pow, both
    {"lam_scale": "none"},
    {"mode": "less"},
    {"mode": "more", "lam_idx": 2.0, "lam_thr": 0.8},
])
def test_matches_openmixup_on_one_batch_lambda(kw):
  lam = 0.3
  z, targets, own = _batch([lam] * 5, OWN, PARTNER)
  ours, reg = _ours(z, targets, own, **kw)
  eta = openmixup_eta(lam, eta=0.1, scale=kw.get("lam_scale", "pow"),
                      thr_lam=kw.get("lam_thr", 1.0),
                      idx=kw.get("lam_idx", 1.0), mode=kw.get("mode", "both"))
  ref = openmixup_decouple_loss(z, targets, eta)
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  assert reg > 1e-3  # the regulariser is really there


@pytest.mark.peer
def test_differs_from_openmixup_where_it_reads_sample_zero():
  # Sample 0's own class (5) has the larger index: OpenMixup pairs 0.1 λ with
  # the partner's class in every row; here each class gets its own weight.
  lam = 0.2
  own, partner = [5, 4, 0, 2, 6], [1, 2, 3, 2, 1]
  z, targets, own_j = _batch([lam] * 5, own, partner)
  ours, _ = _ours(z, targets, own_j)
  eta = openmixup_eta(lam)
  assert not np.isclose(ours, openmixup_decouple_loss(z, targets, eta),
                        rtol=1e-4)
  np.testing.assert_allclose(
      ours, openmixup_decouple_loss(z, targets, eta[::-1]), rtol=1e-5)
  # λ = 0.5: OpenMixup drops the term (two equal values); it is kept here.
  z, targets, own_j = _batch([0.5] * 5, OWN, PARTNER)
  ours, reg = _ours(z, targets, own_j, lam_scale="none")
  np.testing.assert_allclose(
      ours - reg, openmixup_decouple_loss(z, targets, [0.1, 0.1]), rtol=1e-5)
  assert reg > 1e-3


def _per_row(z, weights, own, *, eta=0.1, mode="both", thr=0.5):
  """The formula row by row: each mixed class against the non-mixed ones."""
  z, weights, own = map(np.asarray, (z, weights, own))
  out = []
  for zb, wb, ob in zip(z.astype(np.float64), weights, own):
    mixed = [c for c in range(K) if wb[c] > 1e-3]
    rest = [c for c in range(K) if c not in mixed]
    total = 0.0
    if len(mixed) >= 2:
      for c in mixed:
        if mode == "less" and (c == ob) != (wb[ob] < thr):
          continue
        sub = zb[[c] + rest]
        total += eta * wb[c] * -(sub[0] - np.log(np.exp(sub).sum()))
    out.append(total)
  return np.array(out)


@pytest.mark.parametrize("mode", ["both", "less"])
def test_per_sample_lambda_and_nway_rows(mode):
  """Per-sample λ (each row its own pair and weight) and a 3-image row,
  with label smoothing: the weights are recovered from the smoothed targets."""
  lam = np.array([0.1, 0.45, 0.5, 0.9, 0.7, 1.0], np.float32)
  own = jnp.array([0, 3, 6, 2, 2, 4])
  partner = jnp.array([1, 1, 0, 5, 2, 3])
  weights = (lam[:, None] * np.eye(K)[own]
             + (1 - lam)[:, None] * np.eye(K)[partner])
  weights[4] = 0.0                                     # row 4: three images
  weights[4, [2, 5, 6]] = [0.5, 0.3, 0.2]
  eps = 0.1
  smoothed = (1 - eps) * weights + eps / K
  z = jax.random.normal(jax.random.key(3), (6, K)) * 2.0
  reg = losses.decoupled_regularizer(z, losses.unsmooth(smoothed, eps), own,
                                     mode=mode)
  want = _per_row(z, weights, own, mode=mode)
  np.testing.assert_allclose(reg, want, rtol=1e-5, atol=1e-7)
  assert want[5] == 0.0 and np.all(want[:5] > 0)      # λ = 1: no term
  np.testing.assert_allclose(losses.unsmooth(smoothed, eps), weights,
                             atol=1e-6)
  loss, mean_reg = losses.mixed_cross_entropy(
      z, jnp.asarray(smoothed), own, smoothing=eps,
      decouple={**losses.DECOUPLE_DEFAULTS, "mode": mode})
  np.testing.assert_allclose(
      loss, losses.soft_cross_entropy(z, jnp.asarray(smoothed)) + want.mean(),
      rtol=1e-5)
  np.testing.assert_allclose(mean_reg, want.mean(), rtol=1e-5)


def test_off_is_plain_soft_ce_and_gradients_are_finite():
  z, targets, own = _batch([0.3, 0.6], [0, 1], [1, 0])
  loss, reg = losses.mixed_cross_entropy(z, targets, own)
  assert float(reg) == 0.0
  assert float(loss) == float(losses.soft_cross_entropy(z, targets))
  # K = 2: every class is mixed, so each decoupled softmax has one class.
  two = jnp.array([[0.3, 0.7], [1.0, 0.0]])
  zz = jnp.array([[1.0, -1.0], [0.5, 0.2]])
  np.testing.assert_array_equal(losses.decoupled_regularizer(zz, two), 0.0)
  g = jax.jit(jax.grad(
      lambda q: jnp.sum(losses.decoupled_regularizer(q, two))))(zz)
  assert np.all(np.isfinite(g))
  g = jax.jit(jax.grad(lambda q: losses.mixed_cross_entropy(
      q, targets, own, decouple=dict(losses.DECOUPLE_DEFAULTS))[0]))(z)
  assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_jits_once():
  z, targets, own = _batch([0.3, 0.6], [0, 1], [1, 0])
  fn = jax.jit(chex.assert_max_traces(
      lambda z, t, y: losses.decoupled_regularizer(z, t, y, mode="less"),
      n=1))
  for s in range(3):
    fn(z + s, targets, own).block_until_ready()


def test_config_validation():
  assert losses.decouple_from_config(None) is None
  off = ml_collections.ConfigDict({"decouple": {"enabled": False}})
  assert losses.decouple_from_config(off) is None
  on = {"decouple": {"enabled": True, "eta": 0.2}}
  assert losses.decouple_from_config(on) == {**losses.DECOUPLE_DEFAULTS,
                                             "eta": 0.2}
  for bad, match in [({"eta": -1.0}, "config.loss.decouple.eta"),
                     ({"mode": "all"}, "config.loss.decouple.mode"),
                     ({"lam_scale": "exp"}, "lam_scale"),
                     ({"lam_thr": 0.0}, "lam_thr"),
                     ({"etta": 0.1}, "unknown key")]:
    with pytest.raises(ValueError, match=match):
      losses.decouple_from_config({"decouple": {"enabled": True, **bad}})
  z, targets, _ = _batch([0.3], [0], [1])
  with pytest.raises(ValueError, match="labels"):
    losses.decoupled_regularizer(z, targets, mode="less")
  with pytest.raises(ValueError, match="mix_weights"):
    losses.decoupled_regularizer(z, targets[:, :3])


def test_static_step_adds_the_regulariser_of_its_own_forward():
  """One static step with DecoupleMix: the loss is the mixed CE plus the
  regulariser of the same logits and mixed targets (recomputed here)."""
  from automix_jax.train import static
  config = tiny_config(**{"mixer.name": "cutmix", "label_smoothing": 0.1})
  config.unlock()
  config.loss.decouple.enabled = True
  config.loss.decouple.eta = 0.5
  config.lock()
  method = static.StaticMixing(config, num_classes=10, steps_per_epoch=3,
                               mesh=sharding.make_mesh(jax.devices()[:1]))
  key = jax.random.key(0)
  batch = tiny_batch()
  state = jax.jit(method.init)(key, batch["image"][:2])
  _, metrics = jax.jit(method.train_step)(state, batch, key)
  @jax.jit
  def recompute(state, batch):
    # The step's own draws (static.StaticMixing.train_step).
    k_mix, k_drop = jax.random.split(jax.random.fold_in(key, state.step))
    targets = mixers.one_hot(batch["label"], 10, smoothing=0.1)
    mixed, mixed_targets, _ = method.mixer(k_mix, batch["image"], targets)
    out, _ = static.train_apply(
        method.model,
        {"params": state.params, "batch_stats": state.batch_stats}, mixed,
        rngs={"dropout": k_drop})
    logits = out["logits"]["one"]
    reg = jnp.mean(losses.decoupled_regularizer(
        logits, losses.unsmooth(mixed_targets, 0.1), batch["label"],
        **{**losses.DECOUPLE_DEFAULTS, "eta": 0.5}))
    return logits, mixed_targets, reg

  logits, mixed_targets, reg = recompute(state, batch)
  assert float(reg) > 1e-3
  np.testing.assert_allclose(metrics["decouple_reg"], reg, rtol=1e-4)
  np.testing.assert_allclose(
      metrics["loss"], losses.soft_cross_entropy(logits, mixed_targets) + reg,
      rtol=1e-4)


@pytest.mark.parametrize("method_name", ["automix", "adautomix"])
def test_learned_classifier_loss_gains_exactly_the_regulariser(method_name):
  """Same state, key and batch with the option off and on: the classifier's
  loss grows by the reported regulariser, the generator's is untouched."""
  import importlib
  from tests.learned import _shared as S
  module = importlib.import_module(f"automix_jax.train.{method_name}")
  cls = {"automix": "AutoMix", "adautomix": "AdAutoMix"}[method_name]
  cpu = importlib.import_module(f"configs.{method_name}.cifar10_cpu")
  # AdAutoMix with N = 2: one mixed classifier sample, as AutoMix.
  block = {"mix_samples": 2} if method_name == "adautomix" else {}

  c = S.tiny(cpu.get_config(), method_name, block)
  c.loss.decouple.enabled = True
  c.loss.decouple.lam_scale = "none"
  c.lock()
  on = getattr(module, cls)(c, num_classes=S.K,
                            steps_per_epoch=S.STEPS_PER_EPOCH)
  off = copy.copy(on)
  off.decouple = None                      # the option off, all else equal
  batch = S.make_batch()
  state = on.init(jax.random.key(0), batch["image"][:2])

  @jax.jit
  def run(state, batch):
    out = []
    for method in (off, on):
      key = jax.random.fold_in(jax.random.key(1), state.step)
      ctx = (method.prepare(2, state, batch, key) if method_name == "adautomix"
             else method.prepare(state, batch, key))
      l_cls, l_gen, aux = method.losses(state.params, state, ctx)
      out.append((l_cls, l_gen, aux["metrics"]))
    return out

  (cls_off, gen_off, m_off), (cls_on, gen_on, m_on) = jax.device_get(
      run(state, batch))
  assert "decouple_reg" not in m_off and float(m_on["decouple_reg"]) > 1e-3
  np.testing.assert_allclose(cls_on - cls_off, m_on["decouple_reg"],
                             rtol=1e-4)
  np.testing.assert_allclose(gen_on, gen_off, rtol=1e-6)
