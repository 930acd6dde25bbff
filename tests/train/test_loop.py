"""End-to-end loop on a tiny offline archive: train, eval, summary, resume, NaN."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from automix_jax.train import loop
from configs import cifar10_cpu
from tests._tiny_archive import write_tiny_archive


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Persistent XLA cache: the resume test compiles the same step 3 times."""
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir",
                    str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
  """A cifar10-jpeg.tar.gz look-alike: 8x8 JPEGs, 2 train / 2 test per class."""
  root = tmp_path_factory.mktemp("archive")
  path = write_tiny_archive(root / "tiny-cifar10.tar.gz")
  return path, str(root / "cache")


def cpu_config(archive, *, arg="mixer=mixup", **overrides):
  path, cache = archive
  c = cifar10_cpu.get_config(arg)
  c.data.archive_path = path
  c.data.cache_dir = cache
  c.data.images_per_class = 0
  c.model.width = 1 / 16
  # ResNet-10 layout: half the blocks of R-18, half the compile time.
  c.model.kwargs = ml_collections.ConfigDict({"stage_sizes": (1, 1, 1, 1)})
  c.batch_size = 8            # 20 train images -> 2 steps per epoch
  c.eval_batch_size = 16
  c.num_epochs = 2
  c.log_every_steps = 1
  c.report_last_epochs = 2
  c.checkpoint.every_steps = 1
  c.checkpoint.keep = 2
  c.progress_bar = False
  c.final_evals.fgsm = False
  for k, v in overrides.items():
    node = c
    *parts, last = k.split(".")
    for p in parts:
      node = node[p]
    node[last] = v
  c.lock()
  return c


def _params(workdir, config):
  """Final params of a finished run, restored from its last checkpoint."""
  from automix_jax import checkpoint
  from automix_jax import sharding
  from automix_jax.train import static
  mesh = sharding.make_mesh()
  method = static.StaticMixing(config, num_classes=10, steps_per_epoch=2,
                               mesh=mesh)
  abstract = jax.eval_shape(method.init, jax.random.key(0),
                            jax.numpy.zeros((2, 8, 8, 3)))
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                     sharding=sharding.replicated(mesh)),
      abstract)
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ck:
    step, state, extra = ck.restore_latest(abstract)
  return step, jax.tree.map(np.asarray, state.params), extra


def test_train_eval_summary_then_stop_mid_epoch_and_resume_bit_identical(
    tiny_archive, tmp_path, monkeypatch):
  """A full 4-step run (EMA, ECE, FGSM, summary, JSONL) vs stop at step 3
  (mid-epoch 2) + resume to 4: the parameters must be bit-identical."""
  config = cpu_config(tiny_archive, arg="mixer=mixup,ema", progress_bar=True,
                      **{"final_evals.fgsm": True})
  shown = []

  class Bar(loop.metrics_lib.ProgressBar):
    def set_rate(self, images_per_s):
      shown.append(images_per_s)
      super().set_rate(images_per_s)

  monkeypatch.setattr(loop.metrics_lib, "ProgressBar", Bar)
  straight = tmp_path / "straight"
  summary = loop.train_and_evaluate(config, str(straight))
  assert summary["steps"] == summary["total_steps"] == 4
  assert summary["reported_variant"] == "ema_one"
  assert set(summary["variants"]) == {"online_one", "ema_one"}
  assert len(summary["history"]) == 2
  tops = [h["variants"]["ema_one"]["top1"] for h in summary["history"]]
  assert summary["reported_top1"] == pytest.approx(np.median(tops))
  for k in ("ece", "fgsm_top1", "wall_time_s", "train_images_per_s"):
    assert np.isfinite(summary[k]), k
  assert 0 <= summary["ece"] <= 1 and 0 <= summary["fgsm_top1"] <= 100
  on_disk = json.load(open(straight / "summary.json"))
  assert on_disk["reported_top1"] == summary["reported_top1"]
  assert on_disk["config"]["mixer"]["name"] == "mixup"
  lines = [json.loads(l) for l in open(straight / loop.METRICS_FILE)]
  train_steps = [l["step"] for l in lines if "train/loss" in l]
  assert train_steps == [1, 2, 3, 4]
  assert all(np.isfinite(l["train/loss"]) for l in lines if "train/loss" in l)
  assert any("eval/ema_one/top1" in l for l in lines)
  # Throughput of completed computation on every train line; the summary is
  # the same clock over the whole run.
  rates = [l["train/images_per_s"] for l in lines if "train/loss" in l]
  assert len(rates) == 4 and all(r > 0 for r in rates)
  assert summary["train_images_per_s"] > 0
  # Evaluation time per evaluation, apart from the train time.
  assert [e["epoch"] for e in summary["eval_seconds"]] == [1, 2]
  assert summary["eval_time_s"] == pytest.approx(
      sum(e["seconds"] for e in summary["eval_seconds"]))
  assert summary["train_seconds_per_epoch"] > 0
  assert [l["eval/seconds"] for l in lines if "eval/seconds" in l] == [
      e["seconds"] for e in summary["eval_seconds"]]
  # The resolved config is in the workdir from the start.
  assert json.load(open(straight / loop.CONFIG_FILE)) == json.loads(
      json.dumps(config.to_dict()))
  # The progress bar showed the summary's figure, not a dispatch rate.
  assert shown[-1] == summary["train_images_per_s"]

  # Re-running the finished workdir keeps its summary and says it is complete.
  before = (straight / "summary.json").read_text()
  again = loop.train_and_evaluate(config, str(straight))
  assert again["already_complete"] is True
  assert again["train_images_per_s"] == summary["train_images_per_s"]
  assert again["wall_time_s"] == summary["wall_time_s"]
  assert (straight / "summary.json").read_text() == before

  resumed = tmp_path / "resumed"
  stopped = loop.train_and_evaluate(
      cpu_config(tiny_archive, arg="mixer=mixup,ema", stop_after_steps=3),
      str(resumed))
  assert stopped["stopped_at_step"] == 3
  assert len(stopped["history"]) == 1  # the epoch-1 eval
  # A checkpoint of another config is never resumed silently.
  with pytest.raises(ValueError, match=r"different config.*num_epochs: 2 -> 3"):
    loop.train_and_evaluate(
        cpu_config(tiny_archive, arg="mixer=mixup,ema", num_epochs=3),
        str(resumed))
  # Nor on other data: the archive path may move, the examples may not.
  other = write_tiny_archive(tmp_path / "other.tar.gz", seed=1)
  with pytest.raises(ValueError, match="trained on other data"):
    loop.train_and_evaluate(
        cpu_config((other, tiny_archive[1]), arg="mixer=mixup,ema"),
        str(resumed))
  final = loop.train_and_evaluate(
      cpu_config(tiny_archive, arg="mixer=mixup,ema"), str(resumed))
  assert final["resumed_from_step"] == 3 and final["steps"] == 4
  assert len(final["history"]) == 2  # epoch-1 eval came back from the ckpt
  assert final["history"][0] == summary["history"][0]

  s1, p1, e1 = _params(str(straight), config)
  s2, p2, e2 = _params(str(resumed), config)
  assert s1 == s2 == 4
  assert e1["data"] == e2["data"]
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(a, b)
  assert final["history"][-1] == summary["history"][-1]


