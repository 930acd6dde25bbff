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

The JSON `extra` (data-iterator position, history, config fingerprint) is
covered too: its canonical JSON text gets a CRC32 under the reserved key
`"_extra_checksum"`, so an edited data position is detected like a damaged
array instead of resuming silently on other batches.

Multi-host: all processes must call `save`/`restore_latest` (orbax
synchronises them). Checksums are computed by every process over the shards it
holds: a replicated array (the training state) is checksummed from the local
copy, which equals the whole value; for an array sharded across processes each
process checksums its own shards and the tables are merged across processes
before process 0 writes them. On restore every process verifies the copies it
holds, and the processes agree on the verdict (one bad copy anywhere rejects
the step everywhere), so all of them resume from the same step. Moving a
corrupt step aside is done by process 0, followed by a barrier.

Paths: `directory` may be a local path or any `etils.epath` URL that orbax
accepts (`gs://bucket/run/checkpoints`); local paths are made absolute.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Mapping
import warnings
import zlib

from absl import flags as absl_flags
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "abstract_like", "as_path", "read_state"]

_CHECKSUM_KEY = "_checksums"
_EXTRA_CHECKSUM_KEY = "_extra_checksum"
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


def as_path(path: str | os.PathLike) -> epath.Path:
  """An `epath.Path` for a local path (made absolute) or a cloud URL."""
  text = os.fspath(path)
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(text))


def _crc(a) -> str:
  """CRC32 of an array's bytes (or of a bytes object) as 8 hex digits."""
  data = a if isinstance(a, bytes) else np.ascontiguousarray(
      np.asarray(a)).tobytes()
  return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _host_value(x):
  """numpy value of a local jax.Array / array-like (typed keys as key data)."""
  if isinstance(x, jax.Array) and _is_key_dtype(x.dtype):
    x = jax.random.key_data(x)
  # Explicit transfer: works under jax_transfer_guard("disallow").
  return np.asarray(jax.device_get(x) if isinstance(x, jax.Array) else x)


def _index_str(index, shape) -> str:
  """A shard's position, e.g. ``0-4_0-3`` (no ':' '=' ';', used as separators)."""
  return "_".join("{}-{}".format(*s.indices(n)[:2]) for s, n in zip(index, shape))


def _leaf_checksum(x) -> str:
  """`dtype:shape:<crc32>` of an array leaf's bytes, from this process's copy.

  A fully addressable or fully replicated array is checksummed whole (a
  replicated one from its first local copy). An array sharded across processes
  gives `dtype:shape:<index>=<crc32>;...` over the shards this process holds
  (merged across processes by `_merge_shard_tables`).
  """
  if isinstance(x, jax.Array):
    dtype, shape = str(x.dtype), list(x.shape)
    if x.is_fully_addressable:
      return f"{dtype}:{shape}:{_crc(_host_value(x))}"
    if x.is_fully_replicated:
      return f"{dtype}:{shape}:{_crc(_host_value(x.addressable_data(0)))}"
    parts = {}
    for shard in x.addressable_shards:
      key = _index_str(shard.index, x.shape)
      if key not in parts:
        parts[key] = _crc(_host_value(shard.data))
    return f"{dtype}:{shape}:" + ";".join(f"{k}={v}" for k, v in
                                          sorted(parts.items()))
  a = np.asarray(x)
  return f"{a.dtype}:{list(a.shape)}:{_crc(a)}"


def _merge_shard_tables(table: dict[str, str]) -> dict[str, str]:
  """Unites the per-process shard checksums of arrays sharded across hosts."""
  if jax.process_count() == 1 or not any("=" in v for v in table.values()):
    return table
  blob = np.frombuffer(json.dumps(table).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(
      np.array([blob.size], np.int64))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:blob.size] = blob
  rows = np.asarray(multihost_utils.process_allgather(padded))
  shards: dict[str, dict[str, str]] = {}
  for row, size in zip(rows, sizes):
    for key, value in json.loads(bytes(row[:int(size)]).decode()).items():
      tail = value.rpartition(":")[2]
      if "=" in tail:
        for part in tail.split(";"):
          index, _, crc = part.partition("=")
          shards.setdefault(key, {}).setdefault(index, crc)
  out = dict(table)
  for key, parts in shards.items():
    head = table[key].rpartition(":")[0]
    out[key] = f"{head}:" + ";".join(f"{i}={c}" for i, c in
                                     sorted(parts.items()))
  return out


def _local_checksums(tree: Any) -> dict[str, str]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): _leaf_checksum(leaf)
          for path, leaf in leaves}


def _checksum_matches(actual: str, expected: str) -> bool:
  """This process's checksum agrees with the recorded one (its shards only)."""
  if actual == expected:
    return True
  a_head, _, a_tail = actual.rpartition(":")
  e_head, _, e_tail = expected.rpartition(":")
  if "=" not in a_tail or a_head != e_head:
    return False
  recorded = dict(p.partition("=")[::2] for p in e_tail.split(";"))
  return all(recorded.get(i) == c for i, c in
             (p.partition("=")[::2] for p in a_tail.split(";")))


def _extra_checksum(extra: Mapping[str, Any]) -> str:
  return _crc(json.dumps(extra, sort_keys=True,
                        separators=(",", ":")).encode())


