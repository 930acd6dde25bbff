"""End-to-end loop on a tiny offline archive: train, eval, summary, resume, NaN."""

import io
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from automix_jax.train import loop
from configs import cifar10_cpu
from tests import _tb_events
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


def cpu_config(archive, *, arg="mixer=mixup", module=cifar10_cpu,
               **overrides):
  path, cache = archive
  c = module.get_config(arg)
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


def assert_tensorboard_equals_jsonl(workdir):
  """The event files' scalars are the JSONL's numbers (as float32), tag for
  tag, step for step, in order."""
  want = {}
  for line in open(os.path.join(workdir, loop.METRICS_FILE)):
    entry = json.loads(line)
    for k, v in entry.items():
      if k != "step" and isinstance(v, (int, float)):
        want.setdefault(k, []).append((entry["step"], v))
  got = _tb_events.scalars(workdir)
  assert sorted(got) == sorted(want)
  assert any(k.startswith("train/") for k in got)
  assert any(k.startswith("eval/") for k in got)
  for tag, pairs in want.items():
    assert [s for s, _ in got[tag]] == [s for s, _ in pairs], tag
    np.testing.assert_array_equal([v for _, v in got[tag]],
                                  np.float32([v for _, v in pairs]), tag)


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
  # TensorBoard (config.tensorboard, on by default): one event file (the
  # re-run opened none), holding every numeric JSONL value at its step.
  assert len(_tb_events.event_files(straight)) == 1
  assert_tensorboard_equals_jsonl(straight)
  assert {"final/ece", "final/fgsm_top1"} <= set(_tb_events.scalars(straight))

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

  # The resumed writer's new event file tells TensorBoard to drop what the
  # interrupted run logged from step 3 on (JSONL: the last line wins).
  files = _tb_events.event_files(resumed)
  assert len(files) == 2
  starts = [e.step for e in _tb_events.read_events(files[1])
            if e.HasField("session_log")]
  assert starts == [3]

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


def test_learned_run_logs_mask_images_every_n_steps_only(tiny_archive,
                                                         tmp_path,
                                                         monkeypatch):
  """AutoMix, 4 steps, log_images_every_steps=2: the mask figure reaches
  TensorBoard at steps 2 and 4 only; the preview runs at those steps and
  nowhere else (the train step itself is unchanged)."""
  from PIL import Image
  from automix_jax.configs.automix import cifar10_cpu as automix_cpu
  from automix_jax.train import mask_images
  calls = []
  render = mask_images.MaskImages.render

  def counted(self, state, **kw):
    calls.append(int(jax.device_get(state.step)))
    return render(self, state, **kw)

  monkeypatch.setattr(mask_images.MaskImages, "render", counted)
  config = cpu_config(tiny_archive, arg="images_per_class=0",
                      module=automix_cpu, log_images_every_steps=2,
                      eval_every_epochs=2, **{"final_evals.ece": False})
  workdir = tmp_path / "automix"
  loop.train_and_evaluate(config, str(workdir))
  assert calls == [2, 4]
  images = _tb_events.images(workdir)
  assert sorted(images) == [mask_images.IMAGE_TAG]
  assert [i[0] for i in images[mask_images.IMAGE_TAG]] == [2, 4]
  for _, h, w, png in images[mask_images.IMAGE_TAG]:
    assert Image.open(io.BytesIO(png)).size == (w, h) and h > 100 and w > 100
  # Train scalars carry the classifier loss separately (plots use it).
  assert "train/loss_classifier" in _tb_events.scalars(workdir)


def test_logging_options_are_checked_before_compute(tiny_archive, tmp_path):
  from automix_jax.configs.automix import cifar10_cpu as automix_cpu
  from automix_jax.train import mask_images
  with pytest.raises(ValueError, match="log_images_every_steps.*no learned"):
    loop.check_config(cpu_config(tiny_archive, log_images_every_steps=5))
  with pytest.raises(ValueError, match="log_images_every_steps.*int >= 0"):
    loop.check_config(cpu_config(tiny_archive, module=automix_cpu,
                                 arg="images_per_class=0",
                                 log_images_every_steps=-1))
  # TensorBoard off: no preview is built, so none is ever computed.
  off = cpu_config(tiny_archive, module=automix_cpu, arg="images_per_class=0",
                   tensorboard=False)
  assert off.log_images_every_steps == 20
  assert mask_images.MaskImages.from_config(off, None, None, None) is None


