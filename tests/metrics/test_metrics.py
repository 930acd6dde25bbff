"""Tests for automix_jax/metrics.py and scripts/plot_run.py."""

import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import metrics

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _plot_module():
  spec = importlib.util.spec_from_file_location(
      "plot_run", os.path.join(_ROOT, "scripts", "plot_run.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _read_lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_metric_writer_lines_and_types(tmp_path):
  w = metrics.MetricWriter(tmp_path / "run", enabled=True)
  w.write(1, {"train/loss": jnp.float32(2.5), "train/lr": np.float64(0.1),
              "count": 3, "name": "x", "ok": np.bool_(True)})
  # Flushed after each write: readable before close.
  lines = _read_lines(tmp_path / "run" / "metrics.jsonl")
  assert lines == [{"step": 1, "train/loss": 2.5, "train/lr": 0.1,
                    "count": 3, "name": "x", "ok": True}]
  assert isinstance(lines[0]["train/loss"], float)
  w.write(jnp.int32(2), {"eval/ema_one/top1": jnp.array([81.5])})
  w.close()
  w.close()
  with pytest.raises(RuntimeError, match="closed"):
    w.write(3, {"a": 1.0})
  # Re-opening appends (resumed runs).
  with metrics.MetricWriter(tmp_path / "run", enabled=True) as w2:
    w2.write(3, {"train/loss": float("nan")})
  lines = _read_lines(tmp_path / "run" / "metrics.jsonl")
  assert [l["step"] for l in lines] == [1, 2, 3]
  assert lines[1]["eval/ema_one/top1"] == 81.5
  assert np.isnan(lines[2]["train/loss"])


def test_a_half_written_last_line_is_cut_before_appending(tmp_path):
  path = tmp_path / metrics.METRICS_FILE
  path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/lo')
  with metrics.MetricWriter(tmp_path, enabled=True) as w:
    w.write(2, {"train/loss": 1.5})
  assert _read_lines(path) == [{"step": 1, "train/loss": 2.0},
                               {"step": 2, "train/loss": 1.5}]


def test_metric_writer_bad_input(tmp_path):
  with metrics.MetricWriter(tmp_path, enabled=True) as w:
    with pytest.raises(ValueError, match="step"):
      w.write(-1, {"a": 1.0})
    with pytest.raises(ValueError, match="step"):
      w.write(1.5, {"a": 1.0})
    with pytest.raises(ValueError, match="scalars"):
      w.write(1, {"a": np.ones(3)})
    with pytest.raises(ValueError, match="scalars"):
      w.write(1, {"step": 1.0})
    with pytest.raises(ValueError, match="scalars"):
      w.write(1, [1.0])
    with pytest.raises(ValueError, match="summary"):
      w.write_summary([1])
  with pytest.raises(ValueError, match="workdir"):
    metrics.MetricWriter(None)


def test_disabled_writer_writes_nothing(tmp_path):
  w = metrics.MetricWriter(tmp_path / "off", enabled=False)
  w.write(1, {"a": 1.0})
  assert w.write_summary({"a": 1}) is None
  w.close()
  assert not (tmp_path / "off").exists()
  # Default: process 0 writes.
  with metrics.MetricWriter(tmp_path / "on") as w:
    assert w.enabled
    w.write(1, {"a": 1.0})
  assert (tmp_path / "on" / "metrics.jsonl").exists()


def test_tensorboard_scalars_are_the_jsonl_values(tmp_path):
  from tests import _tb_events
  with metrics.MetricWriter(tmp_path, enabled=True, tensorboard=True) as w:
    assert w.tensorboard
    w.write(1, {"train/loss": jnp.float32(2.5), "train/lr": 0.1, "ok": True,
                "name": "text stays in the JSONL"})
    w.write(2, {"train/loss": float("nan"), "eval/ema_one/top1": 81.25})
    w.write(3, {"final/fgsm_top1": np.float64(12.5), "count": 7})
  got = _tb_events.scalars(tmp_path)
  assert sorted(got) == ["count", "eval/ema_one/top1", "final/fgsm_top1",
                         "ok", "train/loss", "train/lr"]
  assert got["train/loss"][0] == (1, 2.5) and got["train/loss"][1][0] == 2
  assert np.isnan(got["train/loss"][1][1])
  assert got["train/lr"] == [(1, np.float32(0.1))]
  assert got["ok"] == [(1, 1.0)] and got["count"] == [(3, 7.0)]
  assert got["final/fgsm_top1"] == [(3, 12.5)]
  assert len(_tb_events.event_files(tmp_path)) == 1


def test_tensorboard_images_and_what_opens_no_event_file(tmp_path):
  from tests import _tb_events
  img = np.zeros((6, 5, 4), np.uint8)
  img[..., 0] = 255
  with metrics.MetricWriter(tmp_path / "on", enabled=True,
                            tensorboard=True, purge_step=4) as w:
    w.write_images(4, {"masks": img})
    for bad in ({"masks": img.astype(np.float32)}, {"masks": img[..., :2]},
                {"masks": img[0]}, {1: img}, [img]):
      with pytest.raises(ValueError, match="images"):
        w.write_images(5, bad)
  (step, h, w_, png), = _tb_events.images(tmp_path / "on")["masks"]
  assert (step, h, w_) == (4, 6, 5) and png.startswith(b"\x89PNG")
  events = _tb_events.read_events(_tb_events.event_files(tmp_path / "on")[0])
  assert [e.step for e in events if e.HasField("session_log")] == [4]
  # A writer that writes nothing, one without tensorboard and a disabled
  # one leave no event file.
  metrics.MetricWriter(tmp_path / "idle", enabled=True,
                       tensorboard=True).close()
  with metrics.MetricWriter(tmp_path / "jsonl", enabled=True) as w:
    w.write(1, {"a": 1.0})
    w.write_images(1, {"masks": img})
  with metrics.MetricWriter(tmp_path / "off", enabled=False,
                            tensorboard=True) as w:
    w.write(1, {"a": 1.0})
    w.write_images(1, {"masks": img})
  for d in ("idle", "jsonl", "off"):
    assert _tb_events.event_files(tmp_path / d) == [], d


def test_figure_to_rgb():
  from matplotlib import figure
  fig = figure.Figure(figsize=(2, 1), dpi=50)
  fig.patch.set_facecolor((1.0, 0.0, 0.0))
  rgb = metrics.figure_to_rgb(fig)
  assert rgb.shape == (50, 100, 3) and rgb.dtype == np.uint8
  assert (rgb == [255, 0, 0]).all()


def test_write_summary_atomic(tmp_path):
  with metrics.MetricWriter(tmp_path, enabled=True) as w:
    w.write_summary({"reported_top1": np.float32(81.5), "hist": jnp.arange(3),
                     "nested": {"x": np.int64(2)}})
    path = w.write_summary({"reported_top1": 82.0})
  assert path == os.path.join(tmp_path, "summary.json")
  assert json.load(open(path)) == {"reported_top1": 82.0}
  # No tmp file left behind.
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "summary.json"]


def test_check_finite():
  metrics.check_finite(5, {"train/loss": 1.0, "train/lr": float("nan")})
  with pytest.raises(FloatingPointError, match=r"train/loss.*step 7"):
    metrics.check_finite(7, {"train/loss": jnp.float32(jnp.inf)})
  with pytest.raises(FloatingPointError, match=r"grad_norm.*step 3"):
    metrics.check_finite(3, {"loss": 0.5, "grad_norm": np.array([1.0, np.nan])},
                         keys=("loss", "grad_norm"))
  with pytest.raises(ValueError, match="keys"):
    metrics.check_finite(1, {"train/los": 1.0})


def test_progress_bar(capsys):
  with metrics.ProgressBar(10, initial=2, batch_size=100,
                           enabled=True, mininterval=0) as bar:
    for s in range(3, 11):
      bar.update(s, loss=0.5)
      if s == 6:
        bar.set_rate(123.4)  # the loop's figure of completed computation
    assert bar.step == 10
    # Only the rate it is given: never the dispatch rate of `update` calls.
    assert bar.images_per_second() == 123.4
  err = capsys.readouterr().err
  assert "10/10" in err and "img/s=123.4" in err
  assert "step/s" not in err and "it/s" not in err
  with metrics.ProgressBar(10, enabled=False) as off:
    off.update(5)
  assert capsys.readouterr().err == ""
  with pytest.raises(ValueError, match="total_steps"):
    metrics.ProgressBar(0)
  with pytest.raises(ValueError, match="batch_size"):
    metrics.ProgressBar(5, batch_size=0)


def test_throughput_times_completed_windows_only():
  now = [0.0]
  t = metrics.Throughput(10, clock=lambda: now[0])
  assert t.done(3) is None and t.images_per_s is None  # nothing started
  t.start(0)            # after step 1's dispatch (compilation excluded)
  now[0] = 2.0
  assert t.done(4) == 4 * 10 / 2.0   # steps 1-4 complete at t=2
  now[0] = 5.0          # an evaluation: 3 s that are not training
  t.start(4)
  now[0] = 6.0
  assert t.done(6) == 2 * 10 / 1.0
  assert t.images_per_s == 6 * 10 / 3.0 and t.steps == 6 and t.seconds == 3.0
  with pytest.raises(ValueError, match="batch_size"):
    metrics.Throughput(0)


def _synthetic_run(run_dir, n_epochs=4, steps_per_epoch=5, resume_at=None):
  with metrics.MetricWriter(run_dir, enabled=True) as w:
    for step in range(1, n_epochs * steps_per_epoch + 1):
      w.write(step, {"train/loss": 2.0 / step, "train/lr": 0.1 * (1 - step / 40),
                     "epoch": step / steps_per_epoch})
      if step % steps_per_epoch == 0:
        e = step // steps_per_epoch
        w.write(step, {"eval/online_one/top1": 50.0 + e,
                       "eval/ema_one/top1": 52.0 + e,
                       "eval/ema_one/ece": 0.05, "epoch": float(e)})
    if resume_at is not None:  # re-logged steps of a resumed run
      w.write(resume_at, {"train/loss": 99.0, "train/lr": 0.0,
                          "epoch": resume_at / steps_per_epoch})


def test_plot_run_on_synthetic_runs(tmp_path, capsys):
  plot_run = _plot_module()
  _synthetic_run(tmp_path / "mixup")
  _synthetic_run(tmp_path / "adautomix", resume_at=10)
  entries = plot_run.load_metrics(str(tmp_path / "adautomix"))
  assert [e["step"] for e in entries] == list(range(1, 21))
  # The re-logged step 10 wins; the merged eval of step 10 is dropped with it.
  assert entries[9]["train/loss"] == 99.0
  assert "eval/ema_one/top1" not in entries[9]
  assert entries[4]["eval/ema_one/top1"] == 53.0
  assert entries[4]["train/loss"] == 2.0 / 5

  out = tmp_path / "plots" / "curves.png"
  assert plot_run.main([str(tmp_path / "mixup"), str(tmp_path / "adautomix"),
                        "--out", str(out)]) == 0
  assert "wrote" in capsys.readouterr().out
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(out) > 10_000


def test_plot_run_missing_metrics_is_a_clear_error(tmp_path, capsys):
  plot_run = _plot_module()
  _synthetic_run(tmp_path / "good")
  (tmp_path / "empty").mkdir()
  with pytest.raises(SystemExit) as exc:
    plot_run.main([str(tmp_path / "good"), str(tmp_path / "empty"),
                   "--out", str(tmp_path / "x.png")])
  assert exc.value.code == 2
  assert "empty" in capsys.readouterr().err
  assert not (tmp_path / "x.png").exists()
  with pytest.raises(FileNotFoundError, match="run_dir"):
    plot_run.load_metrics(str(tmp_path / "nope"))


def test_plot_run_malformed_lines(tmp_path):
  plot_run = _plot_module()
  _synthetic_run(tmp_path / "r", n_epochs=1)
  path = tmp_path / "r" / "metrics.jsonl"
  with open(path, "a") as f:
    f.write('{"step": 9, "train/lo')          # truncated last line
  with pytest.warns(UserWarning, match="truncated"):
    assert len(plot_run.load_metrics(str(tmp_path / "r"))) == 5
  with open(path, "a") as f:
    f.write('\n{"step": 10}\n')               # now a malformed middle line
  with pytest.raises(ValueError, match=r"metrics.jsonl:7"):
    plot_run.load_metrics(str(tmp_path / "r"))


def _write_lines(run_dir, lines):
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, metrics.METRICS_FILE), "w") as f:
    f.write("".join(json.dumps(l) + "\n" for l in lines))


