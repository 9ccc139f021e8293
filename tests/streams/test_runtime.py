"""WorkerRuntime's own accounting of its batches."""

import time

from kdiag.rules import RuleSet
from kdiag.settings import Settings
from streams import metrics
from streams.runtime import InputRecord, WorkerRuntime


def test_batch_cpu_time_counted(tmp_path):
    runtime = WorkerRuntime(Settings(state_dir=tmp_path), lambda: RuleSet([]))
    try:
        # The runtime owns no partition, so it only sorts the records by partition and skips them.
        records = [InputRecord(partition % 6, offset, b"") for offset, partition in enumerate(range(50_000))]
        counted_before = metrics.BATCH_CPU_SECONDS._value.get()
        thread_before = time.thread_time()
        runtime.process(records)
        thread_seconds = time.thread_time() - thread_before
        counted = metrics.BATCH_CPU_SECONDS._value.get() - counted_before
        assert counted > 0
        assert counted <= thread_seconds
    finally:
        runtime.close()
