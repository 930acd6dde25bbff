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
  every ``eval_every_epochs``; ECE and FGSM (``automix_jax.evaluators``) of the
  reported variant at the end.
* reporting: the headline number is the median top-1 of the reported variant
  over the last ``report_last_epochs`` evaluations (OpenMixup / AdAutoMix).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax import metrics as metrics_lib
from automix_jax import sharding
from automix_jax.train import methods

SUMMARY_FILE = metrics_lib.SUMMARY_FILE
METRICS_FILE = metrics_lib.METRICS_FILE


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


def validate_config(config: Any, mesh: jax.sharding.Mesh) -> None:
  """Raises ``ValueError``/``FileNotFoundError`` on a config that cannot run."""
  for name in ("num_epochs", "batch_size", "log_every_steps",
               "eval_every_epochs", "report_last_epochs", "eval_batch_size"):
    _positive_int(config, name)
  sharding.check_batch_divisible(config.batch_size, mesh, what="batch_size")
  if config.batch_size % jax.process_count():
    raise ValueError(
        f"`batch_size` {config.batch_size} is not divisible by the "
        f"{jax.process_count()} processes.")
  stop = config.get("stop_after_steps", 0)
  if isinstance(stop, bool) or not isinstance(stop, int) or stop < 0:
    raise ValueError(f"`config.stop_after_steps` must be an int >= 0; got "
                     f"{stop!r}.")
  every = config.checkpoint.every_steps
  if isinstance(every, bool) or not isinstance(every, int) or every < 0:
    raise ValueError(f"`config.checkpoint.every_steps` must be an int >= 0 "
                     f"(0: only at the end); got {every!r}.")
  methods.get(config.method)  # unknown / unavailable method -> ValueError
  data = config.data
  if data.name == "cifar10_archive":
    path = data.archive_path
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(
          f"`config.data.archive_path` {path!r} does not exist (cwd "
          f"{os.getcwd()!r}). Point it at cifar10-jpeg.tar.gz, e.g. "
          "--config.data.archive_path=/work/shared/data/cifar10-jpeg.tar.gz.")


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
    self._method = method
    self._num_bins = num_bins
    self._fns = {}
    self._repl = sharding.replicated(mesh)

  def _fn(self, head):
    if head not in self._fns:  # one compile per head, shared by variants
      self._fns[head] = jax.jit(
          functools.partial(_eval_sums, self._method.predict, head,
                            self._num_bins), out_shardings=self._repl)
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
        totals[name] = evaluators.accumulate(totals[name],
                                             self._fn(head)(variables, batch))
    result = {}
    for name, t in totals.items():
      t = jax.device_get(t)
      result[name] = evaluators.accuracies(t)
      result[name]["ece"] = float(evaluators.ece_from_bins(t))
    return result


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
      "variants": variants,
  }


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


# Keys that may change between a run and its resumption: they do not change
# what is computed (logging, paths, when to stop or checkpoint, final evals).
_RESUME_FREE_KEYS = ("stop_after_steps", "progress_bar", "log_every_steps",
                     "eval_batch_size", "checkpoint", "final_evals",
                     "data.archive_path", "data.cache_dir", "data.tfds_data_dir")


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


def check_resumable(saved: dict | None, config: Any, workdir: str) -> None:
  """Refuses to resume a checkpoint that was written under another config.

  A silent resume would continue, say, a 3-epoch schedule as an 8-epoch one and
  mix two runs' histories. Raises ValueError naming the differing keys.
  """
  if saved is None:
    return
  now = resume_fingerprint(config)
  keys = sorted(set(saved) | set(now))
  diff = [f"{k}: {saved.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}"
          for k in keys if saved.get(k, "<absent>") != now.get(k, "<absent>")]
  if diff:
    raise ValueError(
        f"workdir {workdir!r} holds a checkpoint of a different config; "
        f"refusing to resume it. Differences (checkpoint -> now): "
        f"{'; '.join(diff[:10])}{' ...' if len(diff) > 10 else ''}. Use a new "
        "--workdir, or the original config.")


