#!/usr/bin/env bash
# make run: start a private broker and a worker, replay the bundled recorded history, print the
# alerts as they arrive, then stop everything this script started.
#
# Environment: KDIAG_DEMO_PORT (default 19292) is the broker port; the KRaft controller uses the next
# one. The broker's data and the worker's state live in var/demo/ and start empty on every run.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

DEMO_DIR="$REPO_ROOT/var/demo"
export KAFKA_PORT=${KDIAG_DEMO_PORT:-19292}
export KAFKA_DATA_DIR="$DEMO_DIR/kafka"
export KDIAG_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
export KDIAG_STATE_DIR="$DEMO_DIR/state"
KDIAG="$REPO_ROOT/.venv/bin/kdiag"
worker_pid=""
started=$(date +%s)

say() {
    echo "run_demo: $*" >&2
}

cleanup() {
    status=$?
    if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
        kill -TERM "$worker_pid" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$worker_pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$worker_pid" 2>/dev/null || true
    fi
    scripts/kafka.sh down >/dev/null 2>&1 || true
    if [[ $status -ne 0 ]]; then
        say "failed; logs are in $DEMO_DIR (worker.log, replay.log, kafka/broker.log)"
    fi
    exit $status
}
trap cleanup EXIT INT TERM

say "starting a Kafka broker on 127.0.0.1:$KAFKA_PORT"
if [[ -f "$KAFKA_DATA_DIR/broker.pid" ]]; then
    scripts/kafka.sh down >/dev/null 2>&1 || true
fi
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
scripts/kafka.sh up 2>"$DEMO_DIR/kafka-up.log" || { cat "$DEMO_DIR/kafka-up.log" >&2; exit 1; }
"$KDIAG" --log-level WARNING topics create >/dev/null

say "starting a worker with the rules in rules/ (log: var/demo/worker.log)"
"$KDIAG" worker >"$DEMO_DIR/worker.log" 2>&1 &
worker_pid=$!

say "replaying samples/corpus (one cluster per file) and samples/histories, holding last states for 1h"
"$KDIAG" --log-level WARNING replay samples/corpus --cluster-per-file --hold 1h >"$DEMO_DIR/replay.log" 2>&1
"$KDIAG" --log-level WARNING replay samples/histories --hold 1h >>"$DEMO_DIR/replay.log" 2>&1
grep '^total:' "$DEMO_DIR/replay.log" | sed 's/^/run_demo: replayed /' >&2

say "alerts as the rule stage commits them:"
"$KDIAG" --log-level WARNING alerts --from-beginning --until-caught-up --format table

say "graded alerts with level and root cause (whose side: USER or PLATFORM):"
"$KDIAG" --log-level WARNING alerts --graded --from-beginning --until-caught-up --format table

if ! kill -0 "$worker_pid" 2>/dev/null; then
    say "the worker exited early; see var/demo/worker.log"
    exit 1
fi
say "done in $(( $(date +%s) - started )) s; stopping the worker and the broker"
