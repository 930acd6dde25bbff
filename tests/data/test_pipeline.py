"""Augmentation, TrainIterator and eval_batches (8 fake CPU devices)."""

import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from automix_jax import data
from automix_jax.data import augment as aug_lib


@pytest.fixture(scope="module")
def sharding():
  assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
  return NamedSharding(jax.make_mesh((8,), ("data",)), P("data"))


def _source(n=100, hw=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
  # Pixel [0, 0, 0] holds the example id (mod 256) for bookkeeping in tests.
  x[:, 0, 0, 0] = np.arange(n) % 256
  return data.ArraySource(x, np.arange(n) % 10, num_classes=10)


# ------------------------------------------------------------------ augment
def test_crop_is_window_of_reflect_padded_image():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  out = data.random_crop_flip_np(x, np.random.default_rng(5), padding=4)
  # Re-draw the same offsets / flips as the implementation.
  r = np.random.default_rng(5)
  off = r.integers(0, 9, size=(64, 2))
  flips = r.random(64) < 0.5
  assert 10 < flips.sum() < 54 and len(np.unique(off[:, 0])) > 4
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
  for i in range(64):
    win = padded[i, off[i, 0]:off[i, 0] + 32, off[i, 1]:off[i, 1] + 32]
    np.testing.assert_array_equal(out[i], win[:, ::-1] if flips[i] else win)
  # Reflect (not edge/zero) padding: pad row 0 equals image row 4.
  assert np.array_equal(padded[0, 0, 4:-4], x[0, 4])


def test_no_flip_zero_padding_is_identity_and_flip_mirrors():
  x = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  same = data.random_crop_flip_np(x, np.random.default_rng(0), padding=0,
                                  flip=False)
  np.testing.assert_array_equal(same, x)
  flipped = data.random_crop_flip_np(x, np.random.default_rng(0), padding=0)
  for a, b in zip(flipped, x):
    assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])
  assert not np.array_equal(flipped, x)


def test_normalize_values():
  x = np.array([0, 255, 128], np.uint8).reshape(1, 1, 1, 3)
  out = data.normalize_np(x)
  mean, std = np.array(data.CIFAR_MEAN), np.array(data.CIFAR_STD)
  expect = (np.array([0, 255, 128]) / 255.0 - mean) / std
  np.testing.assert_allclose(out.reshape(3), expect, rtol=1e-5)
  assert data.CIFAR_MEAN == (0.4914, 0.4822, 0.4465)
  assert data.CIFAR_STD == (0.2023, 0.1994, 0.2010)
  with pytest.raises(ValueError, match="uint8"):
    data.normalize_np(x.astype(np.float32))
  with pytest.raises(ValueError, match="std"):
    data.normalize_np(x, std=(0.2, 0.0, 0.2))


def test_augment_jax_matches_semantics():
  x = np.random.default_rng(2).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
  out = np.asarray(jax.jit(data.augment_jax)(jax.random.key(0), x))
  assert out.shape == (32, 16, 16, 3) and out.dtype == np.float32
  norm = data.normalize_np(np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)),
                                  mode="reflect"))
  n_flipped = 0
  for i in range(32):
    hits = [(f, oy, ox) for oy in range(9) for ox in range(9) for f in (0, 1)
            if np.allclose(out[i], (lambda w: w[:, ::-1] if f else w)(
                norm[i, oy:oy + 16, ox:ox + 16]), atol=1e-5)]
    assert hits, f"example {i} is not a (flipped) window of the padded image"
    n_flipped += hits[0][0]
  assert 4 < n_flipped < 28
  with pytest.raises(ValueError, match="uint8"):
    data.augment_jax(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))


def test_randaugment_and_resize():
  x = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  a = data.randaugment_np(x, np.random.default_rng(0))
  b = data.randaugment_np(x, np.random.default_rng(0))
  assert a.shape == x.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, x)
  y = data.resize_jax(jnp.asarray(x, jnp.float32), 224, "nearest")
  assert y.shape == (6, 224, 224, 3)
  np.testing.assert_array_equal(np.asarray(y)[:, ::7, ::7], x)
  with pytest.raises(ValueError, match="augment name"):
    data.Augment("autoaugment")


