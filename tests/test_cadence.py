"""The one cadence rule of the callbacks (``callbacks._common.is_due`` / ``next_due``) and the
parts that ask it."""

from __future__ import annotations

import pytest

from lightning_sas import SASMonitor
from lightning_sas.callbacks._common import is_due, next_due
from lightning_sas.callbacks.probe_losses import ProbeLosses
from lightning_sas.callbacks.weight_snapshots import WeightSnapshots


@pytest.mark.parametrize("every", [1, 3, 7])
@pytest.mark.parametrize("offset", [0, 1])
def test_next_due_is_the_first_due_entry(every: int, offset: int) -> None:
    """``next_due(i)`` is the smallest entry ``j >= i`` with ``is_due(j)``, and the due entries
    are ``every`` apart: 0, every, ... (offset 0) or every - 1, 2 every - 1, ... (offset 1)."""
    due = [j for j in range(60) if is_due(j, every, offset)]
    assert due == list(range(every - offset if offset else 0, 60, every))
    for index in range(50):
        assert next_due(index, every, offset) == min(j for j in due if j >= index)


def test_parts_use_the_cadence() -> None:
    """Flushes after every ``flush_every``-th entry, snapshots and probes at multiples of their
    cadence, and the monitor's next flush is its first due one."""
    monitor = SASMonitor(flush_every=4, store=False)
    assert [i for i in range(12) if monitor.should_flush(i)] == [3, 7, 11]
    assert [monitor.next_flush(i) for i in (0, 3, 4, 8)] == [3, 3, 7, 11]
    probes = ProbeLosses(probe_every=5)
    assert [i for i in range(12) if probes.should_probe(i)] == [0, 5, 10]
    weights = WeightSnapshots(snapshot_every=3)
    assert [i for i in range(7) if weights.should_snapshot(i)] == [0, 3, 6]
