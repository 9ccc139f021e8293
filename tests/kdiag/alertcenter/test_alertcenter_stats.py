"""`kdiag stats` over a graded alerts topic on the test broker."""

from __future__ import annotations

import argparse
import io

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import MINUTE_MS, T0, diagnosis

from kdiag import stats_command
from kdiag.alertcenter import AlertCenter, AlertCenterConfig, AlertCenterState
from kdiag.codec import codec
from kdiag.settings import Settings

GRADED = codec("GradedAlert")


def graded_records() -> list[dict]:
    """web: MTTD 120 s, MTTA 300 s, MTTR 1800 s. api: MTTD 240 s, no ack, MTTR 3600 s."""
    center = AlertCenter(AlertCenterConfig.from_mapping({"escalation": []}))
    state = AlertCenterState()
    web = dict(pod="web-7d4b9c6f5-x2k8q", application="web")
    api = dict(pod="api-7d4b9c6f5-x2k8q", application="api")
    outputs = center.process(diagnosis(time_ms=T0 + 2 * MINUTE_MS, starts_at_ms=T0, **web), state)
    outputs += center.process(diagnosis(time_ms=T0 + 5 * MINUTE_MS, starts_at_ms=T0 + MINUTE_MS, **api), state)
    action = {"action": "ACK", "alertId": outputs[0].id, "user": "ana", "time": T0 + 7 * MINUTE_MS}
    outputs += center.acknowledge(action, state)
    outputs += center.process(diagnosis(time_ms=T0 + 32 * MINUTE_MS, status="RESOLVED", **web), state)
    outputs += center.process(diagnosis(time_ms=T0 + 65 * MINUTE_MS, status="RESOLVED", **api), state)
    return [output.to_avro() for output in outputs]


def test_stats_from_topic(kafka_bootstrap, unique_name):
    topic = f"{unique_name}-graded"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 3, 1)], operation_timeout=30).values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": unique_name})
    producer.init_transactions(30)
    producer.begin_transaction()
    for record in graded_records():
        producer.produce(topic, key=record["fingerprint"].encode(), value=GRADED.encode(record))
    producer.produce(topic, key=b"x", value=b"not avro")
    producer.commit_transaction(30)
    # An aborted transaction's records must not count.
    producer.begin_transaction()
    for record in graded_records():
        producer.produce(topic, key=record["fingerprint"].encode(), value=GRADED.encode(record))
    producer.flush(30)
    producer.abort_transaction(30)

    settings = Settings(bootstrap_servers=kafka_bootstrap)
    out = io.StringIO()
    assert stats_command.print_stats(settings, topic, "json", 30, out) == 1
    (row,) = orjson.loads(out.getvalue())
    assert (row["rule"], row["level"]) == ("PodImagePullFailing", "P3")
    assert row["mttd"] == {"count": 2, "meanSeconds": 180.0, "maxSeconds": 240.0}
    assert row["mtta"] == {"count": 1, "meanSeconds": 300.0, "maxSeconds": 300.0}
    assert row["mttr"] == {"count": 2, "meanSeconds": 2700.0, "maxSeconds": 3600.0}

    parser = argparse.ArgumentParser()
    stats_command.add_arguments(parser)
    table = io.StringIO()
    stats_command.print_stats(settings, topic, "table", 30, table)
    lines = table.getvalue().splitlines()
    assert lines[0].split() == ["RULE", "LEVEL", "MTTD", "MTTA", "MTTR", "DETECTED", "ACKED", "RESOLVED"]
    assert lines[1].split() == ["PodImagePullFailing", "P3", "3m", "5m", "45m", "2", "1", "2"]
