"""Tests for automix_jax/checkpoint.py (orbax V0 CheckpointManager wrapper)."""

import gc
import glob
import json
import os
import shutil
import warnings

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from automix_jax import checkpoint as ckpt_lib


@struct.dataclass
class _State:
  step: jax.Array
  params: dict
  opt_state: object
  key: jax.Array
  ema: object = None


def _make_state(seed: int, sharding=None) -> _State:
  """Small state: int32 step, f32/bf16 params, sgd+momentum, typed key, None."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {
      "w": jax.random.normal(k1, (8, 4), jnp.float32),
      "b": jnp.arange(4, dtype=jnp.float32) * 0.1,
      "h": jax.random.normal(k2, (3,), jnp.bfloat16),
  }
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  # One update so the momentum trace is non-trivial.
  _, opt_state = tx.update(grads, opt_state, params)
  state = _State(step=jnp.int32(seed), params=params, opt_state=opt_state,
                 key=jax.random.key(seed + 100), ema=None)
  if sharding is not None:
    state = jax.device_put(state, sharding)
  return state


def _raw(x):
  """Bytes of a leaf (typed keys via key_data) for bit-exact comparison."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(jax.device_get(x)).tobytes()


def _assert_bit_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    assert _raw(x) == _raw(y)


def _save_steps(directory, steps, **kw):
  with ckpt_lib.Checkpointer(directory, **kw) as ck:
    for s in steps:
      assert ck.save(s, _make_state(s), {"epoch": s, "position": 10 * s},
                     force=True)
  return {s: _make_state(s) for s in steps}


def test_roundtrip_bit_exact_and_reopen(tmp_path):
  state = _make_state(3)
  extra = {"epoch": 2, "position": np.int64(17),
           "history": [np.float32(0.25), 71.5], "config_hash": "abc"}
  ck = ckpt_lib.Checkpointer(tmp_path / "ckpt")
  assert ck.restore_latest(ckpt_lib.abstract_like(state)) is None
  assert ck.save(5, state, extra)
  ck.close()
  ck.close()  # idempotent
  with pytest.raises(RuntimeError, match="closed"):
    ck.save(6, state, extra)

  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ck2:
    assert ck2.latest_step() == 5
    abstract = ckpt_lib.abstract_like(_make_state(0))
    step, restored, rextra = ck2.restore_latest(abstract)
  assert step == 5
  assert isinstance(restored, _State)
  assert isinstance(restored.opt_state[0], optax.TraceState)
  assert restored.ema is None
  assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
  _assert_bit_equal(restored, state)
  # The momentum trace really was non-zero, so the optax state was checked.
  assert float(jnp.abs(restored.opt_state[0].trace["w"]).sum()) > 0
  assert rextra == {"epoch": 2, "position": 17, "history": [0.25, 71.5],
                    "config_hash": "abc"}
  # The restored key still works as a key.
  assert jax.random.uniform(restored.key).shape == ()


def test_restore_lands_on_requested_sharding(tmp_path):
  mesh = jax.make_mesh((8,), ("data",))
  shard = jax.sharding.NamedSharding(mesh, jax.P("data"))
  repl = jax.sharding.NamedSharding(mesh, jax.P())
  tree = {"w": jax.device_put(jnp.arange(32.).reshape(8, 4), shard),
          "s": jax.device_put(jnp.int32(1), repl)}
  with ckpt_lib.Checkpointer(tmp_path) as ck:
    ck.save(1, tree, {})
  # Restore with swapped shardings: sharded -> replicated and vice versa.
  abstract = {
      "w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=repl),
      "s": jax.ShapeDtypeStruct((), jnp.int32, sharding=repl),
  }
  with ckpt_lib.Checkpointer(tmp_path) as ck:
    _, restored, _ = ck.restore_latest(abstract)
  assert restored["w"].sharding == repl
  np.testing.assert_array_equal(restored["w"], np.arange(32.).reshape(8, 4))
  abstract["w"] = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=shard)
  with ckpt_lib.Checkpointer(tmp_path) as ck:
    _, restored, _ = ck.restore_latest(abstract)
  assert restored["w"].sharding == shard
  assert len(restored["w"].addressable_shards) == 8


