"""open_tfds through tfds.data_source, mocked (no TensorFlow needed).

`tfds.testing.mock_data(policy=MockPolicy.USE_CODE)` mocks
`builder.as_data_source` with random examples generated from the builder's
features, without TensorFlow. Its sub-splits are not honoured (every split has
`num_examples`), so the per-process split is checked by the split passed.
"""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from automix_jax import data  # noqa: E402

MOCK = dict(policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_open_tfds_mock(name, classes):
  with tfds.testing.mock_data(num_examples=12, **MOCK):
    src = data.open_tfds(name, "train", process_split=False)
    assert len(src) == 12
    assert src.num_classes == classes
    assert src.image_shape == (32, 32, 3)
    out = src[np.array([3, 0, 11, -1])]
  assert out["image"].shape == (4, 32, 32, 3) and out["image"].dtype == np.uint8
  assert out["label"].shape == (4,) and out["label"].dtype == np.int32
  assert np.all((out["label"] >= 0) & (out["label"] < classes))
  np.testing.assert_array_equal(out["image"][2], out["image"][3])  # -1 == 11
  assert not np.array_equal(out["image"][0], out["image"][1])


def test_open_tfds_keys_and_process_split():
  with tfds.testing.mock_data(num_examples=8, **MOCK):
    src = data.open_tfds("cifar100", "test", label_key="coarse_label",
                         process_split=False)
    assert src.num_classes == 20
    with pytest.raises(ValueError, match="image_key"):
      data.open_tfds("cifar10", "train", image_key="img")
    one = data.open_tfds("cifar10", "train", process_index=1, process_count=1)
    assert not one.process_local and one.split == "train"
    two = data.open_tfds("cifar10", "train", process_index=1, process_count=2)
    assert two.process_local
    assert two.split == tfds.split_for_jax_process(
        "train", process_index=1, process_count=2)
    # Every process records the same data fingerprint (the whole split), so
    # that all of them agree when a resume compares it with the checkpoint's.
    zero = data.open_tfds("cifar10", "train", process_index=0, process_count=2)
    assert zero.split != two.split
    assert zero.fingerprint() == two.fingerprint()
    assert zero.fingerprint().startswith("tfds:cifar10:train:")
    assert (data.open_tfds("cifar10", "test", process_index=0,
                           process_count=2).fingerprint()
            != zero.fingerprint())


def test_tfds_source_in_train_iterator():
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  sharding = NamedSharding(jax.make_mesh((8,), ("data",)), P("data"))
  with tfds.testing.mock_data(num_examples=20, **MOCK):
    src = data.open_tfds("cifar10", "train", process_split=False)
    with data.TrainIterator(src, global_batch_size=8, seed=0, augment="cifar",
                            sharding=sharding, prefetch=0) as it:
      batch = next(it)
  assert batch["image"].shape == (8, 32, 32, 3)
  assert batch["image"].dtype == np.float32
  assert it.steps_per_epoch == 2 and it.examples_dropped_per_epoch == 4


def test_unknown_dataset_error(tmp_path):
  with pytest.raises(ValueError, match="tfds build no_such_dataset_xyz"):
    data.open_tfds("no_such_dataset_xyz", "train", data_dir=str(tmp_path))


def test_unprepared_dataset_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds build cifar10") as e:
    data.open_tfds("cifar10", "train", data_dir=str(tmp_path),
                   process_split=False)
  assert str(tmp_path) in str(e.value)


def test_build_sources_tfds_subset():
  cfg = dict(name="cifar10", tfds_data_dir="", train_split="train",
             test_split="test", images_per_class=1, subset_seed=0)
  with tfds.testing.mock_data(num_examples=40, **MOCK):
    src = data.open_tfds("cifar10", "train", process_split=False)
    labels = src[np.arange(40)]["label"]
    if np.bincount(labels, minlength=10).min() < 1:
      pytest.skip("mock labels do not cover every class")
    train, test = data.build_sources(cfg)
  assert len(train) == 10 and len(test) == 40
  np.testing.assert_array_equal(np.sort(train.labels), np.arange(10))
