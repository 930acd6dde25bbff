#!/usr/bin/env bash
# CPU-scale reproduction of the AdAutoMix / AutoMix comparison.
#
# Trains vanilla, MixUp, CutMix, FMix, ResizeMix, AutoMix and AdAutoMix on the
# offline CIFAR-10 JPEG archive: a fixed, class-balanced training subset
# (IMAGES_PER_CLASS per class, drawn with data.subset_seed=0 for every run), the
# full 10,000-image test split evaluated after every EVAL_EVERY-th epoch and
# after each epoch of the reported window (the last 10 %), a width-reduced CIFAR
# ResNet-18 (WIDTH), the SAME number of epochs (EPOCHS) and batch (BATCH) for
# every method, each with every seed in SEEDS (config.seed: init, data order,
# mixing draws; the subset stays fixed). Then scripts/summarize_runs.py writes
# results/reproduce_cpu.md (ranking by mean EMA top-1 over seeds, Kendall tau
# against the paper's CIFAR-100 R-18 ranking) and the curves under
# results/reproduce_cpu/.
#
#   bash scripts/reproduce_cpu.sh                       # defaults below
#   EPOCHS=5 IMAGES_PER_CLASS=200 bash scripts/reproduce_cpu.sh
#   METHODS="mixup adautomix" SEEDS="0" bash scripts/reproduce_cpu.sh
#   DRY_RUN=1 bash scripts/reproduce_cpu.sh             # print the commands only
#
# Environment variables (default):
#   EPOCHS            40      epochs, identical for every method
#   IMAGES_PER_CLASS  100     training images per class (0 = all 5,000)
#   WIDTH             0.25    ResNet-18 width multiplier (1.0 = the paper's)
#   AUGMENT           none    data.augment: none (mixing the only regulariser)
#                             | cifar (reflect-pad crop + flip)
#   IMAGE_SIZE        0       data.image_size: 0 = 32 px; e.g. 16 = downsampled
#   BATCH             50      global batch, identical for every method
#   SEEDS             "0 1 2" config.seed values
#   EVAL_EVERY        5       evaluate every k epochs (config.eval_every_epochs);
#                             the last max(1, EPOCHS/10) epochs, whose median is
#                             reported, are always evaluated each (loop.eval_due)
#   METHODS           "vanilla mixup cutmix fmix resizemix automix adautomix"
#   OUT               runs/reproduce_cpu     one <method>_seed<k>/ per run
#   RESULTS           results/reproduce_cpu  -> RESULTS.md and RESULTS/*.png
#   AUTOMIX_CIFAR10_ARCHIVE  ../shared/data/cifar10-jpeg.tar.gz (relative to the
#                     repository root)
#   PYTHON            .venv/bin/python
#   DRY_RUN           0       1: print the commands, run nothing
#   REPORT_ONLY       0       1: train nothing, write the report from the runs
#                             finished so far (a partial sweep's honest table)
#   CALIBRATION       results/proxy_calibration.md   appended to the report
#                     (the pilots that chose the defaults); empty = none
#
# Resumable: a run whose <OUT>/<method>_seed<k>/summary.json exists (and did
# not stop early) is skipped; an interrupted run resumes from its newest
# checkpoint (saved once per epoch). A failed run is reported and the others
# still run; the script exits non-zero at the end if any failed.
#
# EMA. Every run keeps an EMA teacher (static mixers via their config's `ema`
# arg) so that all methods are ranked on the same variant. The momentum follows
# the rule of configs/{automix,adautomix}/cifar10_cpu.py: the reference's
# 0.999 -> 0.999999 is for ~400k iterations and would leave the teacher at its
# initialisation in a short run, so its time constant 1/(1-m) is scaled to the
# run's length T = EPOCHS * steps_per_epoch iterations, keeping the cosine shape.
# Those configs use 0.9 -> 0.99 for T = 60, i.e. 1/(1-m) = T/6 -> T/0.6; here
#   ema_momentum     = min(0.999,    max(0, 1 - 6 / T))
#   ema_end_momentum = min(0.999999, max(0, 1 - 0.6 / T))
# (capped at the reference's values, which a paper-length run reaches). The
# learned configs take them as `ema_momentum`/`ema_end_momentum` args; the
# static config gets the same numbers through --config.ema.* overrides.
#
# The defaults are the calibrated proxy of results/proxy_calibration.md: 1,000
# training images, no crop/flip, width 1/4, 40 epochs, where vanilla training
# memorises its training set (train loss ~0.002) and test accuracy plateaus,
# i.e. the regime in which mixing is known to help; results/reproduce_cpu.md
# is the sweep at these defaults. results/reproduce_cpu_underfit.md keeps the
# earlier setting (EPOCHS=15 IMAGES_PER_CLASS=1000 WIDTH=0.125, crop+flip),
# where the runs underfit.
#
# Cost, measured on 2 CPU cores: at the earlier setting 6.1-6.7 min per static
# run, 12.3-12.8 min per AutoMix run, 15.4-16.6 min per AdAutoMix run; at the
# calibrated defaults, run alone, 7.0-7.5 min per static run (about half of it
# evaluation), 13.3-13.6 min per AutoMix run, 15.6 min per AdAutoMix run: the
# 21-run sweep is ~3.5 h. Each run's summary.json records its wall time and
# images/s, and the report tabulates them.
#
# What is kept: the report, the curves, and a copy of every run's summary.json
# and gzipped metrics.jsonl under RESULTS/runs/<method>_seed<k>/ (small enough
# to commit; checkpoints stay under OUT).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

