"""Offline CIFAR-10 archive loader, subsets, ArraySource, build_sources."""

import io
import os
import tarfile

import numpy as np
import pytest

from automix_jax import data
from automix_jax.data import offline

ARCHIVE = os.environ.get(
    "AUTOMIX_CIFAR10_ARCHIVE",
    os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                 "cifar10-jpeg.tar.gz"))
PER_CLASS = {"train": 5, "test": 3}


def _write_tar(path, members):
  with tarfile.open(path, "w:gz") as tar:
    for name, payload in members:
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="session")
def tiny_members():
  """(name, jpeg bytes) of the first 5 train / 3 test images of every class."""
  if not os.path.isfile(ARCHIVE):
    pytest.skip(f"CIFAR-10 archive not found at {os.path.abspath(ARCHIVE)} "
                "(set AUTOMIX_CIFAR10_ARCHIVE)")
  picked = []
  with tarfile.open(ARCHIVE, "r:gz") as tar:
    for m in tar:
      parts = m.name.split("/")
      if m.isfile() and int(parts[2].split(".")[0]) < PER_CLASS[parts[0]]:
        picked.append((m.name, tar.extractfile(m).read()))
  return picked


@pytest.fixture
def tiny_archive(tmp_path, tiny_members):
  path = tmp_path / "tiny.tar.gz"
  # Shuffled member order: the loader must sort by (class, file).
  order = np.random.default_rng(0).permutation(len(tiny_members))
  _write_tar(path, [tiny_members[i] for i in order])
  return str(path)


def test_load_tiny_archive_shapes_labels(tiny_archive, tiny_members, tmp_path):
  arrays = data.load_cifar10_archive(tiny_archive, cache_dir=str(tmp_path / "c"))
  assert set(arrays) == {"train", "test"}
  for split, n in PER_CLASS.items():
    x, y = arrays[split]
    assert x.shape == (10 * n, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, np.repeat(np.arange(10), n))
  # Class-major, numeric order within a class: train/cat/0001.jpg is row 3*5+1.
  from PIL import Image
  blob = dict(tiny_members)["train/cat/0001.jpg"]
  ref = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
  np.testing.assert_array_equal(arrays["train"][0][16], ref)
  assert data.CIFAR10_CLASSES.index("cat") == 3


def test_cache_reused_and_invalidated(tiny_archive, tiny_members, tmp_path,
                                      monkeypatch):
  cache = str(tmp_path / "cache")
  first = data.load_cifar10_archive(tiny_archive, cache_dir=cache)

  def boom(path):
    raise AssertionError("decoded again")

  monkeypatch.setattr(offline, "_decode_archive", boom)
  second = data.load_cifar10_archive(tiny_archive, cache_dir=cache)
  np.testing.assert_array_equal(first["train"][0], second["train"][0])
  np.testing.assert_array_equal(first["test"][1], second["test"][1])
  # A different archive at the same path must be decoded, not served from cache.
  _write_tar(tiny_archive, [m for m in tiny_members
                            if not m[0].startswith("train/truck/0004")])
  with pytest.raises(AssertionError, match="decoded again"):
    data.load_cifar10_archive(tiny_archive, cache_dir=cache)
  monkeypatch.undo()
  third = data.load_cifar10_archive(tiny_archive, cache_dir=cache)
  assert len(third["train"][1]) == 49
  assert len(os.listdir(cache)) == 2


def test_missing_archive_error(tmp_path):
  missing = tmp_path / "nope.tar.gz"
  with pytest.raises(FileNotFoundError, match="data.archive_path") as e:
    data.load_cifar10_archive(str(missing))
  assert "nope.tar.gz" in str(e.value)


def test_bad_archive_layout(tmp_path):
  path = tmp_path / "bad.tar.gz"
  _write_tar(path, [("images/cat/0.jpg", b"x")])
  with pytest.raises(ValueError, match="unexpected member"):
    data.load_cifar10_archive(str(path), cache_dir=str(tmp_path / "c"))


