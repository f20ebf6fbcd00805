#!/usr/bin/env bash
# Smoke test of the CPU image: build it, run a scorer worker from it against a local broker, replay
# one day of docker/../../shared/data/handbook_2w.parquet into Kafka with the image's own
# `riskstream replay`, and wait until every transaction has its risk event. Also checks that the
# worker runs as uid 10001 and uses the compiled hot-path modules. Run from the repository root
# after `make setup` (the broker and the model come from the host's riskstream):
#
#   bash docker/smoke_test.sh                       # docker
#   CONTAINER=podman bash docker/smoke_test.sh      # podman (add its flags in BUILD_FLAGS/RUN_FLAGS)
#
# The worker uses the host's network (a broker on 127.0.0.1:29092, metrics on :29464).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENGINE=${CONTAINER:-docker}
IMAGE=${IMAGE:-riskstream:cpu}
read -r -a BUILD_FLAGS <<<"${BUILD_FLAGS:-}"
read -r -a RUN_FLAGS <<<"${RUN_FLAGS:-}"
DATA=${DATA:-$(cd .. && pwd)/shared/data}
work=$(mktemp -d "${TMPDIR:-/tmp}/riskstream-smoke.XXXXXX")
name="riskstream-smoke-$$"
export RISKSTREAM_KAFKA_HOME=$work/kafka RISKSTREAM_KAFKA_PORT=29092 RISKSTREAM_KAFKA_CONTROLLER_PORT=29093
export RISKSTREAM_BOOTSTRAP_SERVERS=127.0.0.1:29092

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  "$ENGINE" "${RUN_FLAGS[@]}" stop -t 30 "$name" >/dev/null 2>&1 || true
  "$ENGINE" "${RUN_FLAGS[@]}" rm -f "$name" >/dev/null 2>&1 || true
  .venv/bin/riskstream kafka stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${NO_BUILD:-}" ]; then
  "$ENGINE" build "${BUILD_FLAGS[@]}" -f docker/cpu.Dockerfile -t "$IMAGE" .
fi

# the broker: the host's jars (make setup), data in the temporary folder
mkdir -p "$RISKSTREAM_KAFKA_HOME" && ln -s "$HOME/.riskstream/kafka/lib" "$RISKSTREAM_KAFKA_HOME/lib"
.venv/bin/riskstream kafka start
# a model: a small one trained here on the two weeks, published into a registry the image reads
mkdir -p "$work/registry"
.venv/bin/python -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; \
from workerbench.messages import train_registry; train_registry(Path('$work/registry'))"
chmod -R a+rX "$work"

# USER_STORE=disk: the worker keeps its user states in RocksDB files (streams/user_store.py);
# TERMINAL_STORE=disk: the terminal table too (streams/terminal_store.py)
USER_STORE=${USER_STORE:-memory}
TERMINAL_STORE=${TERMINAL_STORE:-memory}
envs=(-e "RISKSTREAM_BOOTSTRAP_SERVERS=$RISKSTREAM_BOOTSTRAP_SERVERS" -e RISKSTREAM_APP_ID=smoke
  -e RISKSTREAM_METRICS_PORT=29464 -e RISKSTREAM_WEB_PORT=29066 -e "RISKSTREAM_USER_STORE=$USER_STORE"
  -e "RISKSTREAM_TERMINAL_STORE=$TERMINAL_STORE")
"$ENGINE" "${RUN_FLAGS[@]}" run -d --name "$name" --network host \
  -v "$work/registry:/var/lib/riskstream/registry:ro" "${envs[@]}" "$IMAGE" worker >/dev/null
metric() {
  curl -sf http://127.0.0.1:29464/metrics | awk -v m="$1" 'index($0, m) == 1 { print int($2) }'
}
for _ in $(seq 120); do curl -sf http://127.0.0.1:29464/metrics >/dev/null && break; sleep 1; done

"$ENGINE" "${RUN_FLAGS[@]}" run --rm --network host -v "$DATA:/data:ro" "${envs[@]}" "$IMAGE" \
  replay /data/handbook_2w.parquet --until 2018-06-02 | tail -2
want=$(.venv/bin/python -c "import pandas as pd; d = pd.read_parquet('$DATA/handbook_2w.parquet', columns=['TX_DATETIME']); \
print(int((d.TX_DATETIME < '2018-06-02').sum()))")

got=0
for _ in $(seq 180); do
  got=$(metric 'riskstream_events_out_total{topic="risk-events"}')
  [ "${got:-0}" -ge "$want" ] && break
  sleep 1
done
log=$("$ENGINE" "${RUN_FLAGS[@]}" logs "$name" 2>&1)
user=$("$ENGINE" "${RUN_FLAGS[@]}" inspect "$name" --format '{{.Config.User}}')
echo "transactions $want, risk events ${got:-0}; user $user; $(grep -o 'hot-path modules: .*' <<<"$log"); user store $USER_STORE, terminal store $TERMINAL_STORE"
fail=0
[ "${got:-0}" -eq "$want" ] || { echo "FAIL: ${got:-0} risk events for $want transactions" >&2; fail=1; }
[ "$user" = "10001:10001" ] || { echo "FAIL: the worker runs as $user" >&2; fail=1; }
grep -q 'hot-path modules: compiled (mypyc)' <<<"$log" || { echo "FAIL: not the compiled modules" >&2; fail=1; }
if [ "$USER_STORE" = disk ]; then
  # the table's RocksDB store started, and its files are in the container's data directory
  grep -qE 'Store: (riskstream-)?rocksdb:smoke-user-state' <<<"$log" || { echo "FAIL: no RocksDB store in the log" >&2; fail=1; }
  # shellcheck disable=SC2016  # expanded by the container's shell
  files=$("$ENGINE" "${RUN_FLAGS[@]}" exec "$name" sh -c 'ls -d "$RISKSTREAM_HOME"/worker/v*/tables/smoke-user-state-*.db' 2>&1 || true)
  echo "user-state databases: $(wc -w <<<"$files")"
  grep -q 'smoke-user-state-0.db' <<<"$files" || { echo "FAIL: no user-state databases: $files" >&2; fail=1; }
fi
if [ "$TERMINAL_STORE" = disk ]; then
  grep -qE 'Store: (riskstream-)?rocksdb:smoke-terminal-state' <<<"$log" || { echo "FAIL: no terminal RocksDB store in the log" >&2; fail=1; }
  # shellcheck disable=SC2016  # expanded by the container's shell
  files=$("$ENGINE" "${RUN_FLAGS[@]}" exec "$name" sh -c 'ls -d "$RISKSTREAM_HOME"/worker/v*/tables/smoke-terminal-state-0.db' 2>&1 || true)
  grep -q 'smoke-terminal-state-0.db' <<<"$files" || { echo "FAIL: no terminal-state database: $files" >&2; fail=1; }
fi
if grep -q Traceback <<<"$log"; then echo "FAIL: the worker logged a traceback" >&2; fail=1; fi
if [ "$fail" = 0 ]; then echo "smoke test passed"; else tail -40 <<<"$log" >&2; fi
exit "$fail"
