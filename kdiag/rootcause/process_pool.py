"""A pool of worker processes that run Python plugins which may crash, leak or block.

Each worker is `python -m kdiag.rootcause.worker_process`, started with subprocess. The parent
sends one JSON line per call on the worker's stdin and reads one JSON line back from its stdout, so
a worker runs one call at a time. The first line the parent sends carries its sys.path, so the
worker imports plugins as the parent would.

A call that passes its deadline gets the worker killed with SIGKILL by PID. A worker that exits
during a call (a crash, os._exit, a signal) or writes something that is not a response line is also
replaced. The replacement is started at once, so the next call finds a process already starting.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from kdiag.errors import KdiagError
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import TIMED_OUT, Finding
from kdiag.rootcause.plugins import PROCESS, Outcome, PythonPlugin, failed, format_seconds, outcome_of, timed_out

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 2
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# How long close() waits for a worker to exit after its stdin closed, before it kills the worker.
CLOSE_WAIT_SECONDS = 1.0
_READ_CHUNK = 65536
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class WorkerGone(Exception):
    """The worker process exited or closed its pipes during a call."""


class WorkerTimeout(Exception):
    """The call's deadline passed before the worker responded."""


class WorkerProtocolError(Exception):
    """The worker wrote something that is not a response line."""


class _Worker:
    """One worker process and the unread part of its output."""

    def __init__(self) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, (_PACKAGE_PARENT, environment.get("PYTHONPATH", ""))))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kdiag.rootcause.worker_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
            close_fds=True,
        )
        self.pid = self.process.pid
        self._stdin = self.process.stdin.fileno()  # type: ignore[union-attr]
        self._stdout = self.process.stdout.fileno()  # type: ignore[union-attr]
        os.set_blocking(self._stdin, False)
        os.set_blocking(self._stdout, False)
        self._buffer = bytearray()
        self._selector = selectors.DefaultSelector()
        hello = orjson.dumps({"sysPath": [entry for entry in sys.path if isinstance(entry, str)]}) + b"\n"
        self._write(hello, time.monotonic() + 5.0)

    def alive(self) -> bool:
        return self.process.poll() is None

    def request(self, line: bytes, deadline: float) -> bytes:
        self._write(line, deadline)
        return self._read_line(deadline)

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        key = self._selector.register(self._stdin, selectors.EVENT_WRITE)
        try:
            while view:
                try:
                    written = os.write(self._stdin, view)
                    view = view[written:]
                    continue
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    raise WorkerGone(self.describe_exit()) from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorkerTimeout()
                self._selector.select(remaining)
        finally:
            self._selector.unregister(key.fileobj)

    def _read_line(self, deadline: float) -> bytes:
        key = self._selector.register(self._stdout, selectors.EVENT_READ)
        try:
            while True:
                end = self._buffer.find(b"\n")
                if end >= 0:
                    line = bytes(self._buffer[:end])
                    del self._buffer[: end + 1]
                    return line
                if len(self._buffer) > MAX_RESPONSE_BYTES:
                    raise WorkerProtocolError(f"the response is longer than {MAX_RESPONSE_BYTES} bytes")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorkerTimeout()
                if not self._selector.select(remaining):
                    continue
                try:
                    chunk = os.read(self._stdout, _READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise WorkerGone(self.describe_exit())
                self._buffer.extend(chunk)
        finally:
            self._selector.unregister(key.fileobj)

    def describe_exit(self) -> str:
        try:
            code = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "closed its output but is still running"
        if code < 0:
            try:
                return f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"

    def kill(self) -> None:
        """Kill the process by PID with SIGKILL, reap it and close the pipes."""
        if self.process.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            log.error("worker process did not exit after SIGKILL", extra={"pid": self.pid})
        self._close_pipes()

    def stop(self, wait_seconds: float) -> None:
        """Close stdin, so the worker exits by itself, and kill it if it has not within wait_seconds."""
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.process.wait(timeout=wait_seconds)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._selector.close()


class ProcessPool:
    """Up to size worker processes, started on first use (or by start) and shared by all threads."""

    kind = PROCESS

    def __init__(self, size: int = DEFAULT_POOL_SIZE) -> None:
        if size < 1:
            raise KdiagError(f"a process pool needs at least 1 worker, got {size}")
        self.size = size
        self._condition = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_all, self._all)

    def start(self) -> None:
        """Start workers up to the pool size, without waiting for them to finish starting."""
        with self._condition:
            self._check_open()
            missing = self.size - len(self._all)
            for _ in range(missing):
                worker = _Worker()
                self._all.append(worker)
                self._idle.append(worker)
            self._condition.notify_all()

    def pids(self) -> list[int]:
        """Return the PIDs of the current worker processes."""
        with self._condition:
            return [worker.pid for worker in self._all]

    def call(self, item: PythonPlugin, context: DiagnosisContext, inputs: Mapping[str, Finding], timeout_seconds: float) -> Outcome:
        """Run one plugin call in a worker, within timeout_seconds, including the wait for a free worker."""
        deadline = time.monotonic() + timeout_seconds
        try:
            request = orjson.dumps(
                {
                    "reference": item.reference,
                    "plugin": item.name,
                    "context": context.to_json(),
                    "inputs": {name: finding.to_avro() for name, finding in inputs.items()},
                },
                default=str,
            ) + b"\n"
        except TypeError as error:
            return failed(item.name, f"could not be called: the context is not JSON: {error}")

        worker = self._acquire(deadline)
        if worker is None:
            return Outcome(
                TIMED_OUT,
                {},
                f"plugin {item.name} timed out after {format_seconds(timeout_seconds)} s waiting for a free worker process "
                f"(pool size {self.size})",
            )
        healthy = False
        try:
            line = worker.request(request, deadline)
            response = orjson.loads(line)
            if not isinstance(response, dict) or not ("result" in response or isinstance(response.get("error"), str)):
                raise WorkerProtocolError("the response is not a result or an error")
            healthy = True
        except WorkerTimeout:
            log.warning("process plugin timed out, killing its worker", extra={"plugin": item.name, "pid": worker.pid})
            return timed_out(item.name, timeout_seconds)
        except WorkerGone as error:
            log.warning("worker process died during a plugin call", extra={"plugin": item.name, "pid": worker.pid, "error": str(error)})
            return failed(item.name, f"failed: its worker process (pid {worker.pid}) {error}")
        except (WorkerProtocolError, orjson.JSONDecodeError) as error:
            return failed(item.name, f"returned invalid output: its worker process wrote a line that is not a response ({error})")
        finally:
            self._release(worker, healthy)
        if "error" in response:
            return failed(item.name, response["error"])
        return outcome_of(item.name, response["result"])

    def close(self) -> None:
        """Stop every worker: close its stdin, then kill it by PID if it has not exited within a second."""
        with self._condition:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
            self._condition.notify_all()
        for worker in workers:
            worker.stop(CLOSE_WAIT_SECONDS)

    def __enter__(self) -> "ProcessPool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise KdiagError("the process pool is closed")

    def _acquire(self, deadline: float) -> _Worker | None:
        with self._condition:
            while True:
                self._check_open()
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        return worker
                    log.warning("idle worker process had exited, replacing it", extra={"pid": worker.pid, "error": worker.describe_exit()})
                    self._all.remove(worker)
                    worker.kill()
                if len(self._all) < self.size:
                    worker = _Worker()
                    self._all.append(worker)
                    return worker
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if healthy:
            with self._condition:
                if not self._closed:
                    self._idle.append(worker)
                    self._condition.notify()
                    return
            worker.stop(CLOSE_WAIT_SECONDS)
            return
        worker.kill()
        with self._condition:
            if worker in self._all:
                self._all.remove(worker)
            if self._closed:
                return
            try:
                replacement = _Worker()
            except OSError as error:
                log.error("cannot start a replacement worker process", extra={"error": str(error)})
                self._condition.notify()
                return
            self._all.append(replacement)
            self._idle.append(replacement)
            self._condition.notify()
        log.info("replaced worker process", extra={"oldPid": worker.pid, "pid": replacement.pid})


def _stop_all(workers: list[_Worker]) -> None:
    for worker in list(workers):
        worker.stop(CLOSE_WAIT_SECONDS)


class ProcessCall:
    """A PythonPlugin that graphs run in a worker process of pool."""

    kind = PROCESS

    def __init__(self, plugin: PythonPlugin, pool: ProcessPool) -> None:
        self.plugin = plugin
        self.pool = pool
        self.name = plugin.name

    def call(self, context: DiagnosisContext, inputs: Mapping[str, Finding], timeout_seconds: float) -> Outcome:
        return self.pool.call(self.plugin, context, inputs, timeout_seconds)
