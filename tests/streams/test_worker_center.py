"""The alert center stage in a running worker: events in, graded alerts out, on the real broker."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from kdiag.alertcenter.events import alert_to_event
from kdiag.codec import codec

pytestmark = pytest.mark.integration

EVENT = codec("Event")
WATERMARK = codec("Watermark")
T0 = 1_700_000_000_000
RULE = "PodCrashLoopBackOff"


def diagnosis(number: int, status: str, time_ms: int, rule: str = RULE) -> bytes:
    """A DIAGNOSIS event for the pod of application app-<number> in namespace team-<number % 4>."""
    app = f"app-{number}"
    alert = {
        "id": f"alert-{rule}-{number}",
        "fingerprint": f"fp-{rule}-{number}",
        "status": status,
        "rule": rule,
        "cluster": "c1",
        "kind": "Pod",
        "namespace": f"team-{number % 4}",
        "name": f"{app}-0",
        "uid": f"uid-{number}",
        "activeSince": time_ms - 1000,
        "firedAt": time_ms,
        "resolvedAt": time_ms if status == "RESOLVED" else None,
        "context": {},
    }
    obj = {"metadata": {"labels": {"app": app, "tenant": f"tenant-{number % 4}"}}}
    return EVENT.encode(alert_to_event(alert, obj=obj if status == "FIRING" else None).to_avro())


def produce(pipeline, values: list[bytes], rule: str = RULE) -> None:
    producer = Producer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
    for value in values:
        producer.produce(pipeline.settings.events_topic, key=rule.encode(), value=value)
    assert producer.flush(30) == 0


def spreading_stream() -> list[list[bytes]]:
    """Waves of a rule that spreads to more applications and tenants, then recovers, in event time."""
    waves = []
    clock = T0
    for wave in range(6):
        values = []
        for number in range(wave * 20, wave * 20 + 20):
            clock += 1000
            values.append(diagnosis(number, "FIRING", clock))
        for number in range(wave * 20, wave * 20 + 20):
            clock += 1000
            values.append(diagnosis(number, "RESOLVED", clock))
        waves.append(values)
    return waves


def graded_records(pipeline) -> list[bytes]:
    return [orjson.dumps(record, option=orjson.OPT_SORT_KEYS) for record in pipeline.graded_alerts()]


def test_kill_neither_repeats_nor_loses_a_level_change(make_pipeline):
    waves = spreading_stream()
    reference = make_pipeline("ref")
    reference.start_worker()
    for values in waves:
        produce(reference, values)
    reference.wait_for_alerts()
    expected = graded_records(reference)
    types = [orjson.loads(record)["type"] for record in expected]
    assert types.count("LEVEL_CHANGED") > 0
    assert types.count("RESOLVED") == 120

    interrupted = make_pipeline("kill")
    worker = interrupted.start_worker()
    for number, values in enumerate(waves):
        produce(interrupted, values)
        if number == 2:
            deadline = time.monotonic() + 120
            while not interrupted.graded_alerts() and time.monotonic() < deadline:
                time.sleep(0.2)
            interrupted.stop_worker(worker, kill=True)
    interrupted.start_worker()
    interrupted.wait_for_alerts()
    actual = graded_records(interrupted)
    # Every event of the rule is on one partition, so the order, and with it every level, is the same.
    assert len(actual) == len(set(actual)), "a graded alert was emitted twice"
    assert sorted(actual) == sorted(expected)


def firing_tenants(pipeline) -> list[str]:
    return sorted(record["tenant"] for record in pipeline.graded_alerts() if record["type"] == "FIRING")


def test_filters_follow_the_config_topic_without_restart(pipeline, tmp_path: Path):
    worker = pipeline.start_worker()
    pipeline.wait_for_log("worker starting")
    # The first worker published the shipped defaults to the empty config topic.
    shipped = pipeline.kdiag("center", "show")
    assert shipped.returncode == 0, shipped.stderr
    assert json.loads(shipped.stdout)["ruleLevels"]["NodeNotReady"] == "P2"

    config = tmp_path / "center.yaml"
    config.write_text("filters:\n  deny:\n    tenant: [tenant-1]\n")
    applied = pipeline.kdiag("center", "apply", str(config))
    assert applied.returncode == 0, applied.stderr
    # The shipped defaults were applied at start too, so wait for this file's own log line.
    pipeline.wait_for_log(str(config))
    shown = pipeline.kdiag("center", "show")
    assert json.loads(shown.stdout) == {"filters": {"deny": {"tenant": ["tenant-1"]}}}
    produce(pipeline, [diagnosis(number, "FIRING", T0 + number) for number in range(4)])
    pipeline.wait_for_alerts()
    assert firing_tenants(pipeline) == ["tenant-0", "tenant-2", "tenant-3"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("filters:\n  deny:\n    colour: [red]\n")
    refused = pipeline.kdiag("center", "apply", str(bad))
    assert refused.returncode == 1
    assert f"alert center config {bad}: unknown key 'colour' in filters.deny" in refused.stdout

    reset = pipeline.kdiag("center", "reset")
    assert reset.returncode == 0, reset.stderr
    pipeline.wait_for_log("alert center config reset")
    produce(pipeline, [diagnosis(number, "FIRING", T0 + 100 + number) for number in range(4, 6)])
    pipeline.wait_for_alerts()
    assert firing_tenants(pipeline) == ["tenant-0", "tenant-0", "tenant-1", "tenant-2", "tenant-3"]
    assert worker.poll() is None


def test_flapping_reasons_stay_one_alert(pipeline):
    """ImagePullBackOff and ErrImagePull alternate and the restart count climbs: one alert, counted."""
    values = []
    for number in range(6):
        reason = ("ImagePullBackOff", "ErrImagePull")[number % 2]
        alert = {
            "id": f"alert-{number}",
            "fingerprint": "fp-web-0",
            "status": "FIRING",
            "rule": "PodImagePullError",
            "cluster": "c1",
            "kind": "Pod",
            "namespace": "shop",
            "name": "web-0",
            "uid": "uid-web-0",
            "activeSince": T0,
            "firedAt": T0 + number * 60_000,
            "resolvedAt": None,
            "context": {
                "status.containerStatuses[name=app].state.waiting.reason": reason,
                "status.containerStatuses[name=app].restartCount": str(number),
            },
        }
        values.append(EVENT.encode(alert_to_event(alert).to_avro()))
    resolved = {**alert, "status": "RESOLVED", "resolvedAt": T0 + 600_000}
    values.append(EVENT.encode(alert_to_event(resolved).to_avro()))

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    pipeline.settings = pipeline.settings.replace(metrics_port=metrics_port)
    pipeline.start_worker()
    produce(pipeline, values, rule="PodImagePullError")
    watermarks = [
        WATERMARK.encode({"cluster": "c1", "time": T0 + 900_000, "topic": pipeline.settings.changes_topic,
                          "partition": partition, "partitions": pipeline.settings.partitions})
        for partition in range(pipeline.settings.partitions)
    ]
    produce(pipeline, watermarks, rule="KubernetesWarning")
    pipeline.wait_for_alerts()

    records = pipeline.graded_alerts()
    assert [record["type"] for record in records] == ["FIRING", "RESOLVED"]
    assert records[1]["count"] == 6
    assert sorted(records[1]["reasons"]) == ["ErrImagePull", "ImagePullBackOff"]
    assert records[0]["id"] == records[1]["id"]
    # The worker exposes MTTR of what it committed: 600 s from the first alert to the resolution.
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    assert 'kdiag_alertcenter_mttr_seconds_sum{level="P3",rule="PodImagePullError"} 600.0' in exposition
    assert 'kdiag_worker_stage_batch_seconds_count{stage="alert-center"}' in exposition
    # Each cluster's watermark, once every changes partition has sent one.
    gauge = 'kdiag_center_watermark_seconds{cluster="c1"}'
    (watermark_line,) = [line for line in exposition.splitlines() if line.startswith(gauge)]
    assert float(watermark_line.split()[-1]) == (T0 + 900_000) / 1000
    # The worker times the garbage collector's pauses.
    assert 'kdiag_gc_pause_seconds_count{generation="0"}' in exposition
