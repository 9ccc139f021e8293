"""The alert center: filter, enrich, de-duplicate, grade and escalate events into graded alerts.

Every method is a pure function of its arguments and the state it is given: time comes from the
events' observedTime, the actions' time and the `now_ms` of advance(), never from the wall clock.
The caller owns the state, feeds every partition's inputs in order, and persists `state.dirty`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from kdiag.alertcenter.config import (
    LEVELS,
    AlertCenterConfig,
    format_duration_ms,
    level_index,
    more_severe,
)
from kdiag.alertcenter.enrichment import NamespaceLabels, alert_fingerprint, enrich
from kdiag.alertcenter.events import FIRING as EVENT_FIRING
from kdiag.alertcenter.events import KUBERNETES_EVENT, Event
from kdiag.alertcenter.graded import (
    ACKNOWLEDGED,
    FIRING,
    LEVEL_CHANGED,
    REPEAT,
    RESOLVED,
    GradedAlert,
    alert_id,
    parse_alert_id,
)
from kdiag.alertcenter.state import AlertCenterState, AlertEntry, Member, RuleEntry
from kdiag.errors import DecodeError

RESOLVE_REASON_RESOLVED = "resolved"
RESOLVE_REASON_EXPIRED = "expired"


def application_key(tenant: str, namespace: str, application: str) -> str | None:
    """Return the key that identifies an application: by tenant, or by namespace without a tenant."""
    if not application:
        return None
    return f"{tenant or namespace}/{application}"


def level_of(base_level: str, rule: RuleEntry) -> str:
    """Return the base level raised by the rule's escalation, never above P1."""
    index = max(1, level_index(base_level) - rule.raise_levels)
    return more_severe(LEVELS[index - 1], rule.fixed_level) or base_level


