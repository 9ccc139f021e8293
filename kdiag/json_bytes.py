"""JSON serialization into bytes objects that are no larger than their content.

orjson 3.12 and later return a bytes object whose memory block is at least 4 KiB and grows by
doubling, and they never shrink it: len() and sys.getsizeof() show the content, but the allocator
keeps the whole block. Values that wait in memory, such as the state writes a batch stages until
its commit, would each hold 4 KiB or more. dumps copies the result into a bytes object of its own
size, at the cost of copying the content once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson


def dumps(value: Any, option: int = 0, default: Callable[[Any], Any] | None = None) -> bytes:
    """Return orjson.dumps(value, default=default, option=option) in a bytes object of its own size."""
    # Joining with an empty bytes object copies the content: CPython's join returns its only item
    # itself, but builds a new object for two.
    return b"".join((orjson.dumps(value, default=default, option=option), b""))
