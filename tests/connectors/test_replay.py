"""`kdiag replay`: option parsing, tick scheduling, and whole replays against the test broker."""

from __future__ import annotations

import argparse
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from connectors import replay
from connectors.readers import ChangeBuilder, LocatedChange, expand_inputs, read_file
from kdiag import cli
from kdiag.codec import codec
from kdiag.errors import ConfigError
from kdiag.model import parse_time_ms
from kdiag.settings import Settings

DATA = Path(__file__).parent / "data"
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
CORPUS = SAMPLES / "corpus"
HISTORY = SAMPLES / "histories" / "01-pulumi-cloud-ready-checks-workflows.jsonl"
BATCH = codec("ChangeBatch")
DEAD_LETTER = codec("DeadLetter")
DAY_MS = 86_400_000


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    return parser.parse_args(list(argv))


# Options


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("0", 0),
        ("300s", 300_000),
        ("10m", 600_000),
        ("1h", 3_600_000),
        ("5d", 5 * DAY_MS),
        ("1h30m", 5_400_000),
        ("1d2h3m4s", DAY_MS + 2 * 3_600_000 + 3 * 60_000 + 4000),
        ("250ms", 250),
        ("1.5h", 5_400_000),
        ("90", 90_000),
    ],
)
def test_duration_parsing(text, expected_ms):
    assert replay.parse_duration_ms(text) == expected_ms


@pytest.mark.parametrize("text", ["", "5 days", "h", "10x", "1h-5m", "-5s", "m10"])
def test_invalid_duration_shows_value_and_example(text):
    with pytest.raises(ConfigError) as raised:
        replay.parse_duration_ms(text)
    assert repr(text) in str(raised.value)
    assert "1h30m" in str(raised.value)


def test_start_parsing():
    assert replay.parse_start_ms("2020-01-01T00:00:00Z") == parse_time_ms("2020-01-01T00:00:00Z")
    assert replay.parse_start_ms("2020-01-01T01:00:00+01:00") == parse_time_ms("2020-01-01T00:00:00Z")


@pytest.mark.parametrize("text", ["yesterday", "2020-01-01", "2020-01-01T00:00:00", "2020-13-01T00:00:00Z"])
def test_invalid_start_shows_value_and_example(text):
    with pytest.raises(ConfigError) as raised:
        replay.parse_start_ms(text)
    assert repr(text) in str(raised.value)
    assert "2020-01-01T00:00:00Z" in str(raised.value)


def test_options_defaults():
    options = replay.parse_options(parse_args("x.yaml"), Settings(cluster="lab"))
    assert options == replay.ReplayOptions(
        cluster="lab",
        cluster_per_file=False,
        start_ms=parse_time_ms("2020-01-01T00:00:00Z"),
        step_ms=1000,
        hold_ms=0,
        tick_interval_ms=10_000,
    )


def test_invalid_hold_names_option():
    with pytest.raises(ConfigError, match="--hold.*'forever'"):
        replay.parse_options(parse_args("x.yaml", "--hold", "forever"), Settings())


def test_cluster_per_file_names_clusters_after_files(tmp_path):
    for name in ("case-a", "case-b"):
        (tmp_path / f"{name}.yaml").write_text(
            "- {apiVersion: v1, kind: Node, metadata: {name: n1}, status: {phase: Running}}\n"
        )
    publisher = RecordingChangePublisher()
    options = replay.parse_options(parse_args("x.yaml", "--cluster-per-file"), Settings())
    replay.replay(sorted(tmp_path.glob("*.yaml")), options, publisher, [])
    assert [change.cluster for change in publisher.changes] == ["case-a", "case-b"]
    assert len({change.uid for change in publisher.changes}) == 2
    assert sorted(cluster for cluster, _ in publisher.ticks) == ["case-a", "case-b"]


class RecordingChangePublisher:
    def __init__(self) -> None:
        self.changes = []
        self.ticks: list[tuple[str, int]] = []

    def publish_change(self, change, origin) -> None:
        self.changes.append(change)

    def publish_tick(self, cluster: str, time_ms: int) -> None:
        self.ticks.append((cluster, time_ms))

    def publish_dead_letter(self, origin, reason, payload) -> None:
        raise AssertionError(f"unexpected dead letter at {origin}: {reason}")


