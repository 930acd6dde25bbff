"""Fine-tuning: torch weight conversion (vs torchvision / timm logits) and
config.init_from (converted files and project checkpoints, skip, errors)."""

import functools
import importlib.util
import pathlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from automix_jax import checkpoint
from automix_jax import models
from automix_jax import sharding
from automix_jax.train import init_from
from automix_jax.train import static
from tests.train import test_static_step

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "convert_torch_weights", REPO / "scripts" / "convert_torch_weights.py")
conv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv)


# ---------------------------------------------------------------------------
# Conversion against the torch models (random weights, eval mode).
# ---------------------------------------------------------------------------


def _randomize(module, torch):
  """Non-trivial BatchNorm statistics and perturbed weights, so that a wrong
  transpose, a swapped mean/var or a dropped bias shows in the logits."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, b in module.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn(b.shape, generator=gen))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    for _, p in module.named_parameters():
      p.add_(0.02 * torch.randn(p.shape, generator=gen))
  return module.eval()


def _compare(torch_model, variables, spec, torch, hw=32):
  x = np.random.default_rng(0).normal(size=(2, hw, hw, 3)).astype(np.float32)
  with torch.no_grad():
    want = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  model = models.build(spec["name"], num_classes=spec["num_classes"],
                       width=spec["width"], **spec["kwargs"])
  got = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"]["one"])(
      variables, jnp.asarray(x))
  scale = max(1.0, float(np.max(np.abs(want))))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5,
                             atol=1e-4 * scale)
  return model, x


def test_torchvision_resnet18_logits_match():
  torch = pytest.importorskip("torch")
  tv = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  net = _randomize(tv.models.resnet18(num_classes=10), torch)
  variables, spec = conv.convert_resnet(net.state_dict())
  assert spec == {"name": "resnet18", "num_classes": 10, "width": 1.0,
                  "kwargs": {}}
  _compare(net, variables, spec, torch)


def test_torchvision_bottleneck_resnext_logits_match():
  """The resnet50 layout (bottleneck, v1.5 stride on the 3x3) with grouped
  convs, at one block per stage to stay small."""
  torch = pytest.importorskip("torch")
  tv = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  net = _randomize(tv.models.resnet.ResNet(
      tv.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4,
      width_per_group=8), torch)
  variables, spec = conv.convert_resnet(net.state_dict())
  assert spec["name"] == "resnet50"
  assert spec["kwargs"] == {"stage_sizes": [1, 1, 1, 1], "groups": 4,
                            "base_width": 8}
  _compare(net, variables, spec, torch)


def test_timm_vit_logits_match_and_file_round_trip(tmp_path):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  net = _randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                     img_size=32, depth=2, num_classes=10),
                   torch)
  variables, spec = conv.convert_vit(net.state_dict(), num_heads=3)
  assert spec["kwargs"] == {"patch_size": 16, "embed_dim": 192, "depth": 2,
                            "num_heads": 3, "mlp_ratio": 4.0}
  _compare(net, variables, spec, torch)
  # The .npz the trainer reads holds exactly these arrays.
  path = tmp_path / "vit.npz"
  init_from.save_converted(path, variables, meta={"model": spec})
  flat, meta = init_from.load_converted(path)
  assert meta["model"] == spec
  want = init_from.flatten(variables["params"], "params")
  assert set(flat) == set(want)
  for k in want:
    np.testing.assert_array_equal(flat[k], want[k])


@pytest.mark.parametrize("source", [
    "torchvision:resnext50_32x4d", "timm:resnet50",
    "timm:deit_small_patch16_224"])
def test_full_size_trees_match_the_models(source):
  """The full-size ImageNet models convert to exactly the parameter tree of
  the model the spec builds (shapes only: jax.eval_shape, no compute)."""
  torch = pytest.importorskip("torch")
  lib, name = source.split(":")
  if lib == "timm":
    net = pytest.importorskip("timm").create_model(name, pretrained=False)
  else:
    net = pytest.importorskip("torchvision").models.get_model(name)
  arch = "vit" if hasattr(net, "blocks") else "resnet"
  with torch.no_grad():
    variables, spec = conv.convert(net.state_dict(), arch=arch)
  model = models.build(spec["name"], num_classes=spec["num_classes"],
                       width=spec["width"], **spec["kwargs"])
  want = jax.eval_shape(functools.partial(model.init, train=False),
                        jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  shapes = lambda t: {k: tuple(np.shape(v)) for k, v in
                      init_from.flatten(t, "x").items()}
  for group in ("params", "batch_stats"):
    assert shapes(variables.get(group, {})) == shapes(want.get(group, {}))
  assert spec["num_classes"] == 1000
  if name == "resnext50_32x4d":
    assert spec["kwargs"] == {"groups": 32, "base_width": 4}


def test_converter_refuses_unknown_keys():
  torch = pytest.importorskip("torch")
  tv = pytest.importorskip("torchvision")
  sd = tv.models.resnet18(num_classes=10).state_dict()
  sd["extra.weight"] = torch.zeros(3)
  with pytest.raises(ValueError, match=r"no counterpart.*extra\.weight"):
    conv.convert_resnet(sd)


# ---------------------------------------------------------------------------
# init_from into a train state.
# ---------------------------------------------------------------------------


def _config(**overrides):
  """test_static_step's tiny ResNet-10 with EMA, batch 4."""
  return test_static_step.tiny_config(**{"ema.enabled": True, "batch_size": 4,
                                         **overrides})