def test_nonfinite_loss_stops_with_the_step_and_keeps_last_good_ckpt(
    tiny_archive, tmp_path):
  # lr 1e30 makes the parameters overflow after the first update.
  config = cpu_config(tiny_archive, **{"optimizer.lr": 1e30,
                                       "optimizer.schedule": "constant"})
  with pytest.raises(loop.NonFiniteError, match=r"step \d"):
    loop.train_and_evaluate(config, str(tmp_path))
  from automix_jax import checkpoint
  with checkpoint.Checkpointer(tmp_path / "checkpoints") as ck:
    steps = ck.all_steps()
  # Only states verified finite were saved.
  lines = [json.loads(l) for l in open(tmp_path / loop.METRICS_FILE)]
  good = [l["step"] for l in lines if "train/loss" in l]
  assert all(s in good for s in steps)
  if steps:
    _, params, _ = _params(str(tmp_path), config)
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def test_a_nonfinite_state_is_never_saved(tiny_archive, tmp_path):
  # lr 1e39 overflows float32: step 1's loss and gradients are finite, the
  # parameters after its update are not, so its checkpoint must not be written.
  config = cpu_config(tiny_archive, **{"optimizer.lr": 1e39,
                                       "optimizer.schedule": "constant"})
  with pytest.raises(loop.NonFiniteError,
                     match=r"state after step 1 .*No checkpoint was written"):
    loop.train_and_evaluate(config, str(tmp_path))
  from automix_jax import checkpoint
  with checkpoint.Checkpointer(tmp_path / "checkpoints") as ck:
    assert ck.all_steps() == []


def test_errors_before_compute(tiny_archive, tmp_path):
  with pytest.raises(FileNotFoundError, match="archive_path"):
    loop.train_and_evaluate(
        cpu_config(tiny_archive, **{"data.archive_path": "/nope.tar.gz"}),
        str(tmp_path / "a"))
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    loop.train_and_evaluate(cpu_config(tiny_archive, batch_size=12),
                            str(tmp_path / "b"))
  with pytest.raises(ValueError, match="unknown method"):
    loop.train_and_evaluate(cpu_config(tiny_archive, method="nope"),
                            str(tmp_path / "c"))
  with pytest.raises(ValueError, match="unknown mixer"):
    loop.train_and_evaluate(cpu_config(tiny_archive,
                                       **{"mixer.name": "mixupp"}),
                            str(tmp_path / "d"))
  with pytest.raises(ValueError, match="(?i)model"):
    loop.train_and_evaluate(cpu_config(tiny_archive,
                                       **{"model.name": "resnet_nope"}),
                            str(tmp_path / "e"))
  assert not os.path.exists(tmp_path / "d" / "checkpoints")


def test_bad_mixer_value_fails_before_data_and_model(tiny_archive, tmp_path,
                                                     monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError("data was loaded before the config was checked")

  monkeypatch.setattr(loop, "_Input", no_data)
  with pytest.raises(ValueError, match=r"config\.mixer\.kwargs\.alpha.*> 0"):
    loop.train_and_evaluate(
        cpu_config(tiny_archive, **{"mixer.kwargs.alpha": -1.0}),
        str(tmp_path / "a"))
  switch = cpu_config(tiny_archive, arg="mixer=mixup+cutmix",
                      **{"switch.kwargs": ({"alpha": 1.0}, {"alpha": -2.0})})
  with pytest.raises(ValueError, match=r"config\.switch\[1\]\.kwargs\.alpha"):
    loop.check_config(switch)
