#!/usr/bin/env bash
# Run a single-node Kafka broker (KRaft, broker and controller in one JVM) on
# 127.0.0.1 for development and tests. The jars come from Maven Central
# through tools/kafka/pom.xml, so no Kafka tarball is needed.
#
# Usage: scripts/kafka.sh fetch|up|down|status
#
# Environment:
#   KAFKA_PORT      PLAINTEXT listener port (default 19092). The KRaft
#                   controller listens on KAFKA_PORT+1.
#   KAFKA_HOME      jar cache, with the jars in lib/ (default <repo>/.cache/kafka)
#   KAFKA_DATA_DIR  server.properties, log dirs, broker.log and broker.pid
#                   (default <repo>/var/kafka-<KAFKA_PORT>)
#   KAFKA_HEAP      maximum JVM heap, in java -Xmx syntax (default 768m)
#   KAFKA_START_TIMEOUT  seconds that up waits for the broker (default 60)
#   KAFKA_STOP_TIMEOUT   seconds that down waits after SIGTERM before it
#                        sends SIGKILL (default 30)
set -euo pipefail

# Keep in step with tools/kafka/pom.xml and the image tag in docker-compose.yml.
readonly KAFKA_VERSION=3.9.1

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly POM="$REPO_ROOT/tools/kafka/pom.xml"

KAFKA_PORT=${KAFKA_PORT:-19092}
# Absolute, because the broker runs with these paths in its config and down
# recognizes the broker by the absolute path of its server.properties.
KAFKA_HOME=$(realpath -m -- "${KAFKA_HOME:-$REPO_ROOT/.cache/kafka}")
KAFKA_HEAP=${KAFKA_HEAP:-768m}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-60}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}

log() {
    echo "kafka.sh: $*" >&2
}

die() {
    log "$@"
    exit 1
}

is_uint() {
    [[ $1 =~ ^[0-9]+$ ]]
}

is_uint "$KAFKA_PORT" && ((KAFKA_PORT >= 1 && KAFKA_PORT <= 65534)) \
    || die "invalid KAFKA_PORT '$KAFKA_PORT': expected a port number from 1 to 65534, because the controller uses KAFKA_PORT+1"
is_uint "$KAFKA_START_TIMEOUT" || die "invalid KAFKA_START_TIMEOUT '$KAFKA_START_TIMEOUT': expected whole seconds"
is_uint "$KAFKA_STOP_TIMEOUT" || die "invalid KAFKA_STOP_TIMEOUT '$KAFKA_STOP_TIMEOUT': expected whole seconds"

readonly CONTROLLER_PORT=$((KAFKA_PORT + 1))
KAFKA_DATA_DIR=$(realpath -m -- "${KAFKA_DATA_DIR:-$REPO_ROOT/var/kafka-$KAFKA_PORT}")

readonly LIB_DIR="$KAFKA_HOME/lib"
# Written after Maven succeeds, so an interrupted fetch is never taken as a cache.
readonly LIB_STAMP="$LIB_DIR/.fetched-$KAFKA_VERSION"

# ---------------------------------------------------------------------------
# fetch

jars_cached() {
    [[ -f $LIB_STAMP ]]
}

fetch_jars() {
    command -v mvn >/dev/null \
        || die "mvn not found: install Maven (apt-get install maven) or copy the Kafka $KAFKA_VERSION jars into $LIB_DIR"
    mkdir -p "$KAFKA_HOME"

    # Serialize concurrent fetches into the same cache, for example two test
    # sessions that start on a fresh clone at the same time.
    exec 8>"$KAFKA_HOME/.fetch.lock"
    flock 8
    if jars_cached; then
        exec 8>&-
        return 0
    fi

    log "fetching the Kafka $KAFKA_VERSION jars from Maven Central into $LIB_DIR"
    local staging="$KAFKA_HOME/lib.partial"
    local maven_log="$KAFKA_HOME/fetch.log"
    rm -rf "$staging"
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
        -DoutputDirectory="$staging" >"$maven_log" 2>&1; then
        tail -n 30 "$maven_log" >&2
        die "Maven failed to fetch the Kafka jars (full output in $maven_log); check that Maven Central is reachable, then run 'scripts/kafka.sh fetch' again"
    fi
    [[ -f $staging/kafka_2.13-$KAFKA_VERSION.jar ]] \
        || die "Maven finished but $staging has no kafka_2.13-$KAFKA_VERSION.jar; check $POM"

    # Replace the whole directory, so jars of an older version never stay on
    # the classpath next to the new ones.
    touch "$staging/.fetched-$KAFKA_VERSION"
    rm -rf "$LIB_DIR"
    mv "$staging" "$LIB_DIR"
    exec 8>&-
    log "fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars"
}

cmd_fetch() {
    if jars_cached; then
        return 0
    fi
    fetch_jars
}

