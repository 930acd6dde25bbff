"""Every config builds; typos raise; the TFDS family trains 2 steps on mock data."""

import glob
import importlib
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import common


pytestmark = pytest.mark.usefixtures("fast_compile")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
CONFIG_FILES = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py"))

# Documented args of each file (its docstring); other files: defaults only.
DOCUMENTED_ARGS = {
    "cifar100_resnet18": [
        None, "runlocal", "min_lr=0.05,ema", "mixer=mixup+cutmix",
        "mixer=cutmix,label_mix=sumix",
        *[f"mixer={m}" for m in common.OPENMIXUP_CIFAR_MIXERS],
        *[f"epochs={e}" for e in (200, 400, 800, 1200)]],
    "cifar10_cpu": [None, "mixer=cutmix,epochs=5,images_per_class=0",
                    "width=0.25,ema", "mixer=vanilla",
                    "mixer=guidedmixup,label_mix=sumix"],
}


def _args(name):
  return DOCUMENTED_ARGS.get(name, [None])


@pytest.mark.parametrize("name,arg", [(n, a) for n in CONFIG_FILES
                                      for a in _args(n)])
def test_every_config_builds_and_locks(name, arg):
  mod = importlib.import_module(f"configs.{name}")
  c = mod.get_config(arg)
  assert isinstance(c, ml_collections.ConfigDict)
  for key in ("method", "seed", "num_epochs", "batch_size", "model", "data",
              "optimizer", "ema", "checkpoint", "report_last_epochs"):
    assert key in c, f"{name}: missing {key}"
  c.lock()
  with pytest.raises(AttributeError, match="num_epochs"):
    c.num_epoch = 3  # typo of num_epochs


def test_cifar100_recipe_values():
  from configs import cifar100_resnet18
  c = cifar100_resnet18.get_config("mixer=cutmix,epochs=800,min_lr=0.05")
  assert (c.optimizer.lr, c.optimizer.momentum, c.optimizer.weight_decay,
          c.batch_size, c.num_epochs) == (0.1, 0.9, 1e-4, 100, 800)
  assert c.optimizer.by_epoch and c.optimizer.min_lr == 0.05
  assert (c.mixer.name, c.mixer.kwargs.alpha) == ("cutmix", 0.2)
  assert c.data.name == "cifar100"
  for mixer, alpha in (("mixup", 1.0), ("fmix", 0.2), ("saliencymix", 0.2),
                       ("resizemix", 1.0), ("gridmix", 0.2),
                       ("smoothmix", 0.2), ("maskmix", 1.0)):
    assert cifar100_resnet18.get_config(f"mixer={mixer}").mixer.kwargs.alpha \
        == alpha
  assert cifar100_resnet18.get_config("mixer=vanilla").mixer.name == "none"


def test_bad_args_raise():
  from configs import cifar100_resnet18
  with pytest.raises(ValueError, match="unknown config arg 'mixr'"):
    cifar100_resnet18.get_config("mixr=cutmix")
  with pytest.raises(ValueError, match="unknown mixer 'cutmixx'"):
    cifar100_resnet18.get_config("mixer=cutmixx")
  with pytest.raises(ValueError, match="expects an int"):
    cifar100_resnet18.get_config("epochs=many")


def test_command_line_typo_override_raises(tmp_path):
  """``--config.num_epoch`` (typo) fails at flag parsing, before any compute."""
  import subprocess
  import sys
  cmd = [sys.executable, "-m", "experiments.train",
         "--config=configs/cifar10_cpu.py:mixer=cutmix",
         f"--workdir={tmp_path}", "--config.num_epoch=3"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2
  # One line with the suggestion, no traceback.
  assert out.stderr.strip().splitlines() == [
      "automix-train: --config.num_epoch: config has no key 'num_epoch'; "
      "did you mean --config.num_epochs?"], out.stderr
  assert not os.listdir(tmp_path)  # nothing ran


def test_tfds_cifar100_family_two_steps_on_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from automix_jax.train import loop
  from configs import cifar100_resnet18
  c = cifar100_resnet18.get_config("mixer=cutmix,runlocal")
  c.data.images_per_class = 0
  c.data.image_size = 8       # resize mock 32x32 -> 8x8: a cheap step
  c.model.width = 1 / 16
  c.model.kwargs = ml_collections.ConfigDict({"stage_sizes": (1, 1, 1, 1)})
  c.batch_size = 8
  c.num_epochs = 2
  c.eval_every_epochs = 2     # no eval before the stop (epoch 1 is neither
  c.report_last_epochs = 1    # on the 2-epoch grid nor in the last epoch)
  c.stop_after_steps = 2
  c.progress_bar = False
  c.lock()
  with tfds.testing.mock_data(num_examples=16):
    summary = loop.train_and_evaluate(c, str(tmp_path))
  assert summary["stopped_at_step"] == 2
  assert summary["steps_per_epoch"] == 2
  import json
  lines = [json.loads(l) for l in open(tmp_path / loop.METRICS_FILE)]
  losses = [l["train/loss"] for l in lines if "train/loss" in l]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  assert os.path.isdir(tmp_path / "checkpoints" / "2")