def _init(config, seed, num_classes=10):
  method = static.StaticMixing(config, num_classes=num_classes,
                               steps_per_epoch=2)
  state = jax.jit(method.init)(jax.random.key(seed), jnp.zeros((2, 8, 8, 3)))
  return method, state


IMAGES = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 3)),
                     jnp.float32)


@functools.lru_cache
def _jit_predict(method):
  return jax.jit(method.predict, static_argnums=1)


def _predict(method, state, variant):
  variables, head = method.eval_variants(state)[variant]
  return np.asarray(_jit_predict(method)(variables, head, IMAGES))


def _moved(state, delta):
  """A state whose params, BN stats and EMA weights all differ."""
  shift = lambda t, d: jax.tree.map(lambda x: x + d, t)
  return state.replace(params=shift(state.params, delta),
                       batch_stats=shift(state.batch_stats, delta),
                       ema_params=shift(state.ema_params, -delta),
                       step=jnp.int32(7))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A project checkpoint (step 7) of a static run with EMA."""
  root = tmp_path_factory.mktemp("run")
  config = _config()
  method, state = _init(config, seed=1)
  state = _moved(state, 0.01)
  with checkpoint.Checkpointer(root / "checkpoints") as ck:
    ck.save(7, state, {"note": "test"}, force=True)
  return root, method, state


def _cfg(path, **kw):
  return ml_collections.ConfigDict({"path": str(path), "kind": "checkpoint",
                                    "skip": "", "weights": "online", **kw})


@pytest.mark.parametrize("weights", ["online", "ema"])
def test_checkpoint_init_reproduces_the_predictions(saved_run, weights):
  root, src_method, src = saved_run
  method, fresh = _init(_config(), seed=2)
  for variant in ("online_one", "ema_one"):
    assert not np.allclose(_predict(method, fresh, variant),
                           _predict(src_method, src, f"{weights}_one"))
  for path in (root, root / "checkpoints", root / "checkpoints" / "7"):
    state = init_from.apply(fresh, _cfg(path, weights=weights))
    for variant in ("online_one", "ema_one"):  # both start from the source
      np.testing.assert_allclose(_predict(method, state, variant),
                                 _predict(src_method, src, f"{weights}_one"),
                                 rtol=1e-6, atol=1e-6)
    assert int(state.step) == 0
    chex.assert_trees_all_equal(state.opt_state, fresh.opt_state)
  # Online and EMA copies are separate buffers (the state is donated).
  assert (state.params["stem_conv"]["kernel"].unsafe_buffer_pointer()
          != state.ema_params["stem_conv"]["kernel"].unsafe_buffer_pointer())


def test_skip_keeps_the_heads_when_the_classes_differ(saved_run):
  root, _, src = saved_run
  method, fresh = _init(_config(), seed=2, num_classes=5)
  with pytest.raises(ValueError, match=(
      r"shape mismatch \(2\): params/heads/one/bias \(source \[10\], model "
      r"\[5\]\).*init_from.skip")):
    init_from.apply(fresh, _cfg(root))
  state = init_from.apply(fresh, _cfg(root, skip="^params/heads/"))
  chex.assert_trees_all_equal(state.params["heads"], fresh.params["heads"])
  chex.assert_trees_all_equal(state.ema_params["heads"],
                              fresh.params["heads"])
  src_params = jax.device_get(src.params)
  for name in ("stem_conv", "layer4_0"):
    chex.assert_trees_all_equal(jax.device_get(state.params[name]),
                                src_params[name])
  chex.assert_trees_all_equal(jax.device_get(state.batch_stats),
                              jax.device_get(src.batch_stats))


def test_mismatched_topology_names_paths_and_shapes(saved_run):
  root, _, _ = saved_run
  _, wider = _init(_config(**{"model.width": 1 / 8}), seed=2)
  with pytest.raises(ValueError, match=(
      r"shape mismatch \(61\):.*params/layer1_0/conv1/kernel \(source "
      r"\[3, 3, 4, 4\], model \[3, 3, 8, 8\]\)")):
    init_from.apply(wider, _cfg(root))
  _, deeper = _init(_config(**{"model.kwargs.stage_sizes": (2, 1, 1, 1)}),
                    seed=2)
  with pytest.raises(ValueError, match=r"missing in the source.*layer1_1/"):
    init_from.apply(deeper, _cfg(root))


def test_learned_method_loads_the_backbone_only(saved_run, tmp_path):
  """A static checkpoint into AutoMix: classifier and teacher load, the
  generator keeps its initialisation, the missing "mix" head must be skipped."""
  from automix_jax.train import automix
  from configs.automix import cifar10_cpu as automix_cpu
  root, _, src = saved_run
  c = automix_cpu.get_config()
  c.batch_size = 4
  c.model.width = 1 / 16
  c.model.kwargs = ml_collections.ConfigDict({"stage_sizes": (1, 1, 1, 1)})
  c.lock()
  method = automix.AutoMix(c, num_classes=10, steps_per_epoch=2)
  fresh = method.init(jax.random.key(2), jnp.zeros((2, 16, 16, 3)))
  with pytest.raises(ValueError, match=r"missing in the source.*heads/mix"):
    init_from.apply(fresh, _cfg(root))
  state = init_from.apply(fresh, _cfg(root, skip="^params/heads/mix/"))
  src_params = jax.device_get(src.params)
  for tree in (state.params["classifier"], state.ema_params):
    chex.assert_trees_all_equal(jax.device_get(tree["layer1_0"]),
                                src_params["layer1_0"])
    chex.assert_trees_all_equal(jax.device_get(tree["heads"]["one"]),
                                src_params["heads"]["one"])
  chex.assert_trees_all_equal(state.params["generator"],
                              fresh.params["generator"])
  chex.assert_trees_all_equal(state.params["classifier"]["heads"]["mix"],
                              fresh.params["classifier"]["heads"]["mix"])
  # From an AutoMix checkpoint the generator loads too.
  learned = fresh.replace(params=jax.tree.map(lambda x: x + 0.01,
                                              fresh.params))
  with checkpoint.Checkpointer(tmp_path / "checkpoints") as ck:
    ck.save(3, learned, {}, force=True)
  other = method.init(jax.random.key(3), jnp.zeros((2, 16, 16, 3)))
  state = init_from.apply(other, _cfg(tmp_path))
  chex.assert_trees_all_equal(jax.device_get(state.params),
                              jax.device_get(learned.params))


def test_converted_file_into_a_static_state(tmp_path):
  """kind="converted": a torchvision ResNet file (a ResNet-10 layout, to stay
  small) into a 10-class model with fresh heads gives the torch model's pooled
  features."""
  torch = pytest.importorskip("torch")
  tv = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  net = _randomize(tv.models.resnet.ResNet(
      tv.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=1000), torch)
  variables, spec = conv.convert_resnet(net.state_dict())
  path = tmp_path / "r10.npz"
  init_from.save_converted(path, variables)
  c = _config(**{"model.name": spec["name"], "model.width": 1.0})
  method = static.StaticMixing(c, num_classes=10, steps_per_epoch=2)
  fresh = jax.jit(method.init)(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  state = init_from.apply(fresh, _cfg(path, kind="converted",
                                      skip="^params/heads/"))
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    feats = torch.nn.Sequential(*list(net.children())[:-1])(t).flatten(1)
  out = jax.jit(functools.partial(method.model.apply, train=False))(
      {"params": state.ema_params, "batch_stats": state.ema_batch_stats},
      jnp.asarray(x))
  want = feats.numpy()
  np.testing.assert_allclose(np.asarray(out["pooled"]), want, rtol=1e-5,
                             atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_bad_init_from_config_raises_before_compute(tmp_path):
  def check(**kw):
    init_from.check_config(_config(**{f"init_from.{k}": v
                                      for k, v in kw.items()}))

  with pytest.raises(ValueError, match=r"init_from.kind.*'checkpoint'"):
    check(path=str(tmp_path), kind="torch")
  with pytest.raises(ValueError, match=r"init_from.skip.*regular expression"):
    check(path=str(tmp_path), skip="heads/(")
  with pytest.raises(ValueError, match=r"init_from.weights"):
    check(path=str(tmp_path), weights="best")
  with pytest.raises(FileNotFoundError, match=r"init_from.path.*\.npz"):
    check(path=str(tmp_path / "nope.npz"), kind="converted")
  check(path="")  # disabled
  not_converted = tmp_path / "x.npz"
  np.savez(not_converted, w=np.zeros(2))
  with pytest.raises(ValueError, match="not a converted weights file"):
    init_from.load_converted(not_converted)


def test_fine_grained_config_init_arg():
  from automix_jax.train import loop
  from configs.adautomix import fine_grained
  c = fine_grained.get_config("dataset=cub,model=r18,init=w/r18.npz")
  assert c.init_from.to_dict() == {"path": "w/r18.npz", "kind": "converted",
                                   "skip": "^params/heads/",
                                   "weights": "online"}
  loop.check_config(c, files=False)
  assert not init_from.enabled(fine_grained.get_config("dataset=cub"))


def test_converter_command_line(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  tv = pytest.importorskip("torchvision")
  sd_path = tmp_path / "r18.pth"
  torch.save(tv.models.resnet18(num_classes=7).state_dict(), sd_path)
  out = tmp_path / "r18.npz"
  assert conv.main(["--state_dict", str(sd_path), "--arch", "resnet",
                    "--out", str(out)]) == 0
  assert "name='resnet18'" in capsys.readouterr().out
  flat, meta = init_from.load_converted(out)
  assert meta["model"]["num_classes"] == 7
  assert flat["params/heads/one/kernel"].shape == (512, 7)
  assert "batch_stats/stem_bn/var" in flat