EPOCHS="${EPOCHS:-40}"
IMAGES_PER_CLASS="${IMAGES_PER_CLASS:-100}"
WIDTH="${WIDTH:-0.25}"
AUGMENT="${AUGMENT:-none}"
IMAGE_SIZE="${IMAGE_SIZE:-0}"
BATCH="${BATCH:-50}"
SEEDS="${SEEDS:-0 1 2}"
EVAL_EVERY="${EVAL_EVERY:-5}"
METHODS="${METHODS:-vanilla mixup cutmix fmix resizemix automix adautomix}"
OUT="${OUT:-runs/reproduce_cpu}"
RESULTS="${RESULTS:-results/reproduce_cpu}"
ARCHIVE="${AUTOMIX_CIFAR10_ARCHIVE:-../shared/data/cifar10-jpeg.tar.gz}"  # from $root
PYTHON="${PYTHON:-.venv/bin/python}"
DRY_RUN="${DRY_RUN:-0}"
REPORT_ONLY="${REPORT_ONLY:-0}"
CALIBRATION="${CALIBRATION:-results/proxy_calibration.md}"

die() { echo "reproduce_cpu.sh: $*" >&2; exit 2; }
[[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]] || die "EPOCHS must be a positive int ($EPOCHS)"
[[ "$IMAGES_PER_CLASS" =~ ^[0-9]+$ ]] || die "IMAGES_PER_CLASS must be an int >= 0"
[[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || die "BATCH must be a positive int ($BATCH)"
[[ "$EVAL_EVERY" =~ ^[1-9][0-9]*$ ]] || die "EVAL_EVERY must be a positive int ($EVAL_EVERY)"
[[ "$AUGMENT" =~ ^(none|cifar)$ ]] || die "AUGMENT must be none or cifar ($AUGMENT)"
[[ "$IMAGE_SIZE" =~ ^[0-9]+$ ]] || die "IMAGE_SIZE must be an int >= 0 ($IMAGE_SIZE)"
[[ -n "${SEEDS// /}" ]] || die "SEEDS is empty"
[[ -n "${METHODS// /}" ]] || die "METHODS is empty"
if [[ "$DRY_RUN" != 1 ]]; then
  [[ -x "$PYTHON" ]] || die "no Python at $PYTHON (run scripts/setup_env.sh or set PYTHON)"
  [[ -f "$ARCHIVE" ]] || die "CIFAR-10 archive not found at $ARCHIVE (set AUTOMIX_CIFAR10_ARCHIVE)"
fi

for v in "$ARCHIVE" "$OUT" "$RESULTS" "$PYTHON"; do
  [[ "$v" != *" "* ]] || die "paths must not contain spaces ($v)"
done

# Run length -> EMA momenta (see the header) and the reporting window.
per_class=$(( IMAGES_PER_CLASS > 0 ? IMAGES_PER_CLASS : 5000 ))
steps_per_epoch=$(( per_class * 10 / BATCH ))
(( steps_per_epoch >= 1 )) || die "BATCH ($BATCH) exceeds the subset ($(( per_class * 10 )) images)"
total_steps=$(( steps_per_epoch * EPOCHS ))
read -r EMA_M EMA_END < <(awk -v T="$total_steps" 'BEGIN {
  m = 1 - 6 / T;   if (m < 0) m = 0; if (m > 0.999) m = 0.999
  e = 1 - 0.6 / T; if (e < 0) e = 0; if (e > 0.999999) e = 0.999999
  printf "%.8g %.8g\n", m, e }')
report_last=$(( EPOCHS / 10 > 0 ? EPOCHS / 10 : 1 ))  # = summarize_runs.py's rule

# The config (file:args) of one method; every knob the sweep fixes goes here or
# into the common overrides below.
config_for() {
  local m="$1" common="epochs=$EPOCHS,images_per_class=$IMAGES_PER_CLASS,width=$WIDTH"
  case "$m" in
    automix)   echo "configs/automix/cifar10_cpu.py:$common,batch_size=$BATCH,ema_momentum=$EMA_M,ema_end_momentum=$EMA_END" ;;
    adautomix) echo "configs/adautomix/cifar10_cpu.py:$common,batch_size=$BATCH,ema_momentum=$EMA_M,ema_end_momentum=$EMA_END" ;;
    *)         echo "configs/cifar10_cpu.py:mixer=$m,$common,ema=True" ;;
  esac
}

