#!/usr/bin/env bash
# The one command: build release, start `mmrt serve` on an ephemeral loopback port,
# run the latency sweep against it, stop it, and write report.json, summary.md and
# latency.svg to target/loadtest (or $MMRT_LOADTEST_OUT).
#
#   loadtest/run.sh                       # sweep 1,4,16,32 for 20 s each
#   loadtest/run.sh --sweep 1,8 --duration 10 --turn-mode server-vad
#   loadtest/run.sh --baseline            # the same sweep against the Python baseline
#
# Extra arguments go to mmrt-loadtest (see `target/release/mmrt-loadtest --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

baseline=0
if [[ "${1:-}" == "--baseline" ]]; then
    baseline=1
    shift
fi
cargo build --release -q -p mmrt-server -p mmrt-loadtest --bins
ulimit -n 8192 2>/dev/null || true
# A default sweep through the environment, so that a --sweep argument replaces it.
export MMRT_LOADTEST_SWEEP=${MMRT_LOADTEST_SWEEP:-1,4,16,32}

if [[ $baseline == 0 ]]; then
    exec target/release/mmrt-loadtest --spawn-server target/release/mmrt "$@"
fi

# The baseline prints "baseline listening on ADDR" as mmrt does; stop it on any exit.
python=${PYTHON:-.venv/bin/python}
log=$(mktemp)
"$python" loadtest/baseline/server.py --listen 127.0.0.1:0 >"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 600); do
    addr=$(sed -n 's/^baseline listening on //p' "$log")
    [[ -n "$addr" ]] && break
    kill -0 $pid || { echo "baseline exited before listening" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$addr" ]] || { echo "baseline did not listen in 60 s" >&2; exit 1; }
target/release/mmrt-loadtest --url "ws://$addr/v1/realtime" --label python-baseline "$@"
