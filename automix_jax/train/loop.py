"""The training loop: ``train_and_evaluate(config, workdir) -> summary``.

big_vision's structure (mesh, input, model, shard, update step, checkpoint,
evals, loop) on top of a pluggable *method* (``automix_jax.train.methods``):

* mesh: one ``"data"`` axis over all devices of all processes; state
  replicated, batches sharded; the step is jitted once with in/out shardings and
  ``donate_argnums=0``.
* RNG: ``root = jax.random.key(config.seed)`` split into (init, train); the
  method folds the step into the train key, so a resumed run draws the same
  keys as an uninterrupted one.
* checkpoints (``automix_jax.checkpoint``): every ``checkpoint.every_steps``
  and at the end, ``keep`` most recent, with the data iterator's state; a run
  always resumes from ``workdir`` first. A state is saved only after every step
  since the previous check was verified finite.
* evals: top-1/top-5 of every ``method.eval_variants`` entry on the test split
  every ``eval_every_epochs`` and after each of the last ``report_last_epochs``
  epochs (``eval_due``); ECE and FGSM (``automix_jax.evaluators``) of the
  reported variant at the end.
* reporting: the headline number is the median top-1 of the reported variant
  over the last ``report_last_epochs`` evaluations (OpenMixup / AdAutoMix),
  i.e. over the last ``report_last_epochs`` epochs, each one evaluated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax import metrics as metrics_lib
from automix_jax import sharding
from automix_jax.train import accumulate
from automix_jax.train import init_from
from automix_jax.train import mask_images
from automix_jax.train import methods

SUMMARY_FILE = metrics_lib.SUMMARY_FILE
METRICS_FILE = metrics_lib.METRICS_FILE
CONFIG_FILE = "config.json"


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss or gradient."""


# ---------------------------------------------------------------------------
# Validation (before any compute).
# ---------------------------------------------------------------------------


def _positive_int(config, name):
  v = config[name]
  if isinstance(v, bool) or not isinstance(v, int) or v < 1:
    raise ValueError(f"`config.{name}` must be a positive int; got {v!r}.")
  return v


def check_config(config: Any, *, files: bool = True) -> None:
  """Device-free checks of a config, run before any data or model work.

  Positive counts, the method (and its own ``check_config``, e.g. every mixer
  name and keyword of a static method), the input pipeline (``config.data``
  augmentation keys) and, with ``files``, the offline
  archive's path (the command line checks it after the multi-process launch,
  whose errors come first).

  Raises:
    ValueError, FileNotFoundError: naming the config key and the expected form.
  """
  for name in ("num_epochs", "batch_size", "log_every_steps",
               "eval_every_epochs", "report_last_epochs", "eval_batch_size"):
    _positive_int(config, name)
  stop = config.get("stop_after_steps", 0)
  if isinstance(stop, bool) or not isinstance(stop, int) or stop < 0:
    raise ValueError(f"`config.stop_after_steps` must be an int >= 0; got "
                     f"{stop!r}.")
  _check_logging(config)
  every = config.checkpoint.every_steps
  if isinstance(every, bool) or not isinstance(every, int) or every < 0:
    raise ValueError(f"`config.checkpoint.every_steps` must be an int >= 0 "
                     f"(0: only at the end); got {every!r}.")
  accumulate.check_config(config)
  method = methods.get(config.method)  # unknown / unavailable -> ValueError
  if hasattr(method, "check_config"):
    method.check_config(config)
  init_from.check_config(config, files=files)
  data = config.data
  from automix_jax import data as data_lib
  try:  # the input pipeline's keys (augment, image_size, crop_pct, ...)
    data_lib.augment_from_config(data, train=True)
  except ValueError as e:
    raise ValueError(f"`config.data`: {e}") from e
  if files and data.name == "cifar10_archive":
    path = data.archive_path
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(
          f"`config.data.archive_path` {path!r} does not exist (cwd "
          f"{os.getcwd()!r}). Point it at cifar10-jpeg.tar.gz, e.g. "
          "--config.data.archive_path=path/to/cifar10-jpeg.tar.gz.")


