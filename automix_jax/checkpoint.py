"""Checkpointing: the only module of `automix_jax` that imports orbax.

A thin wrapper around orbax's stable V0 `ocp.CheckpointManager` (the API that
flax's gemma example and MaxText use; see docs/interfaces.md and the JAX style
reference, section 3). Each checkpoint step is an `ocp.args.Composite` of two
items:

* `state`: the training state, any pytree of `jax.Array`s (nested dicts,
  tuples, optax states, `flax.struct.dataclass`es, `None` leaves, typed PRNG
  key arrays such as `jax.random.key(0)`, which orbax stores natively), saved
  with `ocp.args.StandardSave`;
* `extra`: a JSON dict, saved with `ocp.args.JsonSave`: the data iterator's
  `{"epoch", "position"}`, the config hash, the metrics history needed for the
  median-of-last-10 report, ... Plus one reserved key, `"_checksums"`, added
  by this module (see below) and stripped again on restore.

Integrity. Orbax alone does not notice every damaged file: a flipped byte in a
zstd-compressed array chunk can decode to *different numbers without any
error*. So `save` records a CRC32 of every array leaf's bytes (with dtype and
shape) in `extra["_checksums"]`, and `restore_latest` recomputes them on the
restored arrays. A checkpoint that fails to restore or to verify is skipped
with a `warnings.warn` naming its step, moved aside to `<dir>/<step>.corrupt`
(so the manager's "latest step" and the next save of that step are not
blocked by it), and the previous step is tried. Orbax tmp directories left by
a crash (`<step>.orbax-checkpoint-tmp-*`) are never treated as checkpoints;
they are reported with a warning and removed when the manager opens.

Typical use in a training loop:

  ckpt = Checkpointer(workdir / "ckpt", max_to_keep=config.checkpoint.keep,
                      save_interval_steps=config.checkpoint.every_steps)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(method.init, key, sample), state_shardings)
  restored = ckpt.restore_latest(abstract)
  if restored is None:
    state, extra = method.init(key, sample), {"epoch": 0, "position": 0}
  else:
    step, state, extra = restored
  ...
  ckpt.save(step, state, {"epoch": ..., "position": ..., "history": ...})
  ...
  ckpt.save(last_step, state, extra, force=True)
  ckpt.close()      # waits for the asynchronous write to finish.

Multi-host: all processes must call `save`/`restore_latest` (orbax
synchronises them). Checksums cover only fully addressable arrays (all of them
on a single host; replicated ones on many hosts). Moving a corrupt step aside
is done by process 0 only; other processes re-read the step list afterwards.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping
import warnings
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "abstract_like"]

_CHECKSUM_KEY = "_checksums"
_TMP_MARK = ".orbax-checkpoint-tmp"
_TMP_RE = re.compile(r"^(?:.*_)?(\d+)\.orbax-checkpoint-tmp.*$")


def abstract_like(tree: Any) -> Any:
  """Abstract version of a concrete pytree, keeping each array's sharding.

  Args:
    tree: pytree of `jax.Array`s (e.g. a freshly initialised state).

  Returns:
    The same pytree with every array leaf replaced by a
    `jax.ShapeDtypeStruct(shape, dtype, sharding=leaf.sharding)`; usable as
    `Checkpointer.restore_latest(abstract_state)`.
  """
  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=getattr(x, "sharding", None))
  return jax.tree.map(one, tree)


def _is_key_dtype(dtype) -> bool:
  return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _leaf_checksum(x) -> str | None:
  """`dtype:shape:crc32` of an array leaf's bytes; None if not addressable."""
  if isinstance(x, jax.Array):
    if not x.is_fully_addressable:
      return None
    dtype = str(x.dtype)
    if _is_key_dtype(x.dtype):
      x = jax.random.key_data(x)
    # Explicit transfer: works under jax_transfer_guard("disallow").
    x = jax.device_get(x)
  else:
    dtype = str(np.asarray(x).dtype)
  a = np.ascontiguousarray(np.asarray(x))
  crc = zlib.crc32(a.tobytes()) & 0xFFFFFFFF
  return f"{dtype}:{list(a.shape)}:{crc:08x}"


def _checksums(tree: Any) -> dict[str, str | None]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): _leaf_checksum(leaf)
          for path, leaf in leaves}


