"""Differential tests: our CutMix / MixUp / ResizeMix against timm and torchvision.

JAX's PRNG cannot reproduce NumPy's or torch's streams, so both sides are fed
the *same parameters*: the peer runs from a seeded global RNG, and its draws are
replayed from an identically seeded generator in the documented order
(``timm/data/mixup.py``, torchvision ``transforms.v2``) and passed to our
mixers as explicit ``lam`` / ``center`` / ``index``. A wrong replay order or a
wrong formula on either side makes images or targets disagree.

Installed timm (1.0.x) computes the box upper edge as ``c + (cut + 1) // 2`` (an
exact ``cut``-pixel box), not ``c + cut // 2`` as older timm
releases did; torchvision keeps ``c + cut // 2``. Our ``box_rule`` covers both.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from automix_jax import mixers  # noqa: E402

pytestmark = pytest.mark.peer

B, H, W, C, K = 6, 16, 12, 3, 5  # non-square: catches H/W swaps
TOL = 1e-6


def _data(seed=0):
  rs = np.random.RandomState(1000 + seed)
  x = rs.uniform(-1, 1, (B, H, W, C)).astype(np.float32)
  t = rs.randint(0, K, B)
  return x, t


def _to_torch(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _from_torch(x):
  return x.detach().numpy().transpose(0, 2, 3, 1)


_JIT = {}


def _mixer(name, **static):
  """A jitted mixer with static hyperparameters, cached (compile once)."""
  key = (name, tuple(sorted(static.items())))
  if key not in _JIT:
    fn = mixers.get(name, **static)
    _JIT[key] = jax.jit(lambda x, y, **a: fn(jax.random.key(0), x, y, **a))
  return _JIT[key]


def _ours(kind, x, labels, lam, index, centers=None, **static):
  lam = jnp.asarray(np.broadcast_to(np.float32(lam), (B,)))
  index = jnp.asarray(index, jnp.int32)
  if kind == "mixup":
    return _mixer("mixup")(jnp.asarray(x), labels, lam=lam, index=index)
  centers = jnp.asarray(np.broadcast_to(np.asarray(centers, np.int32), (B, 2)))
  return _mixer("cutmix", **static)(jnp.asarray(x), labels, lam=lam,
                                    index=index, center=centers)


def _assert_close(ours, images, targets):
  np.testing.assert_allclose(np.asarray(ours[0]), images, rtol=0, atol=TOL)
  np.testing.assert_allclose(np.asarray(ours[1]), targets, rtol=0, atol=TOL)


# ----------------------------------------------------------------------------
# timm.data.Mixup
# ----------------------------------------------------------------------------

FLIP = np.arange(B)[::-1]


def _timm_mixup(kind, **kw):
  timm_mixup = pytest.importorskip("timm.data.mixup")
  alphas = {"mixup": (1.0, 0.0), "cutmix": (0.0, 1.0), "switch": (0.8, 1.0)}
  mix_a, cut_a = alphas[kind]
  return timm_mixup.Mixup(mixup_alpha=mix_a, cutmix_alpha=cut_a,
                          num_classes=K, **kw), mix_a, cut_a


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("correct_lam", [True, False])
@pytest.mark.parametrize("kind", ["mixup", "cutmix", "switch"])
def test_timm_batch_mode(kind, correct_lam, smoothing, seed):
  mix, mix_a, cut_a = _timm_mixup(kind, prob=1.0, switch_prob=0.5,
                                  mode="batch", correct_lam=correct_lam,
                                  label_smoothing=smoothing)
  x, t = _data(seed)
  np.random.seed(seed)
  out_x, out_y = mix(_to_torch(x).clone(), torch.from_numpy(t))

  # Replay of Mixup._params_per_batch + rand_bbox, in timm's order.
  rs = np.random.RandomState(seed)
  assert rs.rand() < 1.0  # the `prob` gate
  use_cutmix = kind == "cutmix"
  if kind == "switch":
    use_cutmix = rs.rand() < 0.5
  a = cut_a if use_cutmix else mix_a
  lam = rs.beta(a, a)
  labels = mixers.one_hot(jnp.asarray(t), K, smoothing=smoothing)
  if use_cutmix:
    cy, cx = rs.randint(0, H), rs.randint(0, W)
    ours = _ours("cutmix", x, labels, lam, FLIP, (cy, cx),
                 correct_lam=correct_lam, box_rule="exact")
  else:
    ours = _ours("mixup", x, labels, lam, FLIP)
  _assert_close(ours, _from_torch(out_x), out_y.numpy())


@pytest.mark.parametrize("seed", [1, 2])  # seeds with mixed and unmixed λ_i
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("correct_lam", [True, False])
@pytest.mark.parametrize("kind", ["mixup", "cutmix", "switch"])
def test_timm_elem_mode_per_sample_lam(kind, correct_lam, smoothing, seed):
  # prob < 1 leaves some elements unmixed (λ_i = 1): both sides must agree.
  mix, mix_a, cut_a = _timm_mixup(kind, prob=0.7, switch_prob=0.5,
                                  mode="elem", correct_lam=correct_lam,
                                  label_smoothing=smoothing)
  x, t = _data(seed)
  np.random.seed(seed)
  out_x, out_y = mix(_to_torch(x).clone(), torch.from_numpy(t))

  # Replay of Mixup._params_per_elem, then one rand_bbox per cutmix element.
  rs = np.random.RandomState(seed)
  if kind == "switch":
    use_cutmix = rs.rand(B) < 0.5
    lam_cut = rs.beta(cut_a, cut_a, size=B)
    lam_mix = rs.beta(mix_a, mix_a, size=B)
    lam_draw = np.where(use_cutmix, lam_cut, lam_mix)
  else:
    use_cutmix = np.full(B, kind == "cutmix")
    a = cut_a if kind == "cutmix" else mix_a
    lam_draw = rs.beta(a, a, size=B)
  lam = np.where(rs.rand(B) < 0.7, lam_draw.astype(np.float32),
                 np.float32(1.0))
  assert (lam == 1).any() and (lam < 1).any()  # the seeds exercise both
  centers = np.zeros((B, 2), np.int32)
  for i in range(B):
    if lam[i] != 1 and use_cutmix[i]:
      centers[i] = rs.randint(0, H), rs.randint(0, W)

  labels = mixers.one_hot(jnp.asarray(t), K, smoothing=smoothing)
  cut = _ours("cutmix", x, labels, lam, FLIP, centers,
              correct_lam=correct_lam, box_rule="exact")
  mix_out = _ours("mixup", x, labels, lam, FLIP)
  # Per-element switch: each element takes its own mixer's output.
  sel = use_cutmix
  images = np.where(sel[:, None, None, None], cut[0], mix_out[0])
  targets = np.where(sel[:, None], cut[1], mix_out[1])
  _assert_close((images, targets), _from_torch(out_x), out_y.numpy())


def test_symmetric_box_rule_differs_from_installed_timm_for_odd_cuts():
  # λ = 0.5 on 16 x 12: cut = (11, 8). timm's exact rule gives an 11-row box,
  # the symmetric rule (torchvision, OpenMixup) 10 rows.
  x, t = _data()
  labels = mixers.one_hot(jnp.asarray(t), K)
  boxes = {rule: np.asarray(_ours("cutmix", x, labels, 0.5, FLIP, (8, 6),
                                  box_rule=rule)[2]["box"][0])
           for rule in ("exact", "symmetric")}
  assert tuple(boxes["exact"]) == (3, 14, 2, 10)
  assert tuple(boxes["symmetric"]) == (3, 13, 2, 10)


# ----------------------------------------------------------------------------
# torchvision.transforms.v2 MixUp / CutMix
# ----------------------------------------------------------------------------

ROLL = np.roll(np.arange(B), 1)  # partner of i is i - 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_torchvision_v2(kind, smoothing, seed):
  v2 = pytest.importorskip("torchvision.transforms.v2")
  alpha = 1.0
  tf = (v2.MixUp if kind == "mixup" else v2.CutMix)(alpha=alpha,
                                                    num_classes=K)
  x, t = _data(seed)
  torch.manual_seed(seed)
  out_x, out_y = tf(_to_torch(x).clone(), torch.from_numpy(t))

  # Replay: Beta(tensor([α]), tensor([α])).sample(()), then randint(W),
  # randint(H) for CutMix.
  torch.manual_seed(seed)
  dist = torch.distributions.Beta(torch.tensor([alpha]), torch.tensor([alpha]))
  lam = float(dist.sample(()))
  labels = mixers.one_hot(jnp.asarray(t), K, smoothing=smoothing)
  if kind == "cutmix":
    cx = int(torch.randint(W, size=(1,)))
    cy = int(torch.randint(H, size=(1,)))
    ours = _ours("cutmix", x, labels, lam, ROLL, (cy, cx),
                 box_rule="symmetric")
  else:
    ours = _ours("mixup", x, labels, lam, ROLL)
  # torchvision has no label smoothing; (1 - s) y + s / K afterwards equals
  # mixing smoothed one-hots.
  targets = out_y.numpy() * (1 - smoothing) + smoothing / K
  _assert_close(ours, _from_torch(out_x), targets)


def test_torchvision_partner_roll_matches_our_roll_partner():
  v2 = pytest.importorskip("torchvision.transforms.v2")
  x, t = _data()
  torch.manual_seed(0)
  out_x, _ = v2.MixUp(alpha=1.0, num_classes=K)(_to_torch(x).clone(),
                                                 torch.from_numpy(t))
  torch.manual_seed(0)
  lam = float(torch.distributions.Beta(torch.tensor([1.0]),
                                       torch.tensor([1.0])).sample(()))
  roll = mixers.draw_partner(jax.random.key(0), B, "roll")
  np.testing.assert_array_equal(roll, ROLL)
  ours = mixers.mixup(jax.random.key(0), jnp.asarray(x),
                      mixers.one_hot(jnp.asarray(t), K), lam=lam,
                      partner="roll")
  np.testing.assert_allclose(np.asarray(ours[0]), _from_torch(out_x), atol=TOL)


# ----------------------------------------------------------------------------
# ResizeMix's resize against torch.nn.functional.interpolate (OpenMixup's op).
# ----------------------------------------------------------------------------


def test_resizemix_torch_rule_matches_interpolate_nearest_bit_for_bit():
  size = 224
  rs = np.random.RandomState(0)
  x = rs.uniform(-1, 1, (2, size, size, C)).astype(np.float32)
  labels = mixers.one_hot(jnp.asarray([0, 1]), K)
  # τ = 0.21: cut = int(224 * 0.21) = 47, box side 2 * 23 = 46, a size where
  # PyTorch's float32 scale 224 / 46 makes a row read one pixel early.
  kw = dict(tau=jnp.float32(0.21), center=jnp.asarray([112, 100]),
            index=jnp.asarray([1, 0], jnp.int32))
  out = {rule: mixers.resizemix(jax.random.key(0), jnp.asarray(x), labels,
                                nearest=rule, **kw) for rule in ("torch",
                                                                 "exact")}
  y1, y2, x1, x2 = (int(v) for v in out["torch"][2]["box"][0])
  assert (y2 - y1, x2 - x1) == (46, 46)
  expected = _to_torch(x).clone()
  expected[0, :, y1:y2, x1:x2] = torch.nn.functional.interpolate(
      _to_torch(x)[1:2], size=(y2 - y1, x2 - x1), mode="nearest")[0]
  np.testing.assert_array_equal(np.asarray(out["torch"][0][0]),
                                _from_torch(expected)[0])
  # The exact integer rule is a different (equally valid) nearest resize here.
  assert not np.array_equal(np.asarray(out["exact"][0][0]),
                            _from_torch(expected)[0])
