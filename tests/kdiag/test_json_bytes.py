"""JSON bytes of their own size."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from kdiag import json_bytes


@pytest.mark.parametrize("value", [{"state": "pending"}, {"text": "x" * 5000}, [1, 2, 3]])
def test_same_bytes_as_orjson(value: object) -> None:
    assert json_bytes.dumps(value) == orjson.dumps(value)
    assert json_bytes.dumps(value, option=orjson.OPT_SORT_KEYS) == orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_default_serializes_other_types() -> None:
    assert json_bytes.dumps({"raw": b"ab"}, default=lambda value: value.hex()) == b'{"raw":"6162"}'


def test_values_sized_to_content() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        values = [json_bytes.dumps({"key": index}) for index in range(1000)]
        traced_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(values) == 1000
    # About 50 bytes each: a bytes object's header and its 9 to 11 bytes of content. orjson's own
    # results take about 4 KiB each.
    assert traced_bytes < 1000 * 200
