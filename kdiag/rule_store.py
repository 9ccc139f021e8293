"""Rules on a compacted Kafka topic, so that every worker picks up a change without restarting.

The rules topic has one RuleRecord per rule name (the record key), and a record without a value
deletes the rule. `kdiag rules apply|list|delete` write and read it, and each worker keeps a RuleFeed
that reads it in a background thread. A rule that fails validation when a worker reads it is
rejected, and the version in force before stays.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from kdiag.codec import codec
from kdiag.errors import DecodeError, KdiagError, RuleError
from kdiag.rules import Rule, RuleSet, parse_rules
from kdiag.settings import Settings

log = logging.getLogger(__name__)

RULE_RECORD = codec("RuleRecord")
READ_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class RuleDocument:
    """One rule as written by a user: its name, its body and where it came from."""

    name: str
    body: Mapping[str, Any]
    source: str


class RuleBook:
    """The rules in force, built from rules-topic records.

    `rule_set` is replaced by a new RuleSet object on every accepted change, so a reader can tell a
    change by identity.
    """

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {}
        self._bodies: dict[str, bytes] = {}
        self.rule_set = RuleSet(())

    def apply(self, name: str, record: Mapping[str, Any] | None) -> str:
        """Apply one rules-topic record. Returns added, changed, unchanged, deleted or rejected."""
        if record is None:
            if self._rules.pop(name, None) is None:
                return "unchanged"
            del self._bodies[name]
            self._rebuild()
            log.info("rule deleted", extra={"rule": name})
            return "deleted"
        try:
            body = orjson.loads(record["document"])
            rules = parse_rules({name: body}, source=record["source"])
        except orjson.JSONDecodeError as error:
            log.error("rule rejected", extra={"rule": name, "problem": f"document is not JSON: {error}"})
            return "rejected"
        except RuleError as error:
            log.error(
                "rule rejected; the previous version stays in force",
                extra={"rule": name, "path": error.path, "problem": error.problem, "source": error.source},
            )
            return "rejected"
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        if self._bodies.get(name) == canonical:
            return "unchanged"
        outcome = "changed" if name in self._rules else "added"
        self._rules[name] = rules[0]
        self._bodies[name] = canonical
        self._rebuild()
        if outcome == "added":
            log.info("rule added", extra={"rule": name, "source": record["source"]})
        else:
            log.info("rule changed", extra={"rule": name, "source": record["source"]})
        return outcome

    def _rebuild(self) -> None:
        self.rule_set = RuleSet(self._rules[name] for name in sorted(self._rules))


def _reader(settings: Settings, topic: str) -> tuple[Consumer, TopicPartition]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{topic}-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    partition = TopicPartition(topic, 0, OFFSET_BEGINNING)
    consumer.assign([partition])
    return consumer, partition


def _decode(message: Any) -> tuple[str, dict[str, Any] | None]:
    name = message.key().decode() if message.key() is not None else ""
    if message.value() is None:
        return name, None
    return name, RULE_RECORD.decode(message.value())


def read_rules(
    settings: Settings, timeout_seconds: float = READ_TIMEOUT_SECONDS, topic: str | None = None
) -> dict[str, dict[str, Any]]:
    """Return the rules on the topic now (the rules topic by default): name -> RuleRecord, deleted
    rules left out."""
    topic = topic or settings.rules_topic
    consumer, _ = _reader(settings, topic)
    records: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            if time.monotonic() > deadline:
                raise KdiagError(f"timed out after {timeout_seconds} s reading {topic}; check the broker")
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    return records
                raise KafkaException(message.error())
            try:
                name, record = _decode(message)
            except DecodeError as error:
                log.warning("rules-topic record skipped", extra={"offset": message.offset(), "reason": str(error)})
                continue
            if record is None:
                records.pop(name, None)
            else:
                records[name] = record
    finally:
        consumer.close()


def _producer(settings: Settings) -> Producer:
    return Producer({"bootstrap.servers": settings.bootstrap_servers, "enable.idempotence": True, "acks": "all"})


def _flush(producer: Producer, topic: str) -> None:
    remaining = producer.flush(READ_TIMEOUT_SECONDS)
    if remaining:
        raise KdiagError(f"{remaining} records to {topic} were not delivered; check the broker and try again")


def publish_rules(settings: Settings, documents: Iterable[RuleDocument]) -> list[str]:
    """Validate every document, then write them all; nothing is written if one is invalid."""
    documents = list(documents)
    for document in documents:
        parse_rules({document.name: document.body}, source=document.source)
    return publish_documents(settings, settings.rules_topic, documents)


def publish_documents(settings: Settings, topic: str, documents: Iterable[RuleDocument]) -> list[str]:
    """Write one RuleRecord per document to a compacted topic, keyed by name, without validating."""
    documents = list(documents)
    producer = _producer(settings)
    applied_at = int(time.time() * 1000)
    for document in documents:
        record = {
            "name": document.name,
            "document": orjson.dumps(document.body).decode(),
            "source": document.source,
            "appliedAt": applied_at,
        }
        producer.produce(topic, key=document.name.encode(), value=RULE_RECORD.encode(record))
    _flush(producer, topic)
    return [document.name for document in documents]


def delete_rules(settings: Settings, names: Iterable[str], topic: str | None = None, what: str = "rule") -> list[str]:
    """Write a tombstone for each name on the topic (the rules topic by default). Raises KdiagError
    for unknown names."""
    topic = topic or settings.rules_topic
    names = list(names)
    existing = read_rules(settings, topic=topic)
    unknown = [name for name in names if name not in existing]
    if unknown:
        raise KdiagError(f"no {what} named {', '.join(unknown)} on {topic}; kdiag {what}s list shows them")
    producer = _producer(settings)
    for name in names:
        producer.produce(topic, key=name.encode(), value=None)
    _flush(producer, topic)
    return names


class RuleFeed:
    """Keeps a RuleBook current from the rules topic in a background thread.

    `start` reads the topic to its end before it returns, so a worker begins with the full rule set.
    With `topic` and `book`, it keeps another book current from another topic of RuleRecords, such
    as the root-cause graphs; the book needs `apply(name, record)`.
    """

    def __init__(self, settings: Settings, topic: str | None = None, book: Any = None) -> None:
        self.settings = settings
        self.topic = topic or settings.rules_topic
        self.book = book if book is not None else RuleBook()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self.records_read = 0

    @property
    def rule_set(self) -> RuleSet:
        with self._lock:
            return self.book.rule_set

    def start(self) -> None:
        self._consumer, _ = _reader(self.settings, self.topic)
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while not self._poll_once(wait_seconds=0.5):
            if time.monotonic() > deadline:
                raise KdiagError(f"timed out after {READ_TIMEOUT_SECONDS} s reading {self.topic}; check the broker")
        log.info("rules topic read", extra={"topic": self.topic, "records": self.records_read})
        self._thread = threading.Thread(target=self._run, name="kdiag-rule-feed", daemon=True)
        self._thread.start()

    def _poll_once(self, wait_seconds: float) -> bool:
        """Apply the next record, if any. Returns True once the end of the topic was reached."""
        assert self._consumer is not None
        message = self._consumer.poll(wait_seconds)
        if message is None:
            return False
        if message.error() is not None:
            if message.error().code() == KafkaError._PARTITION_EOF:
                return True
            log.warning("rules topic read failed", extra={"topic": self.topic, "error": str(message.error())})
            return False
        self.records_read += 1
        try:
            name, record = _decode(message)
        except DecodeError as error:
            log.error("rules-topic record rejected", extra={"offset": message.offset(), "reason": str(error)})
            return False
        with self._lock:
            self.book.apply(name, record)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once(wait_seconds=0.5)
            except KafkaException as error:
                log.warning("rules topic read failed", extra={"topic": self.topic, "error": str(error)})
                time.sleep(1.0)

    def wait_for(self, names: Iterable[str], timeout_seconds: float = READ_TIMEOUT_SECONDS) -> None:
        """Wait until every named rule is in force, e.g. after publishing them."""
        wanted = set(names)
        deadline = time.monotonic() + timeout_seconds
        while not wanted <= set(self.rule_set.names):
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(self.rule_set.names))
                raise KdiagError(f"rules {', '.join(missing)} did not arrive on {self.topic} within {timeout_seconds} s")
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._consumer is not None:
            self._consumer.close()


def read_rule_documents(paths: Iterable[Any]) -> list[RuleDocument]:
    """Read rule documents from files and folders, as the rule loader finds them, without compiling."""
    from kdiag.rules.loader import _read_documents, _rule_files

    return named_documents(
        ((str(path), document) for path in _rule_files(list(paths)) for document in _read_documents(path)), "rule"
    )


def named_documents(documents: Iterable[tuple[str, Any]], what: str) -> list[RuleDocument]:
    """Split (source, document) pairs, each document a mapping of names to bodies, into one
    RuleDocument per name. Raises RuleError for a document that is not a mapping or a repeated name."""
    result: list[RuleDocument] = []
    seen: dict[str, str] = {}
    for source, document in documents:
        if not isinstance(document, Mapping):
            raise RuleError("", "", f"expected a mapping of {what} names to {what} bodies", source)
        for name, body in document.items():
            if name in seen:
                raise RuleError(str(name), "", f"duplicate {what} name, already defined in {seen[name]}", source)
            seen[name] = source
            result.append(RuleDocument(str(name), body, source))
    return result
