"""The models' ``feature_mix`` hook and ``class_activation_map``
(docs/interfaces.md, "Model-aware mixers")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import models

pytestmark = pytest.mark.usefixtures("fast_compile")

# name, build kwargs, number of feature stages (ResNet 4, WRN 3, ViT depth,
# Swin len(depths)).
_TINY = {
    "cifar_resnet18": (dict(width=1 / 16, stage_sizes=(1, 1, 1, 1)), 4),
    "wrn": (dict(width=1 / 16, depth=10, widen_factor=1), 3),
    "vit_tiny": (dict(width=1 / 8, depth=2, patch_size=4,
                      stage_blocks=(1, 2)), 2),
    # 4x4 map with shifted 2x2 windows, then 2x2 (one window).
    "swin_tiny": (dict(embed_dim=8, patch_size=2, depths=(2, 1),
                       num_heads=(1, 2), window_size=2), 2),
}


def _build(name):
  kwargs, num_stages = _TINY[name]
  model = models.build(name, num_classes=5, **kwargs)
  variables = models.init(model, jax.random.key(0), (8, 8, 3))
  images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  return model, variables, images, num_stages


def _apply(model, variables, images, feature_mix=None):
  return model.apply(variables, images, train=False, feature_mix=feature_mix)


@pytest.mark.parametrize("name", sorted(_TINY))
def test_feature_mix_is_called_on_the_input_and_after_every_stage(name):
  model, variables, images, num_stages = _build(name)
  seen = []

  def record(stage, x):
    seen.append((stage, x.shape))
    return x

  plain = _apply(model, variables, images)
  hooked = _apply(model, variables, images, record)
  assert [s for s, _ in seen] == list(range(num_stages + 1))
  assert seen[0][1] == images.shape
  if name != "vit_tiny":  # CNN/Swin stage s: the tensor stages[s - 1] has.
    assert [shape for _, shape in seen[1:]] == [
        s.shape for s in plain["stages"]]
  else:  # ViT: the token sequence, CLS first.
    assert all(shape == (4, 1 + 4, model.dim) for _, shape in seen[1:])
  # An identity hook changes nothing, bit for bit.
  jax.tree.map(np.testing.assert_array_equal, hooked, plain)


@pytest.mark.parametrize("name", ["cifar_resnet18", "wrn"])
def test_feature_mix_at_stage_k_changes_stage_k_and_after_only(name):
  model, variables, images, num_stages = _build(name)
  plain = _apply(model, variables, images)
  for k in range(1, num_stages + 1):
    def shift(stage, x, k=k):
      return x + 1.0 if stage == k else x
    out = _apply(model, variables, images, shift)
    for j in range(num_stages):
      if j + 1 < k:
        np.testing.assert_array_equal(out["stages"][j], plain["stages"][j])
      elif j + 1 == k:
        np.testing.assert_allclose(out["stages"][j], plain["stages"][j] + 1.0,
                                   rtol=1e-6)
      else:
        assert not np.allclose(out["stages"][j], plain["stages"][j])


def test_feature_mix_validation():
  model, variables, images, _ = _build("cifar_resnet18")
  with pytest.raises(ValueError, match="`feature_mix` must be None or a callable"):
    _apply(model, variables, images, feature_mix=3)
  with pytest.raises(ValueError, match=r"`feature_mix\(0, x\)` must return"):
    _apply(model, variables, images, lambda s, x: x[:, :4])


@pytest.mark.parametrize("name", ["cifar_resnet18", "wrn"])
def test_class_activation_map_averages_to_the_own_class_logit(name):
  model, variables, images, _ = _build(name)
  out = _apply(model, variables, images)
  labels = jnp.array([0, 3, 4, 3], jnp.int32)
  cam = models.class_activation_map(out, variables["params"], "one", labels)
  h, w = out["stages"][-1].shape[1:3]
  assert cam.shape == (4, h, w) and cam.dtype == jnp.float32
  # The heads see the spatial mean of the last stage: the map's mean is the
  # logit of the sample's own class.
  logits = np.asarray(out["logits"]["one"])
  np.testing.assert_allclose(np.asarray(cam).mean((1, 2)),
                             logits[np.arange(4), np.asarray(labels)],
                             rtol=1e-5, atol=1e-6)
  # And each position is the numpy 1x1 conv of SnapMix's get_spm.
  kernel = np.asarray(variables["params"]["heads"]["one"]["kernel"])
  bias = np.asarray(variables["params"]["heads"]["one"]["bias"])
  feats = np.asarray(out["stages"][-1])
  want = np.stack([feats[b] @ kernel[:, c] + bias[c]
                   for b, c in enumerate(np.asarray(labels))])
  np.testing.assert_allclose(cam, want, rtol=1e-5, atol=1e-6)


def test_class_activation_map_validation():
  model, variables, images, _ = _build("cifar_resnet18")
  out = _apply(model, variables, images)
  params = variables["params"]
  with pytest.raises(ValueError, match="`head` 'mix' is not a head"):
    models.class_activation_map(out, params, "mix", jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match=r"`labels` must be \[B\] = \(4,\)"):
    models.class_activation_map(out, params, "one", jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="`out` must be a model output dict"):
    models.class_activation_map({}, params, "one", jnp.zeros(4, jnp.int32))
