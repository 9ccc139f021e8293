"""The alert center: turns diagnoses, Kubernetes Warning Events, probe heartbeats and Alertmanager
alerts into graded, de-duplicated alerts. See docs/alertcenter.md.

The stream agent calls AlertCenter.process for every Event, AlertCenter.acknowledge for every
Action and AlertCenter.advance when event time moves on, and persists AlertCenterState.dirty.
"""

from kdiag.alertcenter.center import AlertCenter
from kdiag.alertcenter.config import AlertCenterConfig
from kdiag.alertcenter.events import (
    Event,
    OwnerRef,
    alert_to_event,
    alertmanager_payload_to_events,
    kubernetes_event_to_event,
    probe_heartbeat_event,
)
from kdiag.alertcenter.graded import GradedAlert, alert_id, parse_alert_id
from kdiag.alertcenter.mttx import MttxMetrics, MttxSummary, measurements
from kdiag.alertcenter.state import AlertCenterState

__all__ = [
    "AlertCenter",
    "AlertCenterConfig",
    "AlertCenterState",
    "Event",
    "GradedAlert",
    "MttxMetrics",
    "MttxSummary",
    "OwnerRef",
    "alert_id",
    "alert_to_event",
    "alertmanager_payload_to_events",
    "kubernetes_event_to_event",
    "measurements",
    "parse_alert_id",
    "probe_heartbeat_event",
]
