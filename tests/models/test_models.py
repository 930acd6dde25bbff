"""Tests of the model zoo against docs/interfaces.md ("Models").

Full-size models are only traced (``jax.eval_shape``: shapes, dtypes and
parameter counts without compute); real forward/backward passes use width 1/16
or 1/32 models on 8x8-16x16 images so the file runs in seconds on a CPU.
Parameter counts are pinned to torchvision / timm (cross-checked in the
``peer`` tests when torch is installed).
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import models
from automix_jax.models import resnet

KEY = jax.random.key(0)


def _abstract(name, image_hw, *, batch=2, num_classes=100, **kw):
  """(variables, outputs) as ShapeDtypeStructs for a model at full size."""
  model = models.build(name, num_classes=num_classes, **kw)
  x = jax.ShapeDtypeStruct((batch, image_hw, image_hw, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), KEY, x)
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  return variables, out


def _shapes(tree):
  return jax.tree.map(lambda a: tuple(a.shape), tree)


# name -> (image size, stage shapes without batch, pooled dim); width 1.
_R18 = [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512)]
_R50 = [(32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048)]
_WRN = [(32, 32, 128), (16, 16, 256), (8, 8, 512)]
EXPECTED = {
    "cifar_resnet18": (32, _R18, 512),
    "cifar_resnet34": (32, _R18, 512),
    "cifar_resnet50": (32, _R50, 2048),
    "cifar_resnext50": (32, _R50, 2048),
    "resnet18": (224, [(56, 56, 64), (28, 28, 128), (14, 14, 256),
                       (7, 7, 512)], 512),
    "resnet50": (224, [(56, 56, 256), (28, 28, 512), (14, 14, 1024),
                       (7, 7, 2048)], 2048),
    "wrn28_8": (32, _WRN, 512),
    "wrn": (32, _WRN, 512),
    "vit_tiny": (32, [(8, 8, 64)] * 4, 64),
    "deit_tiny": (224, [(14, 14, 192)] * 4, 192),
    "deit_small": (224, [(14, 14, 384)] * 4, 384),
    "swin_tiny": (224, [(56, 56, 96), (28, 28, 192), (14, 14, 384),
                        (7, 7, 768)], 768),
}

# Counts from torchvision / timm (see test_param_counts_match_torch_peers).
PARAM_COUNTS = {
    # torchvision resnet18(num_classes=100), conv1 -> 3x3/1, no maxpool.
    ("cifar_resnet18", 100): 11_220_132,
    ("cifar_resnet34", 100): 21_328_292,
    ("cifar_resnet50", 100): 23_705_252,
    ("cifar_resnext50", 100): 23_177_124,  # resnext50_32x4d, CIFAR stem.
    ("resnet18", 1000): 11_689_512,
    ("resnet50", 1000): 25_557_032,
    ("deit_tiny", 1000): 5_717_416,  # timm deit_tiny_patch16_224.
    ("deit_small", 1000): 22_050_664,  # timm deit_small_patch16_224.
    ("swin_tiny", 1000): 28_288_354,  # timm swin_tiny_patch4_window7_224.
}


def test_registry_names():
  assert set(models.names()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_output_contract_full_size(name):
  size, stages, dim = EXPECTED[name]
  variables, out = _abstract(name, size, heads=("one", "mix"))
  assert set(out["logits"]) == {"one", "mix"}
  for logits in out["logits"].values():
    assert logits.shape == (2, 100) and logits.dtype == jnp.float32
  assert isinstance(out["stages"], tuple)
  assert [s.shape for s in out["stages"]] == [(2, *s) for s in stages]
  assert out["pooled"].shape == (2, dim)
  if name.startswith(("vit", "deit")):
    h, w, _ = stages[-1]
    num_heads = models.build(name, num_classes=1).num_heads
    assert out["cls_attention"].shape == (2, num_heads, h * w)
    assert out["token_attention"].shape == (2, h, w)
    assert "batch_stats" not in variables
  elif name.startswith("swin"):
    assert out["token_attention"].shape == (2, *stages[-1][:2])
    assert "cls_attention" not in out and "batch_stats" not in variables
  else:
    assert "cls_attention" not in out and "token_attention" not in out
    assert "batch_stats" in variables
  assert all(p.dtype == jnp.float32
             for p in jax.tree.leaves(variables["params"]))


def test_cifar_resnet18_stage3_is_the_mask_feature():
  _, out = _abstract("cifar_resnet18", 32, batch=4)
  assert out["stages"][2].shape == (4, 8, 8, 256)
  _, out = _abstract("cifar_resnet18", 32, batch=4, width=0.5)
  assert out["stages"][2].shape == (4, 8, 8, 128)


def test_vit_patch4_variant_at_32px():
  _, out = _abstract("deit_small", 32, patch_size=4)
  assert [s.shape for s in out["stages"]] == [(2, 8, 8, 384)] * 4
  assert out["cls_attention"].shape == (2, 6, 64)


@pytest.mark.parametrize("name,num_classes", sorted(PARAM_COUNTS))
def test_param_counts(name, num_classes):
  size = 32 if name.startswith("cifar") else 224
  variables, _ = _abstract(name, size, num_classes=num_classes)
  expected = PARAM_COUNTS[(name, num_classes)]
  got = models.num_params(variables["params"])
  assert abs(got - expected) <= 1e-3 * expected, (got, expected)
  assert got == expected  # Exact for these layouts.


def _wrn_count(depth, k, num_classes):
  """Independent WRN parameter count (Zagoruyko & Komodakis, Table 1 layout)."""
  n = (depth - 4) // 6
  total = 3 * 3 * 3 * 16
  c_in = 16
  for c in (16 * k, 32 * k, 64 * k):
    for b in range(n):
      cin = c_in if b == 0 else c
      total += 2 * cin + 9 * cin * c + 2 * c + 9 * c * c
      if cin != c:
        total += cin * c
    c_in = c
  return total + 2 * c_in + c_in * num_classes + num_classes


def test_wrn_param_counts():
  variables, _ = _abstract("wrn28_8", 32)
  assert models.num_params(variables["params"]) == _wrn_count(28, 8, 100)
  # WRN-28-10 on CIFAR-100 is the well-known 36.5M network.
  variables, _ = _abstract("wrn", 32, depth=28, widen_factor=10)
  got = models.num_params(variables["params"])
  assert got == _wrn_count(28, 10, 100)
  assert abs(got - 36.5e6) < 0.1e6


def test_bf16_compute_float32_logits_and_params():
  for name, size in (("cifar_resnet18", 32), ("vit_tiny", 32), ("wrn", 32),
                     ("swin_tiny", 224)):
    variables, out = _abstract(name, size, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32
               for p in jax.tree.leaves(variables["params"]))
    assert out["logits"]["one"].dtype == jnp.float32
    assert out["pooled"].dtype == jnp.float32
    assert out["stages"][0].dtype == jnp.bfloat16


# ---------------------------------------------------------------------------
# Real (tiny) computation.
#
# Real inits use the "rbg" PRNG: compiling threefry for every parameter shape
# costs ~5x more CPU than the whole tiny forward/backward pass.

RKEY = jax.random.key(1, impl="rbg")
TINY = dict(num_classes=100, width=1 / 16, heads=("one", "mix"))
_RNG = np.random.default_rng(0)
X16 = jnp.asarray(5.0 + _RNG.normal(size=(2, 16, 16, 3)), jnp.float32)


def _flat(tree):
  return {"/".join(k): v for k, v in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def _value_and_grad(model, variables, x, labels, rngs=None):
  """Jitted CE on head "one": ((loss, mutable updates), grads wrt params)."""
  def loss_fn(params):
    out, updates = model.apply(
        {**variables, "params": params}, x, train=True,
        mutable=["batch_stats"], rngs=rngs)
    logp = jax.nn.log_softmax(out["logits"]["one"])
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)), updates
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables["params"])


@pytest.fixture(scope="module")
def tiny_r18():
  """Width-1/16 CIFAR R-18 (32 final channels), its init and one train step."""
  model = models.build("cifar_resnet18", **TINY)
  variables = models.init(model, RKEY, (16, 16, 3))
  (loss, updates), grads = _value_and_grad(model, variables, X16,
                                           jnp.array([1, 7]))
  return model, variables, loss, updates, grads


def test_zero_init_residual_gammas(tiny_r18):
  _, variables, *_ = tiny_r18
  flat = _flat(variables["params"])
  last = [k for k in flat if k.endswith("bn2/scale") and "layer" in k]
  assert len(last) == 8  # 4 stages x 2 basic blocks.
  for k in last:
    np.testing.assert_array_equal(flat[k], 0.0)
  others = [k for k in flat if k.endswith("scale") and k not in last]
  assert len(others) == 8 + 3 + 1  # bn1s, downsample_bns, stem_bn.
  assert all(np.all(flat[k] == 1.0) for k in others)


def test_zero_init_residual_bottleneck_and_option():
  # Single blocks: a full bottleneck net's init is too slow for a CPU test.
  x = jnp.zeros((1, 4, 4, 8))
  init = lambda m: _flat(jax.jit(functools.partial(m.init, train=False))(
      RKEY, x)["params"])
  flat = init(resnet.Bottleneck(features=4, mid_features=8, strides=2,
                                groups=2))
  assert np.all(flat["bn3/scale"] == 0)
  assert all(np.all(flat[f"{n}/scale"] == 1)
             for n in ("bn1", "bn2", "downsample_bn"))
  assert flat["conv2/kernel"].shape == (3, 3, 4, 8)  # 2 groups of 4 channels.
  flat = init(resnet.BasicBlock(features=8, zero_init_residual=False))
  assert np.all(flat["bn2/scale"] == 1) and "downsample_conv/kernel" not in flat
  assert models.build("cifar_resnet18", num_classes=10,
                      zero_init_residual=False).zero_init_residual is False


def test_conv_init_is_kaiming_fan_out(tiny_r18):
  _, variables, *_ = tiny_r18
  conv = variables["params"]["layer4_1"]["conv1"]
  assert set(conv) == {"kernel"}  # No conv bias.
  kernel = conv["kernel"]  # [3, 3, 32, 32]
  fan_out = 9 * kernel.shape[-1]
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / fan_out), rtol=0.1)


def test_heads_init_and_two_distinct_heads(tiny_r18):
  model, variables, *_ = tiny_r18
  heads = variables["params"]["heads"]
  assert set(heads) == {"one", "mix"}
  for h in heads.values():
    assert h["kernel"].shape == (32, 100)
    np.testing.assert_allclose(np.std(h["kernel"]), 0.01, rtol=0.1)
    assert abs(float(np.mean(h["kernel"]))) < 2e-3
    np.testing.assert_array_equal(h["bias"], 0.0)
  assert not np.allclose(heads["one"]["kernel"], heads["mix"]["kernel"])
  out, same = jax.jit(functools.partial(
      model.apply, train=False, mutable=["batch_stats"]))(variables, X16)
  assert not np.allclose(out["logits"]["one"], out["logits"]["mix"])
  # train=False leaves batch_stats untouched even when they are mutable.
  jax.tree.map(np.testing.assert_array_equal, same["batch_stats"],
               variables["batch_stats"])


def test_batch_stats_update_in_train_with_torch_momentum(tiny_r18):
  _, variables, _, updates, _ = tiny_r18
  old, new = _flat(variables["batch_stats"]), _flat(updates["batch_stats"])
  assert set(old) == set(new)
  assert all(not np.allclose(old[k], new[k]) for k in old)  # Every BN moved.
  # stem_bn normalises the stem conv output (3x3, stride 1, pad 1, no bias):
  # mean_new = 0.9 * 0 + 0.1 * batch_mean, var_new = 0.9 * 1 + 0.1 * batch_var
  # (torch momentum 0.1; Flax uses the biased batch variance).
  stem = jax.lax.conv_general_dilated(
      X16, variables["params"]["stem_conv"]["kernel"], (1, 1),
      ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(new["stem_bn/mean"],
                             0.1 * np.mean(stem, axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new["stem_bn/var"],
                             0.9 + 0.1 * np.var(stem, axis=(0, 1, 2)),
                             rtol=1e-4)


def test_cifar_resnet18_forward_backward(tiny_r18):
  _, _, loss, _, grads = tiny_r18
  assert np.isfinite(loss) and abs(float(loss) - np.log(100)) < 0.5
  g = _flat(grads)
  assert all(np.all(np.isfinite(v)) for v in g.values())
  assert np.any(g["stem_conv/kernel"] != 0)
  assert np.any(g["heads/one/kernel"] != 0)
  np.testing.assert_array_equal(g["heads/mix/kernel"], 0.0)  # Unused head.
  # Zero-init residual: the branch's last gamma gets gradient at init.
  assert np.any(g["layer1_0/bn2/scale"] != 0)


@pytest.fixture(scope="module")
def tiny_vit():
  model = models.build("vit_tiny", **TINY)  # D = 4, 2 heads, 4x4 patches.
  return model, models.init(model, RKEY, (16, 16, 3))


def test_vit_tiny_forward_backward_and_attention(tiny_vit):
  model, variables = tiny_vit
  (loss, updates), grads = _value_and_grad(model, variables, X16,
                                           jnp.array([0, 3]))
  assert np.isfinite(loss) and not updates  # No BatchNorm in a ViT.
  g = _flat(grads)
  assert all(np.all(np.isfinite(v)) for v in g.values())
  assert np.any(g["pos_embed"] != 0) and np.any(g["patch_embed/kernel"] != 0)

  out, inter = jax.jit(functools.partial(
      model.apply, train=False, mutable=["intermediates"]))(variables, X16)
  attn = out["cls_attention"]  # [B, heads, num_patches], CLS->CLS excluded.
  assert attn.shape == (2, 2, 16) and attn.dtype == jnp.float32
  full = inter["intermediates"]["last_attention"][0]
  assert full.shape == (2, 2, 17, 17)
  np.testing.assert_allclose(full.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(attn, full[:, :, 0, 1:], rtol=1e-6)
  # Rows sum to 1 over (CLS + patches); over patches alone, to 1 - a_cls,cls.
  np.testing.assert_allclose(attn.sum(-1) + full[:, :, 0, 0], 1.0, rtol=1e-5)
  assert np.all(attn.sum(-1) < 1.0) and np.all(attn >= 0)
  # The last stage is the final-LayerNorm patch grid; pooled is its CLS token.
  assert out["stages"][-1].shape == (2, 4, 4, 4)
  assert out["pooled"].shape == (2, 4)


def test_vit_dropout_uses_rng_only_when_enabled(tiny_vit):
  model, variables = tiny_vit
  run = lambda m, train, rngs=None: m.apply(
      variables, X16, train=train, rngs=rngs)["logits"]["one"]
  # Rates 0: train=True needs no rng and equals eval.
  ref = run(model, False)
  np.testing.assert_allclose(run(model, True), ref, rtol=1e-6)
  drop = models.build("vit_tiny", drop_path_rate=0.5, dropout_rate=0.3, **TINY)
  with pytest.raises(flax.errors.InvalidRngError):
    run(drop, True)
  o1 = run(drop, True, {"dropout": jax.random.key(1, impl="rbg")})
  o2 = run(drop, True, {"dropout": jax.random.key(2, impl="rbg")})
  assert not np.allclose(o1, o2)
  np.testing.assert_allclose(run(drop, False), ref, rtol=1e-6)


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="resnet1000"), "cifar_resnet18"),
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=True), "num_classes"),
    (dict(num_classes=2.5), "num_classes"),
    (dict(width=0.0), "width"),
    (dict(width=-1), "width"),
    (dict(width=float("nan")), "width"),
    (dict(heads="one"), "heads"),
    (dict(heads=()), "heads"),
    (dict(heads=("one", "one")), "heads"),
    (dict(heads=("one", 3)), "heads"),
    (dict(dtype=jnp.int32), "dtype"),
    (dict(bogus=1), "bogus"),
    (dict(name="wrn", depth=27), "depth"),
    (dict(name="wrn", widen_factor=0), "widen_factor"),
    (dict(name="vit_tiny", drop_path_rate=1.0), "drop_path_rate"),
    (dict(name="vit_tiny", stage_blocks=(0, 4)), "stage_blocks"),
    (dict(name="cifar_resnet18", groups=32), "groups"),
    (dict(name="cifar_resnet50", block="dense"), "block"),
])
def test_build_rejects_bad_arguments(kwargs, match):
  kwargs = {"name": "cifar_resnet18", "num_classes": 10, **kwargs}
  with pytest.raises(ValueError, match=match):
    models.build(kwargs.pop("name"), **kwargs)


@pytest.mark.parametrize("name", ["cifar_resnet18", "wrn", "vit_tiny"])
@pytest.mark.parametrize("shape,dtype,match", [
    ((2, 16, 16), jnp.float32, r"\[B, H, W, C\]"),
    ((2, 16, 16, 3), jnp.uint8, "floating"),
    ((2, 1, 16, 16, 3), jnp.float32, r"\[B, H, W, C\]"),
])
def test_apply_rejects_bad_images(name, shape, dtype, match):
  model = models.build(name, num_classes=10, width=1 / 16)
  x = jax.ShapeDtypeStruct(shape, dtype)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(functools.partial(model.init, train=False), KEY, x)


def test_vit_rejects_indivisible_size_and_wrong_grid():
  model = models.build("vit_tiny", num_classes=10, width=1 / 16)  # patch 4
  bad = jax.ShapeDtypeStruct((2, 18, 16, 3), jnp.float32)
  with pytest.raises(ValueError, match="patch_size=4"):
    jax.eval_shape(functools.partial(model.init, train=False), KEY, bad)
  x16 = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  x32 = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), KEY,
                             x16)
  with pytest.raises(ValueError, match="re-initialise"):
    jax.eval_shape(functools.partial(model.apply, train=False), variables, x32)


def test_init_and_num_params_validation():
  model = models.build("vit_tiny", num_classes=10, width=1 / 16)
  with pytest.raises(ValueError, match="image_shape"):
    models.init(model, KEY, (16, 16))
  with pytest.raises(ValueError, match="batch_size"):
    models.init(model, KEY, (16, 16, 3), batch_size=0)
  assert models.num_params({"a": jnp.zeros((2, 3)), "b": [jnp.zeros(4)]}) == 10


# ---------------------------------------------------------------------------
# Differential tests against torchvision (the `peer` extra).


def _torch_to_flax(torch_model):
  """Maps torchvision ResNet weights to this package's parameter tree."""
  sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  params, stats = {}, {}

  def bn(dst, src):
    params[dst] = {"scale": sd[f"{src}.weight"], "bias": sd[f"{src}.bias"]}
    stats[dst] = {"mean": sd[f"{src}.running_mean"],
                  "var": sd[f"{src}.running_var"]}

  conv = lambda w: np.transpose(w, (2, 3, 1, 0))
  params["stem_conv"] = {"kernel": conv(sd["conv1.weight"])}
  bn("stem_bn", "bn1")
  for s in range(1, 5):
    layer = getattr(torch_model, f"layer{s}")
    for b in range(len(layer)):
      src, dst = f"layer{s}.{b}", f"layer{s}_{b}"
      block_p, block_s = {}, {}
      for key in sd:
        if not key.startswith(src + ".") or "num_batches" in key:
          continue
        sub = key[len(src) + 1:].rsplit(".", 1)[0]
        name = {"downsample.0": "downsample_conv",
                "downsample.1": "downsample_bn"}.get(sub, sub)
        if "conv" in name and name not in block_p:
          block_p[name] = {"kernel": conv(sd[f"{src}.{sub}.weight"])}
        elif "bn" in name and name not in block_p:
          block_p[name] = {"scale": sd[f"{src}.{sub}.weight"],
                           "bias": sd[f"{src}.{sub}.bias"]}
          block_s[name] = {"mean": sd[f"{src}.{sub}.running_mean"],
                           "var": sd[f"{src}.{sub}.running_var"]}
      params[dst], stats[dst] = block_p, block_s
  params["heads"] = {"one": {"kernel": sd["fc.weight"].T,
                             "bias": sd["fc.bias"]}}
  return {"params": params, "batch_stats": stats}