def test_cluster_with_slash_rejected():
    with pytest.raises(ConfigError, match="--cluster"):
        replay.parse_options(parse_args("x.yaml", "--cluster", "a/b"), Settings())


# Tick schedule


class RecordingPublisher:
    def __init__(self) -> None:
        self.ticks: list[tuple[str, int]] = []

    def publish_tick(self, cluster: str, time_ms: int) -> None:
        self.ticks.append((cluster, time_ms))


def test_tick_when_clock_moves_past_interval():
    publisher = RecordingPublisher()
    schedule = replay.TickSchedule(publisher, interval_ms=1000)
    for time_ms in (0, 0, 500, 1200, 1500, 1700, 5000):
        schedule.before_change("c", time_ms)
    # 0 is ticked when 500 arrives. 500 is less than 1000 after that tick, so the next tick is
    # 1200, when 1500 arrives. 1500 and 1700 are less than 1000 after 1200, so 5000 ticks nothing.
    assert publisher.ticks == [("c", 0), ("c", 1200)]
    schedule.finish(hold_ms=300_000)
    assert publisher.ticks[-1] == ("c", 305_000)


def test_ticks_are_per_cluster():
    publisher = RecordingPublisher()
    schedule = replay.TickSchedule(publisher, interval_ms=1000)
    schedule.before_change("a", 0)
    schedule.before_change("b", 10_000)
    schedule.before_change("a", 5000)
    schedule.finish(hold_ms=0)
    assert publisher.ticks == [("a", 0), ("a", 5000), ("b", 10_000)]


def test_zero_interval_ticks_every_advance():
    publisher = RecordingPublisher()
    schedule = replay.TickSchedule(publisher, interval_ms=0)
    for time_ms in (1, 2, 2, 3):
        schedule.before_change("c", time_ms)
    assert publisher.ticks == [("c", 1), ("c", 2)]


# Exit codes without a broker


class FailingProducer:
    """Accepts every record and reports each delivery as failed."""

    def __init__(self) -> None:
        self._pending = []

    def produce(self, topic, value, key, partition=None, on_delivery=None):
        self._pending.append((SimpleNamespace(topic=lambda: topic, partition=lambda: partition or 0), on_delivery))

    def poll(self, timeout):
        return 0

    def flush(self, timeout):
        for message, callback in self._pending:
            callback(KafkaError(KafkaError.REQUEST_TIMED_OUT), message)
        self._pending.clear()
        return 0

    def list_topics(self, topic=None, timeout=None):
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None, 1: None})})


@pytest.fixture(autouse=True)
def keep_pytest_logging(monkeypatch):
    """Stop cli.main from replacing the root log handlers that pytest's capture relies on."""
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)