# ------------------------------------------------------------------ iterator
@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_every_example_once_per_epoch(sharding, backend):
  src = _source(100)
  aug = data.Augment("none" if backend == "numpy" else "cifar", backend=backend,
                     mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))
  with data.TrainIterator(src, global_batch_size=16, seed=3, augment=aug,
                          sharding=sharding) as it:
    assert it.steps_per_epoch == 6 and it.examples_dropped_per_epoch == 4
    epochs = []
    for _ in range(2):
      labels, ids = [], []
      for _ in range(it.steps_per_epoch):
        b = next(it)
        assert b["image"].sharding == sharding
        assert b["label"].sharding.spec == P("data")
        assert b["image"].shape == (16, 8, 8, 3) and b["label"].dtype == jnp.int32
        labels.append(np.asarray(b["label"]))
        ids.append(it.local_indices(it.get_state()["epoch"] - (
            it.get_state()["position"] == 0), (it.get_state()["position"] - 1)
            % it.steps_per_epoch))
        if backend == "numpy":  # "none" keeps the id pixel intact.
          np.testing.assert_array_equal(
              np.asarray(b["image"])[:, 0, 0, 0].round().astype(int), ids[-1])
      ids = np.concatenate(ids)
      assert len(np.unique(ids)) == 96  # no repeats within the epoch
      np.testing.assert_array_equal(np.concatenate(labels), ids % 10)
      epochs.append(ids)
  assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_state_restore_reproduces_batches(sharding, backend):
  src = _source(70)
  kw = dict(global_batch_size=16, seed=7, sharding=sharding,
            augment=data.Augment("cifar", backend=backend))
  with data.TrainIterator(src, prefetch=3, **kw) as it:
    for _ in range(3):
      next(it)
    state = it.get_state()
    assert state == {"epoch": 0, "position": 3}
    expected = [np.asarray(next(it)["image"]) for _ in range(4)]  # crosses epoch
    assert it.get_state() == {"epoch": 1, "position": 3}
  for prefetch in (0, 2):
    with data.TrainIterator(src, prefetch=prefetch, **kw) as it2:
      it2.set_state(state)
      got = [np.asarray(next(it2)["image"]) for _ in range(4)]
    for e, g in zip(expected, got):
      np.testing.assert_array_equal(e, g)
  # Different seed -> different batches; set_state mid-run discards prefetch.
  with data.TrainIterator(src, prefetch=2, **dict(kw, seed=8)) as it3:
    next(it3)
    assert not np.array_equal(np.asarray(next(it3)["image"]), expected[0])
    it3.set_state({"epoch": 0, "position": 3})
  with pytest.raises(ValueError, match="position"):
    data.TrainIterator(src, **kw).set_state({"epoch": 0, "position": 9})


def test_host_augment_deterministic_from_seed_epoch_step(sharding):
  src = _source(64)
  it = data.TrainIterator(src, global_batch_size=16, seed=1, prefetch=0,
                          augment=data.Augment("cifar", backend="numpy"),
                          sharding=sharding)
  a = it.local_batch(2, 1)["image"]
  np.testing.assert_array_equal(a, it.local_batch(2, 1)["image"])
  assert not np.array_equal(a, it.local_batch(2, 2)["image"])
  raw = src[it.local_indices(2, 1)]["image"]
  assert not np.array_equal(a, raw)  # augmentation did something
  # JAX backend (default): the device half depends on (seed, epoch, step) only.
  aug = data.Augment("cifar")
  assert aug.backend == "jax"
  x = jax.device_put(raw, sharding)
  d1 = np.asarray(aug.device(x, 1, 2, 1, sharding=sharding))
  np.testing.assert_array_equal(d1, np.asarray(aug.device(x, 1, 2, 1, sharding=sharding)))
  assert not np.array_equal(d1, np.asarray(aug.device(x, 1, 2, 2, sharding=sharding)))
  assert not np.array_equal(d1, np.asarray(aug.device(x, 1, 3, 1, sharding=sharding)))


def test_process_slices_partition_global_batch(sharding):
  src = _source(100)
  kw = dict(global_batch_size=16, seed=2, augment="none", sharding=sharding)
  whole = data.TrainIterator(src, process_index=0, process_count=1, **kw)
  parts = [data.TrainIterator(src, process_index=p, process_count=4, **kw)
           for p in range(4)]
  for step in range(whole.steps_per_epoch):
    np.testing.assert_array_equal(
        np.concatenate([p.local_indices(1, step) for p in parts]),
        whole.local_indices(1, step))
  assert parts[0].local_batch(0, 0)["image"].shape == (4, 8, 8, 3)


