"""The record model shared by connectors and the worker: resource changes, ticks and topic keys.

Topic key of the changes topic: "<cluster>/<namespace>" for namespaced objects and "<cluster>/" for
cluster-scoped ones. Producers partition by murmur2 of the key, as the Java client does by default.
So every change of one object lands on one partition in source order. All objects of one namespace
meet on the same partition too, which reference rules rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]
CHANGE_TYPES: tuple[str, ...] = ("ADDED", "MODIFIED", "DELETED")


@dataclass(frozen=True, slots=True)
class ResourceChange:
    cluster: str
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    change_type: ChangeType
    observed_time_ms: int
    object_json: bytes

    @property
    def key(self) -> str:
        return topic_key(self.cluster, self.namespace)

    @property
    def object_ref(self) -> str:
        """namespace/kind/name, the form log lines use to name an object."""
        return f"{self.namespace or '-'}/{self.kind}/{self.name}"

    def to_avro(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "resourceVersion": self.resource_version,
            "changeType": self.change_type,
            "observedTime": self.observed_time_ms,
            "object": self.object_json,
        }

    @classmethod
    def from_avro(cls, datum: dict[str, Any]) -> "ResourceChange":
        return cls(
            cluster=datum["cluster"],
            api_version=datum["apiVersion"],
            kind=datum["kind"],
            namespace=datum["namespace"],
            name=datum["name"],
            uid=datum["uid"],
            resource_version=datum["resourceVersion"],
            change_type=datum["changeType"],
            observed_time_ms=datum["observedTime"],
            object_json=datum["object"],
        )


@dataclass(frozen=True, slots=True)
class Tick:
    cluster: str
    time_ms: int
    source: str

    def to_avro(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "time": self.time_ms, "source": self.source}


def topic_key(cluster: str, namespace: str) -> str:
    return f"{cluster}/{namespace}"


def parse_time_ms(value: Any) -> int | None:
    """Convert a Kubernetes timestamp (RFC 3339, e.g. 2021-07-07T09:04:08Z) to epoch milliseconds.

    Returns None for None, empty strings and values that are not timestamps.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        text = value.strip()
        if text.endswith("Z") or text.endswith("z"):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def format_time_ms(time_ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC with seconds, e.g. 2021-07-07T09:04:08Z."""
    moment = datetime.fromtimestamp(time_ms / 1000, tz=timezone.utc)
    if time_ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