train_cmd() {  # method seed -> the full training command (one line)
  local m="$1" s="$2" extra=""
  case "$m" in
    automix|adautomix) ;;
    *) extra=" --config.ema.momentum=$EMA_M --config.ema.end_momentum=$EMA_END" ;;
  esac
  echo "$PYTHON -m experiments.train --config $(config_for "$m")" \
       "--workdir $OUT/${m}_seed$s --config.seed=$s --config.batch_size=$BATCH" \
       "--config.data.archive_path=$ARCHIVE --config.data.subset_seed=0" \
       "--config.report_last_epochs=$report_last --config.eval_every_epochs=$EVAL_EVERY" \
       "--config.data.augment=$AUGMENT --config.data.image_size=$IMAGE_SIZE" \
       "--config.checkpoint.every_steps=$steps_per_epoch --config.progress_bar=False$extra"
}

finished() {  # a summary.json that did not stop early
  [[ -f "$1/summary.json" ]] && ! grep -q '"stopped_at_step"' "$1/summary.json"
}

invocation="EPOCHS=$EPOCHS IMAGES_PER_CLASS=$IMAGES_PER_CLASS WIDTH=$WIDTH BATCH=$BATCH AUGMENT=$AUGMENT IMAGE_SIZE=$IMAGE_SIZE EVAL_EVERY=$EVAL_EVERY SEEDS=\"$SEEDS\" METHODS=\"$METHODS\" OUT=$OUT RESULTS=$RESULTS AUTOMIX_CIFAR10_ARCHIVE=$ARCHIVE bash scripts/reproduce_cpu.sh"
echo "# $invocation"
echo "# $steps_per_epoch steps/epoch x $EPOCHS epochs = $total_steps steps; EMA $EMA_M -> $EMA_END (cosine); median of the last $report_last epoch(s)"

failed=()
# Seed-major order: every method's first seed finishes before any second seed
# starts, so an interrupted sweep still covers every method.
for s in $SEEDS; do
  for m in $METHODS; do
    wd="$OUT/${m}_seed$s"
    cmd="$(train_cmd "$m" "$s")"
    if [[ "$DRY_RUN" == 1 ]]; then echo "$cmd"; continue; fi
    if finished "$wd"; then echo "skip $wd (summary.json exists)"; continue; fi
    if [[ "$REPORT_ONLY" == 1 ]]; then echo "not run yet: $wd"; continue; fi
    mkdir -p "$wd"
    echo "=== $(date '+%F %T') $m seed $s -> $wd"
    echo "$cmd"
    # $cmd is split on spaces on purpose (no path in it may contain one).
    if $cmd 2>&1 | tee -a "$wd/train.log"; then :; else
      echo "!!! $m seed $s failed (log: $wd/train.log)" >&2
      failed+=("${m}_seed$s")
    fi
  done
done
[[ "$DRY_RUN" == 1 ]] && exit 0

# The exact command lines, for the report.
report_cmd="$invocation"$'\n\n'"# per run (<m> in METHODS, <k> in SEEDS; shown for seed ${SEEDS%% *}):"
for m in $METHODS; do report_cmd+=$'\n'"$(train_cmd "$m" "${SEEDS%% *}")"; done
report_cmd+=$'\n'"$PYTHON scripts/summarize_runs.py $OUT --out $RESULTS.md --curves-dir $RESULTS --paper-table --finished-only${CALIBRATION:+ --appendix $CALIBRATION}"
for wd in "$OUT"/*_seed*/; do
  finished "$wd" || continue
  keep="$RESULTS/runs/$(basename "$wd")"
  mkdir -p "$keep"
  # Committed summaries name no machine path: the repository root and its
  # parent folder become relative.
  sed -e "s|$root/||g" -e "s|$(dirname "$root")/|../|g" "$wd/summary.json" \
    > "$keep/summary.json"
  [[ -f "$wd/metrics.jsonl" ]] && gzip -9 -c "$wd/metrics.jsonl" > "$keep/metrics.jsonl.gz"
done
# The pilot that chose the default setting goes at the end of the report.
appendix=()
[[ -f "$CALIBRATION" ]] && appendix=(--appendix "$CALIBRATION")
"$PYTHON" scripts/summarize_runs.py "$OUT" --out "$RESULTS.md" \
  --curves-dir "$RESULTS" --paper-table --finished-only --command "$report_cmd" "${appendix[@]}" \
  --title "CPU-scale reproduction: ${METHODS// /, } on CIFAR-10 ($IMAGES_PER_CLASS images/class, width $WIDTH, augment $AUGMENT, image size ${IMAGE_SIZE}, $EPOCHS epochs, seeds ${SEEDS// /,})" \
  || exit $?
if (( ${#failed[@]} )); then
  echo "failed runs: ${failed[*]}" >&2
  exit 1
fi
