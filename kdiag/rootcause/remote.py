"""Remote plugins: HTTP endpoints declared in a graph file, called with JSON in and JSON out.

Request: POST with Content-Type application/json and the body
{"plugin": name, "diagnosis": {...}, "object": {...}, "related": {...}, "inputs": {node: finding}},
where diagnosis, object and related are DiagnosisContext.to_json() and each input finding has the
fields of the Finding record.

Response: status 200 and a JSON object, either {"values": {"name": "string", ...}} or
{"error": "what went wrong"}. Any other status, a body that is not such an object, or a value that
is not a string gives a FAILED finding.

Only http URLs are accepted, requests go directly (environment proxy settings are ignored), and
redirects are not followed, so a declaration reaches exactly the host it names.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson

from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding, shorten
from kdiag.rootcause.plugins import REMOTE, Outcome, call_in_thread, failed, outcome_of, timed_out

MAX_RESPONSE_BYTES = 1024 * 1024
_BODY_PREVIEW = 200


def check_url(url: Any) -> str | None:
    """Return the problem with a remote plugin URL, or None when it is acceptable."""
    if not isinstance(url, str) or not url:
        return "must be an http URL such as http://127.0.0.1:8080/classify"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  # Raises ValueError for a port out of range.
    except ValueError as error:
        return f"is not a valid URL: {error}"
    if parts.scheme != "http":
        return f"only http URLs are accepted, got scheme {parts.scheme or 'none'!r}"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials, because graph files and logs show URLs"
    if parts.fragment:
        return "must not contain a fragment"
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class RemoteCall:
    """A plugin served over HTTP at url."""

    kind = REMOTE

    def __init__(self, name: str, url: str) -> None:
        problem = check_url(url)
        if problem is not None:
            raise ValueError(f"remote plugin {name} URL {url!r} {problem}")
        self.name = name
        self.url = url

    def call(self, context: DiagnosisContext, inputs: Mapping[str, Finding], timeout_seconds: float) -> Outcome:
        try:
            body = orjson.dumps(
                {"plugin": self.name, **context.to_json(), "inputs": {name: finding.to_avro() for name, finding in inputs.items()}},
                default=str,
            )
        except TypeError as error:
            return failed(self.name, f"could not be called: the context is not JSON: {error}")
        finished, result, error = call_in_thread(self.name, lambda: self._post(body, timeout_seconds), timeout_seconds)
        if not finished:
            return timed_out(self.name, timeout_seconds)
        if error is not None:
            return failed(self.name, f"failed at {self.url}: {type(error).__name__}: {error}")
        return result

    def _post(self, body: bytes, timeout_seconds: float) -> Outcome:
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "kdiag-rootcause"},
        )
        try:
            with _OPENER.open(request, timeout=timeout_seconds) as response:
                payload = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as error:
            preview = _preview(error.read(_BODY_PREVIEW) if error.fp is not None else b"")
            return failed(self.name, f"returned HTTP {error.code} from {self.url}{preview}")
        except urllib.error.URLError as error:
            if isinstance(error.reason, (socket.timeout, TimeoutError)):
                return timed_out(self.name, timeout_seconds)
            return failed(self.name, f"could not be reached at {self.url}: {error.reason}")
        except (socket.timeout, TimeoutError):
            return timed_out(self.name, timeout_seconds)
        except OSError as error:
            return failed(self.name, f"could not be reached at {self.url}: {error}")
        if len(payload) > MAX_RESPONSE_BYTES:
            return failed(self.name, f"returned more than {MAX_RESPONSE_BYTES} bytes from {self.url}")
        try:
            response_json = json.loads(payload)
        except ValueError as error:
            return failed(self.name, f"returned invalid JSON from {self.url}: {error}{_preview(payload)}")
        if not isinstance(response_json, dict):
            return failed(self.name, f"returned invalid output from {self.url}: expected a JSON object, got {type(response_json).__name__}")
        if "error" in response_json:
            return failed(self.name, f"failed: {shorten(str(response_json['error']), 300)}")
        if "values" not in response_json:
            return failed(self.name, f"returned invalid output from {self.url}: the object has neither values nor error")
        return outcome_of(self.name, response_json["values"])


def _preview(body: bytes) -> str:
    if not body:
        return ""
    text = body[:_BODY_PREVIEW].decode("utf-8", errors="replace")
    return f" (body starts {text!r})"