def _all_processes_agree(ok: bool) -> bool:
  """True iff `ok` on every process (a collective when multi-process)."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.array([ok], np.bool_))
  return bool(np.all(flags))


def read_state(directory: str | os.PathLike, step: int | None = None
               ) -> tuple[int, Any]:
  """``(step, state)`` of a checkpoint as numpy arrays, for inspection.

  Reads the state item of ``<directory>/<step>`` (default: the newest step)
  onto this process's first device, whatever mesh or process count saved it
  (a 2-process pod's checkpoint on a laptop, say), and returns numpy leaves in
  orbax's nested-dict layout (``{"params": ..., "batch_stats": ..., ...}``).
  No checksum verification and no training-state structure are needed: use
  ``Checkpointer.restore_latest`` to resume.
  """
  root = as_path(directory)
  if step is None:
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
    if not steps:
      raise FileNotFoundError(f"no checkpoint step in {root}.")
    step = steps[-1]
  path = root / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here),
      checkpointer.metadata(path).item_metadata.tree)
  state = checkpointer.restore(path, abstract)
  return step, jax.tree.map(np.asarray, state)


def _use_coordination_service_barriers() -> None:
  """Makes orbax's multi-process barriers safe next to a running train loop.

  By default orbax synchronises processes with a device collective
  (`multihost_utils.sync_global_devices`), also from its asynchronous-save
  thread. A collective launched from that thread races the main thread's
  train / eval collectives, and processes that launch them in different orders
  deadlock (seen on a 2-process CPU pod). The coordination service's barrier
  (`experimental_orbax_use_distributed_barrier`) involves no device and has a
  timeout.
  """
  if jax.process_count() == 1:
    return
  flag = absl_flags.FLAGS["experimental_orbax_use_distributed_barrier"]
  flag.value = True
  flag.present = 1  # readable even where absl never parsed a command line


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
    self.directory = as_path(directory)
    _use_coordination_service_barriers()
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
        The keys `"_checksums"` and `"_extra_checksum"` are reserved.
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
    for reserved in (_CHECKSUM_KEY, _EXTRA_CHECKSUM_KEY):
      if reserved in extra:
        raise ValueError(f"extra: the key {reserved!r} is reserved.")
    extra = _to_jsonable(extra, "extra")
    latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      return False
    if not force and not self._manager.should_save(step):
      return False
    if self._checksums:
      table = _merge_shard_tables(_local_checksums(state))
      extra[_EXTRA_CHECKSUM_KEY] = _extra_checksum(extra)
      extra[_CHECKSUM_KEY] = table
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
      error = None
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                extra=ocp.args.JsonRestore()))
        state, extra = restored.state, dict(restored.extra or {})
        self._verify(step, state, extra.pop(_CHECKSUM_KEY, None),
                     extra.pop(_EXTRA_CHECKSUM_KEY, None), extra)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax/tensorstore raise many types (ValueError, JSONDecodeError,
        # FileNotFoundError, plain Exception) for damaged files.
        error = e
      if not _all_processes_agree(error is None) and error is None:
        error = ValueError(f"checkpoint step {step} failed to restore or "
                           "verify on another process.")
      if error is not None:
        failures.append((step, error))
        warnings.warn(
            f"Checkpoint step {step} in {self.directory} is unreadable or "
            f"corrupt ({type(error).__name__}: {str(error)[:300]}); trying an "
            "earlier step.", RuntimeWarning, stacklevel=2)
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

  def _verify(self, step, state, expected, extra_expected, extra):
    if not self._checksums:
      return
    if extra_expected is not None and _extra_checksum(extra) != extra_expected:
      raise ValueError(
          f"checksum mismatch in step {step}: the JSON `extra` (data position, "
          "history, config fingerprint) was changed after it was saved.")
    if expected is None:
      return
    actual = _local_checksums(state)
    if set(actual) != set(expected):
      raise ValueError(
          f"checksum table of step {step} does not match the state's leaves "
          f"(missing {sorted(set(expected) - set(actual))[:5]}, unexpected "
          f"{sorted(set(actual) - set(expected))[:5]}).")
    bad = [k for k, v in actual.items()
           if expected[k] is not None and not _checksum_matches(v, expected[k])]
    if bad:
      raise ValueError(f"checksum mismatch in step {step} at leaves {bad[:5]}.")

  def _quarantine(self, step: int) -> None:
    """Moves a corrupt step directory aside so it no longer counts as latest."""
    if jax.process_index() == 0:
      self._move_aside(step)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"automix_quarantine_{step}")

  def _move_aside(self, step: int) -> None:
    src = self.directory / str(step)
    if not src.is_dir():
      return
    # "<step>.corrupt" is neither a digit string nor "<prefix>_<digits>", so
    # orbax does not list it as a step.
    dst = self.directory / f"{step}.corrupt"
    n = 0
    while dst.exists():
      n += 1
      dst = self.directory / f"{step}.corrupt.{n}"
    try:
      src.rename(dst)
      logging.warning("Moved corrupt checkpoint step %d to %s.", step, dst)
    except OSError as e:
      warnings.warn(f"Could not move corrupt checkpoint step {step} aside "
                    f"({e}); it will stay the latest step on disk.",
                    RuntimeWarning, stacklevel=4)

  def _warn_tmp_dirs(self):
    if not self.directory.is_dir():
      return
    for name in sorted(p.name for p in self.directory.iterdir()):
      if _TMP_MARK in name:
        m = _TMP_RE.match(name)
        what = f"step {m.group(1)}" if m else name
        warnings.warn(
            f"Incomplete checkpoint ({what}) left by an interrupted save in "
            f"{self.directory}/{name}; ignoring it (orbax removes it).",
            RuntimeWarning, stacklevel=3)
