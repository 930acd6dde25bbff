"""Evaluation metric pieces: top-k counts, calibration (ECE), FGSM, reporting.

Pure JAX / numpy. The per-batch functions (`topk_correct`, `calibration_bins`,
the function returned by `make_fgsm_eval`) are jit-friendly, take a padding
`mask` `[B]` bool (the eval pipeline pads the last batch, see
docs/interfaces.md) and return dicts of *sums*, so batches combine with
`accumulate` and turn into accuracies with `accuracies` only at the end
(exact for any batch size and padding, the `(sum, normalizer)` pattern of
scenic).

Protocols follow the AdAutoMix/OpenMixup code (github.com/JinXins/Adversarial-AutoMixup,
github.com/Westlake-AI/openmixup):

* Top-k accuracy in percent, as in the papers' tables.
* ECE: 10 equal-width bins over the max softmax probability, bin m covering
  `(m/10, (m+1)/10]`, `sum_m |B_m| * |acc_m - conf_m| / sum_m |B_m|`
  (OpenMixup `ece_score`). Returned as a fraction in [0, 1].
* FGSM: one step `x + eps * sign(grad_x CE)` with eps = 8/255 in *pixel*
  space [0, 1] (before normalisation), clamped to [0, 1]
  (`fgsm_nondist_forward_collect`).
* Headline number: the median top-1 over the last 10 evaluated epochs
  (`median_of_last`).

Typical use in an eval loop:

  totals = None
  for batch in eval_batches(...):
    logits = predict(variables, batch["image"])               # jitted
    c = topk_correct(logits, batch["label"], batch["mask"])
    c.update(calibration_bins(jax.nn.softmax(logits), batch["label"],
                              batch["mask"]))
    totals = accumulate(totals, c)
  acc = accuracies(totals)             # {"top1": 95.1, "top5": 99.8}
  ece = ece_from_bins(totals)          # 0.031
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "topk_correct", "accumulate", "accuracies", "calibration_bins",
    "ece_from_bins", "expected_calibration_error", "fgsm_images",
    "make_fgsm_eval", "median_of_last",
]

Array = Any


# --------------------------------------------------------------------------
# Top-k accuracy.
# --------------------------------------------------------------------------

def _check_ks(ks) -> tuple[int, ...]:
  ks = tuple(ks) if isinstance(ks, (tuple, list)) else (ks,)
  if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer))
                   or k < 1 for k in ks):
    raise ValueError(f"ks: expected a tuple of ints >= 1, got {ks!r}.")
  return tuple(int(k) for k in ks)


def _check_mask(mask, batch: int):
  if mask is None:
    return jnp.ones((batch,), jnp.bool_)
  if tuple(np.shape(mask)) != (batch,):
    raise ValueError(
        f"mask: expected shape [B]=({batch},), got {tuple(np.shape(mask))}.")
  return jnp.asarray(mask).astype(jnp.bool_)


def _check_int_labels(labels, batch: int, name: str = "labels"):
  if tuple(np.shape(labels)) != (batch,):
    raise ValueError(f"{name}: expected int shape [B]=({batch},), got "
                     f"{tuple(np.shape(labels))}.")
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(
        f"{name}: expected an integer dtype, got {jnp.result_type(labels)}.")
  return jnp.asarray(labels).astype(jnp.int32)


def topk_correct(logits: Array, labels: Array, mask: Array | None = None,
                 ks: Sequence[int] = (1, 5)) -> dict[str, Array]:
  """Number of examples whose label is among the k highest logits.

  Ties are broken towards the lower class index (as `jnp.argmax`), so `top1`
  agrees with `argmax(logits) == labels`. A k larger than the number of
  classes K counts every valid example as correct (like k = K).

  Args:
    logits: `[B, K]` float scores (logits or probabilities).
    labels: `[B]` int class indices in `[0, K)` (padded entries may hold
      anything: they are masked out).
    mask: `[B]` bool, True for real examples, False for padding; None = all.
    ks: the k values.

  Returns:
    `{"top{k}": int32 [] for k in ks, "count": int32 []}` where `count` is
    the number of valid examples.
  """
  ks = _check_ks(ks)
  if np.ndim(logits) != 2:
    raise ValueError(
        f"logits: expected shape [B, K], got {tuple(np.shape(logits))}.")
  batch, num_classes = np.shape(logits)
  labels = _check_int_labels(labels, batch)
  mask = _check_mask(mask, batch)
  kmax = min(max(ks), num_classes)
  _, top = jax.lax.top_k(jnp.asarray(logits), kmax)          # [B, kmax]
  hit = jnp.cumsum(top == labels[:, None], axis=1) > 0       # hit within k
  out = {}
  for k in ks:
    correct = hit[:, min(k, kmax) - 1] & mask
    out[f"top{k}"] = jnp.sum(correct, dtype=jnp.int32)
  out["count"] = jnp.sum(mask, dtype=jnp.int32)
  return out


def accumulate(totals: Mapping[str, Array] | None,
               update: Mapping[str, Array]) -> dict[str, Array]:
  """Adds a batch's sums to the running totals (`totals=None` starts them).

  Args:
    totals: dict of arrays from earlier batches, or None.
    update: dict with the same keys (e.g. from `topk_correct`,
      `calibration_bins` or a `make_fgsm_eval` function).

  Returns:
    `{key: totals[key] + update[key]}`; stays on device for jax arrays.
  """
  if not isinstance(update, Mapping):
    raise ValueError(f"update: expected a dict, got {type(update).__name__}.")
  if totals is None:
    return dict(update)
  if set(totals) != set(update):
    raise ValueError(f"update: keys {sorted(update)} differ from the totals' "
                     f"keys {sorted(totals)}.")
  return {k: totals[k] + update[k] for k in totals}


def accuracies(totals: Mapping[str, Array]) -> dict[str, float]:
  """Accuracies in percent from accumulated counts.

  Args:
    totals: dict with `"count"` and `"top{k}"` entries (other keys, e.g. the
      calibration bins, are ignored).

  Returns:
    `{"top{k}": 100 * top{k} / count}` as Python floats.
  """
  if "count" not in totals:
    raise ValueError("totals: missing the 'count' entry (from topk_correct).")
  host = jax.device_get(dict(totals))
  count = float(host["count"])
  if count <= 0:
    raise ValueError("totals: 'count' is 0, no valid examples were evaluated.")
  return {k: 100.0 * float(v) / count for k, v in host.items()
          if k.startswith("top") and k[3:].isdigit()}


# --------------------------------------------------------------------------
# Calibration.
# --------------------------------------------------------------------------

def _check_num_bins(num_bins) -> int:
  if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) \
      or num_bins < 1:
    raise ValueError(f"num_bins: expected an int >= 1, got {num_bins!r}.")
  return int(num_bins)


def _float32_edges(num_bins: int) -> np.ndarray:
  """Inner bin edges m/num_bins, m = 1..num_bins-1, rounded *down* to f32.

  For a float32 confidence c and the float64 edge e = m/num_bins of the
  reference, `c > e` (compared in float64) holds iff `c > round_down_f32(e)`
  (compared in float32), so float32 binning matches the float64 reference.
  """
  e64 = np.arange(1, num_bins, dtype=np.float64) / num_bins
  e32 = e64.astype(np.float32)
  too_big = e32.astype(np.float64) > e64
  e32[too_big] = np.nextafter(e32[too_big], np.float32(-np.inf))
  return e32


def calibration_bins(probs: Array, labels: Array, mask: Array | None = None,
                     *, num_bins: int = 10) -> dict[str, Array]:
  """Per-bin sums for the expected calibration error (jit-friendly).

  Confidence = max probability, prediction = its argmax (first on ties).
  Bin m collects confidences in `(m/num_bins, (m+1)/num_bins]`; a confidence
  of exactly 1 goes in the last bin, one of exactly 0 (or outside [0, 1]) in
  none -- it is left out of the ECE's numerator *and* denominator, as in the
  reference `ece_score`. Confidences are binned in float32.

  Args:
    probs: `[B, K]` probabilities (e.g. `jax.nn.softmax(logits)`).
    labels: `[B]` int labels.
    mask: `[B]` bool padding mask; None = all valid.
    num_bins: number of equal-width bins.

  Returns:
    `{"ece_count": int32 [num_bins], "ece_correct": int32 [num_bins],
    "ece_conf_sum": float32 [num_bins]}`; combine with `accumulate` and
    finish with `ece_from_bins`.
  """
  num_bins = _check_num_bins(num_bins)
  if np.ndim(probs) != 2:
    raise ValueError(
        f"probs: expected shape [B, K], got {tuple(np.shape(probs))}.")
  batch = np.shape(probs)[0]
  labels = _check_int_labels(labels, batch)
  mask = _check_mask(mask, batch)
  probs = jnp.asarray(probs, jnp.float32)
  conf = jnp.max(probs, axis=1)
  correct = (jnp.argmax(probs, axis=1) == labels) & mask
  valid = mask & (conf > 0) & (conf <= 1)
  edges = jnp.asarray(_float32_edges(num_bins))
  idx = jnp.sum(conf[:, None] > edges[None, :], axis=1)        # [B] in [0, nb)
  onehot = (idx[:, None] == jnp.arange(num_bins)[None, :]) & valid[:, None]
  return {
      "ece_count": jnp.sum(onehot, axis=0, dtype=jnp.int32),
      "ece_correct": jnp.sum(onehot & correct[:, None], axis=0,
                             dtype=jnp.int32),
      "ece_conf_sum": jnp.sum(jnp.where(onehot, conf[:, None], 0.0), axis=0),
  }


def ece_from_bins(totals: Mapping[str, Array]) -> float:
  """ECE (fraction in [0, 1]) from accumulated `calibration_bins` sums.

  `sum_m |B_m| |acc_m - conf_m| / sum_m |B_m| =
  sum_m |correct_m - conf_sum_m| / sum_m count_m`.
  """
  for k in ("ece_count", "ece_correct", "ece_conf_sum"):
    if k not in totals:
      raise ValueError(f"totals: missing {k!r} (from calibration_bins).")
  host = jax.device_get({k: totals[k] for k in
                         ("ece_count", "ece_correct", "ece_conf_sum")})
  count = np.asarray(host["ece_count"], np.float64)
  if count.sum() <= 0:
    raise ValueError("totals: no example has a confidence in (0, 1].")
  gap = np.abs(np.asarray(host["ece_correct"], np.float64)
               - np.asarray(host["ece_conf_sum"], np.float64))
  return float(gap.sum() / count.sum())


def expected_calibration_error(probs: Array | None = None,
                               labels: Array | None = None, *,
                               confidences: Array | None = None,
                               correct: Array | None = None,
                               mask: Array | None = None,
                               num_bins: int = 10) -> float:
  """Expected calibration error over a whole evaluation set (host, float64).

  Reproduces OpenMixup's `ece_score`: equal-width bins `(m/num_bins,
  (m+1)/num_bins]` over the max-softmax confidence, edges and sums in float64
  (float32 inputs are promoted exactly, as NumPy 1.x did in the reference),
  `ECE = sum_m |B_m| / N' * |acc_m - conf_m|` with `N' = sum_m |B_m|`.
  Edge handling: a confidence of exactly 1 falls in the last bin; a
  confidence of exactly 0 (impossible for a softmax) or outside [0, 1] falls
  in no bin and is excluded from N' as well.

  Call either as `expected_calibration_error(probs, labels)` or as
  `expected_calibration_error(confidences=c, correct=ok)`.

  Args:
    probs: `[N, K]` probabilities.
    labels: `[N]` int labels, or `[N, K]` one-hot/soft labels (argmax taken,
      as the reference does).
    confidences: `[N]` float max probabilities (instead of probs/labels).
    correct: `[N]` bool, prediction == label (with `confidences`).
    mask: `[N]` bool, False entries are ignored; None = all.
    num_bins: number of bins (10 in the papers).

  Returns:
    The ECE as a Python float in [0, 1].
  """
  num_bins = _check_num_bins(num_bins)
  if probs is not None or labels is not None:
    if confidences is not None or correct is not None:
      raise ValueError("probs/labels: pass either (probs, labels) or "
                       "(confidences=, correct=), not both.")
    if probs is None or labels is None:
      raise ValueError("probs/labels: both are required together.")
    p = np.asarray(jax.device_get(probs), np.float64)
    if p.ndim != 2:
      raise ValueError(f"probs: expected shape [N, K], got {p.shape}.")
    y = np.asarray(jax.device_get(labels))
    if y.ndim == 2:
      y = np.argmax(y, axis=1)
    if y.shape != (p.shape[0],) or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"labels: expected int [N]=({p.shape[0]},) or "
                       f"[N, K], got {y.dtype} {np.shape(labels)}.")
    conf = p.max(axis=1)
    ok = p.argmax(axis=1) == y
  else:
    if confidences is None or correct is None:
      raise ValueError("confidences/correct: pass probs and labels, or both "
                       "confidences= and correct=.")
    conf = np.asarray(jax.device_get(confidences), np.float64)
    ok = np.asarray(jax.device_get(correct))
    if conf.ndim != 1:
      raise ValueError(f"confidences: expected shape [N], got {conf.shape}.")
    if ok.shape != conf.shape:
      raise ValueError(
          f"correct: expected shape {conf.shape}, got {ok.shape}.")
    ok = ok.astype(bool)
  if mask is not None:
    m = np.asarray(jax.device_get(mask))
    if m.shape != conf.shape:
      raise ValueError(f"mask: expected shape {conf.shape}, got {m.shape}.")
    conf, ok = conf[m.astype(bool)], ok[m.astype(bool)]
  edges = np.arange(num_bins + 1, dtype=np.float64) / num_bins
  total_gap, total_count = 0.0, 0
  for m in range(num_bins):
    inside = (conf > edges[m]) & (conf <= edges[m + 1])
    n = int(inside.sum())
    if n:
      acc = ok[inside].mean()
      avg_conf = conf[inside].mean()
      total_gap += n * abs(acc - avg_conf)
      total_count += n
  if total_count == 0:
    raise ValueError("probs/confidences: no example has a confidence in "
                     "(0, 1].")
  return float(total_gap / total_count)


# --------------------------------------------------------------------------
# FGSM.
# --------------------------------------------------------------------------

def _check_eps(eps) -> float:
  if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) \
      or not np.isfinite(eps) or eps < 0:
    raise ValueError(f"eps: expected a finite float >= 0, got {eps!r}.")
  return float(eps)


def fgsm_images(grad_fn: Callable[[Array, Array], Array], images_01: Array,
                labels: Array, eps: float = 8 / 255) -> Array:
  """One-step FGSM in pixel space: `clip(x + eps * sign(grad_fn(x, y)), 0, 1)`.

  Goodfellow et al., "Explaining and Harnessing Adversarial Examples", 2015;
  eps = 8/255 and clamping to [0, 1] as in the AdAutoMix/OpenMixup code.
  Pixels with a zero gradient are left unchanged (sign(0) = 0).

  Args:
    grad_fn: `(images_01 [B, H, W, C], labels) -> [B, H, W, C]`, the gradient
      of the loss to *increase* (e.g. cross-entropy) w.r.t. the images.
    images_01: `[B, H, W, C]` float images in [0, 1] (un-normalised).
    labels: `[B]` labels passed through to `grad_fn`.
    eps: L-infinity step size in [0, 1] pixel units.

  Returns:
    `[B, H, W, C]` adversarial images in [0, 1], same dtype as `images_01`.
  """
  eps = _check_eps(eps)
  if np.ndim(images_01) != 4:
    raise ValueError("images_01: expected shape [B, H, W, C], got "
                     f"{tuple(np.shape(images_01))}.")
  if not jnp.issubdtype(jnp.result_type(images_01), jnp.floating):
    raise ValueError("images_01: expected floats in [0, 1], got dtype "
                     f"{jnp.result_type(images_01)}.")
  images_01 = jnp.asarray(images_01)
  grad = grad_fn(images_01, labels)
  if np.shape(grad) != images_01.shape:
    raise ValueError(f"grad_fn: returned shape {np.shape(grad)}, expected "
                     f"{images_01.shape}.")
  adv = images_01 + eps * jnp.sign(grad).astype(images_01.dtype)
  return jnp.clip(adv, 0.0, 1.0).astype(images_01.dtype)


def make_fgsm_eval(apply_logits_fn: Callable[[Any, Array], Array],
                   mean: Sequence[float], std: Sequence[float],
                   eps: float = 8 / 255, *, ks: Sequence[int] = (1, 5)
                   ) -> Callable[..., dict[str, Array]]:
  """Builds a jittable FGSM evaluation on normalised eval batches.

  The returned `fn(variables, images_normalised, labels, mask=None)`
  un-normalises (`x * std + mean`), takes one FGSM step on the summed
  cross-entropy of the valid examples w.r.t. the [0, 1] pixels (the loss
  scale does not change the gradient's sign, and each example's gradient
  depends only on its own loss when the model is in eval mode), clamps to
  [0, 1], re-normalises (`(x - mean) / std`) and returns `topk_correct` of
  the model on the adversarial batch.

  Args:
    apply_logits_fn: `(variables, images_normalised [B, H, W, C]) -> logits
      [B, K]`, the model in *eval* mode (BatchNorm running averages), e.g.
      `lambda v, x: model.apply(v, x, train=False)["logits"]["one"]`.
    mean: per-channel mean `[C]` used by the data pipeline.
    std: per-channel std `[C]`.
    eps: FGSM step in [0, 1] pixel units (8/255 in the papers).
    ks: top-k values to count.

  Returns:
    `fn(variables, images_normalised [B, H, W, C], labels [B] int,
    mask [B] bool | None) -> {"top{k}": int32 [], "count": int32 []}`.
  """
  if not callable(apply_logits_fn):
    raise ValueError("apply_logits_fn: expected a callable "
                     "(variables, images) -> logits.")
  eps = _check_eps(eps)
  ks = _check_ks(ks)
  mean_np = np.asarray(mean, np.float32).reshape(-1)
  std_np = np.asarray(std, np.float32).reshape(-1)
  if mean_np.size == 0:
    raise ValueError(f"mean: expected per-channel values, got {mean!r}.")
  if std_np.shape != mean_np.shape:
    raise ValueError(f"std: expected {mean_np.size} values like mean, got "
                     f"{std!r}.")
  if np.any(std_np <= 0):
    raise ValueError(f"std: expected positive values, got {std!r}.")

  def fn(variables, images_normalised, labels, mask=None):
    if np.ndim(images_normalised) != 4 or \
        np.shape(images_normalised)[-1] != mean_np.size:
      raise ValueError(
          "images_normalised: expected shape [B, H, W, C] with C = "
          f"{mean_np.size}, got {tuple(np.shape(images_normalised))}.")
    batch = np.shape(images_normalised)[0]
    labels_i = _check_int_labels(labels, batch)
    valid = _check_mask(mask, batch)
    m = jnp.asarray(mean_np)
    s = jnp.asarray(std_np)
    x01 = jnp.asarray(images_normalised, jnp.float32) * s + m

    def loss(x, y):
      logits = apply_logits_fn(variables, (x - m) / s).astype(jnp.float32)
      logp = jax.nn.log_softmax(logits)
      nll = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
      return jnp.sum(jnp.where(valid, nll, 0.0))

    adv01 = fgsm_images(jax.grad(loss), x01, labels_i, eps)
    logits = apply_logits_fn(variables, (adv01 - m) / s)
    return topk_correct(logits, labels_i, valid, ks)

  return fn


# --------------------------------------------------------------------------
# Reporting protocol.
# --------------------------------------------------------------------------

def median_of_last(values: Iterable[float], n: int = 10) -> float:
  """Median of the last `n` values (the papers' "median top-1 of the last 10
  epochs").

  With fewer than `n` values (short runs, evaluating every few epochs) the
  median of *all* of them is returned. For an even count the two middle
  values are averaged (`np.median`), e.g. 10 epochs -> mean of the 5th and
  6th smallest. The exact rule of the authors is not verified
  (see docs/training.md, "Reporting").

  Args:
    values: the per-evaluation metric in chronological order (e.g. top-1 in
      percent of each evaluated epoch).
    n: window size, >= 1.

  Returns:
    The median as a Python float.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n: expected an int >= 1, got {n!r}.")
  vals = np.asarray([float(v) for v in values], np.float64)
  if vals.size == 0:
    raise ValueError("values: expected at least one value, got none.")
  return float(np.median(vals[-int(n):]))
