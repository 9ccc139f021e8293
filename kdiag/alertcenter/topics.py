"""Names of the alert center's topics.

Settings has no fields for them yet, so each name is read from Settings when it has the field and
otherwise takes the default below.
"""

from __future__ import annotations

from kdiag.settings import Settings

# Event records keyed by rule, from the receivers and the converters.
DEFAULT_EVENTS_TOPIC = "kdiag-events"
# GradedAlert records keyed by fingerprint: the alert center's output.
DEFAULT_GRADED_ALERTS_TOPIC = "kdiag-graded-alerts"
# Action records keyed by the alert's rule, from kdiag ack.
DEFAULT_ACTIONS_TOPIC = "kdiag-actions"


def events_topic(settings: Settings) -> str:
    return str(getattr(settings, "events_topic", DEFAULT_EVENTS_TOPIC))


def graded_alerts_topic(settings: Settings) -> str:
    return str(getattr(settings, "graded_alerts_topic", DEFAULT_GRADED_ALERTS_TOPIC))


def actions_topic(settings: Settings) -> str:
    return str(getattr(settings, "actions_topic", DEFAULT_ACTIONS_TOPIC))