def test_bad_batch_sizes(sharding):
  src = _source(100)
  with pytest.raises(ValueError, match=r"global_batch_size`=12 .* devices .*\(8\)"):
    data.TrainIterator(src, global_batch_size=12, seed=0, augment="cifar",
                       sharding=sharding)
  with pytest.raises(ValueError, match=r"=8 .*process count \(3\)"):
    data.TrainIterator(src, global_batch_size=8, seed=0, augment="cifar",
                       sharding=sharding, process_index=0, process_count=3)
  with pytest.raises(ValueError, match="larger than the dataset"):
    data.TrainIterator(src, global_batch_size=104, seed=0, augment="cifar",
                       sharding=sharding)
  with pytest.raises(ValueError, match="augment"):
    data.TrainIterator(src, global_batch_size=8, seed=0, augment=42,
                       sharding=sharding)


class _Broken(data.ArraySource):

  def __getitem__(self, indices):
    if self.fail:
      raise RuntimeError("disk on fire")
    return super().__getitem__(indices)


def test_thread_exception_reraised_and_clean_close(sharding):
  src = _source(64)
  broken = _Broken(src.images, src.labels, num_classes=10)
  broken.fail = True
  it = data.TrainIterator(broken, global_batch_size=8, seed=0, augment="cifar",
                          sharding=sharding, prefetch=2)
  with pytest.raises(RuntimeError, match="disk on fire"):
    next(it)
  it.close()
  before = threading.active_count()
  it2 = data.TrainIterator(src, global_batch_size=8, seed=0, augment="cifar",
                           sharding=sharding, prefetch=2)
  next(it2)
  assert threading.active_count() == before + 1
  it2.close()
  assert threading.active_count() == before
  with pytest.raises(RuntimeError, match="closed"):
    next(it2)


def test_resize_train_and_eval(sharding):
  src = _source(16, hw=8)
  aug = data.Augment("cifar", image_size=24, resize_method="nearest",
                     padding=2)
  with data.TrainIterator(src, global_batch_size=8, seed=0, augment=aug,
                          sharding=sharding) as it:
    assert next(it)["image"].shape == (8, 24, 24, 3)
  b = next(data.eval_batches(src, batch_size=8, sharding=sharding,
                             normalize=data.eval_transform(image_size=24)))
  assert b["image"].shape == (8, 24, 24, 3) and b["image"].sharding == sharding


# ------------------------------------------------------------------ eval
def test_eval_batches_padding_and_mask(sharding):
  src = _source(37)
  batches = list(data.eval_batches(src, batch_size=16, sharding=sharding,
                                   normalize=data.augment_from_config(
                                       {"augment": "cifar"}, train=False)))
  assert len(batches) == 3
  masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
  np.testing.assert_array_equal(masks, np.arange(48) < 37)
  labels = np.concatenate([np.asarray(b["label"]) for b in batches])
  np.testing.assert_array_equal(labels[:37], np.arange(37) % 10)
  images = np.concatenate([np.asarray(b["image"]) for b in batches])
  np.testing.assert_allclose(images[:37], data.normalize_np(src.images),
                             rtol=1e-5, atol=1e-5)  # in order, no augmentation
  assert batches[-1]["mask"].dtype == jnp.bool_
  assert batches[0]["image"].sharding == sharding
  with pytest.raises(ValueError, match="devices"):
    next(data.eval_batches(src, batch_size=10, sharding=sharding,
                           normalize=(data.CIFAR_MEAN, data.CIFAR_STD)))


# ------------------------------------------------------------- 224-px kinds
@pytest.mark.parametrize("kind,backend", [("imagenet", "jax"),
                                          ("imagenet", "numpy"),
                                          ("deit", "numpy")])
