"""TransMix, MixPro, TL-Align, TokenMix and SMMix: defining properties against
numpy / torch re-derivations of the authors' code, per-sample label weights,
one trace, 8 devices == 1, and clear refusals.

The attention these mixers read is synthetic here (random maps of the shapes
the ViT returns, docs/interfaces.md "Models"); the trainer plumbing with a
real ViT is tested in tests/train/test_vit_mixing.py.
"""

import math
import random

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import mixers
from automix_jax import sharding
from automix_jax.mixers import _mixpro
from automix_jax.mixers import _tokenmix

B, K = 8, 5

pytestmark = pytest.mark.usefixtures("fast_compile")


def _call(name, key, x, y, *, out=None, token_attention=None, **kwargs):
  """Jitted ``mixers.get(name, **kwargs)``; a relabel mixer's labels are
  ``relabel(out)``. Returns ``(mixed, labels, aux, final_aux)``."""
  fn = mixers.get(name, **kwargs)

  @jax.jit
  def run(key, x, y, out, att):
    if "relabel" in mixers.needs(name):
      mixed, relabel, aux = fn(key, x, y)
      labels, final = relabel(out)
      return mixed, labels, aux, final
    mixed, labels, aux = fn(key, x, y, token_attention=att)
    return mixed, labels, aux, aux
  return run(key, x, y, out, token_attention)


def _batch(h=16, w=16, seed=0, smoothing=0.0):
  kx, ky = jax.random.split(jax.random.key(seed))
  x = jax.random.uniform(kx, (B, h, w, 3))
  ids = jax.random.randint(ky, (B,), 0, K)
  return x, mixers.one_hot(ids, K, smoothing=smoothing), np.asarray(ids)


def _attention_out(grid, seed=1, heads=2, depth=3, logits=True):
  """A ViT-like output dict: cls_attention [B, heads, N] (rows < 1),
  per-block head-mean attention [B, depth, 1 + N, 1 + N] (rows sum to 1)."""
  n = grid[0] * grid[1]
  rng = np.random.default_rng(seed)
  full = rng.dirichlet(np.ones(1 + n) * 0.3, size=(B, heads, 1 + n))
  blocks = rng.dirichlet(np.ones(1 + n) * 0.3, size=(B, depth, 1 + n))
  out = {"cls_attention": jnp.asarray(full[:, :, 0, 1:], jnp.float32),
         "attention": jnp.asarray(blocks, jnp.float32)}
  if logits:
    out["logits"] = {"one": jnp.asarray(rng.normal(size=(B, K)) * 3,
                                        jnp.float32)}
  return out


def _token_attention(grid, seed=2):
  rng = np.random.default_rng(seed)
  maps = rng.gamma(0.5, size=(B, *grid))
  return jnp.asarray(maps / maps.sum((1, 2), keepdims=True), jnp.float32)


def _relabel_abstractly(name, out, **kwargs):
  """Traces ``relabel(out)`` of mixer ``name`` without computing anything
  (refusals raise at trace time)."""
  x, y, _ = _batch()
  fn = mixers.get(name, **kwargs)
  return jax.eval_shape(lambda: fn(jax.random.key(0), x, y)[1](out))


def _two_labels(ids, partner_ids, w_own, w_partner=None):
  """``w_own one_hot(ids) + w_partner one_hot(partner_ids)``, ``[B, K]``
  (``w_partner = 1 - w_own`` by default)."""
  w_own = np.asarray(w_own)[:, None]
  w_partner = 1 - w_own if w_partner is None else np.asarray(w_partner)[:,
                                                                        None]
  return w_own * np.eye(K)[ids] + w_partner * np.eye(K)[partner_ids]


