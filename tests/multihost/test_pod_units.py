"""Data and checkpoints on a simulated pod (2 processes x 4 fake devices) vs 1 x 8.

Each case runs tests/multihost/_worker.py under scripts/launch_local_pod.sh.
"""

import json
import os

import pytest

from tests.multihost import _pod

pytestmark = pytest.mark.multihost


def _worker(tmp_path, name, procs, devices, case, workdir=None):
  workdir = workdir or tmp_path / name
  env = _pod.pod_env(POD_MODULE="tests.multihost._worker")
  _pod.run(procs, devices, ["--case", case, "--workdir", str(workdir)], env,
           timeout=300)
  return [json.load(open(workdir / f"result_{i}.json")) for i in range(procs)]


def test_each_process_reads_a_disjoint_slice_and_eval_totals_match(tmp_path):
  pod = _worker(tmp_path, "pod", 2, 4, "data")
  single, = _worker(tmp_path, "single", 1, 8, "data")
  for step in range(3):
    a, b = pod[0]["train_local"][step], pod[1]["train_local"][step]
    assert len(a) == len(b) == 8 and not set(a) & set(b)
    # The global batch is process 0's rows then process 1's, and it is the
    # same global batch a single process assembles.
    assert pod[0]["train_global"][step] == a + b
    assert pod[1]["train_global"][step] == a + b
    assert single["train_global"][step] == a + b
  # Eval: 37 examples, global batch 16 -> 3 batches, the last one padded.
  # No process reads an example twice or another process's examples, no
  # example is dropped, and the masked totals equal the single process's.
  r0, r1 = pod[0]["eval_reads"], pod[1]["eval_reads"]
  assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(37))
  assert sorted(single["eval_reads"]) == list(range(37))
  for r in pod + [single]:
    assert r["eval_batches"] == 3
    assert (r["eval_count"], r["eval_label_sum"]) == (37, sum(range(37)))


def _edit_extra(step_dir, edit):
  path = step_dir / "extra" / "metadata"
  meta = json.load(open(path))
  edit(meta)
  json.dump(meta, open(path, "w"))


def test_checkpoint_checksums_cover_every_process_and_agree(tmp_path):
  work = tmp_path / "ckpt"
  saved = _worker(tmp_path, "", 2, 4, "ckpt_save", workdir=work)
  assert saved[0]["steps"] == saved[1]["steps"] == [1, 2]
  table = json.load(open(work / "ckpt" / "2" / "extra" / "metadata"))[
      "_checksums"]
  # The replicated leaf has one whole-array checksum; the sharded leaf one
  # per shard, from both processes (8 rows over 8 devices).
  assert "=" not in table["['w']"]
  assert table["['rows']"].count("=") == 8

  restored = _worker(tmp_path, "", 2, 4, "ckpt_restore", workdir=work)
  for r in restored:
    assert r["step"] == 2 and r["extra"] == {"data": {"position": 2}}
    assert r["rows"][7] == [23.0, 24.0, 25.0]

  # A damaged shard that only process 1 holds: process 1 detects it, both
  # processes reject step 2 and resume step 1 together.
  def damage_last_shard(meta):
    head, _, last = meta["_checksums"]["['rows']"].rpartition(";")
    meta["_checksums"]["['rows']"] = f"{head};{last[:-8]}deadbeef"
  _edit_extra(work / "ckpt" / "2", damage_last_shard)
  restored = _worker(tmp_path, "", 2, 4, "ckpt_restore", workdir=work)
  assert [r["step"] for r in restored] == [1, 1]
  assert restored[0]["rows"][0] == [1.0, 2.0, 3.0]
  assert os.path.isdir(work / "ckpt" / "2.corrupt")

  # An edited data position is detected like a damaged array.
  def move_data(meta):
    meta["data"]["position"] = 7
  _edit_extra(work / "ckpt" / "1", move_data)
  with pytest.raises(AssertionError, match="could be restored"):
    _worker(tmp_path, "", 2, 4, "ckpt_restore", workdir=work)
