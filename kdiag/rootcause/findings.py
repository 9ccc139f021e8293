"""Findings: what one plugin call of a root-cause graph found, in the form of the Finding schema record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdiag.errors import KdiagError

OK = "OK"
FAILED = "FAILED"
TIMED_OUT = "TIMED_OUT"
SKIPPED = "SKIPPED"
STATUSES = (OK, FAILED, TIMED_OUT, SKIPPED)

# Limits on what a plugin may return, so that one plugin cannot bloat the RootCause record.
MAX_VALUES = 64
MAX_VALUE_LENGTH = 2000
MAX_ERROR_LENGTH = 500


class PluginError(KdiagError):
    """Raised by a plugin for a failure it detected itself. The finding gets status FAILED and this message."""


class InvalidOutput(KdiagError):
    """A plugin returned something other than a mapping of strings to strings."""


@dataclass(frozen=True, slots=True)
class Finding:
    """The result of one node of a graph: the plugin's values, or why there are none.

    status is OK, FAILED, TIMED_OUT or SKIPPED (the node's `when` condition did not hold). values is
    empty unless status is OK. duration_ms is the wall time of the plugin call, 0 for a skipped node.
    """

    node: str
    plugin: str
    status: str
    values: Mapping[str, str] = field(default_factory=dict)
    error: str = ""
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status == OK

    def get(self, name: str, default: str = "") -> str:
        """Return the value `name`, or default when the finding is not OK or has no such value."""
        if self.status != OK:
            return default
        return self.values.get(name, default)

    def to_avro(self) -> dict[str, Any]:
        """Return the finding in the field names of the Finding record in schemas/root_cause.avsc."""
        return {
            "node": self.node,
            "plugin": self.plugin,
            "status": self.status,
            "values": dict(self.values),
            "error": self.error,
            "durationMs": self.duration_ms,
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> "Finding":
        """Build a finding from its record form. Raises InvalidOutput on missing fields or wrong types."""
        if not isinstance(data, Mapping):
            raise InvalidOutput(f"a finding must be a JSON object, got {type(data).__name__}")
        status = data.get("status")
        if status not in STATUSES:
            raise InvalidOutput(f"finding status must be one of {', '.join(STATUSES)}, got {status!r}")
        node = data.get("node", "")
        plugin = data.get("plugin", "")
        error = data.get("error", "")
        duration = data.get("durationMs", 0)
        if not isinstance(node, str) or not isinstance(plugin, str) or not isinstance(error, str):
            raise InvalidOutput("finding node, plugin and error must be strings")
        if isinstance(duration, bool) or not isinstance(duration, int):
            raise InvalidOutput(f"finding durationMs must be an integer, got {type(duration).__name__}")
        return cls(node, plugin, status, check_values(data.get("values", {})), error, duration)


def check_values(raw: Any) -> dict[str, str]:
    """Return raw as a dict of strings, or raise InvalidOutput saying what is wrong with it.

    Values longer than MAX_VALUE_LENGTH characters are cut, because a long message is still useful.
    More than MAX_VALUES entries, non-string keys or values, and empty keys are rejected.
    """
    if not isinstance(raw, Mapping):
        raise InvalidOutput(f"expected a mapping of string values, got {type(raw).__name__}")
    if len(raw) > MAX_VALUES:
        raise InvalidOutput(f"expected at most {MAX_VALUES} values, got {len(raw)}")
    values: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise InvalidOutput(f"value names must be non-empty strings, got {key!r}")
        if not isinstance(value, str):
            raise InvalidOutput(f"value {key!r} must be a string, got {type(value).__name__}")
        values[key] = shorten(value, MAX_VALUE_LENGTH)
    return values


def shorten(text: str, limit: int) -> str:
    """Cut text to at most limit characters, ending in an ellipsis when it was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"