def _rows_sum_to_one(labels):
  np.testing.assert_allclose(np.asarray(labels).sum(-1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------
# TransMix.
# ---------------------------------------------------------------------------


def test_transmix_is_the_authors_transmix_label():
  torch = pytest.importorskip("torch")
  x, y, ids = _batch()
  out = _attention_out((4, 4))
  mixed, labels, aux, aux2 = _call("transmix", jax.random.key(3), x, y,
                                   out=out, lam=0.6, center=np.array([5, 9]))
  # The authors' transmix_label (Beckschen/TransMix transmix.py), batch mode.
  y1, y2 = np.eye(K)[ids], np.eye(K)[ids[::-1]]
  y1b, y2b, x1b, x2b = (int(v) for v in np.asarray(aux["box"])[0])
  lam0 = (y2b - y1b) * (x2b - x1b) / (16 * 16)
  mask = torch.zeros((16, 16))
  mask[y1b:y2b, x1b:x2b] = 1
  mask = torch.nn.Upsample(size=4)(mask[None, None]).int().view(1, -1)
  attn = torch.tensor(np.asarray(out["cls_attention"])).mean(1)
  w1, w2 = (torch.sum((1 - mask) * attn, 1), torch.sum(mask * attn, 1))
  lam = (lam0 + w2 / (w1 + w2)) / 2
  want = torch.tensor(y1) * (1 - lam)[:, None] + torch.tensor(y2) * lam[:, None]
  np.testing.assert_allclose(labels, want.numpy(), rtol=1e-5, atol=1e-6)
  _rows_sum_to_one(labels)
  # Per sample: one box for the batch, one λ' per sample.
  lam_final = np.asarray(aux2["lam"])
  assert np.ptp(lam_final) > 1e-3 and np.ptp(np.asarray(aux2["lam_area"])) == 0
  np.testing.assert_allclose(lam_final, 1 - lam.numpy(), rtol=1e-5)
  # The images are CutMix's with the flipped batch.
  box = np.zeros((16, 16), bool)
  box[y1b:y2b, x1b:x2b] = True
  np.testing.assert_array_equal(
      mixed, np.where(box[None, :, :, None], np.asarray(x)[::-1], x))


def test_transmix_attention_weight_and_refusals():
  x, y, _ = _batch()
  out = _attention_out((4, 4))
  _, _, aux, aux2 = _call("transmix", jax.random.key(0), x, y, out=out,
                          lam=0.5, attention_weight=0.0)
  np.testing.assert_allclose(aux2["lam"], aux["lam"], atol=1e-6)
  with pytest.raises(ValueError, match="transmix needs the model output "
                     "'cls_attention'"):
    _relabel_abstractly("transmix", {"logits": {"one": jnp.zeros((B, K))},
                                     "stages": ()})
  with pytest.raises(ValueError, match="not a grid of square patches"):
    _relabel_abstractly("transmix",
                        {"cls_attention": jnp.ones((B, 2, 15)) / 15})
  with pytest.raises(ValueError, match="`attention_weight`"):
    mixers.get("transmix", attention_weight=1.5)


# ---------------------------------------------------------------------------
# MixPro.
# ---------------------------------------------------------------------------


def test_mixpro_is_the_authors_progressive_attention_labelling():
  torch = pytest.importorskip("torch")
  x, y, ids = _batch()
  out = _attention_out((8, 8))
  index = np.random.default_rng(0).permutation(B)
  mixed, labels, aux, aux2 = _call("mixpro", jax.random.key(4), x, y,
                                   out=out, lam=0.4, grid=4, index=index)
  # MaskMix: ceil(16 · 0.4) = 7 kept cells per sample, drawn per sample.
  cells = np.asarray(aux["mask"])[:, ::4, ::4, 0]
  assert np.all(cells.sum((1, 2)) == 7)
  assert len({c.tobytes() for c in cells}) > 1
  # The authors' main.py (fistyee/MixPro): the cell mask repeated to tokens
  # (2 tokens a cell), w1/w2 the attention on kept/replaced tokens, the cosine
  # to the smoothed MaskMix targets, then the blend with the area ratio.
  mask = torch.tensor(np.repeat(np.repeat(cells, 2, 1), 2, 2)).flatten(1)
  attn = torch.tensor(np.asarray(out["cls_attention"])).mean(1)
  w1, w2 = torch.sum(mask * attn, 1), torch.sum((1 - mask) * attn, 1)
  lam_attn = w1 / (w1 + w2)
  ratio = torch.tensor(cells.sum((1, 2)) / 16.0)[:, None]
  s = 0.1
  hot = lambda i: torch.tensor(np.eye(K)[i] * (1 - s) + s / K)
  targets = hot(ids) * ratio + hot(ids[index]) * (1 - ratio)
  probs = torch.softmax(torch.tensor(np.asarray(out["logits"]["one"])), -1)
  sim = torch.cosine_similarity(targets, probs, dim=1)
  lam = sim * lam_attn + (1 - sim) * ratio[:, 0]
  np.testing.assert_allclose(labels, _two_labels(ids, ids[index], lam.numpy()),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux2["sim"], sim.numpy(), rtol=1e-5)
  _rows_sum_to_one(labels)
  assert np.ptp(np.asarray(aux2["lam"])) > 1e-3  # per sample


def test_mixpro_refuses_cells_that_cut_tokens():
  with pytest.raises(ValueError, match=r"not whole tokens.*grid in \[2\]"):
    _relabel_abstractly("mixpro", _attention_out((2, 2)), grid=4)
  with pytest.raises(ValueError, match="out\\[\"logits\"\\]\\['mix'\\]"):
    _relabel_abstractly("mixpro", _attention_out((4, 4)), grid=2, head="mix")
  # With the model's patch size the cells are checked before mixing, and the
  # default grid cuts whole tokens, as close to MixPro's 4x4 as they allow.
  x, y, _ = _batch()
  with pytest.raises(ValueError, match=r"not whole tokens.*grid in \[2\]"):
    jax.eval_shape(lambda: mixers.mixpro(jax.random.key(0), x, y, grid=4,
                                         patch_size=8))
  assert [_mixpro.token_cells(t) for t in (8, 14, 7, 6)] == [4, 2, 7, 3]
  _, _, aux, _ = _call("mixpro", jax.random.key(1), x, y, patch_size=8,
                       out=_attention_out((2, 2)), lam=0.5)
  cells = np.asarray(aux["mask"])[:, ::8, ::8, 0]  # 2x2 cells of one token
  np.testing.assert_array_equal(
      np.asarray(aux["mask"])[..., 0], np.repeat(np.repeat(cells, 8, 1), 8, 2))


# ---------------------------------------------------------------------------
# TL-Align.
# ---------------------------------------------------------------------------


def test_tlalign_is_the_authors_label_propagation():
  torch = pytest.importorskip("torch")
  x, y, ids = _batch(smoothing=0.1)
  out = _attention_out((4, 4), depth=3)
  mixed, labels, aux, aux2 = _call("tlalign", jax.random.key(5), x, y,
                                   out=out, lam=0.55, patch_size=4)
  # The authors' TL_AlignMix + token_label + the per-block alignment in
  # their vision_transformer.py, on the full [B, 1 + N, K] labels.
  yl, yh, xl, xh = (int(v) for v in np.asarray(aux["box"])[0])
  mask = torch.zeros((4, 4))
  mask[yl:yh, xl:xh] = 1
  mask = mask.view(-1)
  lam = 1 - (yh - yl) * (xh - xl) / 16
  np.testing.assert_allclose(aux["lam"], lam, rtol=1e-6)
  y1 = torch.tensor(np.asarray(y), dtype=torch.float64)
  cls_target = y1 * lam + y1.flip(0) * (1 - lam)
  tokens = y1[:, None].repeat(1, 16, 1)
  tokens[:, mask == 1, :] = y1.flip(0)[:, None].repeat(1, 16, 1)[:, mask == 1]
  embed = torch.cat([cls_target[:, None], tokens], 1)
  for blk in range(3):
    a = torch.tensor(np.asarray(out["attention"][:, blk]), dtype=torch.float64)
    embed = (a @ embed + embed) / 2
  np.testing.assert_allclose(labels, embed[:, 0].numpy(), rtol=1e-5,
                             atol=1e-6)
  _rows_sum_to_one(labels)
  assert np.ptp(np.asarray(aux2["lam"])) > 1e-3  # per sample
  # Token-grid CutMix: whole 4-px patches of the flipped batch.
  box = np.zeros((16, 16), bool)
  box[4 * yl:4 * yh, 4 * xl:4 * xh] = True
  np.testing.assert_array_equal(
      mixed, np.where(box[None, :, :, None], np.asarray(x)[::-1], x))


def test_tlalign_refuses_a_patch_size_the_model_lacks():
  x, y, _ = _batch()
  with pytest.raises(ValueError, match="set `patch_size` to the model's"):
    _relabel_abstractly("tlalign", _attention_out((2, 2)), patch_size=4)
  with pytest.raises(ValueError, match="return_attention=True"):
    _relabel_abstractly("tlalign", {"cls_attention": jnp.zeros((B, 2, 16))},
                        patch_size=4)
  with pytest.raises(ValueError, match="at least 3x3 whole `patch_size`"):
    mixers.tlalign(jax.random.key(0), x, y, patch_size=8)


# ---------------------------------------------------------------------------
# TokenMix.
# ---------------------------------------------------------------------------


def _authors_block_mask(rng, lam, grid, minimum_tokens):
  """The authors' generate_mask (Sense-X/TokenMix tokenmix.py), numpy."""
  height, width = grid
  mask = np.zeros(grid, int)
  target = min(height * width, int((1 - lam) * height * width) +
               minimum_tokens)
  count = 0
  while count < target:
    room = target - count
    delta = 0
    for _ in range(10):
      area = rng.uniform(1, room)
      aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
      h = int(round(math.sqrt(area * aspect)))
      w = int(round(math.sqrt(area / aspect)))
      if w < width and h < height:
        top = rng.randint(0, height - h)
        left = rng.randint(0, width - w)
        new = h * w - mask[top:top + h, left:left + w].sum()
        if 0 < new <= room:
          mask[top:top + h, left:left + w] = 1
          delta = new
        if delta > 0:
          break
    if delta == 0:
      break
    count += delta
  return mask


@pytest.mark.parametrize("grid,minimum", [((14, 14), 14), ((8, 8), 5)])
def test_tokenmix_block_masks_match_the_authors_generator(grid, minimum):
  n = grid[0] * grid[1]
  target = min(n, int(0.5 * n) + minimum)
  draw = jax.jit(jax.vmap(lambda k: _tokenmix.block_mask(
      k, jnp.int32(target), *grid)))
  ours = np.asarray(draw(jax.random.split(jax.random.key(0), 400)))
  rng = random.Random(0)
  theirs = np.stack([_authors_block_mask(rng, 0.5, grid, minimum)
                     for _ in range(400)])
  for masks in (ours, theirs):
    assert masks.sum((1, 2)).max() <= target
  # Same distribution of the count reached and of the per-token frequency.
  c_ours, c_theirs = ours.sum((1, 2)), theirs.sum((1, 2))
  assert abs(c_ours.mean() - c_theirs.mean()) < 0.03 * target, (
      c_ours.mean(), c_theirs.mean())
  assert abs((c_ours == target).mean() - (c_theirs == target).mean()) < 0.1
  np.testing.assert_allclose(ours.mean(0), theirs.mean(0), atol=0.12)


@pytest.mark.parametrize("mask_type", ["block", "random"])
def test_tokenmix_labels_are_the_attention_on_each_images_tokens(mask_type):
  x, y, ids = _batch()
  att = _token_attention((4, 4))
  mixed, labels, aux, _ = _call(
      "tokenmix", jax.random.key(6), x, y, token_attention=att,
      mask_type=mask_type, lam_scope="sample", lam=None)
  tm = np.asarray(aux["token_mask"])
  if mask_type == "random":  # exactly min(N, int((1 - λ) N) + round(N / 14))
    assert len(set(tm.sum((1, 2)))) > 1
  # Images: whole 4-px tokens of the flipped batch where the mask says so.
  px = np.repeat(np.repeat(tm, 4, 1), 4, 2)[..., None].astype(bool)
  np.testing.assert_array_equal(mixed, np.where(px, np.asarray(x)[::-1], x))
  # The authors' label weights: each image's own map on its own tokens.
  maps = np.asarray(att) / np.asarray(att).sum((1, 2), keepdims=True)
  w_a = (maps * (1 - tm)).sum((1, 2))
  w_b = (maps[::-1] * tm).sum((1, 2))
  np.testing.assert_allclose(labels, _two_labels(ids, ids[::-1],
                                                 w_a / (w_a + w_b)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux["weights"], np.stack([w_a, w_b], 1),
                             rtol=1e-5)
  np.testing.assert_allclose(aux["lam_area"], 1 - tm.mean((1, 2)), rtol=1e-6)
  _rows_sum_to_one(labels)


def test_tokenmix_batch_mask_per_sample_weights_raw_and_area():
  x, y, ids = _batch()
  att = _token_attention((4, 4))
  _, labels, aux, _ = _call("tokenmix", jax.random.key(7), x, y,
                            token_attention=att)
  tm = np.asarray(aux["token_mask"])
  assert np.all(tm == tm[0])  # one mask per batch (the authors)
  # target min(16, int(0.5 · 16) + round(16 / 14)) = 9 partner tokens at most
  assert 0 < tm[0].sum() <= 9
  assert np.ptp(np.asarray(aux["lam"])) > 1e-3  # λ stays per sample
  # (Random masks below: the weights do not depend on the mask's kind, and
  # these compile faster than the block generator's loop.)
  _, raw, aux_raw, _ = _call("tokenmix", jax.random.key(7), x, y,
                             token_attention=att, normalize=False,
                             mask_type="random")
  w = np.asarray(aux_raw["weights"])
  np.testing.assert_allclose(raw, _two_labels(ids, ids[::-1], w[:, 0],
                                              w[:, 1]), rtol=1e-5, atol=1e-6)
  _, area, aux_area, _ = _call("tokenmix", jax.random.key(7), x, y,
                               token_attention=att, label_weights="area",
                               mask_type="random")
  np.testing.assert_allclose(
      aux_area["lam"], 1 - np.asarray(aux_area["token_mask"]).mean((1, 2)),
      rtol=1e-6)
  _rows_sum_to_one(area)


# ---------------------------------------------------------------------------
# SMMix.
# ---------------------------------------------------------------------------


def test_smmix_pastes_the_partners_max_window_over_the_min_window():
  x, y, ids = _batch()
  att = _token_attention((8, 8))
  mixed, labels, aux, _ = _call("smmix", jax.random.key(8), x, y,
                                token_attention=att, lam_scope="sample")
  a, xs = np.asarray(att), np.asarray(x)
  sides = np.asarray(aux["side"])
  assert set(sides) <= {2, 3, 4, 5, 6} and len(set(sides)) > 1
  for i in range(B):
    s, j = int(sides[i]), B - 1 - i  # the flipped batch
    sums = lambda m: np.array([[m[r:r + s, c:c + s].sum()
                                for c in range(9 - s)] for r in range(9 - s)])
    r0, c0 = np.unravel_index(np.argmin(sums(a[i])), (9 - s, 9 - s))
    r1, c1 = np.unravel_index(np.argmax(sums(a[j])), (9 - s, 9 - s))
    want = xs[i].copy()
    want[2 * r0:2 * (r0 + s), 2 * c0:2 * (c0 + s)] = xs[j][
        2 * r1:2 * (r1 + s), 2 * c1:2 * (c1 + s)]
    np.testing.assert_array_equal(mixed[i], want)
    assert tuple(np.asarray(aux["box"])[i]) == (r0, r0 + s, c0, c0 + s)
    assert np.asarray(aux["token_mask"])[i].sum() == s * s
  np.testing.assert_allclose(aux["lam"], 1 - sides ** 2 / 64, rtol=1e-6)
  _rows_sum_to_one(labels)


def test_smmix_one_side_per_batch_and_refusals():
  x, y, _ = _batch()
  att = _token_attention((8, 8))
  _, _, aux, _ = _call("smmix", jax.random.key(9), x, y, token_attention=att)
  assert len(set(np.asarray(aux["side"]))) == 1
  smmix = lambda **kw: jax.eval_shape(
      lambda: mixers.smmix(jax.random.key(0), x, y, **kw))
  with pytest.raises(ValueError, match="smmix: `token_attention` must be"):
    smmix(token_attention=att[:, :5])
  with pytest.raises(ValueError, match="give no window side"):
    smmix(token_attention=att, side_ratios=(0.0, 0.1))
  with pytest.raises(ValueError, match="`side_ratios`"):
    mixers.get("smmix", side_ratios=(0.8, 0.2))


# ---------------------------------------------------------------------------
# All five: one trace, 8 devices == 1, no gradient into the labels.
# ---------------------------------------------------------------------------


def _run(name, kwargs):
  """``key, x, y, att, out -> (mixed, labels, lam, grads)`` for any of the
  five; ``grads``: of the labels w.r.t. the attention (both kinds)."""
  fn = mixers.get(name, **kwargs)

  def mix(key, x, y, att, out):
    if "relabel" in mixers.needs(name):
      mixed, relabel, _ = fn(key, x, y)
      labels, aux = relabel(out)
    else:
      mixed, labels, aux = fn(key, x, y, token_attention=att)
    return mixed, labels, aux["lam"]

  def run(key, x, y, att, out):
    mixed, labels, lam = mix(key, x, y, att, out)
    grads = jax.grad(lambda o, a: jnp.sum(mix(key, x, y, a, o)[1] ** 2),
                     argnums=(0, 1))(out, att)
    return mixed, labels, lam, grads
  return run


CASES = [("transmix", {}), ("mixpro", {"grid": 4}),
         ("tlalign", {"patch_size": 2}),
         ("tokenmix", {"lam_scope": "sample", "lam": None}),
         ("smmix", {"lam_scope": "sample"})]


@pytest.mark.parametrize("name,kwargs", CASES)
def test_one_trace_8_devices_and_no_gradient_into_the_attention(name, kwargs):
  x, y, _ = _batch()
  out = _attention_out((8, 8))
  att = _token_attention((8, 8))
  step = jax.jit(chex.assert_max_traces(_run(name, kwargs), n=1))
  results = [step(jax.random.key(i), x, y, att, out) for i in range(3)]
  assert not all(np.allclose(r[2], results[0][2]) for r in results[1:])
  for g in jax.tree.leaves(results[0][3]):  # labels are data
    assert not np.any(np.asarray(g)), name
  # The same function on a batch sharded over 8 devices (jit retraces for
  # the new input shardings).
  chex.clear_trace_counter()
  mesh = sharding.make_mesh(jax.devices()[:8])
  spec = jax.sharding.NamedSharding(mesh, jax.P("data"))
  put = lambda t: jax.tree.map(lambda a: jax.device_put(a, spec), t)
  eight = step(jax.random.key(0), put(x), put(y), put(att), put(out))
  chex.assert_trees_all_close(eight, results[0], rtol=1e-6, atol=1e-6)
  chex.clear_trace_counter()


def test_registry_declares_needs_and_outputs():
  assert mixers.needs("tokenmix") == ("token_attention",)
  assert mixers.needs("smmix") == ("token_attention",)
  for name in ("transmix", "mixpro", "tlalign"):
    assert mixers.needs(name) == ("relabel",)
  assert mixers.relabel_outputs("transmix") == ("cls_attention",)
  assert mixers.relabel_outputs("mixpro") == ("cls_attention", "logits")
  assert mixers.relabel_outputs("tlalign") == ("attention",)
  assert mixers.relabel_outputs("cutmix") == ()
  assert "token_attention" not in mixers.hyperparameter_names("tokenmix")
  with pytest.raises(ValueError, match="`token_attention` is a model input"):
    mixers.get("smmix", token_attention=jnp.zeros((B, 4, 4)))
  mesh = sharding.make_mesh(jax.devices()[:2])
  with pytest.raises(ValueError, match="cannot leave a shard_map"):
    mixers.per_device(mixers.get("transmix"), mesh)