@pytest.fixture
def good_archive(tmp_path):
  from tests._tiny_archive import write_tiny_archive
  return write_tiny_archive(tmp_path / "good.tar.gz", train_per_class=1,
                            test_per_class=1, size=4)


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_unreadable_archive_names_the_file_and_form(tmp_path, good_archive,
                                                     kind):
  path = tmp_path / f"{kind}.tar.gz"
  if kind == "garbage":
    path.write_bytes(b"this is not a tar archive" * 40)
  elif kind == "empty":
    path.write_bytes(b"")
  else:
    raw = open(good_archive, "rb").read()
    path.write_bytes(raw[:len(raw) * 2 // 3])
  with pytest.raises(ValueError) as e:
    data.load_cifar10_archive(str(path), cache_dir=str(tmp_path / "c"))
  msg = str(e.value)
  assert f"{kind}.tar.gz" in msg, msg
  assert "'train/<class>/<file>.jpg'" in msg, msg  # the expected form
  # No raw tarfile / gzip traceback chained to it.
  assert e.value.__context__ is None or e.value.__suppress_context__


def test_corrupt_jpeg_names_archive_and_member(tmp_path, good_archive):
  with tarfile.open(good_archive) as tar:
    members = [(m.name, tar.extractfile(m).read()) for m in tar]
  bad = members[3][0]
  members[3] = (bad, b"\xff\xd8 not really a jpeg")
  path = tmp_path / "badjpeg.tar.gz"
  _write_tar(path, members)
  with pytest.raises(ValueError, match="badjpeg.tar.gz") as e:
    data.load_cifar10_archive(str(path), cache_dir=str(tmp_path / "c"))
  assert repr(bad) in str(e.value) and "JPEG" in str(e.value)


def test_subset_per_class_deterministic():
  rng = np.random.default_rng(0)
  y = rng.permutation(np.repeat(np.arange(10), 20)).astype(np.int32)
  x = np.arange(200)
  xa, ya = data.subset_per_class(x, y, 7, seed=3)
  xb, yb = data.subset_per_class(x, y, 7, seed=3)
  xc, _ = data.subset_per_class(x, y, 7, seed=4)
  np.testing.assert_array_equal(xa, xb)
  np.testing.assert_array_equal(ya, yb)
  assert not np.array_equal(xa, xc)
  np.testing.assert_array_equal(np.bincount(ya), np.full(10, 7))
  np.testing.assert_array_equal(y[xa], ya)  # rows kept together
  assert len(set(xa.tolist())) == 70 and np.all(np.diff(xa) > 0)
  with pytest.raises(ValueError, match="class 2 has only 1"):
    data.subset_per_class(np.arange(9), np.array([0, 0, 1, 1, 2, 0, 1, 0, 1]),
                          2, seed=0)
  with pytest.raises(ValueError, match="images_per_class"):
    data.subset_per_class(x, y, 0, seed=0)


def test_array_source_protocol():
  x = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
  src = data.ArraySource(x, np.array([0, 1, 2, 0, 1, 2]))
  assert len(src) == 6 and src.num_classes == 3 and src.image_shape == (4, 4, 3)
  out = src[np.array([4, 1])]
  assert out["image"].shape == (2, 4, 4, 3) and out["label"].dtype == np.int32
  np.testing.assert_array_equal(out["image"][0], x[4])
  np.testing.assert_array_equal(out["label"], [1, 1])
  with pytest.raises(IndexError):
    src[np.array([6])]
  with pytest.raises(ValueError, match="1-D integer"):
    src[np.array([0.5])]
  with pytest.raises(ValueError, match="uint8"):
    data.ArraySource(x.astype(np.float32), np.zeros(6, int))
  with pytest.raises(ValueError, match="num_classes"):
    data.ArraySource(x, np.array([0, 1, 2, 0, 1, 5]), num_classes=3)


def test_build_sources_archive_subset(tiny_archive, tmp_path):
  cfg = dict(name="cifar10_archive", archive_path=tiny_archive,
             cache_dir=str(tmp_path / "c"), tfds_data_dir="",
             train_split="train", test_split="test", images_per_class=2,
             subset_seed=1)
  train, test = data.build_sources(cfg)
  assert len(train) == 20 and len(test) == 30
  assert train.num_classes == test.num_classes == 10
  np.testing.assert_array_equal(np.bincount(train[np.arange(20)]["label"]),
                                np.full(10, 2))
  again, _ = data.build_sources(cfg)
  np.testing.assert_array_equal(train.images, again.images)
  cfg["images_per_class"] = 6
  with pytest.raises(ValueError, match="only 5"):
    data.build_sources(cfg)
  cfg["archive_path"] = str(tmp_path / "missing.tar.gz")
  with pytest.raises(FileNotFoundError, match="data.archive_path"):
    data.build_sources(cfg)


def test_distinct_class_indices_round_robin_over_classes():
  y = np.array([3, 3, 1, 3, 0, 1, 0, 3])
  np.testing.assert_array_equal(data.distinct_class_indices(y, 3), [0, 2, 4])
  # Then the second example of each class, in the same class order.
  np.testing.assert_array_equal(data.distinct_class_indices(y, 6),
                                [0, 2, 4, 1, 5, 6])
  np.testing.assert_array_equal(np.sort(data.distinct_class_indices(y, 8)),
                                np.arange(8))
  with pytest.raises(ValueError, match="num"):
    data.distinct_class_indices(y, 9)
  with pytest.raises(ValueError, match="labels"):
    data.distinct_class_indices(y.astype(float), 2)
