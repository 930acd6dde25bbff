"""The loop's evaluation schedule and the reported median (no training)."""

import numpy as np
import pytest

from automix_jax.train import loop


def schedule(num_epochs, every, last):
  return [e for e in range(1, num_epochs + 1)
          if loop.eval_due(e, num_epochs=num_epochs, every=every, last=last)]


@pytest.mark.parametrize("num_epochs, every, last, want", [
    (20, 5, 3, [5, 10, 15, 18, 19, 20]),
    (20, 1, 3, list(range(1, 21))),          # every epoch, as before
    (10, 4, 1, [4, 8, 10]),                  # the last epoch always
    (10, 4, 2, [4, 8, 9, 10]),
    (15, 5, 1, [5, 10, 15]),                 # last epoch on the k-grid
    (3, 5, 10, [1, 2, 3]),                   # window longer than the run
    (800, 10, 80, list(range(10, 721, 10)) + list(range(721, 801))),
])
def test_every_k_epochs_and_every_epoch_of_the_report_window(
    num_epochs, every, last, want):
  assert schedule(num_epochs, every, last) == want


def test_summary_median_is_over_the_last_report_window_epochs():
  """With every=5 and report_last=3 the median is over epochs 18, 19, 20 (each
  evaluated), not over the last three k-grid evaluations (10, 15, 20)."""
  rng = np.random.default_rng(0)
  top1 = {e: float(v) for e, v in zip(range(1, 21), rng.uniform(0, 100, 20))}
  history = [{"epoch": e, "step": 10 * e,
              "variants": {"ema_one": {"top1": top1[e], "top5": 100.0,
                                       "ece": 0.0}}}
             for e in schedule(20, 5, 3)]
  s = loop.summarize(history, reported_variant="ema_one", report_last=3)
  assert s["reported_epochs"] == [18, 19, 20]
  assert s["reported_top1"] == pytest.approx(
      np.median([top1[18], top1[19], top1[20]]))
  # The sparse part of the schedule would have given another number.
  assert s["reported_top1"] != pytest.approx(
      np.median([top1[10], top1[15], top1[20]]))
