"""Sources whose images vary in size (TFDS imagenet2012 and the fine-grained
datasets): per-image host crops make fixed-size batches (8 fake CPU devices).

`tfds.testing.mock_data(policy=MockPolicy.USE_CODE)` fills a `None` image
dimension with a random size (here 5..50 px), without TensorFlow.
"""

import numpy as np
import pytest
import torchvision.transforms.functional as TF
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image
from torchvision.transforms import InterpolationMode

from automix_jax import data
from automix_jax.data import transforms as T

tfds = pytest.importorskip("tensorflow_datasets")

MOCK = dict(policy=tfds.testing.MockPolicy.USE_CODE)
MODES = {"bilinear": InterpolationMode.BILINEAR,
         "bicubic": InterpolationMode.BICUBIC}


@pytest.fixture(scope="module")
def sharding():
  import jax
  assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
  return NamedSharding(jax.make_mesh((8,), ("data",)), P("data"))


def _images(sizes, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in sizes]


# ------------------------------------------------------------------ source
def test_open_tfds_variable_size_source():
  with tfds.testing.mock_data(num_examples=12, **MOCK):
    src = data.open_tfds("imagenet2012", "train", process_split=False)
    out = src[np.array([3, 0, 11, -1])]
    empty = src[np.array([], np.int64)]
  assert src.image_shape == (None, None, 3) and src.num_classes == 1000
  assert src.variable_size and data.variable_size(src)
  assert isinstance(out["image"], list) and len(out["image"]) == 4
  assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
             for im in out["image"])
  assert len({im.shape for im in out["image"]}) > 1  # sizes differ
  np.testing.assert_array_equal(out["image"][2], out["image"][3])  # -1 == 11
  assert out["label"].dtype == np.int32 and out["label"].shape == (4,)
  assert empty["image"] == [] and empty["label"].shape == (0,)
  assert src.fingerprint() == "tfds:imagenet2012:train:12"

  class Plain:  # a source without fingerprint(): described by its shape
    image_shape, num_classes = (None, None, 3), 5

    def __len__(self):
      return 7

  assert data.fingerprint(Plain()) == "Plain:7:(None, None, 3):5"


# ------------------------------------------------------------- transforms
def test_host_crop_is_drawn_in_each_image_own_bounds():
  """Defining property: image i's box is RandomResizedCrop's box for *its*
  height and width, from the i-th row of the same [B, 22] uniforms; alone or
  in a batch the image gets the same crop."""
  ims = _images([(37, 53), (9, 41), (60, 12), (16, 16)])
  aug = data.Augment("imagenet", image_size=16, backend="numpy")
  got = aug.host(ims, np.random.default_rng(5))
  assert got.shape == (4, 16, 16, 3) and got.dtype == np.uint8
  rng = np.random.default_rng(5)
  u = rng.random((4, 22))
  flips = rng.random(4) < 0.5
  for i, im in enumerate(ims):
    box = T.rrc_boxes(np, u[i:i + 1], height=im.shape[0], width=im.shape[1])
    top, left, h, w = box[0]
    assert 0 <= top and top + h <= im.shape[0]
    assert 0 <= left and left + w <= im.shape[1]
    want = data.resized_crop_np(im[None], box, size=16, flip=flips[i:i + 1])
    np.testing.assert_array_equal(got[i], want[0])
  # One image alone, same draws: the fixed-size function on that image.
  alone = data.random_resized_crop_np([ims[0]], np.random.default_rng(9),
                                      size=16)
  np.testing.assert_array_equal(alone, data.random_resized_crop_np(
      ims[0][None], np.random.default_rng(9), size=16))
  # Equal sizes as a list: exactly the stacked-array path.
  same = _images([(20, 24)] * 3, seed=1)
  np.testing.assert_array_equal(
      aug.host(same, np.random.default_rng(2)),
      aug.host(np.stack(same), np.random.default_rng(2)))


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
@pytest.mark.parametrize("h,w", [(37, 53), (53, 37)])
def test_host_eval_crop_matches_torchvision(interp, h, w):
  """torchvision Resize(int(16 / 0.875)) + CenterCrop(16) on PIL: exact."""
  im = _images([(h, w)], seed=h)[0]
  ref = TF.center_crop(TF.resize(Image.fromarray(im), int(16 / 0.875),
                                 MODES[interp]), [16, 16])
  got = data.center_crop_np([im], size=16, crop_pct=0.875,
                            interpolation=interp)
  np.testing.assert_array_equal(got[0], np.asarray(ref))
  ev = data.Augment("imagenet", image_size=16, resize_method=interp,
                    crop_pct=0.875).eval_version().for_variable_size()
  np.testing.assert_array_equal(ev.host([im, im[:20]], None)[0], got[0])


# ---------------------------------------------------------------- pipeline
def test_train_iterator_fixed_batches_and_resume(sharding):
  with tfds.testing.mock_data(num_examples=24, **MOCK):
    src = data.open_tfds("imagenet2012", "train", process_split=False)
    aug = data.Augment("imagenet", image_size=16)  # jax backend: switched
    kw = dict(global_batch_size=8, seed=3, augment=aug, sharding=sharding)
    with data.TrainIterator(src, prefetch=2, **kw) as it:
      assert it.augment.backend == "numpy" and aug.backend == "jax"
      first = next(it)
      state = it.get_state()
      want = [np.asarray(next(it)["image"]) for _ in range(3)]  # crosses epoch
    with data.TrainIterator(src, prefetch=0, **kw) as it2:
      it2.set_state(state)
      got = [np.asarray(next(it2)["image"]) for _ in range(3)]
  assert first["image"].shape == (8, 16, 16, 3)
  assert first["image"].dtype == np.float32
  assert first["image"].sharding == sharding
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(want[0], want[1])


