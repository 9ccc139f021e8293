"""RFC 3339 timestamps, as Kubernetes writes them (2021-07-07T09:04:08Z, with optional fraction and offset)."""

from __future__ import annotations

import calendar
import re
from typing import Any

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_rfc3339_ms(value: Any) -> int | None:
    """Convert an RFC 3339 timestamp to epoch milliseconds, or return None when value is not one.

    The fraction is truncated to milliseconds. The offset is required (Z or +hh:mm), as RFC 3339
    requires. Invalid dates such as 2021-02-30 and values that are not strings return None.
    A leap second (:60) counts as the last millisecond of its minute.
    """
    if type(value) is not str:
        return None
    parsed = _RFC3339.fullmatch(value)
    if parsed is None:
        return None
    year, month, day, hour, minute, second = (int(parsed[index]) for index in range(1, 7))
    if year == 0 or not 1 <= month <= 12:
        # Year 0 is not a valid year for Kubernetes or Python's datetime.
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 60:
        return None
    milliseconds = int((parsed[7] or "0")[:3].ljust(3, "0"))
    if second == 60:
        second, milliseconds = 59, 999
    if parsed[9]:
        offset_hours, offset_minutes = int(parsed[10]), int(parsed[11])
        if offset_hours > 23 or offset_minutes > 59:
            return None
        offset_seconds = (offset_hours * 3600 + offset_minutes * 60) * (1 if parsed[9] == "+" else -1)
    else:
        offset_seconds = 0
    seconds = calendar.timegm((year, month, day, hour, minute, second)) - offset_seconds
    return seconds * 1000 + milliseconds