@pytest.fixture(scope="module")
def finished_run(tiny_archive, tmp_path_factory):
  """A finished 2-epoch run of the default tiny config: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  summary = loop.train_and_evaluate(cpu_config(tiny_archive), str(workdir))
  assert summary["steps"] == 4
  return workdir, summary


def test_extend_a_finished_run_trains_the_new_epochs_only(tiny_archive,
                                                          finished_run,
                                                          tmp_path):
  """2 epochs, then num_epochs=3: refused without --config.extend=True (the
  message names it); with it, epoch 3 alone is trained, on the 3-epoch
  schedule, and the summary / metrics record it."""
  import shutil
  from automix_jax.train import optim
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run[0], workdir)
  first = finished_run[1]
  with pytest.raises(ValueError, match=(
      r"num_epochs: 2 -> 3.*add --config\.extend=True")):
    loop.train_and_evaluate(cpu_config(tiny_archive, num_epochs=3), workdir)
  with pytest.raises(ValueError, match=r"num_epochs may only grow"):
    loop.train_and_evaluate(cpu_config(tiny_archive, num_epochs=1,
                                       extend=True), workdir)
  with pytest.raises(ValueError, match=r"seed: 0 -> 5.*allows num_epochs alone"):
    loop.train_and_evaluate(cpu_config(tiny_archive, num_epochs=3, seed=5,
                                       extend=True), workdir)
  config = cpu_config(tiny_archive, num_epochs=3, extend=True)
  ext = loop.train_and_evaluate(config, workdir)
  assert ext["resumed_from_step"] == 4
  assert ext["steps"] == ext["total_steps"] == 6
  assert ext["extensions"] == [{"step": 4, "from_epochs": 2, "to_epochs": 3}]
  assert [h["epoch"] for h in ext["history"]] == [1, 2, 3]
  assert ext["history"][:2] == first["history"]
  lines = [json.loads(l) for l in open(os.path.join(workdir,
                                                    loop.METRICS_FILE))]
  assert [l["step"] for l in lines if "train/loss" in l] == [1, 2, 3, 4, 5, 6]
  # Steps 5-6 ran at the 3-epoch cosine's lr of epoch index 2.
  lr3 = optim.lr_schedule(config.optimizer, steps_per_epoch=2, num_epochs=3)
  got = [l["train/lr"] for l in lines if l["step"] in (5, 6)
         and "train/lr" in l]
  np.testing.assert_allclose(got, [float(lr3(4)), float(lr3(5))], rtol=1e-6)
  # ... not the finished 2-epoch schedule's floor (re-stretched, not continued).
  assert float(lr3(4)) > float(optim.lr_schedule(
      config.optimizer, steps_per_epoch=2, num_epochs=2)(4)) + 1e-3
  # The extended checkpoint resumes as a plain 3-epoch run, extension kept.
  again = loop.train_and_evaluate(cpu_config(tiny_archive, num_epochs=3),
                                  workdir)
  assert again["already_complete"] is True
  assert again["extensions"] == ext["extensions"]


def test_init_from_a_finished_run_in_the_loop(tiny_archive, finished_run,
                                              tmp_path):
  """The trainer's fresh state takes the checkpoint's weights (heads kept
  fresh by skip)."""
  from automix_jax import checkpoint as ckpt_lib
  src = finished_run[0]
  _, saved = ckpt_lib.read_state(src / "checkpoints")
  config = cpu_config(tiny_archive, seed=3, **{
      "init_from.path": str(src), "init_from.skip": "^params/heads/"})
  run = loop._set_up(config, str(tmp_path / "ft"))
  data = loop._Input(config, run.mesh)
  method = loop.methods.get(config.method)(
      config, num_classes=data.num_classes,
      steps_per_epoch=data.steps_per_epoch, mesh=run.mesh)
  trainer = loop._Trainer(config, run, data, method)
  try:
    trainer.init_or_restore()
    params = jax.device_get(trainer.state.params)
  finally:
    trainer.close()
  np.testing.assert_array_equal(params["stem_conv"]["kernel"],
                                saved["params"]["stem_conv"]["kernel"])
  assert not np.array_equal(params["heads"]["one"]["kernel"],
                            saved["params"]["heads"]["one"]["kernel"])


def test_resume_accepts_keys_added_since_at_their_defaults(caplog):
  """A checkpoint from an older version lacks the keys added since: at their
  base_config defaults they do not block the resume (with a warning); at any
  other value, or a key the checkpoint has and the config lost, they do."""
  from automix_jax.configs import cifar10_cpu
  config = cifar10_cpu.get_config("mixer=mixup")
  old = loop.resume_fingerprint(config)
  for key in ("grad_accum_steps", "data.augment_backend"):
    assert key in old
    del old[key]
  with caplog.at_level("WARNING"):
    assert loop.check_resumable(old, config, "wd") is None
  assert "data.augment_backend, grad_accum_steps" in caplog.text
  config.grad_accum_steps = 2
  with pytest.raises(ValueError, match=r"grad_accum_steps: '<absent>' -> 2"):
    loop.check_resumable(old, config, "wd")
  config.grad_accum_steps = 1
  gone = dict(loop.resume_fingerprint(config), removed_key=1)
  with pytest.raises(ValueError, match=r"removed_key: 1 -> '<absent>'"):
    loop.check_resumable(gone, config, "wd")
