"""Metric logging: JSONL + TensorBoard writer, run summary, finiteness check,
progress bar.

Only process 0 writes (`enabled` defaults to `jax.process_index() == 0`), as
in big_vision. One writer, `MetricWriter`, takes every scalar the trainer logs
and writes it to `metrics.jsonl` (the source of truth, read by
`scripts/plot_run.py`) and, with `tensorboard=True`, to a TensorBoard event
file in the same directory (`<workdir>/events.out.tfevents.*`, through
`tensorboardX`, which needs neither TensorFlow nor PyTorch: protobuf and numpy;
it does import PyTorch where that is installed, ~1 s once, on process 0 only).
View with `tensorboard --logdir <workdir or its parent>`. Images (the learned
methods' mask grids) go to TensorBoard only (`MetricWriter.write_images`).

File format of `<workdir>/metrics.jsonl` (shared with the training loop in
`automix_jax/train/loop.py` and read by `scripts/plot_run.py`): one JSON object
per line, `{"step": int, **scalars}`, appended and flushed on every
`MetricWriter.write`. Values are JSON numbers (NaN/inf are written as the
Python-json tokens `NaN`/`Infinity`), ints, bools or strings. Keys:

* training lines: `"epoch"` (float, `step / steps_per_epoch`),
  `"train/loss"`, `"train/lr"` and any other `"train/<name>"` scalar of the
  method's step metrics (mean over the logging window), and
  `"train/images_per_s"`: the window's throughput of completed computation
  (`Throughput`; absent on a line whose window held no timed step);
* evaluation lines (one per evaluated epoch): `"epoch"` (integer-valued
  float) and, for every eval variant (e.g. `online_one`, `ema_one`),
  `"eval/<variant>/top1"` and `"eval/<variant>/top5"` in percent and
  `"eval/<variant>/ece"` as a fraction. `scripts/plot_run.py` also accepts
  the prefix `"test/"` for these;
* a final line with `"final/<key>"` entries (median top-1, FGSM, ...).

A resumed run appends to the same file, so steps logged after the last
checkpoint of the interrupted run can appear twice; readers keep the last
line of each step (`load_metrics` in `scripts/plot_run.py` does). A run killed
in the middle of a write leaves a last line without its newline: the next
writer cuts that fragment off (with a warning) before appending, so the file
stays one JSON object per line.

`workdir` may be a local path or an `etils.epath` URL (`gs://...`); appending
needs a backend that supports append mode.

TensorBoard: every numeric value of a `write` call becomes a scalar of the
same tag at the same step (strings are JSONL-only). Each writer opens a new
event file; a resumed run passes `purge_step` (its first step), which tells
TensorBoard to hide the events of the interrupted run at or after that step
(TensorBoard's counterpart of "the last line of each step wins"). Events are
written by tensorboardX's background thread and reach the disk at `close()`
or every `TB_FLUSH_SECS` seconds; the JSONL line is flushed on every write.

`<workdir>/summary.json` holds the final summary dict (written atomically by
`MetricWriter.write_summary`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from typing import Any, Iterable, Mapping

from etils import epath
import jax
import numpy as np

__all__ = ["MetricWriter", "check_finite", "ProgressBar", "Throughput",
           "figure_to_rgb", "to_jsonable",
           "METRICS_FILE", "SUMMARY_FILE", "TB_EVENTS_GLOB"]

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TB_EVENTS_GLOB = "events.out.tfevents.*"   # TensorBoard's file naming
TB_FLUSH_SECS = 10
# Events queued for the writer thread before `write` blocks (tensorboardX
# default 10: a 20-scalar line waited for the disk, ~6 ms a line in a tight
# loop here).
TB_MAX_QUEUE = 1000


def _is_chief() -> bool:
  return jax.process_index() == 0


def _scalar(value: Any, where: str):
  """Python scalar for a metric value; jax/numpy scalars become float."""
  if isinstance(value, (bool, str)) or value is None:
    return value
  if isinstance(value, int):
    return value
  if isinstance(value, float):
    return value
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    host = np.asarray(jax.device_get(value))
    if host.size != 1:
      raise ValueError(f"scalars: {where} must be a scalar, got shape "
                       f"{host.shape}.")
    if host.dtype == np.bool_:
      return bool(host.reshape(()))
    return float(host.reshape(()))
  raise ValueError(f"scalars: {where} has unsupported type "
                   f"{type(value).__name__} (expected a number or string).")


def to_jsonable(obj: Any) -> Any:
  """Recursively converts jax/numpy values in dicts/lists to JSON types.

  Scalars become Python floats/ints/bools; arrays become (nested) lists.
  """
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, (jax.Array, np.ndarray, np.generic)):
    host = np.asarray(jax.device_get(obj))
    return host.tolist()
  return obj


def _check_step(step) -> int:
  if isinstance(step, (jax.Array, np.ndarray, np.generic)):
    host = np.asarray(jax.device_get(step))
    if host.shape != () or not np.issubdtype(host.dtype, np.integer):
      raise ValueError(f"step: expected an integer scalar, got {step!r}.")
    step = int(host)
  if isinstance(step, bool) or not isinstance(step, int) or step < 0:
    raise ValueError(f"step: expected an int >= 0, got {step!r}.")
  return step


class MetricWriter:
  """Appends `{"step": step, **scalars}` lines to `<workdir>/metrics.jsonl`
  and, with `tensorboard`, the same scalars to a TensorBoard event file.

  Args:
    workdir: run directory (created if missing).
    enabled: write at all; defaults to `jax.process_index() == 0` so that
      only the chief process writes. A disabled writer accepts every call
      and does nothing (and opens no file).
    tensorboard: also write `<workdir>/events.out.tfevents.*` (tensorboardX).
    purge_step: with `tensorboard`, the step a resumed run restarts from:
      TensorBoard hides the earlier event files' events at or after it.
  """

  def __init__(self, workdir: str | os.PathLike, *,
               enabled: bool | None = None, tensorboard: bool = False,
               purge_step: int | None = None):
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
      raise ValueError(f"workdir: expected a non-empty path, got {workdir!r}.")
    if purge_step is not None:
      purge_step = _check_step(purge_step)
    self.workdir = epath.Path(workdir)
    self.enabled = _is_chief() if enabled is None else bool(enabled)
    self.path = self.workdir / METRICS_FILE
    self._f = None
    self._tb = None
    # The event file is opened at the first write, so that a writer that
    # writes nothing (a re-run of a finished run) leaves no empty file.
    self.tensorboard = self.enabled and bool(tensorboard)
    self._purge_step = purge_step
    if self.enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      _drop_partial_last_line(self.path)
      self._f = self.path.open("a")
      if self.tensorboard:
        _import_tensorboardx()  # a missing package fails here, not mid-run

  def _tb_writer(self):
    if self._tb is None:
      self._tb = _import_tensorboardx().SummaryWriter(
          logdir=str(self.workdir), purge_step=self._purge_step,
          flush_secs=TB_FLUSH_SECS, max_queue=TB_MAX_QUEUE,
          # The file name has seconds and the host; this keeps two writers
          # opened in one second (one process or several) apart.
          filename_suffix=f".{os.getpid()}.{next(_WRITER_IDS)}")
    return self._tb

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes one line; jax/numpy scalars become floats. Flushes.

    Args:
      step: global step, int >= 0 (or an integer scalar array).
      scalars: `{name: scalar}`; names are strings other than "step".
    """
    step = _check_step(step)
    if not isinstance(scalars, Mapping):
      raise ValueError(
          f"scalars: expected a dict, got {type(scalars).__name__}.")
    line = {"step": step}
    for k, v in scalars.items():
      if not isinstance(k, str) or k == "step":
        raise ValueError(f"scalars: keys must be strings other than 'step', "
                         f"got {k!r}.")
      line[k] = _scalar(v, repr(k))
    if not self.enabled:
      return
    if self._f is None:
      raise RuntimeError(f"MetricWriter({self.path}) is closed.")
    self._f.write(json.dumps(line) + "\n")
    self._f.flush()
    if self.tensorboard:
      tb = self._tb_writer()
      for k, v in line.items():
        if k != "step" and isinstance(v, (int, float)):  # bools too
          tb.add_scalar(k, float(v), step)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Writes images to TensorBoard (they have no place in the JSONL file).

    Does nothing without `tensorboard` (or when disabled); the input is
    checked either way.

    Args:
      step: global step, int >= 0.
      images: `{tag: [H, W, 3] or [H, W, 4] uint8}` (RGBA loses its alpha;
        `figure_to_rgb` turns a matplotlib figure into one).
    """
    step = _check_step(step)
    if not isinstance(images, Mapping):
      raise ValueError(
          f"images: expected a dict, got {type(images).__name__}.")
    checked = {}
    for k, v in images.items():
      arr = np.asarray(v)
      if (not isinstance(k, str) or arr.dtype != np.uint8 or arr.ndim != 3
          or arr.shape[-1] not in (3, 4)):
        raise ValueError(f"images: {k!r} must be a uint8 [H, W, 3|4] array "
                         f"under a string tag; got {arr.dtype} {arr.shape}.")
      checked[k] = arr[..., :3]
    if not self.enabled:
      return
    if self._f is None:
      raise RuntimeError(f"MetricWriter({self.path}) is closed.")
    if self.tensorboard:
      tb = self._tb_writer()
      for k, arr in checked.items():
        tb.add_image(k, arr, step, dataformats="HWC")

  def write_summary(self, summary: Mapping[str, Any]) -> str | None:
    """Writes `<workdir>/summary.json` atomically (tmp file + rename).

    Args:
      summary: JSON-able dict (jax/numpy values are converted).

    Returns:
      The path written, or None when disabled.
    """
    if not isinstance(summary, Mapping):
      raise ValueError(
          f"summary: expected a dict, got {type(summary).__name__}.")
    text = json.dumps(to_jsonable(summary), indent=1, sort_keys=True)
    if not self.enabled:
      return None
    self.workdir.mkdir(parents=True, exist_ok=True)
    path = self.workdir / SUMMARY_FILE
    tmp = self.workdir / f"{SUMMARY_FILE}.tmp.{os.getpid()}"
    with tmp.open("w") as f:
      f.write(text + "\n")
      f.flush()
      if hasattr(f, "fileno"):
        os.fsync(f.fileno())
    tmp.replace(path)  # atomic on POSIX: readers never see half a file
    return str(path)

  def close(self) -> None:
    """Closes the files (idempotent); TensorBoard events reach the disk."""
    if self._f is not None:
      self._f.close()
      self._f = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self.tensorboard = False


_WRITER_IDS = itertools.count()


def _import_tensorboardx():
  """The tensorboardX module, imported only where TensorBoard is written."""
  try:
    import tensorboardX  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "config.tensorboard=True needs tensorboardX (in the `train` extra: "
        "pip install 'automix-jax[train]'); or pass "
        "--config.tensorboard=False.") from e
  return tensorboardX


def figure_to_rgb(fig) -> np.ndarray:
  """A matplotlib figure rendered with Agg as uint8 `[H, W, 3]`."""
  from matplotlib.backends import backend_agg  # pylint: disable=import-outside-toplevel
  canvas = backend_agg.FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _drop_partial_last_line(path: epath.Path) -> None:
  """Cuts a last line left without its newline by a killed writer."""
  if not path.exists():
    return
  data = path.read_bytes()
  if not data or data.endswith(b"\n"):
    return
  keep = data[:data.rfind(b"\n") + 1]
  logging.warning("%s: dropping an incomplete last line (%d bytes) left by an "
                  "interrupted run before appending.", path, len(data) - len(keep))
  path.write_bytes(keep)


def check_finite(step: int, scalars: Mapping[str, Any],
                 keys: Iterable[str] = ("loss",)) -> None:
  """Raises FloatingPointError if a watched metric is NaN or infinite.

  A scalar is watched if its name equals one of `keys` or ends in
  `"/" + key` (so `keys=("loss",)` covers `"train/loss"`). Values may be
  arrays (every element is checked).

  Args:
    step: the step the metrics belong to (named in the error).
    scalars: `{name: value}`.
    keys: metric names to watch; each must match at least one entry.

  Raises:
    FloatingPointError: naming the step and the key.
    ValueError: a key matches nothing in `scalars` (a typo would otherwise
      silently disable the check).
  """
  if not isinstance(scalars, Mapping):
    raise ValueError(f"scalars: expected a dict, got {type(scalars).__name__}.")
  if isinstance(keys, str):
    keys = (keys,)
  host = None
  for key in keys:
    names = [k for k in scalars if k == key or k.endswith("/" + key)]
    if not names:
      raise ValueError(f"keys: {key!r} matches no entry of scalars "
                       f"{sorted(scalars)}.")
    if host is None:
      host = jax.device_get(dict(scalars))
    for name in names:
      value = np.asarray(host[name], np.float64)
      if not np.all(np.isfinite(value)):
        shown = value.item() if value.size == 1 else value
        raise FloatingPointError(
            f"Non-finite {name} = {shown} at step {step}.")


class Throughput:
  """Images/s of *completed* computation, timed between host syncs.

  JAX dispatches steps asynchronously: timing the dispatch loop measures how
  fast steps are queued, not computed. This clock is only read where the host
  already waits for the device (the loop's metric fetch at log steps, after an
  evaluation or a checkpoint), so it adds no synchronisation of its own.

  ``start(step)`` opens a window when the computation up to ``step`` is done
  (or, for the first step of a run, right after its dispatch returned: jit
  compiles on the calling thread, so compilation stays out). ``done(step)``
  closes it when the computation up to ``step`` is complete, adds it to the
  run's totals, opens the next window and returns the window's images/s.
  Time between ``done`` and the next ``start`` (evaluations, checkpoints) is
  not counted.

  Args:
    batch_size: global batch size (images per step).
    clock: seconds, monotonic (``time.perf_counter``).
  """

  def __init__(self, batch_size: int, clock=time.perf_counter):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
        or batch_size < 1:
      raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}.")
    self._batch_size = batch_size
    self._clock = clock
    self._t0 = self._s0 = None
    self.steps = 0        # steps inside closed windows
    self.seconds = 0.0    # their time

  def start(self, step: int) -> None:
    """The computation up to ``step`` is complete (or being computed)."""
    self._t0, self._s0 = self._clock(), step

  def done(self, step: int) -> float | None:
    """The computation up to ``step`` is complete: the window's images/s."""
    if self._t0 is None:
      return None
    now = self._clock()
    steps, dt = step - self._s0, now - self._t0
    self._t0, self._s0 = now, step
    if steps <= 0 or dt <= 0:
      return None
    self.steps += steps
    self.seconds += dt
    return steps * self._batch_size / dt

  @property
  def images_per_s(self) -> float | None:
    """Images/s over every closed window (None before the first)."""
    if not self.seconds:
      return None
    return self.steps * self._batch_size / self.seconds


