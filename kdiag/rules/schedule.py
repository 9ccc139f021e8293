"""Check times of periodic rules (the rule keys every and jitter), on event time."""

from __future__ import annotations

import hashlib
import math


def check_offset_fraction(rule_name: str, uid: str) -> float:
    """Return a fraction in [0, 1) derived from the rule name and object uid.

    It is the first 8 bytes of a BLAKE2b digest, so it is the same in every process and every run,
    unlike Python's salted hash().
    """
    digest = hashlib.blake2b(f"{rule_name}\x1f{uid}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def next_check_ms(rule_name: str, uid: str, after_ms: int, every_seconds: float, jitter: float) -> int:
    """Return the first check time of a periodic rule for one object that is later than after_ms.

    Check times of one (rule, object) pair are k * period + offset for every integer k, in epoch
    milliseconds of event time. The period is every_seconds rounded to whole milliseconds (at least
    1). The offset is check_offset_fraction(rule_name, uid) * jitter * period, rounded down, so
    jitter 0 puts every object on the same grid of multiples of the period, and jitter 1 spreads the
    objects evenly over the whole period. The result is always in (after_ms, after_ms + period].

    Raises ValueError when every_seconds is not a finite number > 0 or jitter is not in [0, 1].
    """
    if isinstance(every_seconds, bool) or not isinstance(every_seconds, (int, float)):
        raise ValueError(f"every_seconds must be a number of seconds > 0, got {every_seconds!r}")
    if not math.isfinite(every_seconds) or every_seconds <= 0:
        raise ValueError(f"every_seconds must be a finite number of seconds > 0, got {every_seconds!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be a fraction between 0 and 1, got {jitter!r}")
    if isinstance(after_ms, bool) or not isinstance(after_ms, int):
        raise ValueError(f"after_ms must be an integer number of epoch milliseconds, got {after_ms!r}")

    period_ms = max(1, round(every_seconds * 1000))
    offset_ms = min(period_ms - 1, math.floor(check_offset_fraction(rule_name, uid) * jitter * period_ms))
    # The last check time at or before after_ms, then one period later.
    previous = (after_ms - offset_ms) // period_ms * period_ms + offset_ms
    return previous + period_ms
