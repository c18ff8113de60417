"""When to draw the live TensorBoard figures: a flush cadence plus a share of wall time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["FigureSchedule"]


class FigureSchedule:
    r"""Figures at most every ``every`` flushes, and only while drawing them stays within
    ``budget`` of the wall time since training started.

    With :math:`T_\mathrm{spent}` the seconds spent on figures so far, :math:`c` the cost of the
    last figure set (``first_cost`` before any was drawn) and :math:`t` the seconds since
    :meth:`start`, a flush that is due by cadence draws when
    :math:`T_\mathrm{spent} + c \le \mathrm{budget} \cdot t`, so figures never take more than
    about ``budget`` of the run (one set of slack). ``budget=0`` keeps the cadence alone;
    ``every=0`` draws nothing. Whatever the budget, the monitor draws one final set at the end of
    every fit (when ``every > 0``), and the status says how many due sets waited for the budget. Drawing matplotlib figures and encoding them as PNG costs a few
    hundred milliseconds a set: for a fast model that is many training steps, so a fixed flush
    cadence alone would make the figures the largest cost of the monitor.
    """

    def __init__(self, every: int, budget: float, first_cost: float = 0.2,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"figure_every must be a non-negative integer (0 disables figures), got {every!r}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 <= budget < 1.0:
            raise ValueError(f"figure_budget must be a share of wall time in [0, 1) (0: no budget), got {budget!r}")
        self.every = every
        self.budget = float(budget)
        self.first_cost = float(first_cost)
        self._clock = clock
        self.start()

    def start(self) -> None:
        """Training starts: the clock and the spending restart (the first due flush is the first).
        The clock is read only when it matters (figures on, with a budget)."""
        self._started = self._clock() if self.every and self.budget > 0 else 0.0
        self._spent = 0.0
        self._last_cost = self.first_cost
        self._since = self.every - 1 if self.every else 0
        self.sets_drawn = 0
        #: flushes at which a set was due by cadence but waited for the budget
        self.skipped_for_budget = 0

    def due(self) -> bool:
        """Called once per flush: draw the figures at this one?"""
        if self.every == 0:
            return False
        self._since += 1
        if self._since < self.every:
            return False
        if self.budget > 0 and self._spent + self._last_cost > self.budget * (self._clock() - self._started):
            self.skipped_for_budget += 1
            return False
        return True

    def status(self) -> dict[str, Any]:
        """What the run's status says about the live figures: ``figure_sets_skipped_for_budget``
        (flushes whose due set waited for the budget), with ``figure_budget`` and
        ``figure_sets_drawn``; empty while no set waited."""
        if not self.skipped_for_budget:
            return {}
        return {"figure_sets_skipped_for_budget": self.skipped_for_budget, "figure_budget": self.budget,
                "figure_sets_drawn": self.sets_drawn}

    def drawn(self, seconds: float) -> None:
        """A figure set was drawn and logged in ``seconds``."""
        self._spent += seconds
        self._last_cost = seconds
        self._since = 0
        self.sets_drawn += 1

    @property
    def share(self) -> float:
        """Seconds spent on figures over seconds since :meth:`start`."""
        return self._spent / max(self._clock() - self._started, 1e-12)
