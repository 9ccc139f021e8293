"""Avro encoding of every topic's records.

Records use Avro single-object encoding: the two marker bytes C3 01, the schema's 8-byte
CRC-64-AVRO fingerprint (little endian), then the binary datum. A reader therefore detects a record
written with another schema and rejects it with a DecodeError instead of misreading it.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import UnknownType, fingerprint, to_parsing_canonical_form

from kdiag.errors import DecodeError
from kdiag.settings import PROJECT_ROOT

SCHEMAS_DIR = PROJECT_ROOT / "schemas"
SINGLE_OBJECT_MARKER = b"\xc3\x01"
_HEADER_BYTES = 10



def _without_logical_types(schema: Any) -> Any:
    """Drop logicalType so that timestamps decode as int milliseconds, not datetime objects.

    The binary encoding and the canonical form (and so the fingerprint) do not change.
    """
    if isinstance(schema, dict):
        return {
            key: _without_logical_types(value)
            for key, value in schema.items()
            if key != "logicalType"
        }
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


class Codec:
    """Writes and reads one named schema in single-object encoding."""

    def __init__(self, name: str, parsed: dict[str, Any]) -> None:
        self.name = name
        self._schema = parsed
        digest = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
        self.fingerprint = bytes.fromhex(digest)
        self._header = SINGLE_OBJECT_MARKER + self.fingerprint

    def encode(self, datum: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._header)
        fastavro.schemaless_writer(buffer, self._schema, datum)
        return buffer.getvalue()

    def wrote(self, data: bytes | None) -> bool:
        """Return whether `data` starts with this schema's single-object header."""
        return data is not None and data[:_HEADER_BYTES] == self._header

    def decode(self, data: bytes) -> dict[str, Any]:
        if data is None or len(data) < _HEADER_BYTES or data[:2] != SINGLE_OBJECT_MARKER:
            raise DecodeError(
                f"expected an Avro single-object encoded {self.name} (bytes C3 01 first), "
                f"got {_preview(data)}; write records with kdiag's codec"
            )
        if data[2:_HEADER_BYTES] != self.fingerprint:
            raise DecodeError(
                f"expected schema fingerprint {self.fingerprint.hex()} of {self.name}, "
                f"got {data[2:_HEADER_BYTES].hex()}; the writer used another schema version"
            )
        # Reading past the header, instead of slicing it off, saves a copy of the whole record.
        stream = io.BytesIO(data)
        stream.seek(_HEADER_BYTES)
        try:
            return fastavro.schemaless_reader(stream, self._schema)
        except (EOFError, ValueError, IndexError, UnicodeDecodeError, struct.error) as error:
            raise DecodeError(f"invalid {self.name} datum after a valid header: {error}") from None


def _preview(data: bytes | None) -> str:
    if data is None:
        return "no value"
    return repr(data[:16]) + (f" ({len(data)} bytes)" if len(data) > 16 else "")


@lru_cache(maxsize=None)
def _named_schemas(schemas_dir: Path) -> dict[str, Any]:
    """Parse every .avsc file of the folder. A schema may name types from other files, so files whose
    references are not parsed yet wait for a later pass."""
    named: dict[str, Any] = {}
    waiting = {path: json.loads(path.read_text()) for path in sorted(schemas_dir.glob("*.avsc"))}
    while waiting:
        progress = False
        for path, raw in list(waiting.items()):
            attempt = dict(named)
            try:
                fastavro.parse_schema(copy.deepcopy(_without_logical_types(raw)), named_schemas=attempt)
            except UnknownType:
                continue
            named = attempt
            del waiting[path]
            progress = True
        if not progress:
            names = ", ".join(path.name for path in waiting)
            raise DecodeError(f"schemas {names} in {schemas_dir} name types that no schema defines")
    return named


@lru_cache(maxsize=None)
def codec(name: str, schemas_dir: Path = SCHEMAS_DIR) -> Codec:
    """Return the codec of schema `name`, e.g. "ChangeBatch" or "Alert"."""
    named = _named_schemas(schemas_dir)
    full_name = name if "." in name else f"io.kdiag.{name}"
    if full_name not in named:
        raise DecodeError(f"no schema named {full_name} in {schemas_dir}; expected one of {sorted(named)}")
    parsed = fastavro.parse_schema(_inline(named[full_name], named, set()))
    return Codec(full_name, parsed)


def _inline(schema: Any, named: dict[str, Any], seen: set[str]) -> Any:
    """Replace references to named types by their definitions, the first time each appears."""
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            return _inline(named[schema], named, seen)
        return schema
    if isinstance(schema, list):
        return [_inline(item, named, seen) for item in schema]
    if isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            seen.add(schema["name"])
        inlined = {}
        for key, value in schema.items():
            if key in ("type", "items", "values", "fields"):
                value = _inline(value, named, seen)
            inlined[key] = value
        return inlined
    return schema
