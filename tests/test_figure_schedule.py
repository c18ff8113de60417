"""The live figures' schedule: flush cadence and a share of wall time (a fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_sas import SASMonitor
from lightning_sas.loggers import FigureSchedule


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(schedule: FigureSchedule, clock: FakeClock, flushes: int, seconds_between: float, cost: float) -> list[int]:
    """Flushes ``seconds_between`` apart; a drawn set costs ``cost`` seconds. Returns the flushes that drew."""
    drawn = []
    for i in range(flushes):
        clock.now += seconds_between
        if schedule.due():
            clock.now += cost
            schedule.drawn(cost)
            drawn.append(i)
    return drawn


def test_cadence_alone_without_budget() -> None:
    clock = FakeClock()
    assert drive(FigureSchedule(5, 0.0, clock=clock), clock, 12, 0.01, 1.0) == [0, 5, 10]
    assert drive(FigureSchedule(1, 0.0, clock=clock), clock, 3, 0.01, 1.0) == [0, 1, 2]
    assert drive(FigureSchedule(0, 0.0, clock=clock), clock, 3, 0.01, 1.0) == []


@pytest.mark.parametrize("seconds_between, cost", [(0.3, 0.4), (2.0, 0.4), (0.05, 0.25)])
def test_budget_bounds_the_share_of_wall_time(seconds_between: float, cost: float) -> None:
    clock = FakeClock()
    schedule = FigureSchedule(1, 0.02, first_cost=0.2, clock=clock)
    drawn = drive(schedule, clock, 4000, seconds_between, cost)
    assert drawn, "a long run gets figures"
    # never more than the budget plus one set of slack
    assert schedule.share <= 0.02 + cost / clock.now
    # and the budget is used: not far below it when figures are due at every flush
    assert schedule.share >= 0.5 * 0.02


def test_first_figures_wait_for_the_first_cost_to_fit() -> None:
    clock = FakeClock()
    schedule = FigureSchedule(1, 0.02, first_cost=0.2, clock=clock)
    drawn = drive(schedule, clock, 100, 0.5, 0.3)
    assert drawn[0] == 19  # 0.2 s fits in 2 % of the wall time after 10 s = 20 flushes


def test_monitor_validates_the_budget() -> None:
    with pytest.raises(ValueError, match="figure_budget"):
        SASMonitor(figure_budget=1.5)
    with pytest.raises(ValueError, match="figure_every"):
        SASMonitor(figure_every=-1)


def test_monitor_config_records_the_budget(tmp_path: Any) -> None:
    assert SASMonitor(figure_budget=0.05).config()["figure_budget"] == 0.05


def test_sets_that_wait_for_the_budget_are_counted_for_the_status() -> None:
    from lightning_sas.loggers.status import status_markdown

    clock = FakeClock()
    schedule = FigureSchedule(1, 0.02, first_cost=0.2, clock=clock)
    assert schedule.status() == {}  # nothing waited: the status says nothing about figures
    drawn = drive(schedule, clock, 30, 0.5, 0.3)
    # every flush is due by cadence (every=1): each one that drew nothing waited for the budget
    assert drawn[0] == 19 and schedule.skipped_for_budget == 30 - len(drawn) >= 19
    status = status_markdown(schedule.status())
    skipped = schedule.skipped_for_budget
    assert f"**Figures:** live figures skipped at {skipped} flushes to stay within figure_budget = 0.02" in status
    assert f"({len(drawn)} set{'s' if len(drawn) != 1 else ''} drawn so far)" in status
