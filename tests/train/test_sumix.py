"""SUMix (Qin et al., ECCV 2024): the label correction and its regulariser
against a torch re-derivation of the authors' ``ClsUncertainMixupHead.IN_loss``
(github.com/JinXins/SUMix, ``openmixup/models/heads/cls_mixup_head.py``), the
gradient routing, and the per-sample corrected targets."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import mixers
from automix_jax.train import losses
from automix_jax.train import sumix

B, K = 8, 5


def _inputs(seed=0, lam=0.3):
  rng = np.random.default_rng(seed)
  f = lambda: rng.normal(size=(B, K)).astype(np.float32) * 2
  class_ids = rng.integers(0, K, B)
  index = rng.permutation(B)
  return dict(clean_logits=f(), mixed_logits=f(), clean_uncertain=f(),
              mixed_uncertain=f(), class_ids=class_ids.astype(np.int32),
              targets=np.eye(K, dtype=np.float32)[class_ids],
              lam=np.full((B,), lam, np.float32), index=index.astype(np.int32))


def _reference(a, gama):
  """The authors' IN_loss, line by line in torch (scalar λ, hard labels)."""
  torch = pytest.importorskip("torch")
  f = torch.nn.functional
  cls_one = torch.tensor(a["clean_logits"], requires_grad=True)
  cls_mix = torch.tensor(a["mixed_logits"], requires_grad=True)
  unc_one_logits = torch.tensor(a["clean_uncertain"], requires_grad=True)
  unc_mix_logits = torch.tensor(a["mixed_uncertain"], requires_grad=True)
  l2 = lambda x: x / torch.sqrt(torch.sum(x ** 2, 1)).view(-1, 1)
  uncertain_one = l2(f.softmax(unc_one_logits, -1))
  uncertain_mix = l2(f.softmax(unc_mix_logits, -1))
  y_a = torch.tensor(a["class_ids"], dtype=torch.long)
  rand_index = torch.tensor(a["index"], dtype=torch.long)
  y_b = y_a[rand_index]
  lam = float(a["lam"][0])
  avg_factor = y_a.size(0)
  uncertain_one_ = uncertain_one[rand_index, ]
  semantic_one = f.softmax(cls_one.clone().detach(), -1)
  semantic_mix = f.softmax(cls_mix.clone().detach(), -1)
  semantic_one_ = semantic_one[rand_index, ]
  for i in range(avg_factor):
    semantic_one[i, y_b[i]] = 0
    semantic_one_[i, y_a[i]] = 0
  alpha = l2(f.softmax(semantic_mix - semantic_one, -1)) * avg_factor
  alpha_ = l2(f.softmax(semantic_mix - semantic_one_, -1)) * avg_factor
  beta = uncertain_one + uncertain_mix
  beta_ = uncertain_one_ + uncertain_mix
  ina, inb = torch.exp(-alpha), torch.exp(-alpha_)
  ina_f, inb_f = torch.exp(-(beta + alpha)), torch.exp(-(beta_ + alpha_))
  lam_a = torch.ones([avg_factor])
  lam_b = torch.ones([avg_factor])
  for i in range(ina.shape[0]):
    lam_a[i] = lam * ina[i, y_a[i]]
    lam_b[i] = (1 - lam) * inb[i, y_b[i]]
  lam_a = lam_a / (lam_a + lam_b)
  reg = (f.cross_entropy(ina_f, y_a) * lam +
         f.cross_entropy(inb_f, y_b) * (1 - lam))
  (gama * reg).backward()
  return {"alpha": alpha.numpy(), "alpha_": alpha_.numpy(),
          "lam_a": lam_a.detach().numpy(), "reg": float(reg.detach()),
          "grad_unc_one": unc_one_logits.grad.numpy(),
          "grad_unc_mix": unc_mix_logits.grad.numpy(),
          "grad_cls_one": cls_one.grad}


@functools.lru_cache(maxsize=None)
def _jitted(gamma, scale):
  return jax.jit(functools.partial(sumix.sumix_loss, gamma=gamma, scale=scale))


def _ours(a, gamma=0.5, scale=None):
  return _jitted(gamma, scale)(**{k: jnp.asarray(v) for k, v in a.items()})


