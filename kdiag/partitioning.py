"""The partition a key lands on, computed as Kafka's Java client and librdkafka's murmur2 partitioners do."""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Return the 32-bit murmur2 hash of data as Kafka computes it, as an unsigned int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    for index in range(0, length - length % 4, 4):
        k = data[index] | (data[index + 1] << 8) | (data[index + 2] << 16) | (data[index + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = length - length % 4
    remaining = length % 4
    if remaining == 3:
        h ^= data[tail + 2] << 16
    if remaining >= 2:
        h ^= data[tail + 1] << 8
    if remaining >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    """Return the partition of a non-empty key among `partitions`, as the murmur2 partitioners choose it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