def _check_logging(config: Any) -> None:
  """``tensorboard`` a bool; ``log_images_every_steps`` an int >= 0, > 0 only
  for a method with learned masks."""
  tb = config.get("tensorboard", True)
  if not isinstance(tb, bool):
    raise ValueError(f"`config.tensorboard` must be True or False; got {tb!r}.")
  every = config.get("log_images_every_steps", 0)
  if isinstance(every, bool) or not isinstance(every, int) or every < 0:
    raise ValueError(f"`config.log_images_every_steps` must be an int >= 0 "
                     f"(0: off); got {every!r}.")
  if every and not hasattr(methods.get(config.method), "preview_masks"):
    raise ValueError(
        f"`config.log_images_every_steps`={every}: method "
        f"{config.method!r} has no learned masks to draw (automix and "
        "adautomix do); set it to 0.")


def validate_config(config: Any, mesh: jax.sharding.Mesh) -> None:
  """``check_config`` plus the batch size against the mesh and processes."""
  check_config(config)
  sharding.check_batch_divisible(config.batch_size, mesh, what="batch_size")
  accumulate.check_config(config, mesh=mesh)
  if config.batch_size % jax.process_count():
    raise ValueError(
        f"`batch_size` {config.batch_size} is not divisible by the "
        f"{jax.process_count()} processes.")


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


def _eval_sums(predict, head, num_bins, variables, batch):
  """Top-1/5 and calibration-bin sums of one padded eval batch."""
  from automix_jax import evaluators
  logits = predict(variables, head, batch["image"])
  out = evaluators.topk_correct(logits, batch["label"], batch["mask"], (1, 5))
  out.update(evaluators.calibration_bins(jax.nn.softmax(logits),
                                         batch["label"], batch["mask"],
                                         num_bins=num_bins))
  return out


def host_sums(sums: dict) -> dict:
  """One eval batch's replicated sums as float64 numpy, fetched right away.

  Each batch's program is awaited before the next is dispatched and the
  running totals live on the host: with several processes, a queue of eval
  programs with cross-process all-reduces plus eager additions of global
  arrays hung XLA's CPU (gloo) collectives in 2 of ~15 simulated-pod runs.
  Costs nothing measurable: an eval batch is a full forward pass.
  """
  return {k: np.asarray(jax.device_get(v), np.float64) for k, v in sums.items()}


class _Evaluator:
  """Top-1/top-5 (%) and ECE of every eval variant on the test split."""

  def __init__(self, method, test_source, *, batch_size, mesh, data_config,
               num_bins):
    from automix_jax import data as data_lib
    self._data = data_lib
    self._source = test_source
    self._batch_size = batch_size
    self._sharding = sharding.batch_sharding(mesh)
    self._normalize = data_lib.augment_from_config(data_config, train=False)
    if data_lib.variable_size(test_source):
      # Refuses now rather than at the first eval: images that vary in size
      # need the eval crop (data.image_size > 0, data.crop_pct).
      self._normalize.for_variable_size()
    self._method = method
    self._num_bins = num_bins
    self._fns = {}
    self.replicated = sharding.replicated(mesh)

  def _fn(self, head):
    if head not in self._fns:  # one compile per head, shared by variants
      self._fns[head] = jax.jit(
          functools.partial(_eval_sums, self._method.predict, head,
                            self._num_bins), out_shardings=self.replicated)
    return self._fns[head]

  def batches(self):
    return self._data.eval_batches(
        self._source, batch_size=self._batch_size, sharding=self._sharding,
        normalize=self._normalize)

  def run(self, state) -> dict:
    """``{variant: {"top1": %, "top5": %, "ece": fraction}}``."""
    from automix_jax import evaluators
    variants = self._method.eval_variants(state)
    totals = {name: None for name in variants}
    for batch in self.batches():
      for name, (variables, head) in variants.items():
        totals[name] = evaluators.accumulate(
            totals[name], host_sums(self._fn(head)(variables, batch)))
    result = {}
    for name, t in totals.items():
      result[name] = evaluators.accuracies(t)
      result[name]["ece"] = float(evaluators.ece_from_bins(t))
    return result