# ---------------------------------------------------------------------------
# Broker process

pid_file() {
    echo "$KAFKA_DATA_DIR/broker.pid"
}

# Succeed when the process exists and is not a zombie. A broker that exits
# after up has returned is no child of any shell here, and where no init
# process reaps it, kill -0 alone would report it as running.
pid_alive() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/stat ]]; then
        state=$(sed -E 's/^.*\) ([A-Z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
        [[ $state != Z ]]
    fi
}

# Succeed when the process is the broker of this data dir. up passes the
# absolute path of server.properties to kafka.Kafka, so a PID that the
# system has reused for another program never matches.
pid_is_our_broker() {
    local pid=$1
    pid_alive "$pid" || return 1
    [[ -r /proc/$pid/cmdline ]] || return 0
    tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF "$KAFKA_DATA_DIR/server.properties"
}

# Print the PID of the broker of this data dir, or fail when none is running.
running_pid() {
    local pid
    [[ -f $(pid_file) ]] || return 1
    pid=$(<"$(pid_file)")
    is_uint "$pid" || return 1
    pid_is_our_broker "$pid" || return 1
    echo "$pid"
}

# Print the PLAINTEXT port written in this data dir's server.properties.
configured_port() {
    sed -n 's|^listeners=PLAINTEXT://127\.0\.0\.1:\([0-9]*\),.*|\1|p' \
        "$KAFKA_DATA_DIR/server.properties" 2>/dev/null
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Succeed when the broker on 127.0.0.1:$1 responds to a Metadata request
# with at least one broker, which clients need before they can produce or
# consume. It uses only the Python standard library, so it works before
# `make setup` has created .venv.
broker_ready() {
    python3 - "$1" <<'PYTHON'
import socket
import struct
import sys

port = int(sys.argv[1])
client_id = b"kafka.sh"
# Metadata request (api key 3) version 4: request header v1, then a null
# topic array (all topics) and allow_auto_topic_creation=false.
body = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id + struct.pack(">ib", -1, 0)


def receive(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


try:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        receive(sock, 4)  # the response size, not needed to read the header
        # Response: correlation id, throttle time, then the broker array.
        correlation_id, _throttle_ms, broker_count = struct.unpack(">iii", receive(sock, 12))
except (OSError, struct.error):
    sys.exit(1)
sys.exit(0 if correlation_id == 7 and broker_count >= 1 else 1)
PYTHON
}

show_logs() {
    local file
    for file in "$KAFKA_DATA_DIR/broker.out" "$KAFKA_DATA_DIR/broker.log"; do
        if [[ -s $file ]]; then
            log "last lines of $file:"
            tail -n 40 "$file" >&2
        fi
    done
}

write_server_properties() {
    cat >"$KAFKA_DATA_DIR/server.properties" <<EOF
# Written by scripts/kafka.sh up on every start; edits here are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$KAFKA_DATA_DIR/logs

# A single broker: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# One partition each for the internal topics, instead of 50, so that the
# first consumer group or transaction after a fresh start waits for one
# partition leader instead of fifty.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1

group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
num.partitions=1
EOF
}

write_log4j_properties() {
    cat >"$KAFKA_DATA_DIR/log4j.properties" <<EOF
# Written by scripts/kafka.sh up on every start; edits here are overwritten.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$KAFKA_DATA_DIR/broker.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=INFO
EOF
}

# Format the log dir for KRaft once, with a new random cluster id.
format_storage() {
    [[ -f $KAFKA_DATA_DIR/logs/meta.properties ]] && return 0

    local cluster_id
    cluster_id=$(java -Dlog4j.configuration="file:$KAFKA_DATA_DIR/log4j.properties" -cp "$LIB_DIR/*" kafka.tools.StorageTool random-uuid 2>>"$KAFKA_DATA_DIR/broker.out") \
        || { show_logs; die "kafka.tools.StorageTool random-uuid failed; check the Java install and the jars in $LIB_DIR"; }
    java -Dlog4j.configuration="file:$KAFKA_DATA_DIR/log4j.properties" -cp "$LIB_DIR/*" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DATA_DIR/server.properties" \
        >>"$KAFKA_DATA_DIR/broker.out" 2>&1 \
        || { show_logs; die "formatting the log dir $KAFKA_DATA_DIR/logs failed; remove $KAFKA_DATA_DIR and run 'scripts/kafka.sh up' again"; }
}

cmd_up() {
    command -v java >/dev/null \
        || die "java not found: install Java 17 or later (apt-get install openjdk-17-jre-headless)"
    cmd_fetch
    mkdir -p "$KAFKA_DATA_DIR"

    # Serialize up and down on one data dir. The broker must not inherit
    # this descriptor, or it would hold the lock for its whole life.
    exec 9>"$KAFKA_DATA_DIR/.lock"
    flock 9

    local pid
    if pid=$(running_pid); then
        local port
        port=$(configured_port)
        if [[ $port != "$KAFKA_PORT" ]]; then
            die "the broker from $KAFKA_DATA_DIR is already running (PID $pid) on port ${port:-unknown}, not on KAFKA_PORT=$KAFKA_PORT; run 'scripts/kafka.sh down' with the same KAFKA_DATA_DIR first"
        fi
        log "broker already running (PID $pid) on 127.0.0.1:$KAFKA_PORT from $KAFKA_DATA_DIR"
        return 0
    fi
    rm -f "$(pid_file)"

    local port
    for port in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
        if port_in_use "$port"; then
            die "port $port on 127.0.0.1 is already in use by another process; set KAFKA_PORT to a free port (the controller needs KAFKA_PORT+1 too)"
        fi
    done

    write_server_properties
    write_log4j_properties
    : >"$KAFKA_DATA_DIR/broker.out"
    format_storage

    # The G1 settings of KAFKA_JVM_PERFORMANCE_OPTS in Kafka's bin/kafka-run-class.sh.
    nohup java "-Xmx$KAFKA_HEAP" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j.configuration="file:$KAFKA_DATA_DIR/log4j.properties" \
        -cp "$LIB_DIR/*" kafka.Kafka "$KAFKA_DATA_DIR/server.properties" \
        >>"$KAFKA_DATA_DIR/broker.out" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$(pid_file)"

    local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    until broker_ready "$KAFKA_PORT"; do
        if ! pid_alive "$pid"; then
            show_logs
            rm -f "$(pid_file)"
            die "the broker (PID $pid) exited during startup; see the log lines above"
        fi
        if ((SECONDS >= deadline)); then
            show_logs
            die "timed out after ${KAFKA_START_TIMEOUT}s waiting for the broker (PID $pid) on 127.0.0.1:$KAFKA_PORT; it is still running, so stop it with 'scripts/kafka.sh down' before you retry"
        fi
        sleep 0.5
    done
    log "broker started (PID $pid) on 127.0.0.1:$KAFKA_PORT, data in $KAFKA_DATA_DIR"
}

cmd_down() {
    if [[ ! -d $KAFKA_DATA_DIR ]]; then
        log "no broker data dir at $KAFKA_DATA_DIR, so nothing to stop"
        return 0
    fi
    exec 9>"$KAFKA_DATA_DIR/.lock"
    flock 9

    if [[ ! -f $(pid_file) ]]; then
        log "no broker running from $KAFKA_DATA_DIR (no broker.pid)"
        return 0
    fi
    local pid
    if ! pid=$(running_pid); then
        log "removing the stale $(pid_file): its process is gone or is not this data dir's broker"
        rm -f "$(pid_file)"
        return 0
    fi

    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
    while pid_alive "$pid" && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if pid_alive "$pid"; then
        log "the broker (PID $pid) did not stop within ${KAFKA_STOP_TIMEOUT}s of SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while pid_alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if pid_alive "$pid"; then
            die "the broker (PID $pid) is still running after SIGKILL; check it with 'ps -p $pid'"
        fi
    fi
    rm -f "$(pid_file)"
    log "broker stopped (PID $pid) from $KAFKA_DATA_DIR"
}

# Exit 0 when the broker of this data dir is running and responds to
# Metadata requests, 1 otherwise.
cmd_status() {
    local pid port
    if ! pid=$(running_pid); then
        log "no broker running from $KAFKA_DATA_DIR"
        return 1
    fi
    port=$(configured_port)
    if [[ -n $port ]] && broker_ready "$port"; then
        log "broker running (PID $pid) on 127.0.0.1:$port, data in $KAFKA_DATA_DIR"
        return 0
    fi
    log "broker process running (PID $pid) from $KAFKA_DATA_DIR, but it does not answer on 127.0.0.1:${port:-unknown}; see $KAFKA_DATA_DIR/broker.log"
    return 1
}

usage() {
    cat >&2 <<EOF
usage: scripts/kafka.sh fetch|up|down|status
  fetch   download the Kafka $KAFKA_VERSION jars into \$KAFKA_HOME/lib unless cached
  up      start a broker on 127.0.0.1:\$KAFKA_PORT and wait until it answers
  down    stop the broker of \$KAFKA_DATA_DIR by the PID in its broker.pid
  status  report whether the broker of \$KAFKA_DATA_DIR is running
Settings and defaults are listed at the top of this script.
EOF
}

main() {
    if (($# != 1)); then
        usage
        exit 2
    fi
    case $1 in
        fetch) cmd_fetch ;;
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        -h | --help | help) usage ;;
        *)
            log "unknown command '$1'"
            usage
            exit 2
            ;;
    esac
}

main "$@"
