"""Rules changed on the rules topic take effect in a running worker."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer

from kdiag.codec import codec
from kdiag.rule_store import RULE_RECORD, RuleDocument, delete_rules, publish_rules

pytestmark = pytest.mark.integration

T0 = 1_600_000_000_000
LOG_TIMEOUT_SECONDS = 60


def failed_job_rule(tier: str | None = None) -> dict:
    body = {"resource": "Job", "checkField": [{"field": ["status", "failed"], "nilValue": False}]}
    if tier is not None:
        body["filterField"] = [{"field": ["metadata", "labels", "tier"], "equalValue": [tier]}]
    return body


def job_change(name: str, time_ms: int, tier: str | None = None) -> dict:
    labels = {"tier": tier} if tier else {}
    obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}", "labels": labels},
        "status": {"failed": 3},
    }
    return {
        "cluster": "c1", "apiVersion": "batch/v1", "kind": "Job", "namespace": "team-a", "name": name,
        "uid": f"uid-{name}", "resourceVersion": "1", "changeType": "ADDED", "observedTime": time_ms,
        "object": orjson.dumps(obj),
    }


def produce_changes(pipeline, *changes: dict) -> None:
    producer = Producer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
    batch = codec("ChangeBatch")
    for change in changes:
        producer.produce(pipeline.settings.changes_topic, key=b"c1/team-a", value=batch.encode({"changes": [change], "tick": None}))
    assert producer.flush(30) == 0


def produce_ticks(pipeline, time_ms: int) -> None:
    producer = Producer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
    tick = codec("ChangeBatch").encode({"changes": [], "tick": {"cluster": "c1", "time": time_ms, "source": "test"}})
    for partition in range(pipeline.settings.partitions):
        producer.produce(pipeline.settings.changes_topic, key=b"c1", value=tick, partition=partition)
    assert producer.flush(30) == 0


def wait_for_log(pipeline, message: str, rule: str | None, occurrences: int = 1) -> None:
    deadline = time.monotonic() + LOG_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        lines = [orjson.loads(line[line.index("{"):]) for line in pipeline.worker_log().splitlines() if "{" in line]
        found = [line for line in lines if line.get("message") == message and (rule is None or line.get("rule") == rule)]
        if len(found) >= occurrences:
            return
        time.sleep(0.2)
    raise AssertionError(f"worker did not log {message!r} for {rule} within {LOG_TIMEOUT_SECONDS} s:\n{pipeline.worker_log()[-3000:]}")


def firing_names(alerts: list[dict]) -> set[str]:
    return {alert["name"] for alert in alerts if alert["status"] == "FIRING"}


def test_apply_change_break_delete_observed(make_pipeline, tmp_path):
    empty_rules = tmp_path / "no-rules"
    empty_rules.mkdir()
    pipeline = make_pipeline()
    pipeline.settings = pipeline.settings.replace(rules_dir=empty_rules)
    settings = pipeline.settings
    pipeline.start_worker()
    wait_for_log(pipeline, "partitions assigned", rule=None)

    # Apply: the rule fires for a failed Job.
    publish_rules(settings, [RuleDocument("JobFailedTest", failed_job_rule(), "test")])
    wait_for_log(pipeline, "rule added", "JobFailedTest")
    produce_changes(pipeline, job_change("job-a", T0))
    assert firing_names(pipeline.wait_for_alerts()) == {"job-a"}

    # Change: version 2 applies to critical Jobs only.
    publish_rules(settings, [RuleDocument("JobFailedTest", failed_job_rule(tier="critical"), "test")])
    wait_for_log(pipeline, "rule changed", "JobFailedTest")
    produce_changes(pipeline, job_change("job-b", T0 + 1_000), job_change("job-c", T0 + 2_000, tier="critical"))
    assert firing_names(pipeline.wait_for_alerts()) == {"job-a", "job-c"}

    # Break: an invalid version is rejected and version 2 stays in force.
    broken = {"name": "JobFailedTest", "document": '{"resource": "Job", "checkField": [], "bogus": 1}',
              "source": "test", "appliedAt": T0}
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(settings.rules_topic, key=b"JobFailedTest", value=RULE_RECORD.encode(broken))
    assert producer.flush(30) == 0
    wait_for_log(pipeline, "rule rejected; the previous version stays in force", "JobFailedTest")
    produce_changes(pipeline, job_change("job-d", T0 + 3_000, tier="critical"), job_change("job-e", T0 + 4_000))
    assert firing_names(pipeline.wait_for_alerts()) == {"job-a", "job-c", "job-d"}

    # Delete: every firing alert of the rule resolves.
    delete_rules(settings, ["JobFailedTest"])
    wait_for_log(pipeline, "rule deleted", "JobFailedTest")
    produce_ticks(pipeline, T0 + 10_000)
    alerts = pipeline.wait_for_alerts()
    resolved = {alert["name"]: alert for alert in alerts if alert["status"] == "RESOLVED"}
    assert set(resolved) == {"job-a", "job-c", "job-d"}
    assert {alert["resolveReason"] for alert in resolved.values()} == {"rule deleted"}