def eval_due(epoch: int, *, num_epochs: int, every: int, last: int) -> bool:
  """Whether the loop evaluates after (1-based) epoch ``epoch``.

  Every ``every`` epochs (``config.eval_every_epochs``), and after every one of
  the last ``last`` epochs (``config.report_last_epochs``), the final epoch
  included: the reported number is the median over the last ``last`` *epochs*
  (OpenMixup / AdAutoMix), so a sparse schedule that saves evaluation time in
  the middle of a run must still evaluate each epoch of that window. E.g.
  ``num_epochs=20, every=5, last=3`` -> epochs 5, 10, 15, 18, 19, 20.
  """
  return epoch % every == 0 or epoch > num_epochs - last  # last >= 1


# ---------------------------------------------------------------------------
# Summary.
# ---------------------------------------------------------------------------


def summarize(history: list[dict], *, reported_variant: str,
              report_last: int) -> dict:
  """Final and median-of-last-N top-1/top-5 for every variant in ``history``.

  ``history``: one entry per evaluation ``{"epoch", "step", "variants":
  {name: {"top1", "top5", "ece"}}}``, in order.
  """
  from automix_jax import evaluators
  if not history:
    return {"reported_variant": reported_variant, "reported_top1": None,
            "variants": {}}
  last = history[-report_last:]
  variants = {}
  for name in history[-1]["variants"]:
    vals1 = [h["variants"][name]["top1"] for h in last]
    vals5 = [h["variants"][name]["top5"] for h in last]
    variants[name] = {
        "final_top1": history[-1]["variants"][name]["top1"],
        "final_top5": history[-1]["variants"][name]["top5"],
        "median_top1": float(evaluators.median_of_last(vals1, report_last)),
        "median_top5": float(evaluators.median_of_last(vals5, report_last)),
        "best_top1": max(h["variants"][name]["top1"] for h in history),
        "final_ece": history[-1]["variants"][name].get("ece"),
    }
  return {
      "reported_variant": reported_variant,
      "reported_top1": variants[reported_variant]["median_top1"],
      "reported_rule": (f"median top-1 of {reported_variant!r} over the last "
                        f"{len(last)} evaluation(s) (report_last_epochs="
                        f"{report_last})"),
      "reported_epochs": [h["epoch"] for h in last],
      "variants": variants,
  }


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


# Keys that may change between a run and its resumption: they do not change
# what is computed (logging, paths, when to stop or checkpoint, final evals;
# init_from only acts on a fresh state; extend only permits a longer run).
_RESUME_FREE_KEYS = ("stop_after_steps", "progress_bar", "log_every_steps",
                     "tensorboard", "log_images_every_steps",
                     "eval_batch_size", "checkpoint", "final_evals",
                     "data.archive_path", "data.cache_dir", "data.tfds_data_dir",
                     "init_from", "extend")


def _flatten(d: Any, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, (list, tuple)) else v
  return out


def resume_fingerprint(config: Any) -> dict:
  """The config entries a checkpoint must agree with to be resumed."""
  flat = _flatten(config.to_dict() if hasattr(config, "to_dict") else config)
  return {k: v for k, v in flat.items()
          if not any(k == f or k.startswith(f + ".") for f in _RESUME_FREE_KEYS)}


@functools.cache
def _base_defaults() -> dict:
  """The fingerprint of ``configs.common.base_config()``: every key's default."""
  from automix_jax.configs import common  # configs import train; lazy.
  return resume_fingerprint(common.base_config())