def test_saving_is_deterministic(tmp_path):
  for name in ("a", "b"):
    with ckpt_lib.Checkpointer(tmp_path / name) as ck:
      ck.save(4, _make_state(4), {"epoch": 1, "position": 2})
  meta = [json.loads((tmp_path / n / "4" / "extra" / "metadata").read_text())
          for n in ("a", "b")]
  assert meta[0] == meta[1]
  assert len(meta[0]["_checksums"]) == len(jax.tree.leaves(_make_state(4)))


def test_interval_force_and_max_to_keep(tmp_path):
  state = _make_state(0)
  with ckpt_lib.Checkpointer(tmp_path, max_to_keep=2,
                             save_interval_steps=2) as ck:
    assert ck.save(0, state, None)         # orbax always saves the first one
    assert not ck.save(1, state, None)     # not due
    assert ck.save(2, state, None)
    assert ck.save(3, state, None, force=True)
    assert not ck.save(3, state, None, force=True)  # already saved
    assert not ck.save(2, state, None, force=True)  # older than latest
    ck.wait()
    assert ck.all_steps() == [2, 3]
    assert ck.latest_step() == 3


def _corrupt_delete_extra(step_dir):
  os.remove(os.path.join(step_dir, "extra", "metadata"))


def _array_files(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                                recursive=True) if os.path.isfile(f)]
  assert files, step_dir
  return files


def _corrupt_delete_arrays(step_dir):
  for f in _array_files(step_dir):
    os.remove(f)


