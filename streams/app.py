"""The Faust application of the stream worker: three stages, each an agent.

- `evaluate-rules` consumes the changes topic and writes alerts, and diagnoses for the next stage;
- `find-root-cause` consumes the diagnoses topic and writes DIAGNOSIS events, root cause attached;
- `grade-alerts` consumes the events and actions topics and writes graded alerts.

Each agent takes batches (`take_events`) and hands them to its runtime, which commits each
partition's outputs, state and next offset in one Kafka transaction. After the batch, the agent
commits the consumer group's offsets from those committed next offsets, never from Faust's acks: a
batch can hold records of a partition that was released meanwhile, which the runtime skips, and an
ack would move the group past them. Records that Faust delivers again after a crash or a rebalance
are recognised by offset and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any, Callable

import faust
from faust.types import TP

from kdiag.alertcenter import AlertCenter
from kdiag.rootcause import GraphSet
from kdiag.rules import RuleSet
from kdiag.settings import Settings
from streams.center import CenterRecord, CenterRuntime
from streams.cluster_objects import ClusterObjects
from streams.root_cause import DiagnosisRecord, RootCauseRuntime
from streams.runtime import TRIM_INTERVAL_SECONDS, InputRecord, WorkerRuntime

log = logging.getLogger(__name__)

# Exit status after an error the worker cannot recover from in-process (sysexits EX_SOFTWARE).
EXIT_FATAL = 70


def stop_after_fatal_error(error: Exception) -> None:
    """Exit the process at once.

    Faust would restart a crashed agent after the failed batch, whose events it already delivered, so
    those records would be skipped. Exiting makes the next start resume from the committed
    transactions instead, exactly as after kill -9.
    """
    log.critical("worker stopped after an unrecoverable error", extra={"error": repr(error)}, exc_info=error)
    logging.shutdown()
    os._exit(EXIT_FATAL)


def locked(lock: threading.Lock, function: Callable[..., Any], *args: Any) -> Any:
    with lock:
        return function(*args)


def create_app(
    settings: Settings,
    rules: Callable[[], RuleSet],
    cluster_objects: ClusterObjects | None = None,
    graphs: GraphSet | None = None,
    center: AlertCenter | None = None,
) -> tuple[faust.App, WorkerRuntime]:
    """Build the Faust app. `rules` returns the rule set in force; it is called once per batch.
    `graphs` contains the root-cause graphs in force. Without it, diagnoses pass without a root cause.
    `center` is the alert center with the configuration in force (default: the defaults)."""
    faust_dir = settings.state_dir / "faust"
    faust_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        store="memory://",
        # Faust's own data folder (it keeps no tables here), inside the state folder, not the cwd.
        datadir=str(faust_dir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_interval_seconds,
        stream_wait_empty=False,
        stream_buffer_maxsize=settings.stream_buffer_max_records,
    )
    runtime = WorkerRuntime(settings, rules, cluster_objects)
    # Batches run in a worker thread, so that Faust keeps fetching meanwhile. A stage's lock keeps the
    # event loop from assigning or releasing its partitions in the middle of a batch.
    rule_lock = threading.Lock()
    center_lock = threading.Lock()
    changes = app.topic(settings.changes_topic, key_type=bytes, value_type=bytes, internal=False, acks=False)

    @app.agent(changes, name="evaluate-rules")
    async def evaluate_rules(stream: faust.Stream) -> None:
        async for events in stream.take_events(
            settings.batch_max_records, within=settings.commit_interval_seconds
        ):
            records = [
                InputRecord(event.message.partition, event.message.offset, event.value) for event in events
            ]
            try:
                await asyncio.to_thread(locked, rule_lock, runtime.process, records)
            except Exception as error:
                stop_after_fatal_error(error)
            # The loop variables would keep the batch's record values (up to batch_max_records
            # records of up to max_record_bytes) alive until the next batch arrives.
            del events, records
            offsets = {
                TP(settings.changes_topic, partition): offset
                for partition, offset in runtime.next_offsets().items()
                if offset > 0  # Nothing of the partition processed yet: the group keeps its offset.
            }
            if offsets:
                await app.consumer._commit_offsets(offsets)

    root_cause = RootCauseRuntime(settings, graphs if graphs is not None else GraphSet(pool_size=1))
    # The stages commit these topics' offsets themselves. With acks, Faust would keep each offset gap
    # (transaction marker) in a tree that only its ack-based commits trim, and rebuild it at every new gap.
    diagnoses = app.topic(settings.diagnoses_topic, key_type=bytes, value_type=bytes, internal=False, acks=False)

    @app.agent(diagnoses, name="find-root-cause")
    async def find_root_cause(stream: faust.Stream) -> None:
        async for events in stream.take_events(
            settings.batch_max_records, within=settings.commit_interval_seconds
        ):
            records = [DiagnosisRecord(event.message.partition, event.message.offset, event.value) for event in events]
            try:
                # Plugins block for up to their timeouts; the event loop keeps serving the other agents.
                await asyncio.to_thread(root_cause.process, records)
            except Exception as error:
                stop_after_fatal_error(error)
            # The diagnoses topic is written in transactions; see grade_alerts.
            offsets = {TP(settings.diagnoses_topic, partition): offset for partition, offset in root_cause.next_offsets().items()}
            if offsets:
                await app.consumer._commit_offsets(offsets)

    center_runtime = CenterRuntime(settings, center)
    center_inputs = app.topic(
        settings.events_topic, settings.actions_topic, key_type=bytes, value_type=bytes, internal=False, acks=False
    )

    @app.agent(center_inputs, name="grade-alerts")
    async def grade_alerts(stream: faust.Stream) -> None:
        async for events in stream.take_events(
            settings.batch_max_records, within=settings.commit_interval_seconds
        ):
            records = [
                CenterRecord(event.message.topic, event.message.partition, event.message.offset, event.value)
                for event in events
            ]
            try:
                await asyncio.to_thread(locked, center_lock, center_runtime.process, records)
            except Exception as error:
                stop_after_fatal_error(error)
            # The input topics are written in transactions, so their offsets have gaps (commit and abort
            # markers, aborted records). Faust 0.15 stops committing at a gap right after its committed
            # offset, which a killed writer's aborted transaction leaves, so the group offsets are
            # committed here from what the transactions recorded.
            # NOTE: _commit_offsets is a private method of faust-streaming's Consumer (0.15.3).
            offsets = {TP(topic, partition): offset for (topic, partition), offset in center_runtime.next_offsets().items()}
            if offsets:
                await app.consumer._commit_offsets(offsets)

    @app.timer(TRIM_INTERVAL_SECONDS)
    async def release_memory() -> None:
        # Trims after the last batch of a burst, which WorkerRuntime.process cannot do itself. It runs
        # on the event loop, because a trim takes 15 ms or less (see release_free_memory). Waiting
        # for rule_lock in a pool thread moved the next batches to other threads' malloc arenas, and
        # bench.memory then measured 252 MiB instead of 196 MiB at 250,000 tracked objects.
        runtime.release_memory_if_due()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        with rule_lock:
            runtime.assign(tp.partition for tp in assigned if tp.topic == settings.changes_topic)
        root_cause.assign({tp.partition for tp in assigned if tp.topic == settings.diagnoses_topic})
        with center_lock:
            center_runtime.assign({tp.partition for tp in assigned if tp.topic in (settings.events_topic, settings.actions_topic)})

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        with rule_lock:
            runtime.release(tp.partition for tp in revoked if tp.topic == settings.changes_topic)
        root_cause.release({tp.partition for tp in revoked if tp.topic == settings.diagnoses_topic})
        with center_lock:
            center_runtime.release({tp.partition for tp in revoked if tp.topic in (settings.events_topic, settings.actions_topic)})

    @app.on_before_shutdown.connect
    async def on_shutdown(sender: Any, **kwargs: Any) -> None:
        with rule_lock:
            runtime.close()
        root_cause.close()
        with center_lock:
            center_runtime.close()

    return app, runtime