@pytest.mark.parametrize("seed,lam", [(0, 0.3), (1, 0.85)])
def test_matches_the_authors_in_loss(seed, lam):
  a = _inputs(seed, lam)
  ref = _reference(a, gama=0.5)
  alpha_a, alpha_b = sumix.semantic_distances(
      a["clean_logits"], a["mixed_logits"], a["class_ids"], a["index"])
  np.testing.assert_allclose(alpha_a, ref["alpha"], rtol=1e-5)
  np.testing.assert_allclose(alpha_b, ref["alpha_"], rtol=1e-5)
  _, info = _ours(a)
  np.testing.assert_allclose(info["lam"], ref["lam_a"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(info["regularizer"], ref["reg"], rtol=1e-5)
  # The regulariser's gradients reach the uncertainty head of both forwards
  # exactly as in the reference; the clean classification logits get none.
  grads = jax.grad(lambda c, m: sumix.sumix_loss(
      a["clean_logits"], a["mixed_logits"], c, m, a["class_ids"],
      a["targets"], a["lam"], a["index"], gamma=0.5)[0], argnums=(0, 1))(
          a["clean_uncertain"], a["mixed_uncertain"])
  np.testing.assert_allclose(grads[0], ref["grad_unc_one"], rtol=1e-4,
                             atol=1e-7)
  np.testing.assert_allclose(grads[1], ref["grad_unc_mix"], rtol=1e-4,
                             atol=1e-7)
  assert ref["grad_cls_one"] is None


def test_corrected_targets_are_per_sample_rows_summing_to_one():
  a = _inputs(2, lam=0.4)
  _, info = _ours(a)
  lam_hat = np.asarray(info["lam"])
  assert np.all((lam_hat >= 0) & (lam_hat <= 1))
  assert np.ptp(lam_hat) > 1e-3          # one λ in, a different λ̂ per sample
  y = a["targets"]
  want = lam_hat[:, None] * y + (1 - lam_hat[:, None]) * y[a["index"]]
  np.testing.assert_allclose(info["targets"], want, atol=1e-6)
  np.testing.assert_allclose(np.sum(info["targets"], -1), 1.0, atol=1e-6)
  # Label smoothing survives: the corrected rows mix the smoothed targets.
  a["targets"] = np.asarray(mixers.one_hot(jnp.asarray(a["class_ids"]), K,
                                           smoothing=0.1))
  _, info = _ours(a)
  np.testing.assert_allclose(np.sum(info["targets"], -1), 1.0, atol=1e-6)
  assert float(np.min(info["targets"])) > 0


def test_direction_of_the_correction_as_the_authors_code_has_it():
  # e^{-α_a[y_a]} grows as the mixed prediction puts *less* mass on y_a than
  # the clean own prediction does, so the label the mixed prediction
  # under-represents gains weight: a mixed prediction equal to the own
  # source's clean one moves weight to the partner's label, one equal to the
  # partner's moves it to the own label. (Read off IN_loss; the torch
  # re-derivation above agrees.)
  a = _inputs(3, lam=0.5)
  a["class_ids"] = np.arange(B, dtype=np.int32) % K
  a["index"] = np.roll(np.arange(B), 1).astype(np.int32)
  a["targets"] = np.eye(K, dtype=np.float32)[a["class_ids"]]
  sharp = 8.0 * np.eye(K, dtype=np.float32)[a["class_ids"]]
  a["clean_logits"] = sharp
  a["mixed_logits"] = sharp.copy()
  _, info = _ours(a)
  assert np.all(np.asarray(info["lam"]) < 0.5)
  a["mixed_logits"] = sharp[a["index"]]
  _, info = _ours(a)
  assert np.all(np.asarray(info["lam"]) > 0.5)


def test_gradient_routing():
  a = {k: jnp.asarray(v) for k, v in _inputs(4).items()}

  def total(clean, mixed, clean_u, mixed_u):
    return sumix.sumix_loss(clean, mixed, clean_u, mixed_u, a["class_ids"],
                            a["targets"], a["lam"], a["index"])[0]

  g = jax.grad(total, argnums=(0, 1, 2, 3))(
      a["clean_logits"], a["mixed_logits"], a["clean_uncertain"],
      a["mixed_uncertain"])
  np.testing.assert_array_equal(g[0], 0.0)        # clean "one" logits: detached
  for x in g[1:]:
    assert float(jnp.abs(x).max()) > 1e-4
  # The mixed logits' gradient is the CE's on *constant* corrected targets:
  # no path through λ̂ (the reference detaches the probabilities).
  _, info = sumix.sumix_loss(**a)
  want = jax.grad(losses.soft_cross_entropy)(a["mixed_logits"],
                                             info["targets"])
  np.testing.assert_allclose(g[1], want, rtol=1e-5, atol=1e-8)
  jac = jax.jacobian(lambda m: sumix.sumix_loss(
      a["clean_logits"], m, a["clean_uncertain"], a["mixed_uncertain"],
      a["class_ids"], a["targets"], a["lam"], a["index"])[1]["targets"])(
          a["mixed_logits"])
  np.testing.assert_array_equal(jac, 0.0)


def test_large_scale_stays_finite_where_the_reference_underflows():
  a = _inputs(5, lam=0.3)
  _, info = _ours(a, scale=4000.0)        # e^{-α} underflows in float32
  lam_hat = np.asarray(info["lam"])
  assert np.all(np.isfinite(lam_hat)) and np.all((lam_hat >= 0) & (lam_hat <= 1))
  a["lam"][:] = 1.0                       # λ = 1 stays 1
  _, info = _ours(a)
  np.testing.assert_array_equal(info["lam"], 1.0)


def test_traced_once():
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(a):
    return sumix.sumix_loss(**a)

  for seed in range(3):
    a = {k: jnp.asarray(v) for k, v in _inputs(seed).items()}
    jax.block_until_ready(run(a))


def test_bad_inputs_and_config_raise():
  a = {k: jnp.asarray(v) for k, v in _inputs().items()}
  with pytest.raises(ValueError, match="`mixed_logits` must be"):
    sumix.sumix_loss(**{**a, "mixed_logits": a["mixed_logits"][:, :3]})
  with pytest.raises(ValueError, match="two-image mix: `index`"):
    sumix.sumix_loss(**{**a, "index": jnp.stack([a["index"]] * 2, 1)})
  import ml_collections as mlc
  cfg = lambda **b: mlc.ConfigDict({"label_mix": b})
  assert sumix.from_config(cfg(name="none", kwargs={})) is None
  assert sumix.from_config(cfg(name="sumix", kwargs={"gamma": 0.1})).gamma == 0.1
  with pytest.raises(ValueError, match="config.label_mix.name"):
    sumix.from_config(cfg(name="decouple", kwargs={}))
  with pytest.raises(ValueError, match="config.label_mix.kwargs.gamma"):
    sumix.from_config(cfg(name="sumix", kwargs={"gamma": -1.0}))
  with pytest.raises(ValueError, match="config.label_mix"):
    sumix.from_config(cfg(name="sumix", kwargs={"gama": 0.5}))
