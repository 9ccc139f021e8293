"""Main program of a ProcessPool worker: runs plugin calls read from stdin, one JSON line each.

Protocol: the first line is {"sysPath": [...]}, then each request is {"reference", "plugin",
"context", "inputs"} and gets one response line, {"result": <what the plugin returned>} or
{"error": "<problem>"}. The worker exits when stdin closes.

The protocol uses copies of the original stdin and stdout descriptors. Descriptor 0 then reads
/dev/null and descriptor 1 writes to stderr, so a plugin that reads stdin or prints cannot break
the protocol.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, BinaryIO


def main() -> int:
    # Ctrl-C in a terminal reaches the whole process group. The parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests: BinaryIO = os.fdopen(os.dup(0), "rb")
    responses: BinaryIO = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)

    hello = json.loads(requests.readline() or b"{}")
    parent_path = [entry for entry in hello.get("sysPath", []) if isinstance(entry, str)]
    sys.path[:] = parent_path + [entry for entry in sys.path if entry not in parent_path]

    cache: dict[str, Any] = {}
    for line in requests:
        if not line.strip():
            continue
        response = _handle(line, cache)
        responses.write(response + b"\n")
        responses.flush()
    return 0


def _handle(line: bytes, cache: dict[str, Any]) -> bytes:
    from kdiag.rootcause.context import DiagnosisContext
    from kdiag.rootcause.findings import Finding, PluginError
    from kdiag.rootcause.plugins import PythonPlugin, resolve_reference

    try:
        request = json.loads(line)
        reference = request["reference"]
        target = cache.get(reference)
        if target is None:
            target = cache[reference] = resolve_reference(reference)
        function = target.function if isinstance(target, PythonPlugin) else target
        context = DiagnosisContext.from_json(request["context"])
        inputs = {name: Finding.from_avro(data) for name, data in request["inputs"].items()}
        result = function(context, inputs)
    except PluginError as error:
        return _encode({"error": f"failed: {error}"})
    except Exception as error:  # noqa: BLE001  # Any plugin error becomes a FAILED finding.
        return _encode({"error": f"raised {type(error).__name__}: {error}"})
    try:
        return json.dumps({"result": result}).encode()
    except (TypeError, ValueError) as error:
        return _encode({"error": f"returned invalid output: {error}"})


def _encode(response: dict[str, str]) -> bytes:
    return json.dumps(response).encode()


if __name__ == "__main__":
    sys.exit(main())
