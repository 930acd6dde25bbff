"""The static method with the vision-transformer mixers on a tiny ViT: the
step's targets are the mixer's per-sample labels (relabelled from the same
forward pass, or from a clean eval-mode pass's attention), a model without
the attention they read is refused by name, and 8 devices == 1."""

import importlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from automix_jax import mixers
from automix_jax.train import losses
from automix_jax.train import static
from tests.train import test_sharded
from tests.train.test_static_step import tiny_batch
from tests.train.test_static_step import tiny_config

pytestmark = pytest.mark.usefixtures("fast_compile")

SIZE = 16  # vit_tiny's 4-px patches: a 4x4 token grid
# Per mixer: keywords in the config (TL-Align's and MixPro's patch size comes
# from the model).
KWARGS = {"transmix": {}, "mixpro": {}, "tlalign": {}, "tokenmix": {},
          "smmix": {}}


def _vit_config(name, **overrides):
  kwargs = ml_collections.ConfigDict(KWARGS[name])
  return tiny_config(**{"mixer.name": name, "mixer.kwargs": kwargs,
                        "model.name": "vit_tiny", "model.width": 0.25,
                        "model.kwargs": ml_collections.ConfigDict(
                            {"depth": 2}), **overrides})


@pytest.mark.parametrize("name", ["transmix", "tlalign", "tokenmix"])
def test_step_trains_on_the_per_sample_labels(name):
  method = static.StaticMixing(_vit_config(name), num_classes=10,
                               steps_per_epoch=5)
  state = jax.jit(method.init)(jax.random.key(0),
                               jnp.zeros((2, SIZE, SIZE, 3)))
  batch = tiny_batch(size=SIZE)
  key = jax.random.key(7)
  model = method.model
  mixer = mixers.get(name, **({"patch_size": model.patch_size}
                              if name == "tlalign" else {}))
  flags = {"return_attention": True} if name == "tlalign" else {}

  @jax.jit
  def hand_step(state, batch):
    """The update written out: a clean eval pass for the token attention,
    or the labels from the mixed pass's own outputs."""
    k_mix, k_drop = jax.random.split(jax.random.fold_in(key, 0))
    hot = mixers.one_hot(batch["label"], 10)
    relabel = None
    if name == "tokenmix":
      att = model.apply({"params": state.params}, batch["image"],
                        train=False)["token_attention"]
      mixed, targets, _ = mixer(k_mix, batch["image"], hot,
                                token_attention=att)
    else:
      mixed, relabel, _ = mixer(k_mix, batch["image"], hot)

    def loss_fn(params):
      out = model.apply({"params": params}, mixed, train=True,
                        rngs={"dropout": k_drop}, **flags)
      t = (targets if relabel is None else
           relabel(jax.lax.stop_gradient(out))[0])
      return losses.soft_cross_entropy(out["logits"]["one"], t), t

    (loss, t), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, _ = method.tx.update(grads, state.opt_state, state.params)
    return loss, t, optax.apply_updates(state.params, updates)

  loss, t, want = hand_step(state, batch)
  lam = np.asarray(t)[np.arange(8), np.asarray(batch["label"])]
  assert np.ptp(lam) > 1e-4, "label weights collapsed over the batch"
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1))
  new, metrics = step(state, batch, key)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  chex.assert_trees_all_close(new.params, want, rtol=1e-5, atol=1e-6)
  step(new, tiny_batch(seed=1, size=SIZE), key)  # no retrace
  chex.clear_trace_counter()


@pytest.mark.parametrize("name,output", [
    ("transmix", "'cls_attention'"), ("mixpro", "'cls_attention'"),
    ("tlalign", "'attention'"), ("tokenmix", "'token_attention'"),
    ("smmix", "'token_attention'")])
def test_a_resnet_is_refused_naming_the_mixer_and_the_output(name, output):
  c = tiny_config(**{"mixer.name": name,
                     "mixer.kwargs": ml_collections.ConfigDict(KWARGS[name])})
  method = static.StaticMixing(c, num_classes=10, steps_per_epoch=5)
  with pytest.raises(ValueError, match=f"mixer '{name}'.*needs the model "
                     f"output {output}"):
    jax.eval_shape(method.init, jax.random.key(0), jnp.zeros((2, 16, 16, 3)))