def check_resumable(saved: dict | None, config: Any, workdir: str
                    ) -> int | None:
  """Refuses to resume a checkpoint that was written under another config.

  A silent resume would continue, say, a 3-epoch schedule as an 8-epoch one and
  mix two runs' histories. The one allowed change is an explicit extension:
  ``config.extend=True`` with a larger ``num_epochs`` and nothing else changed
  (docs/training.md, "Extending a run"). A key the checkpoint lacks because
  it was written by an older version (the key is in
  ``configs.common.base_config`` and at its default now) is accepted, with a
  warning naming it.

  Returns:
    The checkpoint's ``num_epochs`` when this is such an extension, else None.

  Raises:
    ValueError: naming the differing keys (and ``--config.extend=True`` when
      ``num_epochs`` grew).
  """
  if saved is None:
    return None
  now = resume_fingerprint(config)
  keys = [k for k in sorted(set(saved) | set(now))
          if saved.get(k, "<absent>") != now.get(k, "<absent>")]
  # A checkpoint written before a config key existed: the key at its default
  # (common.base_config) is what that older code did, so it does not block
  # the resume. Any other value of a new key does.
  defaults = _base_defaults()
  added = [k for k in keys
           if k not in saved and k in defaults and now[k] == defaults[k]]
  if added:
    logging.warning(
        "Resuming a checkpoint written before these config keys existed; "
        "they are at their defaults: %s", ", ".join(added))
    keys = [k for k in keys if k not in added]
  if not keys:
    return None
  old, new = saved.get("num_epochs"), now.get("num_epochs")
  grows = isinstance(old, int) and isinstance(new, int) and new > old
  extend = bool(config.get("extend", False))
  if keys == ["num_epochs"] and grows and extend:
    return old
  diff = [f"{k}: {saved.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}"
          for k in keys]
  if "num_epochs" in keys and not grows:
    hint = (" num_epochs may only grow (--config.extend=True continues a run "
            "to more epochs).")
  elif "num_epochs" in keys and not extend:
    hint = (f" To continue this run from {old} to {new} epochs, add "
            "--config.extend=True (the learning-rate and EMA schedules are "
            "re-evaluated for the new length; docs/training.md).")
  elif "num_epochs" in keys:
    hint = (" --config.extend=True allows num_epochs alone to change; "
            "restore the other keys.")
  else:
    hint = ""
  raise ValueError(
      f"workdir {workdir!r} holds a checkpoint of a different config; "
      f"refusing to resume it. Differences (checkpoint -> now): "
      f"{'; '.join(diff[:10])}{' ...' if len(diff) > 10 else ''}.{hint} Use "
      "a new --workdir, or the original config.")


def check_same_data(saved: str | None, now: str, workdir: str) -> None:
  """Refuses to resume on other data than the checkpoint was trained on.

  ``data.archive_path`` may move between a run and its resumption (it is not
  part of the config fingerprint), but the examples must be the same: a resume
  on another archive would continue the schedule on other images.
  """
  if saved is not None and saved != now:
    raise ValueError(
        f"workdir {workdir!r} holds a checkpoint trained on other data "
        f"(data fingerprint {saved} in the checkpoint, {now} now): the "
        "archive or dataset behind config.data changed. Point config.data at "
        "the original data, or use a new --workdir.")


def train_and_evaluate(config: Any, workdir: str) -> dict:
  """Trains ``config.method`` and evaluates it; returns (and writes) a summary.

  The stages, in order: process and mesh set-up, input, method, state (init or
  restore), the train loop with its eval / checkpoint / pre-emption hooks,
  final evaluations and the summary.

  Args:
    config: a (locked) ConfigDict as in docs/config_schema.md.
    workdir: output folder, local or any ``etils.epath`` URL orbax accepts
      (``gs://bucket/run``): ``checkpoints/`` (state + data-iterator state +
      eval history), the metrics JSONL, ``summary.json``. An existing
      checkpoint there is resumed.

  Returns:
    The summary dict (also written to ``workdir/summary.json`` by process 0).
    With ``config.stop_after_steps > 0`` the run stops (and checkpoints) at that
    step and the summary has ``"stopped_at_step"``; a SIGTERM (pre-emption)
    does the same at the next step boundary and adds ``"preempted": True``.

  Raises:
    ValueError, FileNotFoundError: bad config, before any compute.
    NonFiniteError: a non-finite loss, gradient or state, naming the first bad
      step; every checkpoint on disk holds a state verified all-finite.
  """
  t_start = time.time()
  run = _set_up(config, workdir)
  data = _Input(config, run.mesh)
  method = methods.get(config.method)(
      config, num_classes=data.num_classes,
      steps_per_epoch=data.steps_per_epoch, mesh=run.mesh)
  trainer = _Trainer(config, run, data, method)
  try:
    trainer.init_or_restore()
    previous = trainer.finished_summary()
    if previous is not None:
      # A re-run of a finished work directory: nothing to train or evaluate.
      # Its summary keeps the finished run's figures (not this no-op's).
      logging.warning(
          "%s already holds a run that reached step %d of %d; nothing to do, "
          "its %s is kept.", workdir, trainer.step, data.total_steps,
          SUMMARY_FILE)
      previous["already_complete"] = trainer.step >= data.total_steps
      return previous
    trainer.train()
    trainer.wait_for_checkpoints()
    summary = trainer.summary()  # + final evaluations at the end of training
    summary["wall_time_s"] = time.time() - t_start
    trainer.writer.write_summary(summary)
  finally:
    trainer.close()
  return summary


