"""compare: every cell comes from the run; the behaviours each backend claims hold."""

from __future__ import annotations

import pytest

from lessons import compare
from producer.ledger import Fate


@pytest.mark.timeout(180)
def test_compare_measures_both_backends(broker_url: str) -> None:
    result = compare.run(broker_url, workers=2, tasks=300, crash_tasks=60, restart_tasks=40)
    local, rabbit = result.columns
    assert (local.backend, rabbit.backend) == ("local", "rabbitmq")
    for column in result.columns:
        assert column.tasks == 300
        assert column.throughput > 0
        assert column.p50_ms is not None and column.p99_ms is not None
        assert column.p50_ms <= column.p99_ms
        assert column.each_worker_in_order
        assert column.crash_fates[Fate.LOST.value] == 0  # the crashed task was not lost
        assert column.crash_fates[Fate.DONE_AFTER_REDELIVERY.value] >= 1
        assert column.lock_oversold == 0
    assert local.crash_recovered is not None and local.crash_recovered >= 1
    # The local queue dies with its producer; the broker keeps the work.
    assert local.restart_unfinished > 0
    assert local.restart_done_after == 0
    assert rabbit.restart_unfinished == 40
    assert rabbit.restart_done_after == 40