def _corrupt_truncate_arrays(step_dir):
  for f in _array_files(step_dir):
    data = open(f, "rb").read()
    open(f, "wb").write(data[:len(data) // 2])


def _corrupt_garble_arrays(step_dir):
  for f in _array_files(step_dir):
    data = bytearray(open(f, "rb").read())
    for i in range(len(data) // 3, min(len(data), len(data) // 3 + 16)):
      data[i] ^= 0x5A
    open(f, "wb").write(bytes(data))


def _corrupt_checksum(step_dir):
  # Simulates arrays that decode without error but to different values.
  path = os.path.join(step_dir, "extra", "metadata")
  meta = json.load(open(path))
  key = sorted(meta["_checksums"])[0]
  meta["_checksums"][key] = meta["_checksums"][key][:-8] + "deadbeef"
  json.dump(meta, open(path, "w"))


def _corrupt_data_position(step_dir):
  # An edited `extra` (the data iterator's position) would resume on other
  # batches without complaint if `extra` were not checksummed.
  path = os.path.join(step_dir, "extra", "metadata")
  meta = json.load(open(path))
  meta["position"] += 1
  json.dump(meta, open(path, "w"))


def _corrupt_empty_dir(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


# Orbax leaves async read tasks behind when a restore fails; their
# "Event loop is closed" reports are noise here.
_ORBAX_NOISE = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


@_ORBAX_NOISE
@pytest.mark.parametrize("corrupt", [
    _corrupt_delete_extra, _corrupt_delete_arrays, _corrupt_truncate_arrays,
    _corrupt_garble_arrays, _corrupt_checksum, _corrupt_data_position,
    _corrupt_empty_dir])
def test_corrupt_latest_falls_back(tmp_path, corrupt):
  states = _save_steps(tmp_path, [1, 2])
  corrupt(str(tmp_path / "2"))
  with ckpt_lib.Checkpointer(tmp_path) as ck:
    with pytest.warns(RuntimeWarning, match="step 2"):
      step, restored, extra = ck.restore_latest(
          ckpt_lib.abstract_like(states[1]))
    assert step == 1
    _assert_bit_equal(restored, states[1])
    assert extra == {"epoch": 1, "position": 10}
    # The bad step is moved aside, so step 2 can be saved again.
    assert ck.latest_step() == 1
    assert (tmp_path / "2.corrupt").is_dir()
    assert ck.save(2, states[2], {"epoch": 2}, force=True)
    ck.wait()
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      step, restored, _ = ck.restore_latest(ckpt_lib.abstract_like(states[2]))
  assert step == 2
  _assert_bit_equal(restored, states[2])
  gc.collect()  # surface orbax's leaked coroutines here, where filtered


def test_orbax_tmp_dir_from_crash_is_ignored(tmp_path):
  states = _save_steps(tmp_path, [1])
  # A crash mid-save leaves "<step>.orbax-checkpoint-tmp-<n>" behind.
  tmp = tmp_path / "2.orbax-checkpoint-tmp-1234567"
  shutil.copytree(tmp_path / "1", tmp)
  os.remove(tmp / "extra" / "metadata")
  with pytest.warns(RuntimeWarning, match="step 2"):
    ck = ckpt_lib.Checkpointer(tmp_path)
  with ck:
    assert ck.latest_step() == 1
    step, restored, _ = ck.restore_latest(ckpt_lib.abstract_like(states[1]))
    assert step == 1
    _assert_bit_equal(restored, states[1])


@_ORBAX_NOISE
def test_all_corrupt_or_mismatched_raises_without_moving(tmp_path):
  states = _save_steps(tmp_path, [1, 2])
  wrong = ckpt_lib.abstract_like(states[1])
  wrong = wrong.replace(params={**wrong.params, "w": jax.ShapeDtypeStruct(
      (5, 5), jnp.float32, sharding=wrong.params["w"].sharding)})
  with ckpt_lib.Checkpointer(tmp_path) as ck:
    with pytest.warns(RuntimeWarning):
      with pytest.raises(RuntimeError, match="No checkpoint"):
        ck.restore_latest(wrong)
    assert ck.all_steps() == [1, 2]
  assert not glob.glob(str(tmp_path / "*.corrupt*"))
  gc.collect()


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep"):
    ckpt_lib.Checkpointer(tmp_path, max_to_keep=0)
  with pytest.raises(ValueError, match="save_interval_steps"):
    ckpt_lib.Checkpointer(tmp_path, save_interval_steps=0)
  with pytest.raises(ValueError, match="directory"):
    ckpt_lib.Checkpointer(None)
  state = {"w": jnp.ones(3)}
  with ckpt_lib.Checkpointer(tmp_path) as ck:
    with pytest.raises(ValueError, match="step"):
      ck.save(-1, state, {})
    with pytest.raises(ValueError, match="extra"):
      ck.save(1, state, [1, 2])
    with pytest.raises(ValueError, match="extra"):
      ck.save(1, state, {"_checksums": 1})
    with pytest.raises(ValueError, match="extra"):
      ck.save(1, state, {"a": object()})
    with pytest.raises(ValueError, match="abstract_state"):
      ck.restore_latest({"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    with pytest.raises(ValueError, match="abstract_state"):
      ck.restore_latest({"w": np.ones(3)})
    assert ck.latest_step() is None


def test_works_under_disallowed_transfer_guard(tmp_path):
  # Trainers set jax_transfer_guard="disallow" (style rule 11); checkpointing
  # must only use explicit transfers.
  state = _make_state(1)
  extra = {"loss": jnp.float32(0.5)}
  abstract = ckpt_lib.abstract_like(state)
  with jax.transfer_guard("disallow"):
    with ckpt_lib.Checkpointer(tmp_path) as ck:
      assert ck.save(1, state, extra)
    with ckpt_lib.Checkpointer(tmp_path) as ck:
      step, restored, rextra = ck.restore_latest(abstract)
  assert step == 1 and rextra == {"loss": 0.5}
  _assert_bit_equal(restored, state)
