"""Alert center cost per Warning event while one rule has many firing alerts.

Run: .venv/bin/python -m bench.center_state [--firing 100,1000,5000,10000] [--batch 10]

Every forwarded Kubernetes Warning event belongs to the rule KubernetesWarning, so in a large
cluster that one rule can have thousands of firing alerts at once, each of another application.
The benchmark runs the alert center (kdiag.alertcenter) in this process, without Kafka. It feeds it
Warning events of distinct pods, each in an application of its own and 50 ms of event time apart,
so none expires and the count of firing alerts grows. After every --batch events it takes the state
changes, as the worker's alert center stage does before each transaction. For each range of firing alerts up
to the next --firing value it prints the CPU time per event and the bytes of state written per
event, which the worker puts into RocksDB and the changelog. At the end of each range it also
advances the event time 20 times, as watermarks do, each time just past the next alert's expiry,
and prints the CPU time per advance.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench import report
from kdiag.alertcenter import AlertCenter, AlertCenterState
from kdiag.alertcenter.events import Event, kubernetes_event_to_event
from kdiag.model import format_time_ms

START_MS = 1_700_000_000_000
EVENT_SPACING_MS = 50
NAMESPACES = 500
# The alert center's default staleAfter: a Warning alert expires this long after its last event.
STALE_AFTER_MS = 15 * 60 * 1000
ADVANCES = 20


def warning_event(number: int) -> Event:
    """Return the Warning event of the numbered pod, in an application and namespace of its own."""
    time_text = format_time_ms(START_MS + number * EVENT_SPACING_MS)
    namespace = f"team-{number % NAMESPACES}"
    pod = f"app{number}-7d4b9c6f5-x2k8q"
    obj = {
        "apiVersion": "v1",
        "kind": "Event",
        "type": "Warning",
        "reason": "BackOff",
        "message": "Back-off restarting failed container app in pod",
        "metadata": {"name": f"{pod}.17a8f3", "namespace": namespace, "uid": f"event-{number}"},
        "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace, "uid": f"pod-{number}"},
        "firstTimestamp": time_text,
        "lastTimestamp": time_text,
        "count": 1,
    }
    involved = {"metadata": {"name": pod, "namespace": namespace, "labels": {"app": f"app{number}"}}}
    event = kubernetes_event_to_event(obj, "bench", involved)
    assert event is not None
    return event


def measure(checkpoints: list[int], batch: int) -> list[dict[str, Any]]:
    center = AlertCenter()
    state = AlertCenterState()
    results = []
    number = 0
    expired = 0
    for checkpoint in checkpoints:
        first = number
        events = [warning_event(index) for index in range(first, checkpoint)]
        written = 0
        started = time.process_time()
        for start in range(0, len(events), batch):
            for event in events[start:start + batch]:
                center.process(event, state)
            written += sum(len(value) for value in state.take_changes().values() if value is not None)
        seconds = time.process_time() - started
        number = checkpoint
        count = checkpoint - first
        started = time.process_time()
        for _ in range(ADVANCES):
            center.advance(state, now_ms=START_MS + expired * EVENT_SPACING_MS + STALE_AFTER_MS, cluster="bench")
            expired += 1
        advance_seconds = time.process_time() - started
        state.take_changes()
        results.append(
            {
                "firing_from": first,
                "firing_to": checkpoint,
                "cpu_us_per_event": round(seconds / count * 1e6, 1) if count else None,
                "state_bytes_per_event": round(written / count) if count else None,
                "cpu_us_per_advance": round(advance_seconds / ADVANCES * 1e6, 1),
                "firing": len(state.alerts),
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.center_state", description=__doc__.splitlines()[0])
    parser.add_argument("--firing", default="100,1000,5000,10000", help="firing alert counts at which to report (default 100,1000,5000,10000)")
    parser.add_argument("--batch", type=int, default=10, help="events between two takes of the state changes (default 10)")
    args = parser.parse_args(argv)
    checkpoints = sorted({int(value) for value in args.firing.split(",")})
    results = measure(checkpoints, args.batch)
    lines = [
        f"{result['firing_from']:>6} to {result['firing_to']:>6} firing alerts: {result['cpu_us_per_event']} µs of CPU "
        f"and {result['state_bytes_per_event']:,} bytes of state written per event, "
        f"{result['cpu_us_per_advance']} µs of CPU per advance that resolves one alert"
        for result in results
    ]
    report("center_state", lines, {"batch": args.batch, "ranges": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