@pytest.mark.peer
@pytest.mark.parametrize("name,block,tv_kw", [
    # ImageNet stem (7x7/2 + max-pool) with basic blocks.
    ("resnet18", "BasicBlock", {}),
    # CIFAR stem with ResNeXt 32x4d bottlenecks (stride on the grouped 3x3).
    ("cifar_resnext50", "Bottleneck", dict(groups=32, width_per_group=4)),
])
def test_matches_torchvision_eval_forward(name, block, tv_kw):
  """Same weights -> same logits as torchvision (one block per stage, for speed)."""
  torch = pytest.importorskip("torch")
  tv_resnet = pytest.importorskip("torchvision.models.resnet")
  torch.manual_seed(0)
  tm = tv_resnet.ResNet(getattr(tv_resnet, block), [1, 1, 1, 1],
                        num_classes=7, **tv_kw)
  if name.startswith("cifar"):
    tm.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    tm.maxpool = torch.nn.Identity()
  with torch.no_grad():  # Non-trivial BN so every BN is really exercised.
    for m in tm.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
  tm.eval()
  x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x)).numpy()
  model = models.build(name, num_classes=7, stage_sizes=(1, 1, 1, 1))
  variables = _torch_to_flax(tm)
  # Same tree structure as a fresh init (catches naming drift).
  abstract = jax.eval_shape(functools.partial(model.init, train=False), KEY,
                            jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert _shapes(abstract) == _shapes(variables)
  with jax.default_matmul_precision("highest"):
    out = jax.jit(functools.partial(model.apply, train=False))(
        variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(out["logits"]["one"], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.peer
def test_param_counts_match_torch_peers():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  count = lambda m: sum(p.numel() for p in m.parameters())

  def cifar(m):
    m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = torch.nn.Identity()
    return m

  tv = torchvision.models
  assert count(cifar(tv.resnet18(num_classes=100))) == PARAM_COUNTS[
      ("cifar_resnet18", 100)]
  assert count(cifar(tv.resnext50_32x4d(num_classes=100))) == PARAM_COUNTS[
      ("cifar_resnext50", 100)]
  assert count(tv.resnet50()) == PARAM_COUNTS[("resnet50", 1000)]