# ---------------------------------------------------------------------------
# Stages.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
  """Process-level facts every stage needs."""
  mesh: jax.sharding.Mesh
  workdir: Any  # epath.Path
  is_chief: bool
  eval_batch_size: int


def _set_up(config: Any, workdir: str) -> _Run:
  """Mesh over every device of every process, config checks, the workdir."""
  from automix_jax import checkpoint as ckpt_lib
  mesh = sharding.make_mesh()
  validate_config(config, mesh)
  path = ckpt_lib.as_path(workdir)
  is_chief = jax.process_index() == 0
  if is_chief:
    path.mkdir(parents=True, exist_ok=True)
    # The resolved config (after command-line overrides), as the run saw it.
    from automix_jax import configs as configs_lib
    (path / CONFIG_FILE).write_text(configs_lib.to_json(config) + "\n")
  eval_bs = max(config.eval_batch_size // mesh.size, 1) * mesh.size
  return _Run(mesh=mesh, workdir=path, is_chief=is_chief,
              eval_batch_size=eval_bs)


class _Input:
  """Sources, the resumable train iterator and the data fingerprint."""

  def __init__(self, config: Any, mesh: jax.sharding.Mesh):
    from automix_jax import data as data_lib
    self.train_source, self.test_source = data_lib.build_sources(config.data)
    self.num_classes = int(self.train_source.num_classes)
    self.augment = data_lib.augment_from_config(config.data, train=True)
    self.batch_sharding = sharding.batch_sharding(mesh)
    self.train_iter = data_lib.TrainIterator(
        self.train_source, global_batch_size=config.batch_size,
        seed=config.seed, augment=self.augment, sharding=self.batch_sharding)
    self.steps_per_epoch = self.train_iter.steps_per_epoch
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.fingerprint = data_lib.fingerprint(self.train_source,
                                            self.test_source)

  def sample_shape(self) -> tuple:
    return (2, *self.augment.output_shape(self.train_source.image_shape))


def _finite_leaves(tree: Any) -> Any:
  """Per leaf: False where a float leaf holds a NaN or an infinity."""
  return jax.tree.map(
      lambda x: (jnp.all(jnp.isfinite(x))
                 if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.array(True)),
      tree)


class _Trainer:
  """The train loop with its hooks; state lives here between stages."""

  def __init__(self, config, run: _Run, data: _Input, method):
    from automix_jax import checkpoint as ckpt_lib
    from automix_jax import multihost
    self.config, self.run, self.data, self.method = config, run, data, method
    mesh = run.mesh
    repl = sharding.replicated(mesh)
    sample_shape = data.sample_shape()

    def init(key):
      return method.init(key, jnp.zeros(sample_shape, jnp.float32))

    # Keys and the initial state are built under jit with global output
    # shardings: a device_put onto a mesh that spans other processes' devices
    # is not allowed, and this is the same program on every process.
    self.init_key, self.train_key = jax.jit(
        lambda: tuple(jax.random.split(jax.random.key(config.seed))),
        out_shardings=(repl, repl))()
    abstract = jax.eval_shape(init, self.init_key)
    self.state_sh = sharding.state_shardings(abstract, mesh)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, self.state_sh)
    self.init_fn = jax.jit(init, out_shardings=self.state_sh)
    self.train_step = jax.jit(
        method.train_step, in_shardings=(self.state_sh, data.batch_sharding,
                                         repl),
        out_shardings=(self.state_sh, repl), donate_argnums=0)
    self.finite_leaves = jax.jit(_finite_leaves, out_shardings=repl)
    # The loop decides when to save (every_steps, the end, pre-emption).
    self.ckpt = ckpt_lib.Checkpointer(run.workdir / "checkpoints",
                                      max_to_keep=config.checkpoint.keep)
    self.evaluator = _Evaluator(method, data.test_source,
                                batch_size=run.eval_batch_size, mesh=mesh,
                                data_config=config.data,
                                num_bins=config.final_evals.ece_bins)
    self.writer = None  # opened in init_or_restore (a resume purges steps)
    self.mask_images = mask_images.MaskImages.from_config(
        config, method, data.test_source, mesh)
    self.preemption = multihost.PreemptionWatcher()
    self.state = None
    self.history: list[dict] = []
    self.extensions: list[dict] = []  # {"step", "from_epochs", "to_epochs"}
    self.step = self.first_step = 0
    self.preempted = False
    self.train_time = self.eval_time = 0.0
    self.eval_seconds: list[dict] = []
    self.throughput = metrics_lib.Throughput(config.batch_size)
    self.progress = None
    self._pending: list[tuple[int, dict]] = []
    self._last_saved = None

  # -- state ------------------------------------------------------------------

  def init_or_restore(self) -> None:
    restored = self.ckpt.restore_latest(self.abstract_state)
    if restored is None:
      self.state = init_from.maybe_apply(self.init_fn(self.init_key),
                                         self.config)
    else:
      step, self.state, extra = restored
      extended_from = check_resumable(extra.get("config"), self.config,
                                      str(self.run.workdir))
      self.extensions = list(extra.get("extensions", []))
      if extended_from is not None:
        self.extensions.append({"step": step, "from_epochs": extended_from,
                                "to_epochs": int(self.config.num_epochs)})
        logging.warning("Extending the run from %d to %d epochs at step %d.",
                        extended_from, self.config.num_epochs, step)
      check_same_data(extra.get("data_fingerprint"), self.data.fingerprint,
                      str(self.run.workdir))
      self.data.train_iter.set_state(extra["data"])
      self.history = list(extra.get("history", []))
      self._last_saved = step
      logging.info("Resumed from step %d.", step)
    self.step = self.first_step = int(jax.device_get(self.state.step))
    self.writer = metrics_lib.MetricWriter(
        self.run.workdir, enabled=self.run.is_chief,
        tensorboard=self.config.get("tensorboard", True),
        purge_step=self.first_step or None)

  def stop_step(self) -> int:
    """The step this invocation trains to (``stop_after_steps`` or the end)."""
    total = self.data.total_steps
    return min(self.config.get("stop_after_steps", 0) or total, total)

  def finished_summary(self) -> dict | None:
    """The saved summary of a restored run that has nothing left to train.

    None unless the restored step already is this invocation's last step and
    ``summary.json`` (read by process 0, its answer shared with every process)
    records that step.
    """
    if self.first_step == 0 or self.step < self.stop_step():
      return None
    saved = None
    path = self.run.workdir / SUMMARY_FILE
    if self.run.is_chief and path.exists():
      try:
        saved = json.loads(path.read_text())
      except ValueError:
        saved = None
      if not isinstance(saved, dict) or saved.get("steps") != self.step:
        saved = None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      found = bool(multihost_utils.broadcast_one_to_all(
          np.int32(saved is not None)))
      saved = (saved or {"steps": self.step}) if found else None
    return saved

  def save(self, force: bool = False) -> None:
    """Checkpoints the state if due, once it and every step were verified."""
    every = self.config.checkpoint.every_steps
    if not (force or (every and self.step % every == 0)):
      return
    self.flush()  # raises on a non-finite step before anything is written
    self.check_state_finite()
    saved = self.ckpt.save(
        self.step, self.state,
        {"data": self.data.train_iter.get_state(), "history": self.history,
         "config": resume_fingerprint(self.config),
         "data_fingerprint": self.data.fingerprint,
         "extensions": self.extensions}, force=True)
    if saved:
      self._last_saved = self.step
    self.throughput.start(self.step)  # the save's time is not training time

  def check_state_finite(self) -> None:
    """Parameters, BatchNorm statistics and optimizer state all finite."""
    flags = jax.device_get(self.finite_leaves(self.state))
    bad = [jax.tree_util.keystr(path) for path, ok in
           jax.tree_util.tree_flatten_with_path(flags)[0] if not ok]
    if bad:
      raise NonFiniteError(
          f"non-finite values in the state after step {self.step} at "
          f"{len(bad)} leaves ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); "
          f"stopping without saving it. {self._last_good_text()}")

  def _last_good_text(self) -> str:
    if self._last_saved is None:
      return "No checkpoint was written."
    return (f"The last checkpoint (step {self._last_saved}) was verified "
            "all-finite before it was written and is kept.")

  # -- metrics ----------------------------------------------------------------

  def flush(self) -> None:
    """Fetches pending step metrics, checks finiteness, writes one log line."""
    if not self._pending:
      return
    pending, self._pending = self._pending, []
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      if not (np.isfinite(m["loss"]) and bool(m.get("finite", True))):
        raise NonFiniteError(
            f"non-finite loss or gradients at step {s} (loss={m['loss']}); "
            f"stopping. {self._last_good_text()}")
    s_last = pending[-1][0]
    scalars = {f"train/{k}": float(np.mean([np.asarray(m[k], np.float64)
                                            for m in fetched]))
               for k in fetched[-1]}
    scalars["train/lr"] = float(fetched[-1]["lr"])
    # The fetch above waited for every step up to s_last: completed compute.
    images_per_s = self.throughput.done(s_last)
    if images_per_s is not None:
      scalars["train/images_per_s"] = images_per_s
    if self.progress is not None:
      self.progress.set_rate(self.throughput.images_per_s)
    scalars["epoch"] = s_last / self.data.steps_per_epoch
    self.writer.write(s_last, scalars)

  def evaluate(self, epoch: int) -> None:
    t_eval = time.time()
    res = self.evaluator.run(self.state)
    seconds = time.time() - t_eval
    self.eval_time += seconds
    # Kept out of `history`: a resumed run's history must equal an
    # uninterrupted one's, timings never do.
    self.eval_seconds.append({"epoch": epoch, "seconds": seconds})
    self.history.append({"epoch": epoch, "step": self.step, "variants": res})
    self.writer.write(self.step, {f"eval/{n}/{k}": v for n, r in res.items()
                                  for k, v in r.items()} | {
                                      "epoch": float(epoch),
                                      "eval/seconds": seconds})
    logging.info("epoch %d: %s", epoch, res)
    self.throughput.start(self.step)  # the eval's time is not training time

  def log_mask_images(self) -> None:
    """The generator's masks on the fixed preview batch, to TensorBoard."""
    self.flush()  # closes the throughput window before the preview's time
    self.writer.write_images(self.step, self.mask_images.render(
        self.state, title=f"{self.config.method}, step {self.step}"))
    self.throughput.start(self.step)

  # -- loop -------------------------------------------------------------------

  def train(self) -> None:
    config, data = self.config, self.data
    spe, total = data.steps_per_epoch, data.total_steps
    stop_at = self.stop_step()
    if config.get("progress_bar", True):
      self.progress = metrics_lib.ProgressBar(
          total, self.step, config.batch_size, enabled=self.run.is_chief)
    progress = self.progress
    t_train = time.time()
    try:
      while self.step < stop_at:
        batch = next(data.train_iter)
        self.state, m = self.train_step(self.state, batch, self.train_key)
        if self.step == self.first_step:
          # jit compiled on this thread before dispatching: time from here,
          # counting this step, leaves the compilation out.
          self.throughput.start(self.step)
        self.step += 1
        self._pending.append((self.step, m))
        if progress is not None:
          progress.update(self.step)
        end_of_epoch = self.step % spe == 0
        if (self.step % config.log_every_steps == 0 or end_of_epoch
            or self.step == stop_at):
          self.flush()
        if self.mask_images is not None and self.mask_images.due(self.step):
          self.log_mask_images()
        epoch = self.step // spe
        if end_of_epoch and eval_due(
            epoch, num_epochs=config.num_epochs,
            every=config.eval_every_epochs, last=config.report_last_epochs):
          self.evaluate(epoch)
        # After the epoch's eval, so that a resumed run keeps it in `history`.
        if self.preemption.reached(self.step) and self.step < stop_at:
          logging.warning("Pre-empted: checkpointing step %d and stopping.",
                          self.step)
          self.preempted = True
          self.save(force=True)
          break
        self.save(force=self.step == stop_at)
      jax.block_until_ready(self.state)
    finally:
      if progress is not None:
        progress.close()
      self.progress = None
    self.train_time = time.time() - t_train - self.eval_time

  def wait_for_checkpoints(self) -> None:
    self.ckpt.wait()

  def close(self) -> None:
    self.preemption.close()
    self.data.train_iter.close()
    self.ckpt.close()  # waits for the asynchronous writes
    if self.writer is not None:
      self.writer.close()

  # -- summary ----------------------------------------------------------------

  def summary(self) -> dict:
    config, data, method = self.config, self.data, self.method
    summary: dict[str, Any] = summarize(
        self.history, reported_variant=method.reported_variant,
        report_last=config.report_last_epochs)
    if self.step < data.total_steps:
      summary["stopped_at_step"] = self.step
      if self.preempted:
        summary["preempted"] = True
    elif config.final_evals.ece or config.final_evals.fgsm:
      summary.update(_final_evals(config, method, self.state, self.evaluator,
                                  self.history))
      self.writer.write(self.step, {f"final/{k}": v for k, v in
                                    summary.items()
                                    if k in ("ece", "fgsm_top1")})
    summary.update({
        "steps": self.step, "total_steps": data.total_steps,
        "steps_per_epoch": data.steps_per_epoch,
        "epochs": self.step / data.steps_per_epoch,
        "train_time_s": self.train_time, "eval_time_s": self.eval_time,
        # This invocation's evaluations (the first one compiles the eval
        # programs) and its train seconds per epoch (without evaluations; the
        # step's compilation and checkpoint writes included).
        "eval_seconds": self.eval_seconds,
        "train_seconds_per_epoch": (
            self.train_time * data.steps_per_epoch
            / max(self.step - self.first_step, 1)),
        # Completed computation between host syncs, without compilation,
        # evaluations and checkpoints: the progress bar's last figure.
        "train_images_per_s": self.throughput.images_per_s,
        "train_images_per_s_rule": (
            "images of steps whose computation completed / their time, "
            "measured at the log steps' metric fetches (no compilation, "
            "evaluation or checkpoint time)"),
        "num_devices": self.run.mesh.size,
        "num_processes": jax.process_count(),
        "history": self.history, "config": config.to_dict(),
        "workdir": str(self.run.workdir),
        "resumed_from_step": self.first_step or None,
    })
    if self.extensions:
      summary["extensions"] = self.extensions
    return summary


def _final_evals(config, method, state, evaluator, history) -> dict:
  """ECE (last eval) and FGSM top-1 of the reported variant at the end."""
  from automix_jax import evaluators
  name = method.reported_variant
  fe = config.final_evals
  out = {}
  if fe.ece and history:
    out["ece"] = history[-1]["variants"][name]["ece"]
    out["ece_bins"] = fe.ece_bins
  if fe.fgsm:
    variables, head = method.eval_variants(state)[name]
    fgsm = jax.jit(evaluators.make_fgsm_eval(
        lambda v, x: method.predict(v, head, x), mean=tuple(config.data.mean),
        std=tuple(config.data.std), eps=float(fe.fgsm_eps)),
        out_shardings=evaluator.replicated)
    totals = None
    for batch in evaluator.batches():
      totals = evaluators.accumulate(
          totals, host_sums(fgsm(variables, batch["image"], batch["label"],
                                 batch["mask"])))
    acc = evaluators.accuracies(totals)
    out["fgsm_top1"] = acc["top1"]
    out["fgsm_eps"] = float(fe.fgsm_eps)
  return out