class AlertCenter:
    """Turns events and acknowledgements into graded, de-duplicated alerts.

    `clock`, if given, returns the current event time in ms for advance() calls without `now_ms`.
    `namespace_labels(cluster, namespace)`, if given, returns a namespace's labels for the tenant
    lookup. It must return the same labels on a restarted worker, or restored alerts may get other
    tenants.
    """

    def __init__(
        self,
        config: AlertCenterConfig | None = None,
        clock: Callable[[], int] | None = None,
        namespace_labels: NamespaceLabels | None = None,
    ) -> None:
        self._config = config or AlertCenterConfig()
        self._clock = clock
        self._namespace_labels = namespace_labels

    @property
    def config(self) -> AlertCenterConfig:
        return self._config

    def reconfigure(self, raw: Mapping[str, Any] | AlertCenterConfig) -> AlertCenterConfig:
        """Replace the configuration. On invalid input, raise ConfigError and keep the previous one.

        NOTE: a change of identityLabels or of the enrichment settings changes the fingerprints of
        new events, so alerts that are firing then do not merge with those events and resolve only
        by expiry or an acknowledgement of their own.
        """
        config = raw if isinstance(raw, AlertCenterConfig) else AlertCenterConfig.from_mapping(raw)
        self._config = config
        return config

    # Inputs

    def process(self, event: Event, state: AlertCenterState) -> list[GradedAlert]:
        """Apply one event and return the graded alerts it causes, in order.

        A FIRING event that passes the filters creates an alert (FIRING) or adds to one (count,
        lastSeen, and REPEAT once the repeat interval passed since the last notification). A RESOLVED
        event removes its source from the alert, which resolves when no source is left. RESOLVED
        events are not filtered, so that a filter change never leaves an alert firing.
        """
        config = self._config
        enrichment = enrich(event, config, self._namespace_labels)
        fingerprint = alert_fingerprint(event, enrichment, config)
        outputs: list[GradedAlert] = []
        entry = state.alerts.get(fingerprint)
        if entry is not None:
            # Sources whose expiry this event's time has passed ended before it, whether advance() ran or not.
            outputs = self._expire(entry, event.observed_time_ms, state)
        if event.status != EVENT_FIRING:
            return outputs + self._end_member(fingerprint, event, state)

        base_level = config.base_level(event.rule, event.labels)
        rejection = config.filters.rejection(
            {
                "namespace": event.namespace,
                "application": enrichment.application,
                "tenant": enrichment.tenant,
                "rule": event.rule,
                "reason": event.reason,
                "level": base_level,
            }
        )
        if rejection is not None:
            return outputs

        now = event.observed_time_ms
        member = Member(last_seen_ms=now, expires_at_ms=self._member_expiry(event))
        entry = state.alerts.get(fingerprint)
        if entry is not None:
            return outputs + self._repeat(entry, event, member, state)

        top = enrichment.top_owner
        entry = AlertEntry(
            fingerprint=fingerprint,
            id=alert_id(event.rule, fingerprint, now),
            rule=event.rule,
            source=event.source,
            base_level=base_level,
            level=base_level,
            level_reason="",
            count=1,
            first_seen_ms=now,
            last_seen_ms=now,
            last_notified_ms=now,
            starts_at_ms=event.starts_at_ms,
            members={event.source_fingerprint: member},
            owner_kind=top.kind if top else "",
            owner_name=top.name if top else "",
            owner_source=enrichment.owner_source,
            application=enrichment.application,
            tenant=enrichment.tenant,
            node=enrichment.node,
            zone=enrichment.zone,
            cluster=event.cluster,
            namespace=event.namespace,
        )
        self._update_details(entry, event)
        state.put_alert(entry)
        return outputs + self._join_episode(entry, now, state)

    def acknowledge(self, action: Mapping[str, Any], state: AlertCenterState) -> list[GradedAlert]:
        """Apply an Action record (schemas/action.avsc); return ACKNOWLEDGED for its alert's first ack.

        An ack of an alert that is not firing, of an earlier firing of it, or of an alert already
        acknowledged changes nothing and returns no record. Raises DecodeError on an invalid action.
        """
        if action.get("action") != "ACK":
            raise DecodeError(f"Action field action: expected ACK, got {action.get('action')!r}")
        identifier = action.get("alertId")
        if not isinstance(identifier, str):
            raise DecodeError(f"Action field alertId: expected a string, got {identifier!r}")
        time_ms = action.get("time")
        if not isinstance(time_ms, int):
            raise DecodeError(f"Action field time: expected a time in ms, got {time_ms!r}")
        _, fingerprint = parse_alert_id(identifier)
        entry = state.alerts.get(fingerprint)
        if entry is None or entry.id != identifier or entry.acked_at_ms is not None:
            return []
        entry.acked_at_ms = time_ms
        entry.acked_by = str(action.get("user") or "")
        state.put_alert(entry)
        return [self._graded(ACKNOWLEDGED, time_ms, entry, state)]

    def advance(self, state: AlertCenterState, now_ms: int | None = None, cluster: str | None = None) -> list[GradedAlert]:
        """Expire sources whose quiet period ended by event time `now_ms` and resolve alerts left
        without a source (resolveReason "expired"; time and resolvedAt are the expiry time).

        With `cluster`, only that cluster's alerts expire. Call it with a time up to which every event
        of the cluster has been processed, such as the cluster's watermark. It checks only the alerts
        whose earliest source expiry has passed, in fingerprint order, so its cost does not grow with
        the alerts that keep firing.
        """
        if now_ms is None:
            if self._clock is None:
                raise ValueError("advance() needs now_ms when the AlertCenter has no clock")
            now_ms = self._clock()
        clusters = [cluster] if cluster is not None else state.clusters()
        outputs: list[GradedAlert] = []
        for name in clusters:
            for fingerprint in state.due_alerts(name, now_ms):
                entry = state.alerts.get(fingerprint)
                # An alert that resolved since has no entry. One that keeps some sources is put again,
                # which pushes its next expiry.
                if entry is not None and entry.cluster == name:
                    outputs.extend(self._expire(entry, now_ms, state))
        return outputs

    def _expire(self, entry: AlertEntry, now_ms: int, state: AlertCenterState) -> list[GradedAlert]:
        """Remove the alert's sources that expired by `now_ms`, and resolve the alert when none is left."""
        expired = [
            member.expires_at_ms
            for member in entry.members.values()
            if member.expires_at_ms is not None and member.expires_at_ms <= now_ms
        ]
        if not expired:
            return []
        entry.members = {
            name: member
            for name, member in entry.members.items()
            if member.expires_at_ms is None or member.expires_at_ms > now_ms
        }
        if entry.members:
            state.put_alert(entry)
            return []
        # The alert ended at its last source's expiry, a time that does not depend on when this runs.
        resolved_at = max(expired)
        return self._resolve(entry, resolved_at, resolved_at, RESOLVE_REASON_EXPIRED, state)

    # Transitions

    def _member_expiry(self, event: Event) -> int | None:
        # Only Kubernetes Events lack a RESOLVED counterpart. Alertmanager's webhook sends firing alerts
        # with endsAt unset (Go's zero time) and a resolved notification when they end.
        if event.source == KUBERNETES_EVENT:
            return event.observed_time_ms + self._config.stale_after_ms
        return None

    def _update_details(self, entry: AlertEntry, event: Event) -> None:
        entry.add_reason(event.reason)
        entry.message = event.message
        entry.labels = dict(event.labels)
        entry.annotations = dict(event.annotations)
        entry.kind = event.kind
        entry.name = event.name
        if event.root_cause is not None:
            entry.root_cause = copy.deepcopy(dict(event.root_cause))

    def _repeat(self, entry: AlertEntry, event: Event, member: Member, state: AlertCenterState) -> list[GradedAlert]:
        now = event.observed_time_ms
        entry.count += 1
        entry.last_seen_ms = max(entry.last_seen_ms, now)
        previous = entry.members.get(event.source_fingerprint)
        if previous is not None and previous.last_seen_ms > now:
            member = previous  # An older event never shortens a member's life.
        entry.members[event.source_fingerprint] = member
        self._update_details(entry, event)
        state.put_alert(entry)
        if now - entry.last_notified_ms < self._config.repeat_interval_ms:
            return []
        entry.last_notified_ms = now
        return [self._graded(REPEAT, now, entry, state)]

    def _end_member(self, fingerprint: str, event: Event, state: AlertCenterState) -> list[GradedAlert]:
        entry = state.alerts.get(fingerprint)
        if entry is None or event.source_fingerprint not in entry.members:
            return []
        del entry.members[event.source_fingerprint]
        if entry.members:
            state.put_alert(entry)
            return []
        now = event.observed_time_ms
        resolved_at = event.ends_at_ms if event.ends_at_ms is not None else now
        return self._resolve(entry, now, resolved_at, RESOLVE_REASON_RESOLVED, state)

    def _resolve(
        self, entry: AlertEntry, now: int, resolved_at: int, reason: str, state: AlertCenterState
    ) -> list[GradedAlert]:
        """Resolve the alert; when it was the rule's last firing alert, end the episode too."""
        rule = state.rules.get(entry.rule) or RuleEntry(entry.rule)
        outputs = [self._graded(RESOLVED, now, entry, state, resolved_at=resolved_at, resolve_reason=reason)]
        state.delete_alert(entry.fingerprint)
        rule.leave(entry.fingerprint)
        if not rule.firing:
            applications, tenants = len(rule.applications), len(rule.tenants)
            rule.end_episode(now)
            self._prune_history(rule, now)
            if entry.level != entry.base_level:
                previous_level = entry.level
                entry.level = entry.base_level
                entry.level_reason = f"no alert of rule {entry.rule} fires any more; back to {entry.base_level}"
                outputs.append(
                    GradedAlert(
                        type=LEVEL_CHANGED,
                        status=RESOLVED,
                        time_ms=now,
                        entry=entry.snapshot(),
                        affected_applications=applications,
                        affected_tenants=tenants,
                        previous_level=previous_level,
                        resolved_at_ms=resolved_at,
                        resolve_reason=reason,
                    )
                )
        state.put_rule(rule)
        return outputs

    def _join_episode(self, entry: AlertEntry, now: int, state: AlertCenterState) -> list[GradedAlert]:
        """Add a new alert to its rule's episode, escalate if needed, and return FIRING first, then
        LEVEL_CHANGED for the rule's other firing alerts whose level the escalation changed."""
        rule = state.rules.get(entry.rule) or RuleEntry(entry.rule)
        if rule.episode_start_ms is None:
            rule.episode_start_ms = now
            self._prune_history(rule, now)
        rule.join(entry.fingerprint)

        affected_more = False
        key = application_key(entry.tenant, entry.namespace, entry.application)
        if key is not None and key not in rule.applications:
            rule.add_application(key, now)
            affected_more = True
        if entry.tenant and entry.tenant not in rule.tenants:
            rule.add_tenant(entry.tenant, now)
            affected_more = True
        escalated = affected_more and self._escalate(rule, now)

        entry.level = level_of(entry.base_level, rule)
        entry.level_reason = rule.escalation_reason if entry.level != entry.base_level else ""
        state.put_rule(rule)

        outputs = [self._graded(FIRING, now, entry, state)]
        if not escalated:
            # The other alerts' levels follow from the rule's escalation, which did not change.
            return outputs
        for fingerprint in rule.firing:
            other = state.alerts.get(fingerprint)
            if other is None or other is entry:
                continue
            level = level_of(other.base_level, rule)
            if level == other.level:
                continue
            previous_level = other.level
            other.level = level
            other.level_reason = rule.escalation_reason
            other.last_notified_ms = now
            state.put_alert(other)
            outputs.append(self._graded(LEVEL_CHANGED, now, other, state, previous_level=previous_level))
        return outputs

    def _escalate(self, rule: RuleEntry, now: int) -> bool:
        """Raise the rule's escalation to the most severe that the met thresholds give. Returns whether
        it changed.

        Escalation only rises during an episode; it drops back when the episode ends. The previous
        window has the length of the episode so far and ends where the episode started.
        """
        assert rule.episode_start_ms is not None
        applications = len(rule.applications)
        tenants = len(rule.tenants)
        window_ms = now - rule.episode_start_ms
        previous_start = rule.episode_start_ms - window_ms
        previous = 0
        if window_ms > 0:
            previous = sum(
                1
                for first_ms, last_ms in rule.history.values()
                if last_ms >= previous_start and first_ms < rule.episode_start_ms
            )
        growth = applications / previous if previous else None

        met = []
        for threshold in self._config.escalation:
            if applications < threshold.min_applications or tenants < threshold.min_tenants:
                continue
            if threshold.min_growth and (growth is None or growth < threshold.min_growth):
                continue
            met.append(threshold)
        raise_levels = max([rule.raise_levels] + [threshold.raise_levels for threshold in met])
        fixed_level = rule.fixed_level
        for threshold in met:
            fixed_level = more_severe(fixed_level, threshold.level)
        if (raise_levels, fixed_level) == (rule.raise_levels, rule.fixed_level):
            return False
        rule.raise_levels = raise_levels
        rule.fixed_level = fixed_level
        rule.escalation_reason = (
            f"affects {_count(applications, 'application')} in {_count(tenants, 'tenant')}, "
            f"up from {previous} in the previous {format_duration_ms(window_ms)}; "
            + ", ".join(threshold.describe() for threshold in met)
        )
        return True

    def _prune_history(self, rule: RuleEntry, now: int) -> None:
        rule.prune_history(now - self._config.escalation_history_ms)

    # Output

    def _graded(
        self,
        kind: str,
        time_ms: int,
        entry: AlertEntry,
        state: AlertCenterState,
        previous_level: str | None = None,
        resolved_at: int | None = None,
        resolve_reason: str = "",
    ) -> GradedAlert:
        rule = state.rules.get(entry.rule)
        return GradedAlert(
            type=kind,
            status=RESOLVED if kind == RESOLVED else FIRING,
            time_ms=time_ms,
            entry=entry.snapshot(),
            affected_applications=len(rule.applications) if rule else 0,
            affected_tenants=len(rule.tenants) if rule else 0,
            previous_level=previous_level,
            resolved_at_ms=resolved_at,
            resolve_reason=resolve_reason,
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