def _to_jsonable(obj: Any, where: str) -> Any:
  """Converts numpy / jax scalars inside `extra` to Python; rejects the rest."""
  if isinstance(obj, Mapping):
    out = {}
    for k, v in obj.items():
      if not isinstance(k, str):
        raise ValueError(f"extra: keys must be str, got {k!r} at {where}.")
      out[k] = _to_jsonable(v, f"{where}[{k!r}]")
    return out
  if isinstance(obj, (list, tuple)):
    return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  if isinstance(obj, (np.generic, np.ndarray, jax.Array)) and np.ndim(obj) == 0:
    value = jax.device_get(obj) if isinstance(obj, jax.Array) else obj
    return np.asarray(value).item()
  raise ValueError(
      f"extra: must be JSON-serialisable (dict/list/str/int/float/bool/None or "
      f"scalar arrays); got {type(obj).__name__} at {where}.")


class Checkpointer:
  """Saves and restores `(step, state, extra)` with orbax.

  Args:
    directory: root directory of the checkpoints (created if missing); each
      step is a sub-directory `<directory>/<step>`.
    max_to_keep: number of most recent checkpoints kept on disk (>= 1).
    save_interval_steps: `save(step, ...)` writes only when
      `step % save_interval_steps == 0` (or `force=True`, or it is the very
      first save of this directory -- orbax's initial-save policy). The default
      1 lets the caller decide when to save.
    checksums: record and verify CRC32 checksums of the array leaves (see the
      module docstring). Costs one device->host copy of the state per save.
    async_save: write in a background thread; `save` returns once the arrays
      are copied to host memory. `wait()`/`close()` block until done.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               save_interval_steps: int = 1, checksums: bool = True,
               async_save: bool = True):
    if not isinstance(directory, (str, os.PathLike)) or not str(directory):
      raise ValueError(
          f"directory: expected a non-empty path, got {directory!r}.")
    if not isinstance(max_to_keep, int) or max_to_keep < 1:
      raise ValueError(
          f"max_to_keep: expected an int >= 1, got {max_to_keep!r}.")
    if not isinstance(save_interval_steps, int) or save_interval_steps < 1:
      raise ValueError("save_interval_steps: expected an int >= 1, got "
                       f"{save_interval_steps!r}.")
    self.directory = os.path.abspath(os.fspath(directory))
    self._checksums = bool(checksums)
    self._closed = False
    self._warn_tmp_dirs()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=bool(async_save))
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  # --- context manager -----------------------------------------------------

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # --- public API ----------------------------------------------------------

  def latest_step(self) -> int | None:
    """Newest finalised step on disk (not verified; may be corrupt), or None."""
    self._check_open()
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All finalised steps on disk, ascending."""
    self._check_open()
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, extra: Mapping[str, Any] | None,
           *, force: bool = False) -> bool:
    """Saves `state` and `extra` as checkpoint `step` if it is due.

    Args:
      step: training step (int >= 0, or an int32 scalar array).
      state: pytree of arrays (see the module docstring).
      extra: JSON dict (str keys; numpy/jax scalars are converted) or None.
        The key `"_checksums"` is reserved.
      force: save even if `step` is not a multiple of `save_interval_steps`.

    Returns:
      True if a checkpoint was written (or is being written asynchronously),
      False if it was not due, or `step` is not newer than the latest
      checkpoint (e.g. the final forced save of a step already saved).
    """
    self._check_open()
    step = self._check_step(step)
    if extra is None:
      extra = {}
    if not isinstance(extra, Mapping):
      raise ValueError(
          f"extra: expected a dict (or None), got {type(extra).__name__}.")
    if _CHECKSUM_KEY in extra:
      raise ValueError(f"extra: the key {_CHECKSUM_KEY!r} is reserved.")
    extra = _to_jsonable(extra, "extra")
    latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      return False
    if not force and not self._manager.should_save(step):
      return False
    if self._checksums:
      extra[_CHECKSUM_KEY] = _checksums(state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              extra=ocp.args.JsonSave(extra))
    return bool(self._manager.save(step, args=args, force=True))

  def restore_latest(self, abstract_state: Any
                     ) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest good checkpoint.

    Args:
      abstract_state: pytree with the structure of the saved state whose
        array leaves are `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`
        (e.g. `jax.eval_shape(init)` with the target shardings attached, or
        `abstract_like(state)`); restored arrays are placed with these
        shardings. Concrete `jax.Array` leaves are accepted too.

    Returns:
      `(step, state, extra)` of the newest checkpoint that restores and
      verifies, or None if the directory has no checkpoint. Newer corrupt
      checkpoints are skipped with a warning and moved aside.

    Raises:
      ValueError: `abstract_state` has a leaf without a sharding.
      RuntimeError: checkpoints exist but none can be restored (nothing is
        moved aside then: the cause is more likely a mismatched
        `abstract_state` than corruption of every step).
    """
    self._check_open()
    abstract_state = self._check_abstract(abstract_state)
    self._manager.wait_until_finished()
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    failures = []
    for step in steps:
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                extra=ocp.args.JsonRestore()))
        state, extra = restored.state, dict(restored.extra or {})
        self._verify(step, state, extra.pop(_CHECKSUM_KEY, None))
      except Exception as e:  # pylint: disable=broad-except
        # Orbax/tensorstore raise many types (ValueError, JSONDecodeError,
        # FileNotFoundError, plain Exception) for damaged files.
        failures.append((step, e))
        warnings.warn(
            f"Checkpoint step {step} in {self.directory} is unreadable or "
            f"corrupt ({type(e).__name__}: {str(e)[:300]}); trying an earlier "
            "step.", RuntimeWarning, stacklevel=2)
        continue
      for bad_step, _ in failures:
        self._quarantine(bad_step)
      if failures:
        self._manager.reload()
      return step, state, extra
    details = "; ".join(f"step {s}: {type(e).__name__}: {str(e)[:200]}"
                        for s, e in failures)
    raise RuntimeError(
        f"No checkpoint in {self.directory} could be restored with the given "
        f"abstract_state ({details}).")

  def wait(self) -> None:
    """Blocks until every asynchronous save has been written."""
    self._check_open()
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager (idempotent)."""
    if self._closed:
      return
    self._manager.wait_until_finished()
    self._manager.close()
    self._closed = True

  # --- helpers -------------------------------------------------------------

  def _check_open(self):
    if self._closed:
      raise RuntimeError(f"Checkpointer({self.directory}) is closed.")

  @staticmethod
  def _check_step(step) -> int:
    if isinstance(step, jax.Array):
      step = jax.device_get(step)
    if isinstance(step, (np.ndarray, np.generic)):
      if np.ndim(step) != 0 or not np.issubdtype(step.dtype, np.integer):
        raise ValueError(f"step: expected an integer scalar, got {step!r}.")
      step = int(step)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
      raise ValueError(f"step: expected an int >= 0, got {step!r}.")
    return step

  @staticmethod
  def _check_abstract(abstract_state):
    def one(path, x):
      if isinstance(x, jax.Array):
        x = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      if not isinstance(x, jax.ShapeDtypeStruct):
        raise ValueError(
            "abstract_state: leaves must be jax.ShapeDtypeStruct (or "
            f"jax.Array), got {type(x).__name__} at "
            f"{jax.tree_util.keystr(path)}.")
      if x.sharding is None:
        raise ValueError(
            "abstract_state: leaf at "
            f"{jax.tree_util.keystr(path)} has no sharding; build it as "
            "jax.ShapeDtypeStruct(shape, dtype, sharding=...).")
      return x
    return jax.tree_util.tree_map_with_path(one, abstract_state)

  def _verify(self, step, state, expected):
    if not self._checksums or expected is None:
      return
    actual = _checksums(state)
    if set(actual) != set(expected):
      raise ValueError(
          f"checksum table of step {step} does not match the state's leaves "
          f"(missing {sorted(set(expected) - set(actual))[:5]}, unexpected "
          f"{sorted(set(actual) - set(expected))[:5]}).")
    bad = [k for k, v in actual.items()
           if v is not None and expected[k] is not None and v != expected[k]]
    if bad:
      raise ValueError(f"checksum mismatch in step {step} at leaves {bad[:5]}.")

  def _quarantine(self, step: int) -> None:
    """Moves a corrupt step directory aside so it no longer counts as latest."""
    if jax.process_index() != 0:
      return
    src = os.path.join(self.directory, str(step))
    if not os.path.isdir(src):
      return
    # "<step>.corrupt" is neither a digit string nor "<prefix>_<digits>", so
    # orbax does not list it as a step.
    dst = src + ".corrupt"
    n = 0
    while os.path.exists(dst):
      n += 1
      dst = f"{src}.corrupt.{n}"
    try:
      os.rename(src, dst)
      logging.warning("Moved corrupt checkpoint step %d to %s.", step, dst)
    except OSError as e:
      warnings.warn(f"Could not move corrupt checkpoint step {step} aside "
                    f"({e}); it will stay the latest step on disk.",
                    RuntimeWarning, stacklevel=3)

  def _warn_tmp_dirs(self):
    if not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      if _TMP_MARK in name:
        m = _TMP_RE.match(name)
        what = f"step {m.group(1)}" if m else name
        warnings.warn(
            f"Incomplete checkpoint ({what}) left by an interrupted save in "
            f"{self.directory}/{name}; ignoring it (orbax removes it).",
            RuntimeWarning, stacklevel=3)