def test_crop_kinds_through_iterator(sharding, kind, backend):
  src = _source(24, hw=12)
  aug = data.Augment(kind, image_size=8, backend=backend,
                     color_jitter=(0.4, 0, 0) if backend == "jax" else 0.0)
  assert aug.backend == backend
  chex.clear_trace_counter()
  aug._device_fn = chex.assert_max_traces(aug._device_fn, n=1)  # jitted once
  with data.TrainIterator(src, global_batch_size=8, seed=0, augment=aug,
                          sharding=sharding, prefetch=0) as it:
    first = [next(it)["image"] for _ in range(3)]
  assert first[0].shape == (8, 8, 8, 3) and first[0].sharding == sharding
  assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))
  # The device half: sharded == unsharded, a function of (seed, epoch, step).
  host = it.local_batch(0, 2)["image"]
  single = data.Augment(kind, image_size=8, backend=backend,
                        color_jitter=aug.color_jitter)
  np.testing.assert_allclose(
      np.asarray(first[2]), np.asarray(single.device(host, 0, 0, 2)),
      atol=1e-5)


def test_crop_kind_host_half_is_crop_then_randaugment():
  x = np.random.default_rng(0).integers(0, 256, (4, 12, 10, 3), np.uint8)
  mean = (0.485, 0.456, 0.406)
  got = data.Augment("deit", image_size=8, mean=mean).host(
      x, np.random.default_rng(3))
  rng = np.random.default_rng(3)
  want = data.random_resized_crop_np(x, rng, size=8, interpolation="bicubic")
  want = data.randaugment_np(want, rng, policy="rand-m9-mstd0.5-inc1",
                             fill=(124, 116, 104), interpolation="bicubic")
  np.testing.assert_array_equal(got, want)
  got = data.Augment("imagenet", image_size=8, backend="numpy").host(
      x, np.random.default_rng(3))
  np.testing.assert_array_equal(got, data.random_resized_crop_np(
      x, np.random.default_rng(3), size=8))


def test_imagenet_whole_image_crop_is_normalised_image_or_its_mirror():
  # scale = ratio = 1 on square images: the box is the whole image, resized
  # to its own size (identity), then flipped with p = 0.5.
  x = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), np.uint8)
  aug = data.Augment("imagenet", image_size=8, crop_scale=(1, 1),
                     crop_ratio=(1, 1))
  out = np.asarray(aug.device(x, 0, 0, 0))
  norm = data.normalize_np(x)
  flipped = [np.allclose(o, n[:, ::-1], atol=1e-4) for o, n in zip(out, norm)]
  same = [np.allclose(o, n, atol=1e-4) for o, n in zip(out, norm)]
  assert all(f or s for f, s in zip(flipped, same))
  assert 2 < sum(flipped) < 14


def test_crop_kinds_from_config_and_eval(sharding):
  cfg = {"augment": "deit", "image_size": 8, "mean": (0.5,) * 3,
         "std": (0.25,) * 3}
  aug = data.augment_from_config(cfg, train=True)
  assert (aug.backend, aug.resize_method, aug.crop_pct, aug.erasing_prob) == (
      "numpy", "bicubic", 0.875, 0.25)
  ev = data.augment_from_config(cfg, train=False)
  assert (ev.name, ev.crop_pct, ev.image_size) == ("none", 0.875, 8)
  src = _source(8, hw=12)
  b = next(data.eval_batches(src, batch_size=8, sharding=sharding,
                             normalize=aug))  # a train augment: its eval version
  want = (data.center_crop_jax(src.images, size=8, interpolation="bicubic")
          / 255.0 - 0.5) / 0.25
  np.testing.assert_allclose(np.asarray(b["image"]), np.asarray(want), atol=1e-5)
  imnet = data.augment_from_config(
      dict(cfg, augment="imagenet", crop_pct=1.0, resize_method=None,
           color_jitter=(0.4, 0.4, 0.4, 0.1)), train=True)
  assert (imnet.backend, imnet.resize_method, imnet.crop_pct,
          imnet.erasing_prob, imnet.color_jitter) == (
              "jax", "bilinear", 1.0, 0.0, (0.4, 0.4, 0.4, 0.1))
  assert data.augment_from_config(
      dict(cfg, augment="imagenet", augment_backend="numpy"),
      train=True).backend == "numpy"
  for key, bad in [("image_size", 0), ("crop_pct", 1.5), ("color_jitter", (1, 2)),
                   ("randaugment", "rand-x9"), ("resize_method", "nearest"),
                   ("crop_scale", (0.5, 0.1)), ("erasing_mode", "gauss"),
                   ("erasing_prob", 2.0), ("augment_backend", "torch")]:
    with pytest.raises(ValueError, match=key if key != "randaugment" else "rand"):
      data.augment_from_config(dict(cfg, **{key: bad}), train=True)