def test_deit_kind_and_eval_batches(sharding):
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  with tfds.testing.mock_data(num_examples=12, **MOCK):
    src = data.open_tfds("imagenet2012", "validation", process_split=False)
    deit = data.Augment("deit", image_size=16, mean=mean, std=std)
    with data.TrainIterator(src, global_batch_size=8, seed=0, augment=deit,
                            sharding=sharding, prefetch=0) as it:
      assert next(it)["image"].shape == (8, 16, 16, 3)
    batches = list(data.eval_batches(src, batch_size=8, sharding=sharding,
                                     normalize=deit))
    raw = src[np.arange(8)]["image"]
  assert len(batches) == 2
  assert [int(np.sum(b["mask"])) for b in batches] == [8, 4]
  crop = data.center_crop_np(raw, size=16, crop_pct=0.875,
                             interpolation="bicubic")
  want = (crop / 255.0 - np.asarray(mean)) / np.asarray(std)
  np.testing.assert_allclose(np.asarray(batches[0]["image"]), want, atol=1e-5)
  pad = np.asarray(batches[1]["image"])[4:]  # zero images, normalised
  np.testing.assert_allclose(pad, np.broadcast_to(
      -np.asarray(mean) / np.asarray(std), pad.shape), atol=1e-6)


def test_images_per_class_subset_of_variable_size_source():
  cfg = dict(name="imagenette", train_split="train",
             test_split="validation", images_per_class=1, subset_seed=0)
  with tfds.testing.mock_data(num_examples=60, **MOCK):
    src = data.open_tfds("imagenette", "train", process_split=False)
    labels = src[np.arange(60)]["label"]
    if np.bincount(labels, minlength=10).min() < 1:
      pytest.skip("mock labels do not cover every class")
    train, test = data.build_sources(cfg)
    got = train[np.arange(len(train))]
    fp = data.fingerprint(train, test)
  assert len(train) == 10 and train.image_shape == (None, None, 3)
  np.testing.assert_array_equal(np.sort(got["label"]), np.arange(10))
  keep, _ = data.subset_per_class(np.arange(60), labels, 1, 0, num_classes=10)
  for i, k in enumerate(keep):
    np.testing.assert_array_equal(got["image"][i], src[np.array([k])]["image"][0])
  assert fp.startswith("tfds:imagenette:train:60:subset10:")


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("kind", ["cifar", "randaugment", "none"])
def test_refuses_kinds_without_crop(sharding, kind):
  with tfds.testing.mock_data(num_examples=16, **MOCK):
    src = data.open_tfds("imagenet2012", "train", process_split=False)
    with pytest.raises(ValueError, match=r"data\.augment.*'imagenet', 'deit'"
                       if kind != "none" else r"data\.image_size.*crop_pct"):
      data.TrainIterator(src, global_batch_size=8, seed=0,
                         augment=data.Augment(kind), sharding=sharding)
    with pytest.raises(ValueError, match=r"data\.image_size.*data\.crop_pct"):
      data.eval_batches(src, batch_size=8, sharding=sharding,
                        normalize=((0.5,) * 3, (0.5,) * 3))


def test_refuses_image_size_zero():
  with pytest.raises(ValueError, match=r"data\.image_size"):
    data.augment_from_config(dict(augment="imagenet", image_size=0),
                             train=True)
  with pytest.raises(ValueError, match=r"data\.image_size"):
    data.Augment("none").output_shape((None, None, 3))
  with pytest.raises(ValueError, match="for_variable_size"):
    data.Augment("cifar", backend="numpy").host(_images([(8, 9)]), None)


def test_mask_preview_crops_variable_size_test_images():
  import jax
  import ml_collections
  from automix_jax.train import mask_images

  class Method:  # only what MaskImages needs before a render
    preview_sources = 2

    def preview_masks(self, state, images):
      raise AssertionError("not called")

  cfg = ml_collections.ConfigDict(dict(
      log_images_every_steps=2, tensorboard=True,
      data=dict(name="imagenet2012", augment="imagenet", image_size=16,
                mean=(0.5,) * 3, std=(0.25,) * 3)))
  mesh = jax.make_mesh((8,), ("data",))
  with tfds.testing.mock_data(num_examples=12, **MOCK):
    src = data.open_tfds("imagenet2012", "validation", process_split=False)
    preview = mask_images.MaskImages.from_config(cfg, Method(), src, mesh)
    raw = src[np.arange(12)]
  pick = data.distinct_class_indices(raw["label"], mask_images.NUM_IMAGES)
  crop = data.center_crop_np([raw["image"][i] for i in pick], size=16,
                             crop_pct=0.875)
  np.testing.assert_allclose(np.asarray(preview._images),  # pylint: disable=protected-access
                             (crop / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_trainer_evaluator_refuses_uncroppable_eval_at_construction():
  import jax
  from automix_jax.train import loop
  mesh = jax.make_mesh((8,), ("data",))
  with tfds.testing.mock_data(num_examples=8, **MOCK):
    src = data.open_tfds("imagenet2012", "validation", process_split=False)
    with pytest.raises(ValueError, match=r"data\.image_size.*data\.crop_pct"):
      loop._Evaluator(None, src, batch_size=8, mesh=mesh,  # pylint: disable=protected-access
                      data_config=dict(augment="cifar"), num_bins=15)
    loop._Evaluator(None, src, batch_size=8, mesh=mesh,  # pylint: disable=protected-access
                    data_config=dict(augment="imagenet", image_size=16),
                    num_bins=15)
