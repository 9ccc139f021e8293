"""Avro single-object encoding of topic records (kdiag.codec)."""

import pytest

from kdiag.codec import SINGLE_OBJECT_MARKER, codec
from kdiag.errors import DecodeError

DEAD_LETTER = {
    "origin": "kdiag-changes[3]@42",
    "component": "worker",
    "reason": "object is not valid JSON",
    "payload": b"{not json",
    "time": 1_700_000_000_000,
}


def test_round_trip_after_header():
    dead_letters = codec("DeadLetter")
    data = dead_letters.encode(DEAD_LETTER)
    assert data[:2] == SINGLE_OBJECT_MARKER
    assert data[2:10] == dead_letters.fingerprint
    assert dead_letters.decode(data) == DEAD_LETTER


def test_decode_rejects_missing_marker():
    with pytest.raises(DecodeError, match="bytes C3 01 first"):
        codec("DeadLetter").decode(b'{"origin": "json"}')


def test_decode_rejects_other_schema():
    data = codec("Tick").encode({"cluster": "c1", "time": 1, "source": "replay"})
    with pytest.raises(DecodeError, match="the writer used another schema version"):
        codec("DeadLetter").decode(data)


def test_decode_rejects_truncated_datum():
    data = codec("DeadLetter").encode(DEAD_LETTER)
    with pytest.raises(DecodeError, match="invalid io.kdiag.DeadLetter datum after a valid header"):
        codec("DeadLetter").decode(data[:20])
