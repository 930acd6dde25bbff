"""The DeiT/Swin recipe pieces: weight decay without norms/biases/embeddings
(vs torch AdamW parameter groups), the ViT configs, and a ViT static step
with every piece on (drop-path, smoothing, AdamW + exclusions, warm-up,
clipping, a CutMix/MixUp switch, EMA, DecoupleMix)."""

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from automix_jax import models
from automix_jax import sharding
from automix_jax.configs import common
from automix_jax.train import optim

pytestmark = pytest.mark.usefixtures("fast_compile")


def _tree():
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {"block0": {"norm1": {"scale": f(3), "bias": f(3)},
                     "fc1": {"kernel": f(3, 2), "bias": f(2)}},
          "pos_embed": f(1, 2, 3), "cls_token": f(1, 1, 3),
          "heads": {"one": {"kernel": f(3, 4), "bias": f(4)}}}


def test_decay_mask_selects_by_path():
  mask = optim.decay_mask(common.VIT_NO_DECAY)(_tree())
  flat = {"/".join(str(k.key) for k in p): v for p, v in
          jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert {k for k, v in flat.items() if v} == {"block0/fc1/kernel",
                                                "heads/one/kernel"}
  assert optim.decay_mask(()) is None
  with pytest.raises(ValueError, match="weight_decay_exclude"):
    optim.decay_mask("norm")
  with pytest.raises(ValueError, match="bad pattern"):
    optim.decay_mask(("(",))


@pytest.mark.peer
def test_adamw_with_exclusions_matches_torch_parameter_groups():
  """torch.optim.AdamW with a no-decay group, as OpenMixup's paramwise
  options and timm's param_groups_weight_decay build it, 3 steps."""
  torch = pytest.importorskip("torch")
  params = _tree()
  leaves, treedef = jax.tree_util.tree_flatten(params)
  decayed = jax.tree_util.tree_leaves(
      optim.decay_mask(common.VIT_NO_DECAY)(params))
  targets = [np.random.default_rng(i).normal(size=np.shape(x))
             for i, x in enumerate(leaves)]
  lr, wd = 0.01, 0.3  # a large decay so a wrong group shows
  t_params = [torch.tensor(np.asarray(x), dtype=torch.float64,
                           requires_grad=True) for x in leaves]
  opt = torch.optim.AdamW(
      [{"params": [p for p, d in zip(t_params, decayed) if d],
        "weight_decay": wd},
       {"params": [p for p, d in zip(t_params, decayed) if not d],
        "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-8)
  for _ in range(3):
    opt.zero_grad()
    sum(((p - torch.tensor(t)) ** 2).sum()
        for p, t in zip(t_params, targets)).backward()
    opt.step()

  tx, _ = optim.make_optimizer(
      dict(name="adamw", lr=lr, weight_decay=wd, schedule="constant",
           weight_decay_exclude=common.VIT_NO_DECAY),
      steps_per_epoch=1, num_epochs=3)
  loss = lambda p: sum(jnp.sum((x - t) ** 2) for x, t in zip(
      jax.tree_util.tree_leaves(p), targets))
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  for got, want in zip(jax.tree_util.tree_leaves(params), t_params):
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_exclusions_inside_the_learned_methods_multi_transform():
  """The learned methods' ``{classifier, generator}`` multi_transform: paths
  carry the group prefix, excluded leaves get no decay (zero gradient:
  AdamW's update is then -lr * wd * param exactly where decayed)."""
  params = {"classifier": _tree(), "generator": {"conv": {
      "kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}}
  cfg = dict(name="adamw", lr=0.1, weight_decay=0.5, schedule="constant",
             weight_decay_exclude=("norm", "bias", "cls_token", "pos_embed"))
  inner, _ = optim.make_optimizer(cfg, steps_per_epoch=1, num_epochs=1)
  tx = optax.multi_transform(
      {"classifier": inner, "generator": inner},
      lambda p: {g: jax.tree.map(lambda _: g, p[g]) for g in p})
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  flat = {"/".join(str(k.key) for k in path): (u, p) for (path, u), p in zip(
      jax.tree_util.tree_flatten_with_path(updates)[0],
      jax.tree_util.tree_leaves(params))}
  for name, (u, p) in flat.items():
    decayed = name.endswith("kernel")
    np.testing.assert_allclose(u, -0.05 * p if decayed else 0.0, rtol=1e-6,
                               err_msg=name)


@pytest.mark.parametrize("module,arg", [
    ("cifar100_deit", None), ("cifar100_deit", "model=swin_t,mixer=cutmix"),
    ("cifar100_deit", "runlocal"), ("cifar100_deit", "model=swin_t,runlocal"),
    ("imagenet_deit", None), ("imagenet_deit", "model=swin_t"),
    ("vit_cpu", None), ("vit_cpu", "mixer=vanilla,decouple,ema"),
])
def test_vit_configs_build_a_method(module, arg):
  from automix_jax.train import methods
  c = importlib.import_module(f"configs.{module}").get_config(arg)
  c.lock()
  m = methods.get(c.method)(c, num_classes=10, steps_per_epoch=5)
  size = c.data.image_size or 32
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(m.init, jax.random.key(0), x)
  assert models.num_params(variables.params) > 0
  assert optim.decay_mask(c.optimizer.weight_decay_exclude) is not None


def test_recipe_values():
  from configs import cifar100_deit, imagenet_deit
  c = cifar100_deit.get_config()
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay,
          c.optimizer.min_lr, c.optimizer.grad_clip_norm,
          c.optimizer.warmup_epochs, c.optimizer.by_epoch) == (
              "adamw", 1e-3, 0.05, 1e-6, 5.0, 20.0, False)
  assert c.model.name == "deit_small" and c.model.kwargs.drop_path_rate == 0.1
  assert c.label_smoothing == 0.1 and c.data.image_size == 224
  assert tuple(c.switch.mixers) == ("cutmix", "mixup") and c.switch.enabled
  assert [k["alpha"] for k in c.switch.kwargs] == [1.0, 0.8]
  i = imagenet_deit.get_config()
  assert (i.batch_size, i.optimizer.lr, i.optimizer.min_lr,
          i.optimizer.warmup_epochs, i.num_epochs) == (1024, 1e-3, 1e-5, 5.0,
                                                       300)
  np.testing.assert_allclose(i.optimizer.warmup_start_lr, 1e-6)
  assert (i.data.erasing_prob, i.data.crop_pct) == (0.25, 0.875)
  s = imagenet_deit.get_config("model=swin_t")
  assert s.model.kwargs.drop_path_rate == 0.2
  assert "relative_position_bias_table" in s.optimizer.weight_decay_exclude
  with pytest.raises(ValueError, match="model"):
    cifar100_deit.get_config("model=vit_h")


def test_vit_static_step_with_the_whole_recipe():
  """Two jitted steps of the CPU ViT config (shrunk): finite, traced once,
  drop-path active (two keys give two losses), warm-up lr, DecoupleMix and
  EMA metrics present, excluded parameters moved by the gradient only."""
  from automix_jax.train import static
  from configs import vit_cpu
  c = vit_cpu.get_config("decouple,ema")
  c.num_epochs = 2
  c.batch_size = 8
  c.model.width = 1 / 8                  # 8-d, 2 heads
  c.model.kwargs = ml_collections.ConfigDict(
      {"drop_path_rate": 0.5, "depth": 2})
  c.lock()
  method = static.StaticMixing(c, num_classes=10, steps_per_epoch=4,
                               mesh=sharding.make_mesh(jax.devices()[:1]))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  state = jax.jit(method.init)(jax.random.key(0), batch["image"][:2])
  traced = []

  def counted(state, batch, key):
    traced.append(1)
    return method.train_step(state, batch, key)

  step = jax.jit(counted)
  s1, m1 = step(state, batch, jax.random.key(1))
  _, m1b = step(state, batch, jax.random.key(2))
  _, m2 = step(s1, batch, jax.random.key(1))
  assert len(traced) == 1
  for m in (m1, m2):
    assert bool(m["finite"]) and {"decouple_reg", "ema_momentum"} <= set(m)
  assert float(m1["loss"]) != float(m1b["loss"])       # drop-path / mixing
  # Per-iteration cosine over 8 steps (to 1e-5) times the linear warm-up
  # (1 epoch = 4 steps) from 1e-3 x lr.
  cosine = lambda t: 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * t / 8))
  np.testing.assert_allclose(m1["lr"], cosine(0) * 1e-3, rtol=1e-5)
  np.testing.assert_allclose(m2["lr"], cosine(1) * (1e-3 + (1 - 1e-3) / 4),
                             rtol=1e-5)
