"""PuzzleMix and Co-Mixup in the static method: the jitted step is the
documented one (eval-mode input-gradient saliency -> mixer -> update), traced
once. The mixers' own properties: tests/mixers/test_puzzle_comix.py."""

import jax
import ml_collections
import pytest

from automix_jax import mixers
from automix_jax.train import losses
from tests.train.test_model_aware import _cfg
from tests.train.test_model_aware import _check_step
from tests.train.test_model_aware import _hand_step
from tests.train.test_model_aware import _init
from tests.train.test_model_aware import _method
from tests.train.test_static_step import tiny_batch

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.mark.parametrize("name,kwargs", [
    ("puzzlemix", {"block_num": (1, 3)}),   # grids 2 and 4 on 8 px
    ("comixup", {})])                        # one partition of the 8 samples
def test_step_mixes_with_the_input_gradient_saliency(name, kwargs):
  config = _cfg(name)
  with config.unlocked():
    config.mixer.kwargs = ml_collections.ConfigDict(kwargs)
  method = _method(config)
  state, batch = _init(method), tiny_batch()
  images, hot = batch["image"], mixers.one_hot(batch["label"], 10)
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def clean_loss(x):  # eval mode, unsmoothed one-hot targets
    logits = method.model.apply(variables, x, train=False)["logits"]["one"]
    return losses.soft_cross_entropy(logits, hot)

  saliency = mixers.gradient_saliency(jax.jit(jax.grad(clean_loss))(images))
  k_mix = jax.random.split(jax.random.fold_in(jax.random.key(7), 0))[0]
  mixed, targets, aux = mixers.get(name, **kwargs)(
      k_mix, images, hot, saliency=saliency)
  assert float(abs(mixed - images).max()) > 0  # it mixed something
  want = _hand_step(method, state, batch, mixed, targets)
  _check_step(method, state, batch, want)
