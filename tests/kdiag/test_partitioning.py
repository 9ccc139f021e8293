"""murmur2 partitioning, pinned to partitions that librdkafka's murmur2_random partitioner chose
for the same keys on a 7-partition topic."""

import pytest

from kdiag.partitioning import murmur2, partition_for_key


@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"a", 5), (b"ab", 0), (b"abc", 4), (b"replay/", 4), (b"prod-eu/team-a", 3), (b"x" * 33, 5)],
)
def test_partition_matches_librdkafka(key, partition):
    assert partition_for_key(key, 7) == partition


def test_murmur2_known_values():
    assert murmur2(b"a") == 2731586172
    assert murmur2(b"replay/") == 702064871


def test_partition_within_range():
    for number in range(200):
        assert 0 <= partition_for_key(f"cluster/{number}".encode(), 6) < 6
