#!/usr/bin/env bash
# The cluster path on one machine: two Ray nodes on 127.0.0.1 (1 CPU each), the
# smoke study through RAY_ADDRESS, then `ray stop`. A user with GPU nodes runs
# the same `ray start` lines on each node (see README).
#
#   study/cluster_smoke.sh PACK.h5 [STUDY_NAME]
#
# It stops EVERY Ray process on this machine when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=$(realpath "${1:?usage: study/cluster_smoke.sh PACK.h5 [NAME]}")
NAME=${2:-cluster-smoke}
PORT=${RAY_PORT:-6390}
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
trap '"$BIN/ray" stop --force >/dev/null 2>&1 || true' EXIT

"$BIN/ray" get-auth-token --generate >/dev/null   # the token goes to ~/.ray/auth_token
"$BIN/ray" start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus=1 \
    --include-dashboard=false --disable-usage-stats
"$BIN/ray" start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus=1
RAY_ADDRESS="127.0.0.1:$PORT" "$BIN/python" -m study.tune --data "$DATA" --smoke-test --name "$NAME" \
    --train-fraction "${TRAIN_FRACTION:-0.05}"
