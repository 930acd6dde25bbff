"""What a new user hits in the first hour (issue 13): every input that used to
give a silently wrong result now raises naming the argument and the expected
form (or gives the right result where the intent is unambiguous), under jit
through ``checkify``, and every mixer runs on Explicit- and Auto-axis meshes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from automix_jax import generators
from automix_jax import mixers

B, H, W, C, K = 4, 8, 8, 3, 5
# Static mixers, and model-aware ones that need only a saliency map (given by
# _hparams); those needing a CAM or mixing features have their own tests.
# PuzzleMix and Co-Mixup need square images divisible by their block grids
# and are slow at any size: tests/mixers/test_puzzle_comix.py covers this
# contract for them (provenance, labels, jit once, sharding, refusals).
OWN_CONTRACT_TESTS = ("puzzlemix", "comixup")
MIXERS = [n for n in mixers.names()
          if n != "none" and set(mixers.needs(n)) <= {"saliency"}
          and n not in OWN_CONTRACT_TESTS]


def _batch(b=B, h=H, w=W, c=C, seed=0):
  kx, ky = jax.random.split(jax.random.key(seed))
  x = jax.random.uniform(kx, (b, h, w, c))
  return x, mixers.one_hot(jax.random.randint(ky, (b,), 0, K), K)


def _checked(fn):
  """``fn`` jitted under checkify: the value checks that plain jit drops."""
  return checkify.checkify(jax.jit(fn), errors=checkify.user_checks)


def _raises_checked(match, fn, *args):
  err, _ = _checked(fn)(*args)
  with pytest.raises(checkify.JaxRuntimeError, match=match):
    err.throw()


# ----------------------------------------------------------------------------
# Values: concrete -> ValueError at once; traced -> checkify.
# ----------------------------------------------------------------------------


def test_one_hot_refuses_class_ids_out_of_range():
  with pytest.raises(ValueError, match=r"class ids in \[0, num_classes\) = "
                     r"\[0, 5\); got range \[0, 9\]"):
    mixers.one_hot(jnp.arange(10), 5)
  with pytest.raises(ValueError, match=r"got range \[-1, 2\]"):
    mixers.one_hot([-1, 2], 10)
  np.testing.assert_array_equal(mixers.one_hot([0, 2], 3),
                                [[1, 0, 0], [0, 0, 1]])  # lists are fine
  with pytest.raises(ValueError, match="class ids"):
    mixers.check_class_ids(np.array([3, 7]), 5)         # host-side validator
  # Under jit the ids are traced: plain jit cannot raise, checkify does.
  _raises_checked(r"class ids in \[0, num_classes\)",
                  lambda y: mixers.one_hot(y, 5), jnp.array([0, 9]))
  err, _ = _checked(lambda y: mixers.one_hot(y, 5))(jnp.array([0, 4]))
  err.throw()  # in range: no error


def test_traced_lam_and_index_out_of_range_fail_checkify():
  x, y = _batch()
  key = jax.random.key(0)
  mix = lambda lam, idx: mixers.mixup(key, x, y, lam=lam, index=idx)
  _raises_checked(r"`lam` values must lie in \[0, 1\]", mix, 1.5, jnp.arange(B))
  _raises_checked(r"`index` values must lie in \[0, 4\)", mix, 0.5,
                  jnp.arange(B) + 5)
  _raises_checked(r"`center` must lie inside the image",
                  lambda c: mixers.cutmix(key, x, y, center=c),
                  jnp.array([H, 0]))
  with pytest.raises(ValueError, match=r"`lam` values must lie in \[0, 1\]"):
    mixers.mixup(key, x, y, lam=jnp.float32(1.5))


# ----------------------------------------------------------------------------
# Layouts: NCHW, grey images.
# ----------------------------------------------------------------------------


def _hparams(name, b=B, h=H, w=W):
  """Per-call arrays: attentive scores, model inputs (``mixers.needs``)."""
  if name == "attentivemix":
    return {"scores": jax.random.uniform(jax.random.key(7), (b, 4, 4))}
  if name in mixers.names() and "saliency" in mixers.needs(name):
    return {"saliency": jax.random.uniform(jax.random.key(8), (b, h, w))}
  return {}  # also "Mixup" and "switch", which are not registered names


@pytest.mark.parametrize("name", MIXERS)
def test_nchw_is_refused_or_mixed_over_height_and_width(name):
  x, y = _batch()
  x_nchw = jnp.moveaxis(x, -1, 1)                 # [B, 3, 8, 8]
  fn = functools.partial(mixers.get(name), **_hparams(name))
  key = jax.random.key(3)
  with pytest.raises(ValueError, match="data_format"):
    fn(key, x_nchw, y)
  want = fn(key, x, y)
  got = fn(key, x_nchw, y, data_format="NCHW")
  np.testing.assert_allclose(got[0], jnp.moveaxis(want[0], -1, 1), atol=1e-6)
  np.testing.assert_allclose(got[1], want[1], atol=1e-6)
  if "mask" in want[2]:
    np.testing.assert_array_equal(got[2]["mask"],
                                  jnp.moveaxis(want[2]["mask"], -1, 1))


def test_fmix_grey_images_need_their_dimensionality():
  x, y = _batch(c=1)
  grey = x[..., 0]                                # [B, H, W]
  key = jax.random.key(1)
  with pytest.raises(ValueError, match="spatial_dims"):
    mixers.fmix(key, grey, y)
  mixed, _, aux = mixers.fmix(key, grey, y, spatial_dims=2, lam=0.5)
  ref, _, ref_aux = mixers.fmix(key, x, y, lam=0.5)
  assert mixed.shape == grey.shape and aux["mask"].shape == grey.shape
  np.testing.assert_array_equal(aux["mask"], ref_aux["mask"][..., 0])
  np.testing.assert_array_equal(mixed, ref[..., 0])
  # A 2-D mask: it varies along both H and W (a sequence mask would not).
  m = np.asarray(aux["mask"][0])
  assert (m != m[:1]).any() and (m != m[:, :1]).any()
  seq, _, seq_aux = mixers.fmix(key, grey, y, spatial_dims=1)
  assert seq_aux["mask"].shape == (B, H, 1)        # [B, L, C] read as intended


# ----------------------------------------------------------------------------
# Defaults that never mixed.
# ----------------------------------------------------------------------------


def test_maskmix_default_mixes_at_32_px_and_one_cell_is_refused():
  x, y = _batch(h=32, w=32)
  _, _, aux = mixers.maskmix(jax.random.key(0), x, y, lam=0.5)
  cells = np.asarray(aux["mask"])[:, ::8, ::8, 0]   # 4x4 grid of 8-px cells
  np.testing.assert_array_equal(aux["lam"], 0.5)
  np.testing.assert_array_equal(np.repeat(np.repeat(cells, 8, 1), 8, 2),
                                aux["mask"][..., 0])
  with pytest.raises(ValueError, match="single cell"):
    mixers.maskmix(jax.random.key(0), x, y, mask_patch=64)


def test_shipped_cifar_configs_mix_at_32_px():
  common = pytest.importorskip("configs.common")
  x, y = _batch(h=32, w=32)
  for name, (mixer, kwargs) in common.OPENMIXUP_CIFAR_MIXERS.items():
    if mixer == "none" or mixer not in MIXERS:  # cam / feature_mix: own tests
      continue
    # A draw of λ = 0.5 (τ = 0.5 for resizemix; smoothmix has no λ) must mix.
    names = mixers.hyperparameter_names(mixer)
    draw = ({"lam": 0.5} if "lam" in names else
            {"tau": 0.5} if "tau" in names else {})
    inputs = _hparams(mixer, *x.shape[:3]) if mixers.needs(mixer) else {}
    _, _, aux = mixers.get(mixer, **kwargs, **draw)(jax.random.key(0), x, y,
                                                    **inputs)
    assert (np.asarray(aux["lam"]) < 1).all(), name


@pytest.mark.parametrize("name,size", [
    ("cutmix", 1), ("cutmix", 2), ("resizemix", 1), ("resizemix", 2),
    ("saliencymix", 2), ("gridmix", 2)])
def test_box_mixers_refuse_images_too_small_to_mix(name, size):
  x, y = _batch(h=size, w=size)
  with pytest.raises(ValueError, match=r"too small for .*at least"):
    mixers.get(name)(jax.random.key(0), x, y)


def test_exact_box_rule_mixes_two_pixel_images():
  x, y = _batch(h=2, w=2)
  _, _, aux = mixers.cutmix(jax.random.key(0), x, y, box_rule="exact",
                            lam=0.0, center=jnp.array([1, 1]))
  assert float(aux["lam"][0]) < 1


# ----------------------------------------------------------------------------
# Learned masks: one layout, checked values.
# ----------------------------------------------------------------------------


def test_generator_masks_feed_apply_masks_in_one_layout():
  x, y = _batch(h=16, w=16)
  feats = jax.random.normal(jax.random.key(1), (B, 4, 4, 8))
  index = jnp.stack([jnp.arange(B), jnp.roll(jnp.arange(B), 1),
                     jnp.roll(jnp.arange(B), 2)], axis=1)           # [B, N]
  lam = jnp.array([0.5, 0.3, 0.2])
  gen = generators.AdaptiveMask(scale=4)
  masks = gen.apply(gen.init(jax.random.key(0), feats, index), feats, index)
  assert masks.shape == (B, 16, 16, 3)                            # [B, H, W, N]
  mixed, _, aux = generators.apply_masks(x, y, masks, lam, index)
  np.testing.assert_array_equal(aux["mask"], masks)                # out == in
  np.testing.assert_allclose(
      mixed, sum(masks[..., i:i + 1] * x[index[:, i]] for i in range(3)),
      atol=1e-6)
  # AutoMix's block returns the own-image weight apply_masks takes.
  pmb = generators.PixelMixBlock(scale=4)
  partner = jnp.roll(jnp.arange(B), 1)
  variables = pmb.init(jax.random.key(0), feats, partner)
  own, logits = pmb.apply(variables, feats, partner, return_logits=True)
  np.testing.assert_allclose(own, jax.nn.sigmoid(logits), atol=1e-7)
  mixed, _, aux = generators.apply_masks(x, y, own, 0.5, partner)
  np.testing.assert_allclose(mixed, own * x + (1 - own) * x[partner], atol=1e-6)


def test_apply_masks_refuses_bad_values():
  x, y = _batch(h=16, w=16)
  idx = jnp.stack([jnp.arange(B), jnp.roll(jnp.arange(B), 1)], axis=1)
  half = jnp.full((B, 16, 16, 2), 0.5)
  ok = functools.partial(generators.apply_masks, x, y)
  ok(half, jnp.array([0.5, 0.5]), idx)
  with pytest.raises(ValueError, match="sum to 1 over the N images"):
    ok(jnp.full((B, 16, 16, 2), 0.7), jnp.array([0.5, 0.5]), idx)
  with pytest.raises(ValueError, match="`lam` must be non-negative and sum"):
    ok(half, jnp.array([1.5, 1.2]), idx)                       # rows sum to 2.7
  with pytest.raises(ValueError, match=r"`lam` values must lie in \[0, 1\]"):
    ok(half[..., :1], 1.7, idx[:, 1])                          # two-way λ
  with pytest.raises(ValueError, match=r"`masks` must lie in \[0, 1\]"):
    ok(half[..., :1] * 3, 0.5, idx[:, 1])
  with pytest.raises(ValueError, match=r"`index` values must lie in \[0, 4\)"):
    ok(half, jnp.array([0.5, 0.5]), idx + B)
  _raises_checked("sum to 1 over the N images",
                  lambda m: generators.apply_masks(x, y, m, jnp.array(
                      [0.5, 0.5]), idx), jnp.full((B, 16, 16, 2), 0.7))


def test_generators_refuse_nchw_features():
  feats = jax.random.normal(jax.random.key(1), (B, 64, 4, 4))  # [B, C, h, w]
  index = jnp.stack([jnp.arange(B), jnp.roll(jnp.arange(B), 1)], axis=1)
  with pytest.raises(ValueError, match=r"features.*NHWC.*moveaxis"):
    generators.AdaptiveMask(scale=4).init(jax.random.key(0), feats, index)
  with pytest.raises(ValueError, match=r"features.*NHWC.*moveaxis"):
    generators.PixelMixBlock(scale=4).init(jax.random.key(0), feats,
                                           index[:, 1])


# ----------------------------------------------------------------------------
# Composition: get, switch, attentivemix without scores.
# ----------------------------------------------------------------------------


def test_get_validates_keyword_names_and_values_when_binding():
  with pytest.raises(ValueError, match=r"no hyperparameter 'alhpa'.*Did you "
                     r"mean 'alpha'"):
    mixers.get("mixup", alhpa=1)
  for name, kwargs, match in [
      ("mixup", {"alpha": -1}, "alpha"), ("cutmix", {"box_rule": "x"}, "box_rule"),
      ("maskmix", {"grid": 0}, "grid"), ("fmix", {"spatial_dims": 4}, "spatial"),
      ("gridmix", {"n_holes": (3, 2)}, "n_holes"),
      ("nway_mixup", {"num_images": 1}, "num_images"),
      ("mixup", {"data_format": "CHW"}, "data_format"),
      ("attentivemix", {"scorer": 3}, "scorer")]:
    with pytest.raises(ValueError, match=match):
      mixers.get(name, **kwargs)
  assert "alpha" in mixers.hyperparameter_names("cutmix")


def test_trainer_config_mixers_fail_when_built_not_at_the_first_step():
  ml_collections = pytest.importorskip("ml_collections")
  from automix_jax.train import static  # pylint: disable=g-import-not-at-top
  config = lambda name, **kw: ml_collections.ConfigDict(
      {"mixer": {"name": name, "kwargs": kw}})
  with pytest.raises(ValueError, match="alhpa"):
    static.build_mixer(config("mixup", alhpa=1.0))
  with pytest.raises(ValueError, match="lam_scope"):
    static.build_mixer(config("cutmix", lam_scope="pixel"))
  # attentivemix from a config (no per-call scores) mixes by cell saliency.
  x, y = _batch(h=16, w=16)
  _, _, aux = static.build_mixer(config("attentivemix"))(jax.random.key(0), x, y)
  assert aux["mask"].shape == (B, 16, 16, 1)


def test_switch_accepts_names_and_names_a_mismatched_branch():
  x, y = _batch()
  out = jax.eval_shape(lambda k: mixers.switch(k, x, y, mixers=[
      "mixup", mixers.get("cutmix", alpha=0.2)]), jax.random.key(0))
  assert out[2]["lam"].shape == (B,)
  with pytest.raises(ValueError, match=r"`mixers\[1\]` \(nway_mixup\) returns "
                     r"aux\['lam'\]"):
    mixers.switch(jax.random.key(0), x, y, mixers=["mixup", "nway_mixup"])
  with pytest.raises(ValueError, match=r"`mixers\[0\]` must be a mixer"):
    mixers.switch(jax.random.key(0), x, y, mixers=[3])
  with pytest.raises(ValueError, match="unknown mixer 'mixupp'"):
    mixers.switch(jax.random.key(0), x, y, mixers=["mixupp"])


def test_attentivemix_through_get_scores_cells_itself():
  x, y = _batch(h=16, w=16)
  fn = jax.jit(mixers.get("attentivemix", alpha=2.0))           # no scores
  _, _, aux = fn(jax.random.key(0), x, y)
  cells = np.asarray(aux["mask"])[:, ::4, ::4, 0]                 # 4x4 grid
  np.testing.assert_array_equal(aux["lam"] * 16, cells.reshape(B, -1).sum(-1))
  # A bound scorer (e.g. a frozen network's channel-mean map) is used instead.
  top_left = lambda im: jnp.broadcast_to(
      jnp.arange(16.0)[::-1].reshape(4, 4), (im.shape[0], 4, 4))
  _, _, aux = mixers.get("attentivemix", scorer=top_left, top_k=1)(
      jax.random.key(0), x, y)
  np.testing.assert_array_equal(np.asarray(aux["mask"])[:, ::4, ::4, 0],
                                np.broadcast_to(np.eye(1, 16).reshape(4, 4),
                                                (B, 4, 4)))


# ----------------------------------------------------------------------------
# Meshes with Explicit axes (jax.make_mesh's default) and Auto axes.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _mesh(kind):
  axis_type = getattr(jax.sharding.AxisType, kind)
  return jax.make_mesh((8,), ("data",), axis_types=(axis_type,))


@pytest.mark.parametrize("name,kind", [
    (n, k) for n in MIXERS + ["Mixup"] for k in ("Explicit", "Auto")] + [
        ("switch", "Explicit")])
def test_every_mixer_runs_on_a_batch_sharded_mesh(name, kind):
  mesh = _mesh(kind)
  batch = jax.sharding.NamedSharding(mesh, jax.P("data"))
  x, y = _batch(b=16)
  hp = _hparams(name, 16)
  if name == "Mixup":
    mixup = mixers.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem",
                         num_classes=K)
    fn = lambda k, x_, y_, hp_: mixup(k, x_, jnp.argmax(y_, -1))
  elif name == "switch":
    fn = lambda k, x_, y_, hp_: mixers.switch(k, x_, y_,
                                              mixers=["mixup", "cutmix"])
  else:
    fn = lambda k, x_, y_, hp_: mixers.get(name)(k, x_, y_, **hp_)
  key = jax.random.key(2)
  want = fn(key, x, y, hp)
  xs, ys, hps = jax.device_put((x, y, hp), batch)
  got = jax.jit(fn)(key, xs, ys, hps)
  np.testing.assert_allclose(got[0], want[0], atol=1e-6)
  np.testing.assert_allclose(got[1], want[1], atol=1e-6)
  if kind == "Explicit":  # the batch stays sharded (Auto leaves it to XLA)
    assert got[0].sharding.spec[0] == "data"