class ProgressBar:
  """tqdm progress bar over training steps with images/s and ETA.

  Disabled (a no-op) on processes other than 0. Refreshes at most every
  `mininterval` seconds, so it is cheap to update every step. The images/s and
  the ETA come from `set_rate`, which the training loop calls with the
  throughput of completed computation (`Throughput.images_per_s`, the figure
  `summary.json` reports); tqdm's own rate would time the asynchronous
  dispatch and is not shown.

  Args:
    total_steps: number of steps of the whole run.
    initial: step the run (re)starts from.
    batch_size: global batch size (images per step).
    enabled: defaults to `jax.process_index() == 0`.
    mininterval: minimum seconds between refreshes.
  """

  _FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

  def __init__(self, total_steps: int, initial: int = 0, batch_size: int = 1,
               *, enabled: bool | None = None, mininterval: float = 1.0):
    for name, v, lo in (("total_steps", total_steps, 1), ("initial", initial, 0),
                        ("batch_size", batch_size, 1)):
      if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}.")
    import tqdm  # pylint: disable=import-outside-toplevel
    self.enabled = _is_chief() if enabled is None else bool(enabled)
    self._batch_size = batch_size
    self._total = total_steps
    self._bar = tqdm.tqdm(total=total_steps, initial=initial, unit="step",
                          dynamic_ncols=True, mininterval=mininterval,
                          bar_format=self._FORMAT, disable=not self.enabled)
    self._rate = 0.0
    self._postfix: dict = {}
    self.step = initial

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def images_per_second(self) -> float:
    """The throughput last given to `set_rate` (0 before)."""
    return self._rate

  def set_rate(self, images_per_s: float | None) -> None:
    """Shows `images_per_s` (of completed computation) and the ETA from it."""
    if images_per_s is None or not math.isfinite(images_per_s) \
        or images_per_s <= 0:
      return
    self._rate = float(images_per_s)
    self._refresh_postfix()

  def _refresh_postfix(self) -> None:
    if not self.enabled:
      return
    postfix = dict(self._postfix)
    if self._rate > 0:
      postfix["img/s"] = f"{self._rate:.1f}"
      eta = (self._total - self.step) * self._batch_size / self._rate
      postfix["eta"] = time.strftime("%H:%M:%S", time.gmtime(eta))
    if postfix:
      self._bar.set_postfix(postfix, refresh=False)

  def update(self, step: int, **postfix: Any) -> None:
    """Moves the bar to `step`; extra keyword values are shown after it."""
    step = _check_step(step)
    self.step = step
    if not self.enabled:
      return
    self._bar.update(step - self._bar.n)
    if postfix:
      self._postfix = postfix
      self._refresh_postfix()

  def close(self) -> None:
    self._bar.close()