def _line_of(ax, label):
  lines = [l for l in ax.lines if l.get_label() == label]
  assert len(lines) == 1, [l.get_label() for l in ax.lines]
  return lines[0]


def test_plot_run_loss_panel_is_the_classifier_loss(tmp_path):
  """AdAutoMix logs train/loss = classifier + generator loss; the panel shows
  its classifier loss, and a static run's train/loss."""
  plot_run = _plot_module()
  cls, gen = [2.0, 1.5, 1.2], [0.9, -0.4, 0.8]
  _write_lines(tmp_path / "adautomix", [
      {"step": s + 1, "train/loss": c + g, "train/loss_classifier": c,
       "train/loss_generator": g, "train/lr": 0.1}
      for s, (c, g) in enumerate(zip(cls, gen))])
  _write_lines(tmp_path / "mixup", [
      {"step": s + 1, "train/loss": 1.0 / (s + 1), "train/lr": 0.1}
      for s in range(3)])
  fig = plot_run.make_figure([str(tmp_path / "adautomix"),
                              str(tmp_path / "mixup")])
  ax_loss = fig.axes[0]
  learned = _line_of(ax_loss, "adautomix (classifier loss)")
  np.testing.assert_array_equal(learned.get_ydata(), cls)
  np.testing.assert_array_equal(_line_of(ax_loss, "mixup").get_ydata(),
                                [1.0, 0.5, 1.0 / 3])
  assert "classifier" in ax_loss.get_title()
  plot_run.plt.close(fig)


def test_plot_run_one_point_series_has_a_visible_marker(tmp_path):
  plot_run = _plot_module()
  _write_lines(tmp_path / "short", [
      {"step": 5, "train/loss": 2.0, "train/lr": 0.1, "epoch": 1.0},
      {"step": 5, "epoch": 1.0, "eval/online_one/top1": 12.0}])
  _write_lines(tmp_path / "long", [
      {"step": s, "train/loss": 2.0, "train/lr": 0.1} for s in (1, 2)])
  fig = plot_run.make_figure([str(tmp_path / "short"), str(tmp_path / "long")])
  ax_loss, ax_top1, ax_lr = fig.axes
  for ax, label in ((ax_loss, "short"), (ax_lr, "short"),
                    (ax_top1, "short: online_one")):
    line = _line_of(ax, label)
    assert len(line.get_xdata()) == 1
    assert line.get_marker() == "o" and line.get_markersize() >= 5, label
  # Longer series stay plain lines.
  assert _line_of(ax_loss, "long").get_marker() in ("None", None, "")
  plot_run.plt.close(fig)
