"""Builders of alert center events for the tests in this folder."""

from __future__ import annotations

import itertools

import pytest

from kdiag.alertcenter.events import DIAGNOSIS, FIRING, Event

MINUTE_MS = 60_000
T0 = 1_700_000_000_000

_ids = itertools.count()


def diagnosis(
    rule: str = "PodImagePullFailing",
    pod: str = "web-7d4b9c6f5-x2k8q",
    time_ms: int = T0,
    reason: str = "ImagePullBackOff",
    status: str = FIRING,
    application: str = "web",
    namespace: str = "shop",
    tenant_label: str | None = None,
    starts_at_ms: int | None = None,
    annotations: dict[str, str] | None = None,
    cluster: str = "c1",
    **fields,
) -> Event:
    """Return a DIAGNOSIS event about one Pod whose labels name its application."""
    labels = {"app.kubernetes.io/name": application} if application else {}
    if tenant_label:
        labels["tenant"] = tenant_label
    return Event(
        id=f"e{next(_ids)}",
        source=DIAGNOSIS,
        source_fingerprint=f"{cluster}/{namespace}/{pod}",
        status=status,
        rule=rule,
        observed_time_ms=time_ms,
        starts_at_ms=starts_at_ms if starts_at_ms is not None else time_ms,
        ends_at_ms=time_ms if status != FIRING else None,
        reason=reason,
        labels=labels,
        annotations=annotations or {},
        cluster=cluster,
        namespace=namespace,
        kind="Pod",
        name=pod,
        **fields,
    )


@pytest.fixture
def make_diagnosis():
    return diagnosis
