"""``mixers.Mixup`` against ``timm.data.Mixup``, draw for draw, in every mode.

timm draws from the global NumPy RNG; its draws are replayed from an identically
seeded ``RandomState`` in timm's order and fed to ``Mixup`` through the
overrides ``lam``, ``use_cutmix``, ``center`` and ``box`` (as test_peers.py does
for the single mixers). A wrong replay order, a wrong box or a wrong target on
either side makes images or targets disagree.
"""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm_mixup = pytest.importorskip("timm.data.mixup")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from automix_jax import mixers  # noqa: E402

pytestmark = pytest.mark.peer

B, H, W, C, K = 6, 16, 12, 3, 5  # non-square: catches H/W swaps
TOL = 1e-6
KINDS = {"mixup": dict(mixup_alpha=1.0, cutmix_alpha=0.0),
         "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0),
         "switch": dict(mixup_alpha=0.8, cutmix_alpha=1.0),
         "minmax": dict(mixup_alpha=0.8, cutmix_minmax=(0.2, 0.8))}


@functools.lru_cache(maxsize=None)
def _ours(kind, mode, correct_lam):
  mix = mixers.Mixup(**KINDS[kind], mode=mode, correct_lam=correct_lam,
                     prob=0.7, label_smoothing=0.1, num_classes=K,
                     data_format="NCHW")
  return jax.jit(lambda x, y, **o: mix(jax.random.key(0), x, y, **o))


def _replay(kind, mode, seed):
  """timm's draws for ``Mixup(prob=0.7, switch_prob=0.5)``, in timm's order."""
  rs = np.random.RandomState(seed)
  cfg = KINDS[kind]
  mix_a = cfg["mixup_alpha"]
  cut_a = 1.0 if "cutmix_minmax" in cfg else cfg["cutmix_alpha"]
  if mode == "batch":
    lam, use = np.ones(1, np.float32), np.zeros(1, bool)
    if rs.rand() < 0.7:
      use[0] = rs.rand() < 0.5 if mix_a and cut_a else bool(cut_a)
      a = cut_a if use[0] else mix_a
      lam[0] = rs.beta(a, a)
  else:
    n = B if mode == "elem" else B // 2
    if mix_a and cut_a:
      use = rs.rand(n) < 0.5
      draw = np.where(use, rs.beta(cut_a, cut_a, size=n),
                      rs.beta(mix_a, mix_a, size=n))
    else:
      use = np.full(n, bool(cut_a))
      a = cut_a or mix_a
      draw = rs.beta(a, a, size=n)
    lam = np.where(rs.rand(n) < 0.7, draw.astype(np.float32), np.float32(1))
  boxes = np.zeros((len(lam), 4), np.int32)
  centers = np.zeros((len(lam), 2), np.int32)
  for i in range(len(lam)):
    if lam[i] != 1 and use[i]:
      if "cutmix_minmax" in cfg:
        lo, hi = cfg["cutmix_minmax"]
        ch = rs.randint(int(H * lo), int(H * hi))
        cw = rs.randint(int(W * lo), int(W * hi))
        y1, x1 = rs.randint(0, H - ch + 1), rs.randint(0, W - cw + 1)
        boxes[i] = y1, y1 + ch, x1, x1 + cw
      else:
        centers[i] = rs.randint(0, H), rs.randint(0, W)
  over = {"lam": jnp.asarray(lam), "use_cutmix": jnp.asarray(use)}
  if "cutmix_minmax" in cfg:
    over["box"] = jnp.asarray(boxes)
  else:
    over["center"] = jnp.asarray(centers)
  return over


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("correct_lam", [True, False])
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_mixup_matches_timm_draw_for_draw(kind, mode, correct_lam, seed):
  rs = np.random.RandomState(100 + seed)
  x = rs.uniform(-1, 1, (B, C, H, W)).astype(np.float32)   # timm's NCHW
  t = rs.randint(0, K, B)
  cfg = dict(KINDS[kind])
  peer = timm_mixup.Mixup(**cfg, prob=0.7, switch_prob=0.5, mode=mode,
                          correct_lam=correct_lam, label_smoothing=0.1,
                          num_classes=K)
  np.random.seed(seed)
  want_x, want_y = peer(torch.from_numpy(x.copy()), torch.from_numpy(t))
  got_x, got_y = _ours(kind, mode, correct_lam)(
      jnp.asarray(x), jnp.asarray(t), **_replay(kind, mode, seed))
  np.testing.assert_allclose(np.asarray(got_x), want_x.numpy(), rtol=0,
                             atol=TOL)
  np.testing.assert_allclose(np.asarray(got_y), want_y.numpy(), rtol=0,
                             atol=TOL)


def test_mixup_defaults_are_timms():
  ours = mixers.Mixup()
  peer = timm_mixup.Mixup()
  for name in ("mixup_alpha", "cutmix_alpha", "cutmix_minmax", "switch_prob",
               "mode", "correct_lam", "label_smoothing", "num_classes"):
    assert getattr(ours, name) == getattr(peer, name), name
  assert ours.prob == peer.mix_prob


def test_mixup_is_pure_jits_once_and_mixes_per_draw():
  import chex
  mix = mixers.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem",
                     num_classes=K)
  x = jax.random.uniform(jax.random.key(0), (B, H, W, C))
  y = jnp.arange(B) % K
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key):
    return mix(key, x, y, return_aux=True)

  outs = [run(jax.random.key(s)) for s in range(3)]
  a, b = run(jax.random.key(0)), outs[0]
  chex.assert_trees_all_equal(a, b)                       # same key, same draw
  aux = outs[0][2]
  np.testing.assert_array_equal(aux["index"], np.arange(B)[::-1])
  np.testing.assert_allclose(outs[0][1].sum(-1), 1.0, atol=1e-6)
  lam = np.stack([o[2]["lam"] for o in outs])
  assert len(np.unique(lam)) > B                  # per-element draws differ


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="half"), "mode"),
    (dict(mixup_alpha=0.0), "turn mixing on"),
    (dict(mixup_alpha=-1.0), "mixup_alpha"),
    (dict(prob=1.5), "prob"),
    (dict(cutmix_minmax=(0.8, 0.2)), "cutmix_minmax"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(num_classes=0), "num_classes"),
])
def test_mixup_validates_at_construction(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mixers.Mixup(**kwargs)
  with pytest.raises(TypeError):
    mixers.Mixup(1.0)  # hyperparameters are keyword-only


def test_mixup_bad_calls():
  mix = mixers.Mixup(num_classes=K)
  x = jnp.zeros((B, H, W, C))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="even"):
    mix(key, x[:5], jnp.zeros(5, jnp.int32))
  with pytest.raises(ValueError, match=r"class ids in \[0, num_classes\)"):
    mix(key, x, jnp.full(B, K))
  with pytest.raises(ValueError, match="channels-first"):
    mix(key, jnp.zeros((B, C, H, W)), jnp.zeros(B, jnp.int32))
  with pytest.raises(ValueError, match="lam"):
    mix(key, x, jnp.zeros(B, jnp.int32), lam=jnp.ones(3))