def train_and_evaluate(config: Any, workdir: str) -> dict:
  """Trains ``config.method`` and evaluates it; returns (and writes) a summary.

  Args:
    config: a (locked) ConfigDict as in docs/config_schema.md.
    workdir: output folder: ``checkpoints/`` (state + data-iterator state +
      eval history), the metrics JSONL, ``summary.json``. An existing
      checkpoint there is resumed.

  Returns:
    The summary dict (also written to ``workdir/summary.json`` by process 0).
    With ``config.stop_after_steps > 0`` the run stops (and checkpoints) at that
    step and the summary has ``"stopped_at_step"``.

  Raises:
    ValueError, FileNotFoundError: bad config, before any compute.
    NonFiniteError: a non-finite loss or gradient, naming the first bad step;
      the last checkpoint (all-finite) is kept.
  """
  from automix_jax import checkpoint as ckpt_lib
  from automix_jax import data as data_lib

  t_start = time.time()
  mesh = sharding.make_mesh()
  validate_config(config, mesh)
  eval_bs = max(config.eval_batch_size // mesh.size, 1) * mesh.size
  workdir = os.path.abspath(workdir)
  is_chief = jax.process_index() == 0
  if is_chief:
    os.makedirs(workdir, exist_ok=True)

  # ---- input ----
  train_source, test_source = data_lib.build_sources(config.data)
  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)
  train_aug = data_lib.augment_from_config(config.data, train=True)
  train_iter = data_lib.TrainIterator(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      augment=train_aug, sharding=batch_sh)
  steps_per_epoch = train_iter.steps_per_epoch
  total_steps = steps_per_epoch * config.num_epochs

  # ---- method / model ----
  method = methods.get(config.method)(
      config, num_classes=int(train_source.num_classes),
      steps_per_epoch=steps_per_epoch, mesh=mesh)
  root = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(root)
  sample = jnp.zeros((2, *train_aug.output_shape(train_source.image_shape)),
                     jnp.float32)

  # ---- shard ----
  abstract = jax.eval_shape(method.init, init_key, sample)
  state_sh = sharding.state_shardings(abstract, mesh)
  init_fn = jax.jit(method.init, out_shardings=state_sh)
  train_step = jax.jit(method.train_step,
                       in_shardings=(state_sh, batch_sh, repl),
                       out_shardings=(state_sh, repl), donate_argnums=0)
  train_key = jax.device_put(train_key, repl)

  # ---- checkpoint / resume ----
  every = config.checkpoint.every_steps
  ckpt = ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), max_to_keep=config.checkpoint.keep,
      save_interval_steps=every or total_steps)
  abstract_sharded = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, state_sh)
  restored = ckpt.restore_latest(abstract_sharded)
  history: list[dict] = []
  if restored is not None:
    _, state, extra = restored
    check_resumable(extra.get("config"), config, workdir)
    train_iter.set_state(extra["data"])
    history = list(extra.get("history", []))
    logging.info("Resumed from step %d.", int(jax.device_get(state.step)))
  else:
    state = init_fn(init_key, sample)

  # ---- evals / writers ----
  evaluator = _Evaluator(method, test_source, batch_size=eval_bs, mesh=mesh,
                         data_config=config.data,
                         num_bins=config.final_evals.ece_bins)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_chief)
  write = writer.write

  # ---- loop ----
  step = int(jax.device_get(state.step))
  first_step = step
  stop_at = config.get("stop_after_steps", 0) or total_steps
  stop_at = min(stop_at, total_steps)
  pending: list[tuple[int, dict]] = []
  last_good = {"step": ckpt.latest_step()}

  def save(step, force):
    saved = ckpt.save(step, state, {"data": train_iter.get_state(),
                                    "history": history,
                                    "config": resume_fingerprint(config)},
                      force=force)
    if saved:
      last_good["step"] = step

  def flush():
    """Fetches pending step metrics, checks finiteness, writes one log line."""
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      if not (np.isfinite(m["loss"]) and bool(m.get("finite", True))):
        raise NonFiniteError(
            f"non-finite loss or gradients at step {s} (loss={m['loss']}); "
            f"stopping. The last checkpoint (step {last_good['step']}) is "
            "all-finite and kept.")
    s_last = pending[-1][0]
    scalars = {f"train/{k}": float(np.mean([np.asarray(m[k], np.float64)
                                            for m in fetched]))
               for k in fetched[-1]}
    scalars["train/lr"] = float(fetched[-1]["lr"])
    scalars["epoch"] = s_last / steps_per_epoch
    write(s_last, scalars)
    pending.clear()

  progress = None
  if config.get("progress_bar", True):
    progress = metrics_lib.ProgressBar(total_steps, step, config.batch_size,
                                       enabled=is_chief)
  t_train, eval_time = time.time(), 0.0
  try:
    while step < stop_at:
      batch = next(train_iter)
      state, m = train_step(state, batch, train_key)
      step += 1
      pending.append((step, m))
      if progress is not None:
        progress.update(step)
      end_of_epoch = step % steps_per_epoch == 0
      if (step % config.log_every_steps == 0 or end_of_epoch
          or step == stop_at):
        flush()
      epoch = step // steps_per_epoch
      if end_of_epoch and (epoch % config.eval_every_epochs == 0
                           or step == total_steps):
        t_eval = time.time()
        res = evaluator.run(state)
        eval_time += time.time() - t_eval
        history.append({"epoch": epoch, "step": step, "variants": res})
        write(step, {f"eval/{n}/{k}": v for n, r in res.items()
                     for k, v in r.items()} | {"epoch": float(epoch)})
        logging.info("epoch %d: %s", epoch, res)
      # After the epoch's eval, so that a resumed run keeps it in `history`.
      if (every and step % every == 0) or step == stop_at:
        flush()  # never checkpoint a state that followed a non-finite step
        save(step, force=step == stop_at)
    jax.block_until_ready(state)
  finally:
    if progress is not None:
      progress.close()
    train_iter.close()
    ckpt.close()  # waits for the asynchronous writes
  train_time = time.time() - t_train - eval_time
  images_per_s = (step - first_step) * config.batch_size / max(train_time,
                                                               1e-9)

  summary: dict[str, Any] = summarize(
      history, reported_variant=method.reported_variant,
      report_last=config.report_last_epochs)
  if step < total_steps:
    summary["stopped_at_step"] = step
  elif config.final_evals.ece or config.final_evals.fgsm:
    summary.update(_final_evals(config, method, state, evaluator,
                                 history))
    write(step, {f"final/{k}": v for k, v in summary.items()
                 if k in ("ece", "fgsm_top1")})
  summary.update({
      "steps": step, "total_steps": total_steps,
      "steps_per_epoch": steps_per_epoch, "epochs": step / steps_per_epoch,
      "wall_time_s": time.time() - t_start, "train_time_s": train_time,
      "eval_time_s": eval_time,
      "train_images_per_s": images_per_s,
      "num_devices": mesh.size, "num_processes": jax.process_count(),
      "history": history, "config": config.to_dict(),
      "workdir": workdir, "resumed_from_step": first_step or None,
  })
  writer.write_summary(summary)
  writer.close()
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
        std=tuple(config.data.std), eps=float(fe.fgsm_eps)))
    totals = None
    for batch in evaluator.batches():
      totals = evaluators.accumulate(
          totals, fgsm(variables, batch["image"], batch["label"],
                       batch["mask"]))
    acc = evaluators.accuracies(totals)
    out["fgsm_top1"] = acc["top1"]
    out["fgsm_eps"] = float(fe.fgsm_eps)
  return out
