#!/usr/bin/env bash
# Profile bench/peer.py while it broadcasts at saturation to N clients:
#   1. py-spy stacks for 6 s (summarised by bench/pyspy_top.py),
#   2. the server's user / system CPU split over the same window,
#   3. syscalls per delivery (strace -c for 2 s, in a second run; skipped
#      when strace is missing).
# Server pinned to CPU 0, load client and py-spy to CPU 1.
#
#   bench/profile_peer.sh [N] [stream|hub] [OUTDIR]     # N=1000 stream ./profile-out
#
# Needs py-spy (pip install py-spy) and a C compiler; run it from the
# virtualenv that has twisted_sse installed (PYTHONPATH selects another tree).
set -euo pipefail
cd "$(dirname "$0")"
N=${1:-1000}
VIA=${2:-stream}
OUT=${3:-profile-out}
PY=${PYTHON:-python}
PORT=${PORT:-8130}
mkdir -p "$OUT" build
[[ build/sseload -nt client/sseload.c ]] || "${CC:-cc}" -O2 -Wall -o build/sseload client/sseload.c
ulimit -n "$(ulimit -Hn)"

cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

serve() {  # start the peer, wait for /stats, echo its pid
  taskset -c 0 "$PY" peer.py --via "$VIA" --port "$PORT" --max-lifetime 60 \
    >"$OUT/peer.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/stats" && break
    sleep 0.1
  done
  echo "$pid"
}

load() {  # load PID SECONDS LABEL: saturation only (no paced phase)
  taskset -c 1 build/sseload --port "$PORT" --pid "$1" -n "$N" --label "$3" \
    --rate 0 --sat-s "$2" >"$OUT/client-$3.json"
}

P=$(serve)
load "$P" 12 pyspy &
C=$!
sleep 2.5
read -r u0 s0 < <(cpu_ticks "$P")
taskset -c 1 py-spy record -p "$P" -d 6 -r 100 -f raw -o "$OUT/pyspy.txt" >"$OUT/py-spy.log" 2>&1
read -r u1 s1 < <(cpu_ticks "$P")
wait "$C"
kill "$P"; wait "$P" 2>/dev/null || true
echo "server CPU over the sampled window: user $((u1 - u0)) ticks, system $((s1 - s0)) ticks" \
  | tee "$OUT/cpu-split.txt"
"$PY" pyspy_top.py "$OUT/pyspy.txt" --top 25 >"$OUT/pyspy-top.md"

if command -v strace >/dev/null; then
  P=$(serve)
  load "$P" 5 strace &
  C=$!
  sleep 2
  timeout 2 strace -c -f -p "$P" -o "$OUT/strace.txt" || true
  wait "$C"
  kill "$P"; wait "$P" 2>/dev/null || true
fi
echo "wrote $OUT/pyspy-top.md, $OUT/cpu-split.txt, $OUT/strace.txt"
