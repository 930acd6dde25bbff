"""scripts/summarize_runs.py on synthetic summary.json files (no training)."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "summarize_runs", REPO / "scripts" / "summarize_runs.py")
sr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sr)


def write_run(root: pathlib.Path, name: str, ema: list[float] | None,
              online: list[float], *, wall=60.0, ips=100.0, epochs=None,
              metrics=False):
  """A summary.json whose history has the given per-epoch top-1 values."""
  history = []
  for i, o in enumerate(online):
    v = {"online_one": {"top1": o, "top5": 99.0, "ece": 0.1}}
    if ema is not None:
      v["ema_one"] = {"top1": ema[i], "top5": 99.0, "ece": 0.1}
    history.append({"epoch": i + 1, "step": (i + 1) * 10, "variants": v})
  s = {"reported_variant": "ema_one" if ema is not None else "online_one",
       # Deliberately not the 10 % rule: the script must ignore it.
       "reported_top1": -1.0,
       "variants": {}, "history": history, "wall_time_s": wall,
       "train_images_per_s": ips,
       "config": {"num_epochs": epochs or len(online), "batch_size": 50,
                  "model": {"name": "cifar_resnet18", "width": 0.125},
                  "data": {"name": "cifar10_archive", "images_per_class": 10,
                           "subset_seed": 0},
                  "ema": {"enabled": ema is not None, "momentum": 0.9,
                          "end_momentum": 0.99}}}
  d = root / name
  d.mkdir(parents=True)
  (d / "summary.json").write_text(json.dumps(s))
  if metrics:
    lines = [{"step": h["step"], "train/loss": 1.0, "train/lr": 0.1}
             for h in history]
    lines += [{"step": h["step"], "epoch": h["epoch"],
               "eval/online_one/top1": h["variants"]["online_one"]["top1"]}
              for h in history]
    (d / "metrics.jsonl").write_text(
        "\n".join(json.dumps(x) for x in lines) + "\n")
  return d


def flat(n, v):
  return [float(v)] * n


# ---------------------------------------------------------------------------


def test_window_is_ten_percent_at_least_one():
  assert sr.last_fraction_window(1) == 1
  assert sr.last_fraction_window(9) == 1
  assert sr.last_fraction_window(10) == 1
  assert sr.last_fraction_window(19) == 1
  assert sr.last_fraction_window(20) == 2
  assert sr.last_fraction_window(30) == 3
  assert sr.last_fraction_window(800) == 80


def test_median_of_last_ten_percent_from_history():
  # 30 epochs -> last 3: values 50, 10, 40 -> median 40 (not the last, 40,
  # by coincidence: check with an unsorted, non-final median too).
  online = list(range(1, 28)) + [50.0, 10.0, 40.0]
  hist = [{"epoch": i + 1, "variants": {"online_one": {"top1": v}}}
          for i, v in enumerate(online)]
  assert sr.median_last_fraction(hist, "online_one") == 40.0
  online[-1] = 5.0   # last 3: 50, 10, 5 -> 10
  hist[-1]["variants"]["online_one"]["top1"] = 5.0
  assert sr.median_last_fraction(hist, "online_one") == 10.0
  # 20 epochs -> last 2, even count -> mean of the two.
  hist20 = [{"epoch": i + 1, "variants": {"online_one": {"top1": float(i)}}}
            for i in range(20)]
  assert sr.median_last_fraction(hist20, "online_one") == 18.5
  # 5 epochs -> last 1 only.
  assert sr.median_last_fraction(hist20[:5], "online_one") == 4.0
  assert sr.median_last_fraction(hist20, "ema_one") is None


def test_sparse_evaluations_use_the_epochs_in_the_window():
  # Evaluated every 5 epochs up to 40: window = last 4 epochs (37..40) holds
  # only the epoch-40 evaluation.
  hist = [{"epoch": e, "variants": {"online_one": {"top1": float(e)}}}
          for e in range(5, 45, 5)]
  assert sr.median_last_fraction(hist, "online_one") == 40.0


def test_kendall_tau_hand_computed():
  # Orders a>b>c>d vs a>c>b>d: pairs (6): one discordant (b,c) -> (5-1)/6.
  assert sr.kendall_tau([4, 3, 2, 1], [4, 2, 3, 1]) == pytest.approx(4 / 6)
  assert sr.kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
  assert sr.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
  # Tie in xs (tau-b): x = 1,1,2 ; y = 1,2,3. Pairs: (0,1) tied in x,
  # (0,2) C, (1,2) C -> (2 - 0) / sqrt((3 - 1) * 3) = 2 / sqrt(6).
  assert sr.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
  assert math.isnan(sr.kendall_tau([1.0], [2.0]))


def test_table_numbers_ranking_and_fallback(tmp_path):
  root = tmp_path / "runs"
  n = 20  # window = last 2 epochs
  # mixup: EMA last-2 medians 60 and 62 -> mean 61, std sqrt(2); online 50/52.
  write_run(root, "mixup_seed0", flat(18, 0) + [59.0, 61.0],
            flat(18, 0) + [49.0, 51.0], wall=120.0, ips=200.0)
  write_run(root, "mixup_seed1", flat(18, 0) + [62.0, 62.0],
            flat(18, 0) + [52.0, 52.0], wall=180.0, ips=100.0)
  # vanilla: no EMA at all -> ranked by online (70, the best).
  write_run(root, "vanilla_seed0", None, flat(n, 70.0))
  write_run(root, "vanilla_seed1", None, flat(n, 70.0))
  # adautomix: EMA 65, online 40.
  write_run(root, "adautomix_seed0", flat(n, 65.0), flat(n, 40.0))
  write_run(root, "adautomix_seed1", flat(n, 65.0), flat(n, 40.0))
  (root / "notes").mkdir()                      # ignored
  (root / "cutmix_seed0").mkdir()               # unfinished: no summary

  runs = sr.find_runs(str(root))
  assert [r["name"] for r in runs] == [
      "vanilla_seed0", "vanilla_seed1", "mixup_seed0", "mixup_seed1",
      "adautomix_seed0", "adautomix_seed1"]
  methods = {m["method"]: m for m in sr.aggregate(runs)}
  mx = methods["mixup"]
  assert mx["ema"]["mean"] == pytest.approx(61.0)
  assert mx["ema"]["std"] == pytest.approx(math.sqrt(2.0))
  assert (mx["ema"]["min"], mx["ema"]["max"]) == (60.0, 62.0)
  assert mx["online"]["mean"] == pytest.approx(51.0)
  assert mx["wall_time_s"]["mean"] == 150.0
  assert mx["images_per_s"]["mean"] == 150.0
  assert methods["vanilla"]["ema"] is None
  assert methods["vanilla"]["score_source"] == "online"
  assert methods["vanilla"]["score"]["mean"] == 70.0
  ranked = [m["method"] for m in sr.rank(list(methods.values()))]
  assert ranked == ["vanilla", "adautomix", "mixup"]

  out = tmp_path / "res" / "report.md"
  text = sr.summarize(str(root), str(out), paper_table=True,
                      command="bash scripts/reproduce_cpu.sh")
  assert out.read_text() == text
  assert "bash scripts/reproduce_cpu.sh" in text
  row = next(l for l in text.splitlines() if l.startswith("| 3 | MixUp |"))
  assert "61.00 ± 1.41" in row and "60.00–62.00" in row
  assert "51.00 ± 1.41" in row and "| 2.5 |" in row and "| 150 |" in row
  row = next(l for l in text.splitlines() if l.startswith("| 1 | Vanilla |"))
  assert "70.00 ± 0.00 †" in row
  assert "no EMA variant" in text
  # reported_top1 (-1) is shown per run but never used for scoring.
  assert "-1.00" in text and "-1.00 ±" not in text

  # Paper 800: AdAutoMix > MixUp > Vanilla; here Vanilla > AdAutoMix > MixUp.
  # Pairs: (AdA, MixUp) agree; (AdA, Van) and (MixUp, Van) reversed
  # -> tau = (1 - 2) / 3.
  cmp = sr.compare_with_paper(sr.rank(list(methods.values())),
                              sr.PAPER_C100_R18[800])
  assert cmp["tau"] == pytest.approx(-1 / 3)
  assert len(cmp["agree"]) == 1 and len(cmp["disagree"]) == 2
  assert "| R-18 800 ep | 3 | -0.333 | 1 | 2 |" in text
  assert "### Where it agrees and where it does not" in text
  assert "- AdAutoMix vs Vanilla: the paper has AdAutoMix above Vanilla" in text
  assert "Vanilla training beats AdAutoMix, MixUp here" in text
  assert "## Paper numbers beside ours" in text


def test_output_is_deterministic_and_curves(tmp_path):
  root = tmp_path / "runs"
  for m, v in (("mixup", 60.0), ("cutmix", 55.0)):
    for s in (0, 1):
      write_run(root, f"{m}_seed{s}", flat(10, v + s), flat(10, v - 5),
                metrics=True)
  out = tmp_path / "r.md"
  curves = tmp_path / "r"
  a = sr.summarize(str(root), str(out), curves_dir=str(curves), command="x")
  b = sr.summarize(str(root), str(out), curves_dir=str(curves), command="x")
  assert a == b
  assert sorted(p.name for p in curves.iterdir()) == [
      "cutmix.png", "mixup.png", "overall_seed0.png"]
  assert "(r/mixup.png)" in a


def test_empty_root_is_a_clear_error(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  with pytest.raises(sr.NoRunsError, match="holds no runs"):
    sr.find_runs(str(tmp_path / "empty"))
  with pytest.raises(sr.NoRunsError, match="not a directory"):
    sr.find_runs(str(tmp_path / "missing"))
  assert sr.main([str(tmp_path / "empty"), "--out",
                  str(tmp_path / "x.md"), "--no-curves"]) == 2
  assert "holds no runs" in capsys.readouterr().err
  assert not (tmp_path / "x.md").exists()


def test_overall_curves_show_a_one_epoch_run(tmp_path):
  runs = [sr.load_run(write_run(tmp_path, "mixup_seed0", [50.0], [48.0])),
          sr.load_run(write_run(tmp_path, "cutmix_seed0", [40.0, 45.0],
                                [41.0, 44.0]))]
  fig = sr.overall_figure(runs)
  for ax in fig.axes:
    one = [l for l in ax.lines if len(l.get_xdata()) == 1]
    assert len(one) == 1 and one[0].get_marker() == "o"
    assert one[0].get_markersize() >= 5
  sr._plot_run().plt.close(fig)


def _write_masks(run_dir, saturated, whole, grad):
  """Appends train/mask_* lines (one per step) to run_dir/metrics.jsonl."""
  lines = [{"step": 100 + i, "train/loss": 1.0, "train/lr": 0.1,
            "train/mask_saturated_frac": s, "train/mask_whole_image_frac": w,
            "train/mask_spatial_std": 0.2, "train/mask_dominance": 0.8,
            "train/mask_area_lam_gap": 0.1, "train/grad_norm_generator": g}
           for i, (s, w, g) in enumerate(zip(saturated, whole, grad))]
  with open(run_dir / "metrics.jsonl", "a") as f:
    f.write("\n".join(json.dumps(x) for x in lines) + "\n")


def test_mask_verdict_threshold_rule():
  steps = list(range(20))
  series = lambda sat, whole, grad: {
      "mask_saturated_frac": (steps, sat), "mask_whole_image_frac": (
          steps, whole), "grad_norm_generator": (steps, grad)}
  # Last 10 % of 20 logged steps = the last 2.
  ok = sr.mask_verdict(series([0.9] * 18 + [0.5, 0.5], [0.0] * 20,
                              [1.0] * 20))
  assert ok["flags"] == [] and ok["last"]["mask_saturated_frac"] == 0.5
  assert ok["peak"]["mask_saturated_frac"] == 0.9
  bad = sr.mask_verdict(series([0.0] * 18 + [0.6, 0.6], [0.0] * 18 + [1, 0.2],
                               [2.0, 2.0] + [1.0] * 16 + [0.01, 0.01]))
  assert bad["flags"] == ["saturated", "collapsed to whole-image picks",
                          "generator gradient vanished"]
  assert bad["grad_ratio"] == pytest.approx(0.005)
  assert sr.mask_verdict({}) is None


def test_report_plots_and_judges_learned_masks(tmp_path):
  root = tmp_path / "runs"
  n = 40
  healthy = write_run(root, "adautomix_seed0", flat(10, 60.0), flat(10, 55.0),
                      metrics=True)
  _write_masks(healthy, [0.1] * n, [0.0] * n, [0.5] * n)
  stuck = write_run(root, "automix_seed0", flat(10, 50.0), flat(10, 45.0),
                    metrics=True)
  _write_masks(stuck, [0.2] * 30 + [0.95] * 10, [0.0] * 30 + [0.8] * 10,
               [1.0] * 30 + [1e-4] * 10)
  write_run(root, "automix_seed1", flat(10, 50.0), flat(10, 45.0))
  write_run(root, "mixup_seed0", flat(10, 50.0), flat(10, 45.0), metrics=True)
  out = tmp_path / "r.md"
  text = sr.summarize(str(root), str(out), curves_dir=str(tmp_path / "r"),
                      command="x")
  assert "## Learned masks during training" in text
  row = next(l for l in text.splitlines() if l.startswith("| automix_seed0 |")
             and "saturated" in l)
  assert "0.950 (0.950)" in row
  assert ("saturated, collapsed to whole-image picks, generator gradient "
          "vanished") in row
  row = next(l for l in text.splitlines()
             if l.startswith("| adautomix_seed0 |") and "none of these" in l)
  assert "0.100 (0.100)" in row
  assert ("By this rule: automix_seed0 (saturated, collapsed to whole-image "
          "picks, generator gradient vanished).") in text
  assert "No mask statistics in the metrics of: automix_seed1" in text
  names = sorted(p.name for p in (tmp_path / "r").iterdir())
  assert "automix_masks.png" in names and "adautomix_masks.png" in names
  assert "mixup_masks.png" not in names
  assert "(r/automix_masks.png)" in text


def test_verdict_on_the_paper_claims(tmp_path):
  # Two seeds each, flat curves: AdAutoMix > AutoMix > CutMix > MixUp >
  # Vanilla on the EMA model, all seed ranges apart except AutoMix vs CutMix
  # (overlap); on the online model MixUp falls below vanilla, apart.
  ema = {"vanilla": (30, 31), "mixup": (33, 34), "cutmix": (35, 37),
         "automix": (36, 38), "adautomix": (40, 41)}
  online = {"vanilla": (30, 31), "mixup": (27, 28), "cutmix": (35, 37),
            "automix": (36, 38), "adautomix": (40, 41)}
  for m in ema:
    for seed in (0, 1):
      write_run(tmp_path / "r", f"{m}_seed{seed}", flat(10, ema[m][seed]),
                flat(10, online[m][seed]))
  text = sr.summarize(str(tmp_path / "r"), str(tmp_path / "rep.md"))
  verdict = text[text.index("## Verdict on the paper's claims"):]
  rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:]
          for line in verdict.splitlines() if line.startswith("| ")}
  assert rows["every mixer beats vanilla training"] == [
      "reproduced", "contradicted |"]
  assert rows["the learned mixers (AutoMix, AdAutoMix) beat every static "
              "mixer"][0] == "same direction, within the seed spread"
  assert rows["AdAutoMix is at least as good as AutoMix"] == [
      "reproduced", "reproduced |"]
  assert "Methods not in this sweep (yet): FMix, ResizeMix." in verdict
  # The evidence names the gap: AutoMix 37 vs CutMix 36 on the EMA model.
  assert "AutoMix +1.00 over CutMix (seed ranges overlap)" in verdict
  assert "MixUp ahead of" not in verdict.split("Evidence (online")[0]
  assert "Vanilla ahead of MixUp by 3.00 (all seeds apart)" in verdict


def test_verdict_one_seed_is_never_reproduced(tmp_path):
  write_run(tmp_path / "r", "vanilla_seed0", flat(10, 30), flat(10, 30))
  write_run(tmp_path / "r", "mixup_seed0", flat(10, 35), flat(10, 35))
  text = sr.summarize(str(tmp_path / "r"), str(tmp_path / "rep.md"))
  assert ("| every mixer beats vanilla training | same direction, within the "
          "seed spread |") in text
  assert "MixUp +5.00 over Vanilla (one seed)" in text
  assert ("| AdAutoMix is at least as good as AutoMix | not measured | "
          "not measured |") in text


def test_appendix_is_appended_one_level_down(tmp_path, capsys):
  write_run(tmp_path / "r", "vanilla_seed0", flat(10, 30), flat(10, 30))
  notes = tmp_path / "notes" / "pilot.md"
  notes.parent.mkdir()
  notes.write_text("# Pilot\n\n## Results\n\nsee [fig](figs/a.png) and "
                   "[web](https://example.org/x)\n")
  out = tmp_path / "out" / "rep.md"
  assert sr.main([str(tmp_path / "r"), "--out", str(out), "--no-curves",
                  "--appendix", str(notes)]) == 0
  text = out.read_text()
  assert text.index("## Verdict") < text.index("## Pilot")
  assert "\n### Results\n" in text
  assert "[fig](../notes/figs/a.png)" in text
  assert "[web](https://example.org/x)" in text
  assert sr.main([str(tmp_path / "r"), "--out", str(out), "--no-curves",
                  "--appendix", str(tmp_path / "missing.md")]) == 2
  assert "--appendix" in capsys.readouterr().err


def test_finished_only_leaves_out_stopped_runs(tmp_path):
  write_run(tmp_path / "r", "vanilla_seed0", flat(10, 30), flat(10, 30))
  stopped = write_run(tmp_path / "r", "vanilla_seed1", flat(3, 50),
                      flat(3, 50), epochs=10)
  s = json.loads((stopped / "summary.json").read_text())
  s["stopped_at_step"] = 30
  (stopped / "summary.json").write_text(json.dumps(s))
  both = sr.summarize(str(tmp_path / "r"), str(tmp_path / "a.md"))
  assert "unfinished runs (stopped early): vanilla_seed1" in both
  only = sr.summarize(str(tmp_path / "r"), str(tmp_path / "b.md"),
                      finished_only=True)
  assert "vanilla_seed1" not in only and "| 1 | Vanilla | 0 | 30.00" in only


def test_mask_verdict_spatially_uniform():
  steps = list(range(20))
  base = {"mask_saturated_frac": (steps, [0.0] * 20),
          "mask_whole_image_frac": (steps, [0.0] * 20)}
  # Never above 0.01 over the whole run -> flagged; one step at 0.3 -> not.
  flat_mask = sr.mask_verdict({**base, "mask_spatial_std": (
      steps, [0.001] * 19 + [0.009])})
  assert flat_mask["flags"] == ["spatially uniform throughout"]
  cut = sr.mask_verdict({**base, "mask_spatial_std": (
      steps, [0.001] * 10 + [0.3] + [0.001] * 9)})
  assert cut["flags"] == []


def test_resumed_run_says_its_wall_time_is_the_last_invocations(tmp_path):
  d = write_run(tmp_path / "r", "vanilla_seed0", flat(10, 30), flat(10, 30),
                wall=120.0)
  s = json.loads((d / "summary.json").read_text())
  s["resumed_from_step"] = 200
  (d / "summary.json").write_text(json.dumps(s))
  text = sr.summarize(str(tmp_path / "r"), str(tmp_path / "a.md"))
  row = next(l for l in text.splitlines() if l.startswith("| vanilla_seed0"))
  assert "| 2.0 (from step 200) |" in row
