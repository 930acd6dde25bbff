"""``preview_masks`` (the mask figures and TensorBoard images) shows what the
training step's generator produces: with the step's random partners and λ
fixed to the preview's (roll partners, uniform λ), the classifier's mixed
sample of ``prepare`` equals the preview's mixed image.

Tiny shapes (tests/learned/_shared.py): 1/32-width ResNet-18, 16x16, batch 8.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax.train import adautomix
from automix_jax.train import automix
from configs.adautomix import cifar10_cpu as adautomix_cpu
from configs.automix import cifar10_cpu as automix_cpu
from tests.learned import _shared as S

pytestmark = pytest.mark.usefixtures("fast_compile")


@functools.lru_cache(maxsize=None)   # one init per method for the module
def _method(name):
  if name == "automix":
    c = S.tiny(automix_cpu.get_config(), "automix", {})
    return S.setup(automix.AutoMix, c)
  c = S.tiny(adautomix_cpu.get_config(), "adautomix", {"mix_samples": 3})
  return S.setup(adautomix.AdAutoMix, c)


def _roll_draw(n, b):
  ids = jnp.arange(b, dtype=jnp.int32)
  perms = jnp.stack([jnp.roll(ids, -i) for i in range(n)])
  lam = jnp.full((n,), 1.0 / n, jnp.float32)
  return perms, lam


@pytest.mark.parametrize("name", ["automix", "adautomix"])
def test_preview_is_the_training_generators_mixed_sample(name, monkeypatch):
  method, state, batch = _method(name)
  images = batch["image"]
  n = method.preview_sources
  assert n == (2 if name == "automix" else 3)
  perms, lam = _roll_draw(n, images.shape[0])
  if name == "automix":
    monkeypatch.setattr(method, "draw", lambda key, b: {
        "lam_mb": lam[0], "lam_bb": lam[0], "perm_mb": perms[1],
        "perm_bb": perms[1]})
    ctx = method.prepare(state, batch, jax.random.key(3))
  else:
    monkeypatch.setattr(method, "draw", lambda key, n_, b: {
        "lam_mb": lam, "lam_bb": lam, "perm_mb": perms, "perm_bb": perms})
    ctx = method.prepare(n, state, batch, jax.random.key(3))
  assert not bool(ctx["fire"])   # λ = 1/N is outside the margin
  chex.clear_trace_counter()   # counted per function, across parameters
  preview = jax.jit(chex.assert_max_traces(method.preview_masks, n=1))
  out = jax.device_get(preview(state, images))
  out2 = jax.device_get(preview(state, images + 1.0))   # no retrace
  b, h, w, c = images.shape
  assert out["sources"].shape == (b, n, h, w, c)
  assert out["masks"].shape == (b, n, h, w) and out["mixed"].shape == images.shape
  np.testing.assert_allclose(out["mixed"], ctx["x_bb"], rtol=1e-5, atol=1e-5)
  if name == "adautomix":
    np.testing.assert_allclose(out["masks"], ctx["m_bb"], rtol=1e-5, atol=1e-6)
  # Source 0 is the sample's own image, source i its i-th next neighbour.
  for i in range(n):
    np.testing.assert_array_equal(out["sources"][:, i],
                                  np.roll(np.asarray(images), -i, axis=0))
  np.testing.assert_allclose(out["masks"].sum(1), 1.0, atol=1e-6)
  assert out["masks"].min() >= 0.0 and out["masks"].max() <= 1.0
  np.testing.assert_allclose(out["lam"], lam)
  assert not np.allclose(out2["mixed"], out["mixed"])


def test_preview_bad_input_raises():
  method, state, batch = _method("adautomix")
  with pytest.raises(ValueError, match=r"images.*B >= 3"):
    method.preview_masks(state, batch["image"][:2])
  with pytest.raises(ValueError, match=r"lam.*\[3\]"):
    method.preview_masks(state, batch["image"], lam=jnp.ones(2) / 2)
