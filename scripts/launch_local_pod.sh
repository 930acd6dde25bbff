#!/usr/bin/env bash
# Simulates a pod on this machine: N processes of D fake CPU devices each,
# talking over loopback, exactly as the processes of a real multi-host launch
# (docs/training.md, "Multi-host"). Use it to check a config before paying for
# a pod:
#
#   bash scripts/launch_local_pod.sh 2 4 -- \
#     --config configs/cifar10_cpu.py:mixer=mixup,epochs=1,images_per_class=50 \
#     --workdir runs/pod
#
# Every process gets JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>,
# JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i and
# XLA_FLAGS=--xla_force_host_platform_device_count=D, and runs
# `python -m experiments.train <train args>` (PYTHON overrides the
# interpreter, default .venv/bin/python, else python3; POD_MODULE the module,
# default experiments.train; POD_PORT the port, default a free one). Process i's output goes to <workdir>/pod_logs/process_i.log
# and, for process 0, to this terminal as well. The script waits for all
# processes and exits non-zero if any fails; when one fails, the others are
# stopped. SIGTERM / Ctrl-C are forwarded to every process (pre-emption test).
set -uo pipefail

usage() {
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS -- <experiments.train args>" >&2
  exit 2
}
[ $# -ge 3 ] || usage
nproc_="$1"; ndev="$2"; shift 2
[ "${1:-}" = "--" ] || usage
shift
[[ "$nproc_" =~ ^[1-9][0-9]*$ ]] || { echo "NUM_PROCESSES must be a positive integer, got '$nproc_'" >&2; exit 2; }
[[ "$ndev" =~ ^[1-9][0-9]*$ ]] || { echo "DEVICES_PER_PROCESS must be a positive integer, got '$ndev'" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi

workdir=""
prev=""
for a in "$@"; do
  case "$a" in
    --workdir=*) workdir="${a#--workdir=}" ;;
  esac
  [ "$prev" = "--workdir" ] && workdir="$a"
  prev="$a"
done
[ -n "$workdir" ] || { echo "the train args need --workdir" >&2; exit 2; }
case "$workdir" in
  *://*) logs="$(mktemp -d)/pod_logs" ;;   # cloud workdir: logs stay local
  *) logs="$workdir/pod_logs" ;;
esac
mkdir -p "$logs"

module="${POD_MODULE:-experiments.train}"
port="${POD_PORT:-$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
}
trap 'stop_all' TERM INT

for ((i = 0; i < nproc_; i++)); do
  log="$logs/process_$i.log"
  (
    export JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$nproc_" \
      JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 \
      XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$ndev"
    cd "$root"
    if [ "$i" -eq 0 ]; then
      exec "$py" -m "$module" "$@" > >(tee "$log") 2>&1
    else
      exec "$py" -m "$module" "$@" > "$log" 2>&1
    fi
  ) &
  pids+=("$!")
done
echo "launch_local_pod: $nproc_ processes x $ndev devices, coordinator 127.0.0.1:$port, logs in $logs" >&2

# Wait for all; as soon as one fails, stop the rest (a real pod would hang or
# time out waiting for the dead process).
status=0
remaining=${#pids[@]}
declare -A done_=()
while [ "$remaining" -gt 0 ]; do
  for idx in "${!pids[@]}"; do
    p="${pids[$idx]}"
    [ -n "${done_[$idx]:-}" ] && continue
    if ! kill -0 "$p" 2>/dev/null; then
      wait "$p"; rc=$?
      done_[$idx]=1
      remaining=$((remaining - 1))
      if [ "$rc" -ne 0 ]; then
        echo "launch_local_pod: process $idx exited with $rc (log: $logs/process_$idx.log)" >&2
        [ "$status" -eq 0 ] && status=$rc
        stop_all
      fi
    fi
  done
  sleep 0.2
done
exit "$status"