def test_smmix_loss_terms_are_the_authors():
  """``region_cross_entropy`` / ``consistency_kl`` against the authors'
  token head on masked mean tokens and ``KLDivLoss(batchmean)``, in torch."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  b, h, w, d, k = 6, 4, 4, 8, 5
  tokens = rng.normal(size=(b, h, w, d)).astype(np.float32)
  mask = (rng.random((b, h, w)) < 0.4).astype(np.float32)
  mask[:, 0, 0], mask[:, 0, 1] = 0, 1  # both regions non-empty
  kernel = rng.normal(size=(d, k)).astype(np.float32)
  bias = rng.normal(size=(k,)).astype(np.float32)
  ids = rng.integers(0, k, b)
  hot = np.eye(k, dtype=np.float32)[ids] * 0.9 + 0.1 / k
  index = np.arange(b)[::-1].copy()
  own, partner = losses.region_cross_entropy(
      jnp.asarray(tokens), jnp.asarray(mask), (kernel, bias), hot,
      hot[index])
  head = torch.nn.Linear(d, k)
  head.weight.data, head.bias.data = torch.tensor(kernel.T), torch.tensor(bias)
  image_token = torch.tensor(tokens).reshape(b, h * w, d)
  soft_ce = lambda z, t: torch.sum(-t * torch.log_softmax(z, -1), -1).mean()
  for m, t, got in ((1 - mask, hot, own), (mask, hot[index], partner)):
    m = torch.tensor(m).reshape(b, -1)
    result = head((image_token * m.unsqueeze(-1)).sum(1) /
                  m.sum(1, keepdim=True))
    np.testing.assert_allclose(got, soft_ce(result, torch.tensor(t)).item(),
                               rtol=1e-5)
  logits = rng.normal(size=(b, k)).astype(np.float32)
  clean = rng.normal(size=(b, k)).astype(np.float32)
  lam = rng.random(b).astype(np.float32)
  got = losses.consistency_kl(logits, clean, lam, index)
  lt, ct = torch.tensor(lam)[:, None], torch.tensor(clean)
  mixed = lt * ct + (1 - lt) * ct[torch.tensor(index)]
  want = torch.nn.KLDivLoss(reduction="batchmean")(
      torch.log_softmax(torch.tensor(logits), 1), torch.softmax(mixed, 1))
  np.testing.assert_allclose(got, want.item(), rtol=1e-5)


def test_smmix_loss_in_the_step():
  c = _vit_config("smmix", **{"loss.smmix.enabled": True})
  method = static.StaticMixing(c, num_classes=10, steps_per_epoch=5)
  state = jax.jit(method.init)(jax.random.key(0),
                               jnp.zeros((2, SIZE, SIZE, 3)))
  batch, key = tiny_batch(size=SIZE), jax.random.key(7)
  model = method.model

  @jax.jit
  def hand_step(state, batch):
    k_mix, k_drop = jax.random.split(jax.random.fold_in(key, 0))
    hot = mixers.one_hot(batch["label"], 10)
    clean = model.apply({"params": state.params}, batch["image"], train=False)
    mixed, targets, aux = mixers.smmix(
        k_mix, batch["image"], hot, token_attention=clean["token_attention"])

    def loss_fn(params):
      out = model.apply({"params": params}, mixed, train=True,
                        rngs={"dropout": k_drop})
      head = params["heads"]["one"]
      own, partner = losses.region_cross_entropy(
          out["stages"][-1], aux["token_mask"],
          (head["kernel"], head["bias"]), hot, hot[aux["index"]])
      kl = losses.consistency_kl(out["logits"]["one"],
                                 clean["logits"]["one"], aux["lam"],
                                 aux["index"])
      return (losses.soft_cross_entropy(out["logits"]["one"], targets) +
              0.5 * (own + partner) + kl)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, _ = method.tx.update(grads, state.opt_state, state.params)
    return loss, optax.apply_updates(state.params, updates)

  loss, want = hand_step(state, batch)
  new, metrics = jax.jit(method.train_step)(state, batch, key)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  assert float(metrics["smmix_fine"]) > 0 and float(
      metrics["smmix_consistency"]) > 0
  chex.assert_trees_all_close(new.params, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="`config.loss.smmix.enabled=True` "
                     "needs a mixer that marks the partner's tokens"):
    static.StaticMixing(_vit_config("transmix",
                                    **{"loss.smmix.enabled": True}),
                        num_classes=10, steps_per_epoch=5)


def test_patch_size_is_the_models():
  method = static.StaticMixing(_vit_config("tlalign"), num_classes=10,
                               steps_per_epoch=5)
  assert method.mixer.keywords == {"patch_size": 4}
  c = _vit_config("mixpro")
  with c.unlocked():
    c.mixer.kwargs.patch_size = 8
  with pytest.raises(ValueError, match="`config.mixer.kwargs.patch_size` = 8 "
                     "but model 'vit_tiny' has patch_size 4"):
    static.StaticMixing(c, num_classes=10, steps_per_epoch=5)


@pytest.mark.parametrize("module,arg,refused", [
    *[("vit_cpu", f"mixer={m}", None) for m in KWARGS],
    *[("cifar100_deit", f"mixer={m}", None) for m in KWARGS],
    ("cifar100_deit", "model=swin_t,mixer=smmix", None),
    ("cifar100_deit", "model=swin_t,mixer=transmix", "'cls_attention'"),
    ("cifar100_deit", "model=swin_t,mixer=tlalign", "'attention'")])
def test_the_vit_configs_reach_the_mixers(module, arg, refused):
  """Each mixer from the CPU ViT and the 224-px DeiT-S / Swin-T configs,
  initialised abstractly (the model-output check included)."""
  c = importlib.import_module(f"configs.{module}").get_config(arg)
  c.lock()
  method = static.StaticMixing(c, num_classes=10, steps_per_epoch=5)
  size = c.data.image_size or 32
  init = lambda: jax.eval_shape(method.init, jax.random.key(0),
                                jax.ShapeDtypeStruct((1, size, size, 3),
                                                     jnp.float32))
  if refused:
    with pytest.raises(ValueError, match=f"needs the model output {refused}"):
      init()
    return
  init()
  assert (method.smmix_loss is not None) == (c.mixer.name == "smmix")
  if c.mixer.name in ("tlalign", "mixpro"):
    assert method.mixer.keywords["patch_size"] == method.model.patch_size


def test_relabel_mixers_refuse_per_device_mixing():
  c = _vit_config("transmix", per_device_mixing=True)
  with pytest.raises(ValueError, match="`config.per_device_mixing=True` is "
                     "not supported with mixer 'transmix'"):
    static.StaticMixing.check_config(c)
  static.StaticMixing.check_config(_vit_config("smmix",
                                               per_device_mixing=True))


def test_8_devices_match_1_device():
  """TL-Align: relabelled from the per-block attention of the mixed pass
  (the token-attention path is a plain clean pass, as the saliency's)."""
  name = "tlalign"
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(16, SIZE, SIZE, 3)).astype(np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)}
             for _ in range(2)]
  key = jax.random.key(3)
  runs = []
  # 8 devices also with per-device "BatchNorm" groups: a ViT has none, so
  # the vmapped forward (with return_attention for TL-Align) changes nothing.
  for devices, groups in ((1, False), (8, True)):
    c = _vit_config(name, batch_size=16, per_device_batch_stats=groups)
    with jax.default_matmul_precision("highest"):
      runs.append(test_sharded._run(jax.devices()[:devices], c, batches, key,
                                    size=SIZE))
  (loss1, state1), (loss8, state8) = runs
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-5,
                              atol=1e-5)


@pytest.mark.parametrize("name,overrides", [
    ("transmix", {}), ("tlalign", {}),
    ("smmix", {"loss.smmix.enabled": True})])
def test_whole_batch_targets_refuse_accumulation_and_sumix(name, overrides):
  """Relabelled targets and SMMix's loss terms read the whole batch's pass:
  gradient accumulation and SUMix (which corrects the mixer's λ targets)
  are refused by name; the attention mixers without them are not."""
  with pytest.raises(ValueError, match=r"`config.grad_accum_steps` > 1 does "
                     r"not combine with a relabelling mixer"):
    static.StaticMixing.check_config(
        _vit_config(name, grad_accum_steps=2, **overrides))
  sumix_config = _vit_config(name, **overrides)
  sumix_config.label_mix = ml_collections.ConfigDict(
      {"name": "sumix", "kwargs": {}})
  with pytest.raises(ValueError, match=r"`config.label_mix` \(SUMix\) "
                     r"corrects the mixer's λ targets"):
    static.StaticMixing.check_config(sumix_config)
  # TokenMix (clean-pass attention only) splits into micro-batches.
  static.StaticMixing.check_config(_vit_config("tokenmix",
                                               grad_accum_steps=2))
