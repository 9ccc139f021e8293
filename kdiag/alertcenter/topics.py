"""Names of the alert center's topics, from Settings."""

from __future__ import annotations

from kdiag.settings import Settings


def events_topic(settings: Settings) -> str:
    return settings.events_topic


def graded_alerts_topic(settings: Settings) -> str:
    return settings.graded_alerts_topic


def actions_topic(settings: Settings) -> str:
    return settings.actions_topic