def test_usage_errors_exit_2(capsys):
    assert cli.main(["replay", "--no-create-topics", "--hold", "soon", str(DATA / "objects.jsonl")]) == 2
    assert "'soon'" in capsys.readouterr().err
    assert cli.main(["replay", "--no-create-topics", "--start", "noon", str(DATA / "objects.jsonl")]) == 2
    assert "'noon'" in capsys.readouterr().err
    assert cli.main(["replay", "--no-create-topics", str(DATA / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err


def test_failed_delivery_exits_1(monkeypatch, capsys):
    producer = FailingProducer()
    original = replay.Publisher
    monkeypatch.setattr(replay, "Publisher", lambda settings, source: original(settings, source, producer=producer))
    args = parse_args("--no-create-topics", str(DATA / "objects.jsonl"))
    assert replay.run(args, Settings()) == 1
    captured = capsys.readouterr()
    assert "delivery failed: kdiag-changes[" in captured.err
    assert "objects.jsonl: 3 changes" in captured.out


# Against the broker


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes
    value: dict


def topic_settings(bootstrap: str, prefix: str) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap,
        changes_topic=f"{prefix}-changes",
        alerts_topic=f"{prefix}-alerts",
        dead_letter_topic=f"{prefix}-dead",
        app_id=f"{prefix}-worker",
        partitions=3,
    )


def consume_all(settings: Settings, topic: str, decoder, timeout_seconds: float = 60.0) -> list[Record]:
    """Read every record of a topic up to its current end, in partition and offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{topic}-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = sorted(metadata.partitions)
        ends = {
            partition: consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            for partition in partitions
        }
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
        records: list[Record] = []
        positions = {partition: 0 for partition in partitions}
        deadline = time.monotonic() + timeout_seconds
        while any(positions[partition] < ends[partition] for partition in partitions):
            assert time.monotonic() < deadline, f"timed out reading {topic}: at {positions}, end {ends}"
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error() is not None:
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                continue
            records.append(Record(message.partition(), message.offset(), message.key(), decoder.decode(message.value())))
            positions[message.partition()] = message.offset() + 1
        return sorted(records, key=lambda record: (record.partition, record.offset))
    finally:
        consumer.close()


def expected_changes(paths: list[Path], cluster: str = "replay") -> list[dict]:
    """Return the changes a replay of `paths` publishes, in file order, from the readers alone."""
    builder = ChangeBuilder(cluster, parse_time_ms("2020-01-01T00:00:00Z"), 1000)
    changes = []
    for path in paths:
        changes += [item.change.to_avro() for item in read_file(path, builder) if isinstance(item, LocatedChange)]
    return changes


def run_replay(settings: Settings, *argv: str) -> int:
    return replay.run(parse_args(*argv), settings)


@pytest.fixture(scope="module")
def corpus_replay(kafka_bootstrap, tmp_path_factory):
    """Replay the corpus and the history file once with a five-day hold, and read the changes topic."""
    settings = topic_settings(kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}")
    assert run_replay(settings, str(CORPUS), str(HISTORY), "--hold", "5d") == 0
    records = consume_all(settings, settings.changes_topic, BATCH)
    paths = expand_inputs([str(CORPUS), str(HISTORY)])
    return SimpleNamespace(settings=settings, records=records, expected=expected_changes(paths))


def change_identity(change: dict) -> tuple:
    return (change["cluster"], change["uid"], change["resourceVersion"], change["changeType"], change["observedTime"])


@pytest.mark.integration
def test_every_change_published_once(corpus_replay):
    published = [change for record in corpus_replay.records for change in record.value["changes"]]
    assert len(published) == len(corpus_replay.expected) == 214
    assert sorted(map(change_identity, published)) == sorted(map(change_identity, corpus_replay.expected))
    assert sorted(change["object"] for change in published) == sorted(change["object"] for change in corpus_replay.expected)


@pytest.mark.integration
def test_per_key_order_is_file_order(corpus_replay):
    published: dict[str, list] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in corpus_replay.records:
        for change in record.value["changes"]:
            key = f"{change['cluster']}/{change['namespace']}"
            assert record.key == key.encode()
            published[key].append(change_identity(change))
            partitions[key].add(record.partition)
    expected: dict[str, list] = defaultdict(list)
    for change in corpus_replay.expected:
        expected[f"{change['cluster']}/{change['namespace']}"].append(change_identity(change))
    assert published == expected
    assert all(len(used) == 1 for used in partitions.values())


@pytest.mark.integration
def test_ticks_follow_the_changes_they_cover(corpus_replay):
    ticks_by_partition: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for partition in range(3):
        last_tick: dict[str, int] = {}
        for record in (record for record in corpus_replay.records if record.partition == partition):
            # A record's changes come before its tick, and a tick at T after every change of its
            # cluster with time <= T.
            for change in record.value["changes"]:
                assert change["observedTime"] > last_tick.get(change["cluster"], -1), change_identity(change)
            tick = record.value["tick"]
            if tick is None:
                continue
            if record.value["changes"]:
                assert record.key.startswith(tick["cluster"].encode() + b"/")
            else:
                assert record.key == tick["cluster"].encode()
            assert tick["source"] == "replay"
            assert tick["time"] >= last_tick.get(tick["cluster"], tick["time"])
            last_tick[tick["cluster"]] = tick["time"]
            ticks_by_partition[partition].append((tick["cluster"], tick["time"]))
    assert ticks_by_partition[0] == ticks_by_partition[1] == ticks_by_partition[2]
    assert len(ticks_by_partition[0]) > 22
    # Ticks ride in change records where a partition had changes of the cluster.
    assert any(record.value["changes"] and record.value["tick"] is not None for record in corpus_replay.records)


@pytest.mark.integration
def test_hold_ticks_at_last_time_plus_hold(corpus_replay):
    last_time: dict[str, int] = {}
    for change in corpus_replay.expected:
        last_time[change["cluster"]] = max(change["observedTime"], last_time.get(change["cluster"], 0))
    assert len(last_time) == 22
    for partition in range(3):
        final_tick: dict[str, int] = {}
        for record in corpus_replay.records:
            if record.partition == partition and record.value["tick"] is not None:
                final_tick[record.value["tick"]["cluster"]] = record.value["tick"]["time"]
        assert final_tick == {cluster: time_ms + 5 * DAY_MS for cluster, time_ms in last_time.items()}


@pytest.mark.integration
def test_replay_is_deterministic(kafka_bootstrap, unique_name):
    outputs = []
    for run in ("a", "b"):
        settings = topic_settings(kafka_bootstrap, f"{unique_name}{run}")
        assert run_replay(settings, str(CORPUS / "02-image-pull-unauthorized.yaml"), str(HISTORY), "--hold", "1h") == 0
        records = consume_all(settings, settings.changes_topic, BATCH)
        outputs.append([(record.partition, record.offset, record.key, record.value) for record in records])
    assert outputs[0] == outputs[1]


@pytest.mark.integration
def test_malformed_lines_dead_lettered(kafka_bootstrap, unique_name, capsys):
    settings = topic_settings(kafka_bootstrap, unique_name)
    path = DATA / "malformed.jsonl"
    assert run_replay(settings, str(path), "--cluster", "lab") == 0
    assert "malformed.jsonl: 2 changes, 0 bookmarks skipped, 4 rejected" in capsys.readouterr().out

    dead = consume_all(settings, settings.dead_letter_topic, DEAD_LETTER)
    letters = [record.value for record in dead]
    assert [letter["origin"] for letter in letters] == [f"{path}:{line}" for line in (2, 3, 4, 5)]
    assert all(letter["component"] == "replay" for letter in letters)
    assert "incomplete JSON value" in letters[0]["reason"]
    assert "no kind" in letters[2]["reason"]
    assert "REPLACED" in letters[3]["reason"]
    assert b"kindless" in letters[2]["payload"]

    changes = [change for record in consume_all(settings, settings.changes_topic, BATCH) for change in record.value["changes"]]
    assert [(change["cluster"], change["name"]) for change in changes] == [("lab", "first"), ("lab", "last")]


@pytest.mark.integration
def test_cli_replays_watch_events(kafka_bootstrap, unique_name, monkeypatch, capsys):
    settings = topic_settings(kafka_bootstrap, unique_name)
    for name, value in (
        ("KDIAG_CHANGES_TOPIC", settings.changes_topic),
        ("KDIAG_ALERTS_TOPIC", settings.alerts_topic),
        ("KDIAG_DEAD_LETTER_TOPIC", settings.dead_letter_topic),
        ("KDIAG_APP_ID", settings.app_id),
        ("KDIAG_PARTITIONS", "3"),
    ):
        monkeypatch.setenv(name, value)
    code = cli.main(["--bootstrap-servers", kafka_bootstrap, "replay", str(DATA / "watch-events-pretty.json"), "--hold", "10m"])
    assert code == 0
    output = capsys.readouterr().out
    assert "watch-events-pretty.json: 4 changes, 1 bookmark skipped, 1 rejected" in output
    assert "total: 1 file" in output

    records = consume_all(settings, settings.changes_topic, BATCH)
    changes = [change for record in records for change in record.value["changes"]]
    assert [change["changeType"] for change in changes] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    final = [record.value["tick"]["time"] for record in records if record.value["tick"] is not None][-1]
    assert final == parse_time_ms("2024-03-01T10:15:00Z")
    dead = consume_all(settings, settings.dead_letter_topic, DEAD_LETTER)
    assert [record.value["reason"] for record in dead] == ["watch ERROR event: too old resource version: 1001 (1004)"]


@pytest.mark.integration
def test_missing_topic_without_creation_exits_2(kafka_bootstrap, unique_name, capsys):
    settings = topic_settings(kafka_bootstrap, unique_name)
    args = ["--bootstrap-servers", kafka_bootstrap, "replay", "--no-create-topics", str(DATA / "objects.jsonl")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDIAG_CHANGES_TOPIC", settings.changes_topic)
        assert cli.main(args) == 2
    assert f"topic {settings.changes_topic} does not exist" in capsys.readouterr().err
