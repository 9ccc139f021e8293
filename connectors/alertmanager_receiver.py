"""`kdiag receive alertmanager`: an HTTP server that turns Alertmanager webhooks into events.

Point an Alertmanager webhook receiver at http://<host>:<port>/alertmanager with send_resolved: true.
Each alert of a payload becomes one Event on the events topic, keyed by its alertname (the rule).
The server responds 200 only after Kafka acknowledged every event, and 503 otherwise, so that
Alertmanager retries the notification. A malformed payload goes to the dead-letter topic with the reason and
gets 400, which Alertmanager does not retry.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaError, KafkaException, Producer

from kdiag.alertcenter.events import Event, alertmanager_payload_to_events
from kdiag.alertcenter.topics import events_topic
from kdiag.codec import codec
from kdiag.errors import DecodeError, KdiagError
from kdiag.settings import Settings

log = logging.getLogger(__name__)

COMPONENT = "receive-alertmanager"
WEBHOOK_PATH = "/alertmanager"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 4 * 1024 * 1024
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024


class PublishError(KdiagError):
    """Kafka did not acknowledge a record in time."""


class EventProducer:
    """Produces Event and DeadLetter records and waits for Kafka to acknowledge them.

    Calls are serialised, so it can be shared by the handlers of one server.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        producer: Any = None,
        delivery_timeout_seconds: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self._timeout_seconds = delivery_timeout_seconds
        self._wall_clock = wall_clock
        self._producer = producer or Producer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                # murmur2 of the key, as the Java client and Faust partition.
                "partitioner": "murmur2_random",
                "message.timeout.ms": int(delivery_timeout_seconds * 1000),
                "allow.auto.create.topics": False,
                "logger": log,
            }
        )
        self._event_codec = codec("Event", settings.schemas_dir)
        self._dead_letter_codec = codec("DeadLetter", settings.schemas_dir)
        self._lock = threading.Lock()

    def publish_events(self, events: Sequence[Event]) -> None:
        records = [(self.topic, event.rule.encode(), self._event_codec.encode(event.to_avro())) for event in events]
        self._produce_and_wait(records)

    def publish_dead_letter(self, origin: str, reason: str, payload: bytes) -> None:
        value = self._dead_letter_codec.encode(
            {
                "origin": origin,
                "component": COMPONENT,
                "reason": reason,
                "payload": bytes(payload[:DEAD_LETTER_PAYLOAD_BYTES]),
                "time": int(self._wall_clock() * 1000),
            }
        )
        self._produce_and_wait([(self.settings.dead_letter_topic, origin.encode(), value)])

    def _produce_and_wait(self, records: list[tuple[str, bytes, bytes]]) -> None:
        failures: list[str] = []
        delivered = 0

        def on_delivery(error: KafkaError | None, message: Any) -> None:
            nonlocal delivered
            if error is None:
                delivered += 1
            else:
                failures.append(f"{message.topic()}: {error.str()}")

        with self._lock:
            try:
                for topic, key, value in records:
                    self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            except (BufferError, KafkaException) as error:
                raise PublishError(f"failed to produce to {records[0][0]}: {error}") from None
            self._producer.flush(self._timeout_seconds)
        if failures:
            raise PublishError(f"delivery failed: {failures[0]}")
        if delivered != len(records):
            raise PublishError(
                f"{len(records) - delivered} of {len(records)} records not acknowledged within "
                f"{self._timeout_seconds:g} s by {self.settings.bootstrap_servers}"
            )

    def close(self) -> None:
        self._producer.flush(self._timeout_seconds)


def build_app(
    producer: EventProducer, default_cluster: str = "", wall_clock: Callable[[], float] = time.time
) -> web.Application:
    """Return the aiohttp application: POST /alertmanager and GET /healthz."""

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        received_ms = int(wall_clock() * 1000)
        origin = f"http {request.remote} POST {request.path}"
        loop = asyncio.get_running_loop()
        try:
            events = alertmanager_payload_to_events(body, received_ms, default_cluster)
        except DecodeError as error:
            log.warning("webhook payload rejected; sending it to the dead-letter topic", extra={"origin": origin, "reason": str(error)})
            try:
                await loop.run_in_executor(None, producer.publish_dead_letter, origin, str(error), body)
            except PublishError as publish_error:
                log.error("dead letter not delivered", extra={"origin": origin, "error": str(publish_error)})
                return web.json_response({"error": f"{error}; the dead letter was not delivered either"}, status=503)
            return web.json_response({"error": str(error)}, status=400)
        try:
            await loop.run_in_executor(None, producer.publish_events, events)
        except PublishError as error:
            log.error("events not delivered; Alertmanager will retry", extra={"origin": origin, "error": str(error)})
            return web.json_response({"error": str(error)}, status=503)
        log.debug("webhook received", extra={"origin": origin, "events": len(events)})
        return web.json_response({"events": len(events)})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(WEBHOOK_PATH, receive)
    app.router.add_get(HEALTH_PATH, health)
    return app


class ReceiverServer:
    """Runs an aiohttp application on a thread with its own event loop, e.g. inside tests."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, name="alertmanager-receiver", daemon=True)
        self.port = 0

    def start(self, timeout_seconds: float = 10.0) -> int:
        """Start listening and return the bound port."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = future.result(timeout_seconds)
        return self.port

    async def _start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self, timeout_seconds: float = 10.0) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout_seconds)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_seconds)
        self._loop.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=["alertmanager"], help="what to receive; only alertmanager so far")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9095, help="TCP port to listen on (default 9095)")
    parser.add_argument(
        "--cluster",
        help="cluster of alerts without a cluster label (default: KDIAG_CLUSTER, else replay)",
    )
    parser.add_argument("--topic", help="events topic (default kdiag-events)")
    parser.add_argument(
        "--delivery-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for Kafka to acknowledge a webhook's events before responding 503 (default 10)",
    )


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    log.info("receiver started", extra={"url": f"http://{host}:{port}{WEBHOOK_PATH}"})
    try:
        await stop.wait()
    finally:
        log.info("receiver stopping")
        await runner.cleanup()


def run(args: argparse.Namespace, settings: Settings) -> int:
    topic = args.topic or events_topic(settings)
    producer = EventProducer(settings, topic, delivery_timeout_seconds=args.delivery_timeout)
    app = build_app(producer, args.cluster or settings.cluster)
    try:
        asyncio.run(_serve(app, args.host, args.port))
    finally:
        producer.close()
    return 0
