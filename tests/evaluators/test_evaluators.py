"""Tests for automix_jax/evaluators.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automix_jax import evaluators as ev


# ----------------------------------------------------------------- top-k ----

def test_topk_correct_with_padding_mask():
  logits = np.array([
      [0., 1., 5., 2., 3., 4.],   # label 2 is the max          -> top1, top5
      [6., 1., 5., 2., 3., 4.],   # label 5 is 3rd highest      -> top5 only
      [6., 1., 5., 2., 3., 4.],   # label 1 is the lowest of 6  -> neither
      [0., 9., 0., 0., 0., 0.],   # padding: would be correct   -> ignored
  ], np.float32)
  labels = np.array([2, 5, 1, 1], np.int32)
  mask = np.array([True, True, True, False])
  out = jax.jit(ev.topk_correct, static_argnames="ks")(
      logits, labels, mask, ks=(1, 3, 5, 10))
  got = {k: int(v) for k, v in out.items()}
  # k=10 > K=6 counts every valid example.
  assert got == {"top1": 1, "top3": 2, "top5": 2, "top10": 3, "count": 3}
  no_mask = ev.topk_correct(logits, labels)
  assert int(no_mask["top1"]) == 2 and int(no_mask["count"]) == 4


def test_topk_ties_follow_argmax():
  out = ev.topk_correct(np.array([[1., 1., 0.]]), np.array([1]), ks=(1, 2))
  assert int(out["top1"]) == 0 and int(out["top2"]) == 1


def test_accumulate_and_accuracies():
  a = {"top1": jnp.int32(3), "top5": jnp.int32(4), "count": jnp.int32(4)}
  b = {"top1": jnp.int32(1), "top5": jnp.int32(4), "count": jnp.int32(6)}
  tot = ev.accumulate(ev.accumulate(None, a), b)
  assert ev.accuracies(tot) == {"top1": 40.0, "top5": 80.0}
  with pytest.raises(ValueError, match="update"):
    ev.accumulate(tot, {"top1": 1})
  with pytest.raises(ValueError, match="count"):
    ev.accuracies({"top1": 1, "count": 0})


def test_topk_bad_inputs():
  with pytest.raises(ValueError, match="logits"):
    ev.topk_correct(np.zeros((3,)), np.zeros((3,), np.int32))
  with pytest.raises(ValueError, match="labels"):
    ev.topk_correct(np.zeros((3, 4)), np.zeros((3,), np.float32))
  with pytest.raises(ValueError, match="labels"):
    ev.topk_correct(np.zeros((3, 4)), np.zeros((2,), np.int32))
  with pytest.raises(ValueError, match="mask"):
    ev.topk_correct(np.zeros((3, 4)), np.zeros((3,), np.int32),
                    np.ones((4,), bool))
  with pytest.raises(ValueError, match="ks"):
    ev.topk_correct(np.zeros((3, 4)), np.zeros((3,), np.int32), ks=(0,))


# ------------------------------------------------------------------- ECE ----

def test_ece_hand_computed():
  # (confidence, correct) -> bin (m/10, (m+1)/10]:
  #   0.95 ok, 0.92 wrong -> bin 9: n=2, acc 0.5, conf 0.935, gap 0.435
  #   0.65 ok, 0.62 ok    -> bin 6: n=2, acc 1.0, conf 0.635, gap 0.365
  #   0.35 wrong          -> bin 3: n=1, acc 0.0, conf 0.35,  gap 0.35
  # ECE = (2*0.435 + 2*0.365 + 1*0.35) / 5 = 1.95 / 5 = 0.39
  probs = np.array([[0.95, 0.03, 0.02],
                    [0.92, 0.05, 0.03],
                    [0.20, 0.65, 0.15],
                    [0.62, 0.20, 0.18],
                    [0.35, 0.33, 0.32]])
  labels = np.array([0, 1, 1, 0, 2])
  assert ev.expected_calibration_error(probs, labels) == pytest.approx(
      0.39, abs=1e-12)
  # One-hot labels are accepted like the reference does.
  assert ev.expected_calibration_error(probs, np.eye(3)[labels]) == \
      pytest.approx(0.39, abs=1e-12)
  # confidences + correct form.
  assert ev.expected_calibration_error(
      confidences=[0.95, 0.92, 0.65, 0.62, 0.35],
      correct=[True, False, True, True, False]) == pytest.approx(0.39,
                                                                 abs=1e-12)
  # Streaming (float32) version agrees.
  bins = ev.calibration_bins(probs, labels)
  assert ev.ece_from_bins(bins) == pytest.approx(0.39, abs=1e-6)
  np.testing.assert_array_equal(bins["ece_count"],
                                [0, 0, 0, 1, 0, 0, 2, 0, 0, 2])


def test_ece_perfectly_calibrated_is_zero():
  # Four predictions at 0.75 with 3 correct, one at 1.0 correct.
  conf = [0.75, 0.75, 0.75, 0.75, 1.0]
  ok = [True, True, False, True, True]
  assert ev.expected_calibration_error(confidences=conf, correct=ok) == \
      pytest.approx(0.0, abs=1e-12)


def test_ece_edges():
  # 0.5 is in bin (0.4, 0.5] alone (argmax picks class 0 -> wrong):
  # gap 0.5; 0.55 correct in (0.5, 0.6]: gap 0.45. ECE = (0.5 + 0.45) / 2.
  # (Were 0.5 binned with 0.55 it would be |0.5 - 0.525| = 0.025.)
  probs = np.array([[0.5, 0.5], [0.55, 0.45]])
  labels = np.array([1, 0])
  assert ev.expected_calibration_error(probs, labels) == pytest.approx(0.475)
  assert ev.ece_from_bins(ev.calibration_bins(probs, labels)) == \
      pytest.approx(0.475, abs=1e-6)
  # A confidence of exactly 0 is in no bin and not counted in N:
  # only 0.8 (correct) remains -> |1 - 0.8| = 0.2 (not 0.1).
  assert ev.expected_calibration_error(
      confidences=[0.0, 0.8], correct=[True, True]) == pytest.approx(0.2)
  # Exactly 1.0 goes to the last bin.
  bins = ev.calibration_bins(np.array([[1.0, 0.0]]), np.array([0]))
  assert int(bins["ece_count"][-1]) == 1


def test_float32_binning_matches_float64_reference():
  # f32(0.6)=0.6000000238 > 0.6 -> bin 6; f32(0.7)=0.6999999881 -> bin 6;
  # f32(0.8)=0.8000000119 -> bin 8; f32(0.9)=0.8999999762 -> bin 8.
  c = np.array([0.6, 0.7, 0.8, 0.9], np.float32)
  probs = np.stack([c, 1 - c], axis=1)
  bins = ev.calibration_bins(probs, np.zeros(4, np.int32))
  np.testing.assert_array_equal(bins["ece_count"],
                                [0, 0, 0, 0, 0, 0, 2, 0, 2, 0])


def test_streaming_ece_matches_host_with_padding():
  rng = np.random.default_rng(0)
  n, k, bs = 203, 10, 50
  logits = rng.normal(size=(n, k)).astype(np.float32) * 3
  labels = rng.integers(0, k, size=n).astype(np.int32)
  probs = np.asarray(jax.nn.softmax(logits))
  ref = ev.expected_calibration_error(probs, labels)
  fn = jax.jit(functools.partial(ev.calibration_bins, num_bins=10))
  tot = None
  for s in range(0, n, bs):
    p, y = probs[s:s + bs], labels[s:s + bs]
    mask = np.arange(bs) < len(p)
    pad = bs - len(p)
    # Garbage in the padded rows must not matter.
    p = np.concatenate([p, np.full((pad, k), 1.0 / k, np.float32)])
    y = np.concatenate([y, np.zeros(pad, np.int32)])
    tot = ev.accumulate(tot, fn(p, y, mask))
  assert int(tot["ece_count"].sum()) == n
  assert ev.ece_from_bins(tot) == pytest.approx(ref, abs=1e-6)
  assert ref > 0.05  # overconfident random logits: a non-trivial value


def test_ece_bad_inputs():
  with pytest.raises(ValueError, match="num_bins"):
    ev.expected_calibration_error(np.eye(2), np.array([0, 1]), num_bins=0)
  with pytest.raises(ValueError, match="probs"):
    ev.expected_calibration_error(np.eye(2), None)
  with pytest.raises(ValueError, match="probs"):
    ev.expected_calibration_error(np.eye(2), np.array([0, 1]),
                                  confidences=[1.0, 1.0])
  with pytest.raises(ValueError, match="correct"):
    ev.expected_calibration_error(confidences=[0.5], correct=[True, False])
  with pytest.raises(ValueError, match="labels"):
    ev.expected_calibration_error(np.eye(2), np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match="probs"):
    ev.calibration_bins(np.ones(3), np.zeros(3, np.int32))


# ------------------------------------------------------------------ FGSM ----

def _linear_setup():
  """2-class linear model on 2x2x3 images; d = w1 - w0 per pixel."""
  d = np.array([1., -1., 0., 2., -3., 1., -1., 1., 1., -2., 0., 1.],
               np.float32)
  w = np.stack([np.zeros_like(d), d], axis=1)          # [12, 2]
  return w, d


def test_fgsm_images_linear_model_known_sign_and_clamp():
  w, d = _linear_setup()
  x = np.full((2, 2, 2, 3), 0.5, np.float32)
  x[0, 0, 0, 0] = 0.99   # d>0, label 0: pushed up   -> clamped to 1
  x[0, 0, 0, 1] = 0.01   # d<0, label 0: pushed down -> clamped to 0
  labels = np.array([0, 1], np.int32)

  def loss(images, y):
    logits = images.reshape(images.shape[0], -1) @ w
    logp = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=1))

  eps = 8 / 255
  adv = jax.jit(lambda x, y: ev.fgsm_images(jax.grad(loss), x, y, eps=eps))(
      x, labels)
  # CE gradient w.r.t. x for label 0 is p1 * d (sign(d)); label 1: -p0 * d.
  sign = np.stack([np.sign(d), -np.sign(d)]).reshape(2, 2, 2, 3)
  expected = np.clip(x + eps * sign, 0, 1)
  np.testing.assert_allclose(adv, expected, rtol=0, atol=1e-7)
  assert adv[0, 0, 0, 0] == 1.0 and adv[0, 0, 0, 1] == 0.0
  # Zero-gradient pixels are untouched.
  assert adv[0, 0, 0, 2] == x[0, 0, 0, 2] and adv[1, 1, 1, 1] == x[1, 1, 1, 1]
  assert adv.min() >= 0 and adv.max() <= 1


def test_make_fgsm_eval_linear_model():
  w, d = _linear_setup()
  mean = np.array([0.4, 0.5, 0.6], np.float32)
  std = np.array([0.2, 0.25, 0.5], np.float32)
  eps = 0.05
  rng = np.random.default_rng(1)
  x01 = rng.uniform(0, 1, size=(6, 2, 2, 3)).astype(np.float32)
  xn = (x01 - mean) / std

  def apply_logits(variables, images):
    return images.reshape(images.shape[0], -1) @ variables["w"]

  # Labels = clean predictions, so clean top-1 is 100%.
  clean = np.argmax(xn.reshape(6, -1) @ w, axis=1).astype(np.int32)
  mask = np.array([True] * 5 + [False])
  fn = jax.jit(ev.make_fgsm_eval(apply_logits, mean, std, eps, ks=(1,)))
  out = {k: int(v) for k, v in fn({"w": w}, xn, clean, mask).items()}

  # Expected: pixel-space step along sign(d) (label 0) or -sign(d) (label 1);
  # the positive 1/std factor does not change the sign.
  sign = np.where(clean[:, None] == 0, np.sign(d), -np.sign(d))
  adv01 = np.clip(x01 + eps * sign.reshape(6, 2, 2, 3), 0, 1)
  adv_logits = ((adv01 - mean) / std).reshape(6, -1) @ w
  expected = int(((np.argmax(adv_logits, 1) == clean) & mask).sum())
  assert out == {"top1": expected, "count": 5}
  assert expected < 5  # the attack did flip some predictions


def test_fgsm_bad_inputs():
  with pytest.raises(ValueError, match="eps"):
    ev.fgsm_images(lambda x, y: x, np.zeros((1, 2, 2, 3)), None, eps=-1.0)
  with pytest.raises(ValueError, match="images_01"):
    ev.fgsm_images(lambda x, y: x, np.zeros((2, 2, 3)), None)
  with pytest.raises(ValueError, match="std"):
    ev.make_fgsm_eval(lambda v, x: x, (0.5, 0.5, 0.5), (0.2, 0.0, 0.2))
  with pytest.raises(ValueError, match="std"):
    ev.make_fgsm_eval(lambda v, x: x, (0.5, 0.5, 0.5), (0.2, 0.2))
  fn = ev.make_fgsm_eval(lambda v, x: x.reshape(x.shape[0], -1), (0.5,) * 3,
                         (0.2,) * 3)
  with pytest.raises(ValueError, match="images_normalised"):
    fn(None, np.zeros((2, 4, 4, 1)), np.zeros(2, np.int32))


# ------------------------------------------------------------- reporting ----

def test_median_of_last():
  assert ev.median_of_last(range(1, 13)) == 7.5      # median of 3..12
  assert ev.median_of_last([3.0, 1.0, 2.0]) == 2.0   # fewer than n: all
  assert ev.median_of_last([5, 1, 9, 4], n=3) == 4.0
  assert ev.median_of_last([5, 1, 9, 4], n=1) == 4.0
  assert ev.median_of_last(np.array([80.0, 81.0], np.float32)) == 80.5
  with pytest.raises(ValueError, match="values"):
    ev.median_of_last([])
  with pytest.raises(ValueError, match="n"):
    ev.median_of_last([1.0], n=0)
