#!/usr/bin/env bash
# The cluster path on one machine: two Ray nodes on 127.0.0.1 (1 CPU each), the
# smoke study through RAY_ADDRESS, then it stops the two. A user with GPU nodes runs
# the same `ray start` lines on each node (see README).
#
#   study/cluster_smoke.sh PACK.h5 [STUDY_NAME]
#
# When it ends it stops this cluster's processes and nothing else: the ones that
# name its own temp dir or port, and their children. A study running beside it
# on the same machine (`make tune`) keeps running; `ray stop` would kill that too.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=$(realpath "${1:?usage: study/cluster_smoke.sh PACK.h5 [NAME]}")
NAME=${2:-cluster-smoke}
PORT=${RAY_PORT:-6390}
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
TMP=$(mktemp -d /tmp/ray-smoke.XXXXXX)   # short: Ray's socket paths live under it

stop_cluster() {
    local pids all="" p
    pids=$(pgrep -f -- "$TMP/|:$PORT( |\$)" || true)
    while [ -n "$pids" ]; do   # the daemons, then their children (agents, workers)
        all="$all $pids"
        pids=$(for p in $pids; do pgrep -P "$p" || true; done)
    done
    [ -z "$all" ] || kill -KILL $all 2>/dev/null || true
    rm -rf "$TMP"
}
trap stop_cluster EXIT

"$BIN/ray" get-auth-token --generate >/dev/null   # the token goes to ~/.ray/auth_token
"$BIN/ray" start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus=1 \
    --include-dashboard=false --disable-usage-stats --temp-dir="$TMP"
"$BIN/ray" start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus=1 --temp-dir="$TMP"
RAY_ADDRESS="127.0.0.1:$PORT" "$BIN/python" -m study.tune --data "$DATA" --smoke-test --name "$NAME" \
    --train-fraction "${TRAIN_FRACTION:-0.05}"
