"""One process of a simulated pod for the data / checkpoint tests.

  POD_MODULE=tests.multihost._worker bash scripts/launch_local_pod.sh 2 4 -- \
    --case data --workdir OUT

Writes ``OUT/result_<process>.json``. Cases:

* ``data``: the indices this process reads for three training batches and
  for a full eval pass (37 examples, global batch 16: the last batch is
  padded), the global labels of each batch, and eval totals computed under jit.
* ``ckpt_save``: saves steps 1 and 2 of a state with a replicated and a
  process-sharded array (orbax, with checksums).
* ``ckpt_restore``: restores the newest good step; reports it and the values.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax import multihost


class _RecordingSource:
  """An ``ArraySource`` whose labels are the example indices; logs reads."""

  def __init__(self, n):
    from automix_jax import data
    self._src = data.ArraySource(
        np.zeros((n, 4, 4, 3), np.uint8), np.arange(n), num_classes=n)
    self.num_classes, self.image_shape = n, (4, 4, 3)
    self.reads = []

  def __len__(self):
    return len(self._src)

  def __getitem__(self, idx):
    self.reads.extend(int(i) for i in np.asarray(idx))
    return self._src[idx]


def _data_case(mesh):
  from automix_jax import data, sharding
  from jax.experimental import multihost_utils
  batch_sh = sharding.batch_sharding(mesh)
  train = _RecordingSource(100)
  it = data.TrainIterator(train, global_batch_size=16, seed=3, augment="none",
                          sharding=batch_sh, prefetch=0)
  local, global_labels = [], []
  for _ in range(3):
    before = len(train.reads)
    batch = next(it)
    local.append(train.reads[before:])
    global_labels.append(np.asarray(multihost_utils.process_allgather(
        batch["label"], tiled=True)).tolist())
  test = _RecordingSource(37)
  repl = sharding.replicated(mesh)
  totals = jax.jit(lambda b: {"count": jnp.sum(b["mask"]),
                              "label_sum": jnp.sum(b["label"] * b["mask"])},
                   out_shardings=repl)
  count = label_sum = 0
  batches = 0
  for b in data.eval_batches(test, batch_size=16, sharding=batch_sh,
                             normalize=((0.5,) * 3, (0.5,) * 3)):
    t = jax.device_get(totals(b))
    count += int(t["count"])
    label_sum += int(t["label_sum"])
    batches += 1
  return {"train_local": local, "train_global": global_labels,
          "eval_reads": test.reads, "eval_count": count,
          "eval_label_sum": label_sum, "eval_batches": batches}


def _state(mesh, step):
  from automix_jax import sharding
  repl = sharding.replicated(mesh)
  split = sharding.batch_sharding(mesh)
  make = jax.jit(lambda: {
      "w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) * step,
      "rows": jnp.arange(mesh.size * 3, dtype=jnp.float32).reshape(-1, 3) + step,
  }, out_shardings={"w": repl, "rows": split})
  return make()


def _ckpt(case, mesh, workdir):
  from automix_jax import checkpoint
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
      _state(mesh, 0))
  with checkpoint.Checkpointer(os.path.join(workdir, "ckpt")) as ck:
    if case == "ckpt_save":
      for step in (1, 2):
        ck.save(step, _state(mesh, step), {"data": {"position": step}},
                force=True)
      return {"steps": ck.all_steps()}
    step, state, extra = ck.restore_latest(abstract)
    from jax.experimental import multihost_utils
    rows = multihost_utils.process_allgather(state["rows"], tiled=True)
    return {"step": step, "extra": extra,
            "w": np.asarray(jax.device_get(state["w"])).tolist(),
            "rows": np.asarray(rows).tolist()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--case", required=True)
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  multihost.initialize("auto", timeout_s=60)
  from automix_jax import sharding
  mesh = sharding.make_mesh()
  if args.case == "data":
    result = _data_case(mesh)
  else:
    result = _ckpt(args.case, mesh, args.workdir)
  result["process"] = jax.process_index()
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir,
                         f"result_{jax.process_index()}.json"), "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main()
