"""ViT/DeiT and Swin against timm on the same random weights, and the
attention outputs of docs/interfaces.md ("Models").

Peer tests build tiny timm models (a 2-block ViT at 16 px; a Swin with four
2-block stages at 32 px and 4x4 windows, so shifted windows with their mask,
window clamping and patch merging all run), copy their weights with
``tests/models/_torch_weights.py`` and compare logits, stages and attention.
Full-size models are only counted (``jax.eval_shape``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import models
from tests.models import _torch_weights

pytestmark = pytest.mark.usefixtures("fast_compile")

KEY = jax.random.key(0)

# Same counts as timm (test_param_counts_match_timm).
SWIN_TINY_PARAMS = 28_288_354   # timm swin_tiny_patch4_window7_224, 1000 classes.
DEIT_PARAMS = {"deit_tiny": 5_717_416, "deit_small": 22_050_664}

# Tiny Swin: 16x16 patch grid at 32 px -> 16, 8 (4x4 windows, shifted), 4
# (one window, no shift), 2 (window clamped to 2).
TINY_SWIN = dict(patch_size=2, embed_dim=16, depths=(2, 2, 2, 2),
                 num_heads=(1, 2, 2, 4), window_size=4)
# Tinier, for the tests without timm: two stages at 16 px (8x8 map with four
# shifted 4x4 windows, then one 4x4 window).
TWO_STAGE = dict(TINY_SWIN, depths=(2, 2), num_heads=(1, 2))
TINY_VIT = dict(patch_size=4, embed_dim=16, depth=2, num_heads=2)


def _abstract(name, size, **kw):
  model = models.build(name, **{"num_classes": 1000, **kw})
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), KEY, x)
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                       x)
  return variables, out


def _apply(model, variables, x, **kw):
  with jax.default_matmul_precision("highest"):
    return jax.jit(functools.partial(model.apply, train=False, **kw))(
        variables, x)


# ---------------------------------------------------------------------------
# Contract (no torch).


def test_swin_tiny_contract_and_param_count():
  variables, out = _abstract("swin_tiny", 224, heads=("one", "mix"))
  # The extra "mix" head adds one 768 -> 1000 linear layer.
  assert models.num_params(variables["params"]) == (
      SWIN_TINY_PARAMS + 768 * 1000 + 1000)
  assert [s.shape for s in out["stages"]] == [
      (2, 56, 56, 96), (2, 28, 28, 192), (2, 14, 14, 384), (2, 7, 7, 768)]
  assert out["pooled"].shape == (2, 768)
  assert out["token_attention"].shape == (2, 7, 7)
  assert "cls_attention" not in out and "batch_stats" not in variables
  assert set(out["logits"]) == {"one", "mix"}
  one, _ = _abstract("swin_tiny", 224)
  assert models.num_params(one["params"]) == SWIN_TINY_PARAMS


@pytest.fixture(scope="module")
def tiny_swin():
  model = models.build("swin_tiny", num_classes=5, **TWO_STAGE)
  return model, models.init(model, KEY, (16, 16, 3))


def test_swin_forward_backward_token_attention_and_feature_mix(tiny_swin):
  model, variables = tiny_swin
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  seen = []

  def feature_mix(stage, h):
    seen.append((stage, h.shape))
    return h * 1.0

  @jax.jit
  def grad_fn(params):
    def loss(params):
      out = model.apply({"params": params}, x, train=True,
                        rngs={"dropout": jax.random.key(2)},
                        feature_mix=feature_mix)
      return jnp.mean(out["logits"]["one"] ** 2), out
    return jax.value_and_grad(loss, has_aux=True)(params)

  (value, out), grads = grad_fn(variables["params"])
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  flat = flax_flat(grads)
  for k in ("stage0_block1/attn/relative_position_bias_table",
            "stage1_merge/reduction/kernel", "patch_norm/scale"):
    assert np.any(flat[k] != 0), k
  assert [s for s, _ in seen] == [0, 1, 2]
  assert [shape for _, shape in seen[1:]] == [(2, 8, 8, 16), (2, 4, 4, 32)]
  ta = out["token_attention"]
  assert ta.shape == (2, 4, 4) and ta.dtype == jnp.float32
  np.testing.assert_allclose(ta.sum((1, 2)), 1.0, rtol=1e-5)
  assert model.num_feature_stages == 2


def flax_flat(tree):
  import flax  # pylint: disable=import-outside-toplevel
  return {"/".join(k): v for k, v in
          flax.traverse_util.flatten_dict(tree).items()}


def test_swin_drop_path_only_in_train_mode_with_rng(tiny_swin):
  model, variables = tiny_swin
  x = jnp.ones((2, 16, 16, 3))
  drop = model.clone(drop_path_rate=0.5)
  run = jax.jit(lambda k, train: drop.apply(
      variables, x, train=train, rngs={"dropout": k})["logits"]["one"],
                static_argnums=1)
  ref = _apply(model, variables, x)["logits"]["one"]
  np.testing.assert_allclose(run(jax.random.key(0), False), ref, rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(run(jax.random.key(1), True),
                         run(jax.random.key(2), True))


@pytest.mark.parametrize("size,match", [
    (6, "even"),          # 3x3 map (one window), odd at the patch merging
    (36, "multiple"),     # 18-sided map, window 4: timm would pad
    (30, "patch_size=2"),
])
def test_swin_refuses_sizes_timm_would_pad(size, match):
  model = models.build("swin_tiny", num_classes=5, **TINY_SWIN)
  x = jax.ShapeDtypeStruct((1, size, size + (size == 30), 3), jnp.float32)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(functools.partial(model.init, train=False), KEY, x)


def test_swin_refuses_return_attention_and_bad_config(tiny_swin):
  model, variables = tiny_swin
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  with pytest.raises(ValueError, match="return_attention.*Swin"):
    jax.eval_shape(functools.partial(model.apply, train=False,
                                     return_attention=True), variables, x)
  with pytest.raises(ValueError, match="num_heads"):
    models.build("swin_tiny", num_classes=5, depths=(2, 2), num_heads=(3,))
  with pytest.raises(ValueError, match="does not divide"):
    models.build("swin_tiny", num_classes=5, num_heads=(3, 6, 12, 5))
  # 8 px: a 4x4 map, one 4x4 window, then 2x2: the second stage's window
  # (and bias table) shrinks to 2.
  with pytest.raises(ValueError, match="re-initialise"):
    jax.eval_shape(functools.partial(model.apply, train=False), variables,
                   jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))


@pytest.fixture(scope="module")
def tiny_vit():
  model = models.build("vit_tiny", num_classes=5, **TINY_VIT)
  return model, models.init(model, KEY, (16, 16, 3))


def test_vit_attention_outputs_agree(tiny_vit):
  model, variables = tiny_vit
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  out, inter = _apply(model, variables, x, return_attention=True,
                      mutable=["intermediates"])
  plain = _apply(model, variables, x)
  assert "attention" not in plain                          # opt-in only
  np.testing.assert_allclose(plain["logits"]["one"], out["logits"]["one"])
  attn = out["attention"]
  assert attn.shape == (2, 2, 17, 17) and attn.dtype == jnp.float32
  np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-5)
  last = inter["intermediates"]["last_attention"][0]       # [B, heads, 17, 17]
  np.testing.assert_allclose(attn[:, -1], last.mean(1), rtol=1e-6)
  np.testing.assert_allclose(out["cls_attention"], last[:, :, 0, 1:])
  ta = np.asarray(last.mean(1)[:, 0, 1:])
  ta = ta / ta.sum(-1, keepdims=True)
  np.testing.assert_allclose(out["token_attention"], ta.reshape(2, 4, 4),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="Python bool"):
    model.apply(variables, x, train=False, return_attention=jnp.array(True))


def test_require_output_names_the_method_and_the_models(tiny_swin, tiny_vit):
  model, variables = tiny_swin
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                       jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  assert models.require_output(out, "token_attention",
                               needed_by="smmix") is out["token_attention"]
  with pytest.raises(ValueError, match=r"transmix needs .*'cls_attention'.*"
                     r"ViT/DeiT"):
    models.require_output(out, "cls_attention", needed_by="transmix")
  vmodel, vvars = tiny_vit
  vout = jax.eval_shape(functools.partial(vmodel.apply, train=False), vvars,
                        jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  with pytest.raises(ValueError, match="return_attention=True"):
    models.require_output(vout, "attention", needed_by="tl-align")


# ---------------------------------------------------------------------------
# Against timm (the `peer` extra).


@pytest.mark.peer
def test_param_counts_match_timm():
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")

  def count(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
      return sum(p.numel() for p in timm.create_model(name).parameters())

  assert count("swin_tiny_patch4_window7_224") == SWIN_TINY_PARAMS
  for name, ref in DEIT_PARAMS.items():
    assert count(f"{name}_patch16_224") == ref
    variables, _ = _abstract(name, 224)
    assert models.num_params(variables["params"]) == ref


def _timm_attention(attn_module, x):
  """Softmax attention ``[B, heads, N, N]`` recomputed from a timm module's
  input (timm may use a fused kernel that does not expose it)."""
  import torch  # pylint: disable=import-outside-toplevel
  b, n, _ = x.shape
  qkv = attn_module.qkv(x).reshape(b, n, 3, attn_module.num_heads, -1)
  q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
  logits = (q * attn_module.scale) @ k.transpose(-2, -1)
  return logits, torch


@pytest.mark.peer
def test_vit_matches_timm_logits_and_attention():
  torch = pytest.importorskip("torch")
  vt = pytest.importorskip("timm.models.vision_transformer")
  torch.manual_seed(0)
  tm = vt.VisionTransformer(img_size=16, num_classes=5, **{
      "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2})
  _torch_weights.randomize_(tm).eval()
  attn = []

  def hook(module, args, _):
    logits, _ = _timm_attention(module, args[0])
    attn.append(logits.softmax(-1).mean(1).detach().numpy())

  for blk in tm.blocks:
    blk.attn.register_forward_hook(hook)
  x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x)).numpy()
  model = models.build("vit_tiny", num_classes=5, **TINY_VIT)
  params = _torch_weights.vit_params(tm)
  abstract = jax.eval_shape(functools.partial(model.init, train=False), KEY,
                            jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
  assert (jax.tree.map(np.shape, abstract["params"])
          == jax.tree.map(np.shape, params))
  out = _apply(model, {"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)),
               return_attention=True)
  np.testing.assert_allclose(out["logits"]["one"], ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["attention"], np.stack(attn, 1), rtol=1e-4,
                             atol=1e-6)
  cls = attn[-1][:, 0, 1:]
  np.testing.assert_allclose(out["token_attention"].reshape(2, -1),
                             cls / cls.sum(-1, keepdims=True), rtol=1e-4,
                             atol=1e-6)


def _swin_token_attention(attn, b, h, w, window, shift):
  """Per-token received attention from timm's ``[B*nW, heads, M, M]``,
  written as loops over windows (a separate route from the model's)."""
  per_window = attn.reshape(b, -1, *attn.shape[1:]).mean((2, 3))  # [B, nW, M]
  grid = np.zeros((b, h, w))
  nw_w = w // window
  for k in range(per_window.shape[1]):
    r0, c0 = (k // nw_w) * window, (k % nw_w) * window
    for m in range(window * window):
      r, c = r0 + m // window, c0 + m % window
      # Rolled frame (i) holds the token of the map at (i + shift) mod side.
      grid[:, (r + shift) % h, (c + shift) % w] = per_window[:, k, m]
  return grid / grid.sum((1, 2), keepdims=True)


@pytest.mark.peer
@pytest.mark.parametrize("depths,num_heads", [
    ((2, 2, 2, 2), (1, 2, 2, 4)),
    # Two stages: the last block is shifted over 4 windows, so the token
    # attention's roll back and the mask are checked too.
    ((2, 2), (1, 2)),
])
def test_swin_matches_timm_logits_stages_and_token_attention(depths,
                                                             num_heads):
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("timm.models.swin_transformer")
  torch.manual_seed(0)
  cfg = {**TINY_SWIN, "depths": depths, "num_heads": num_heads}
  tm = st.SwinTransformer(img_size=32, num_classes=5, drop_path_rate=0.0,
                          **cfg)
  _torch_weights.randomize_(tm).eval()
  last = []

  def hook(module, args, kwargs, _):
    logits, _ = _timm_attention(module, args[0])
    logits = logits + module._get_rel_pos_bias()
    mask = kwargs.get("mask")
    if mask is not None:
      nw = mask.shape[0]
      logits = (logits.view(-1, nw, *logits.shape[1:])
                + mask[None, :, None]).view(logits.shape)
    last[:] = [logits.softmax(-1).detach().numpy()]

  tm.layers[-1].blocks[-1].attn.register_forward_hook(hook, with_kwargs=True)
  x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x)).numpy()
    feats = tm.forward_intermediates(torch.from_numpy(x), norm=True,
                                     intermediates_only=True)
  model = models.build("swin_tiny", num_classes=5, **cfg)
  params = _torch_weights.swin_params(tm)
  abstract = jax.eval_shape(functools.partial(model.init, train=False), KEY,
                            jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert (jax.tree.map(np.shape, abstract["params"])
          == jax.tree.map(np.shape, params))
  out = _apply(model, {"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(out["logits"]["one"], ref, rtol=1e-4, atol=1e-4)
  for ours, theirs in zip(out["stages"], feats):
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1),
                               rtol=1e-4, atol=1e-4)
  h, w, window, shift = model.stage_grids(32, 32)[-1]
  shift = shift if (depths[-1] - 1) % 2 else 0
  assert (window, shift) == ((2, 0) if len(depths) == 4 else (4, 2))
  np.testing.assert_allclose(
      out["token_attention"],
      _swin_token_attention(last[0], 2, h, w, window, shift), rtol=1e-4,
      atol=1e-6)


def test_train_apply_passes_return_attention_to_every_bn_group(tiny_vit):
  """``train.static.train_apply`` with per-device BatchNorm groups: the
  static ``return_attention`` flag reaches every slice."""
  from automix_jax.train import static
  model, variables = tiny_vit
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  run = jax.jit(lambda v, x, groups: static.train_apply(
      model, v, x, rngs={}, groups=groups, return_attention=True)[0],
                static_argnums=2)
  one, two = run(variables, x, 1), run(variables, x, 2)
  assert two["attention"].shape == (4, 2, 17, 17)
  np.testing.assert_allclose(two["attention"], one["attention"], rtol=1e-5,
                             atol=1e-7)
