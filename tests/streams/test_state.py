"""RocksDB options of the partition stores (streams/state.py)."""

from __future__ import annotations

from pathlib import Path

from streams.state import PartitionStore


def test_partition_store_index_in_block_cache(tmp_path: Path):
    store = PartitionStore(tmp_path, 0)
    try:
        keys = [b"e\x1fcluster\x1f%08d" % index for index in range(50_000)]
        store.apply([(key, b"x" * 300) for key in keys], -1)
        # Flushing writes one table file, whose index and filter would otherwise stay in its table reader.
        store._db.flush()

        # Outside the cache: only each partition's small top-level entries (86,575 bytes with whole
        # index and filter blocks for these keys).
        assert store._db.property_int_value("rocksdb.estimate-table-readers-mem") < 10_000
        assert store._db.property_int_value("rocksdb.block-cache-usage") > 0
        assert store.get(keys[123]) == b"x" * 300
        assert store.get(b"e\x1fcluster\x1fmissing") is None
    finally:
        store.close()
