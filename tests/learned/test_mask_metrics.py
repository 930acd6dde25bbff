"""AutoMix / AdAutoMix: mask statistics among the step's metrics, and the
opt-in ``generator.logit_bound`` from the config (no step is compiled)."""

import jax
import pytest

from automix_jax.train import adautomix
from automix_jax.train import automix
from configs.adautomix import cifar10_cpu as adautomix_cpu
from configs.automix import cifar10_cpu as automix_cpu

from tests.learned import _shared as S

METHODS = {"automix": (automix.AutoMix, automix_cpu),
           "adautomix": (adautomix.AdAutoMix, adautomix_cpu)}
MASK_METRICS = {"mask_dominance", "mask_spatial_std", "mask_saturated_frac",
                "mask_whole_image_frac", "mask_area_lam_gap"}


def _config(name, arg=None):
  c = S.tiny(METHODS[name][1].get_config(arg), name, {})
  c.lock()
  return c


@pytest.mark.parametrize("name", sorted(METHODS))
def test_step_metrics_carry_the_generator_mask_statistics(name):
  method = METHODS[name][0](_config(name), num_classes=S.K,
                            steps_per_epoch=S.STEPS_PER_EPOCH)
  batch = S.make_batch()
  state = jax.eval_shape(method.init, jax.random.key(0), batch["image"][:2])
  _, metrics = jax.eval_shape(method.train_step, state, batch,
                              jax.random.key(1))
  assert MASK_METRICS <= set(metrics)
  assert "grad_norm_generator" in metrics
  assert all(metrics[k].shape == () for k in MASK_METRICS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_logit_bound_is_off_by_default_and_set_by_the_config_arg(name):
  cls = METHODS[name][0]
  default = _config(name)
  # Absent from the default configs: their resume fingerprint is unchanged.
  assert "logit_bound" not in default[name].generator
  method = cls(default, num_classes=S.K, steps_per_epoch=S.STEPS_PER_EPOCH)
  assert method.generator.logit_bound is None
  on = cls(_config(name, "logit_bound=6"), num_classes=S.K,
           steps_per_epoch=S.STEPS_PER_EPOCH)
  assert on.generator.logit_bound == 6.0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bad_logit_bound_raises_naming_the_key(name):
  c = S.tiny(METHODS[name][1].get_config("logit_bound=6"), name, {})
  c[name].generator.logit_bound = -1.0
  with pytest.raises(ValueError, match=rf"`{name}.generator.logit_bound`"):
    METHODS[name][0](c, num_classes=S.K, steps_per_epoch=S.STEPS_PER_EPOCH)
