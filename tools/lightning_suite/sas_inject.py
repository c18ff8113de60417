"""pytest plugin: inject an ``SASMonitor`` into every Lightning ``Trainer`` a test suite builds.

Load it with ``-p sas_inject`` (this folder on ``PYTHONPATH``) and choose the mode with the
environment variable ``SAS_INJECT``:

``off``       nothing is injected (the baseline; the plugin still records node ids)
``monitor``   ``SASMonitor(figure_every=0)`` is appended to the callbacks of every Trainer
``replicas``  ``SASMonitor(figure_every=0, replicas=2)`` is appended instead

``Trainer.__init__`` of ``lightning.pytorch`` and of ``pytorch_lightning`` is wrapped (Trainer
subclasses go through it via ``super().__init__``). ``callbacks=None``, a single callback, a
list or a tuple are accepted; the caller's list is never mutated. A Trainer that already holds an
``SASMonitor`` gets no second one. ``lightning_sas`` is imported on the first Trainer only, so a
broken ``lightning_sas`` shows up as test failures, not as a collection error.

Each test's junit entry gets the properties ``nodeid`` (pytest's node id, so the comparison does
not have to rebuild it from ``classname``), ``sas_inject`` (the mode) and ``sas_trainers`` (how
many Trainers the test built, counted in every mode, ``off`` included, summed over the attempts
when pytest-rerunfailures reruns a test) and ``sas_reruns`` (failed attempts before the last).

Not handled: callbacks given through the ``PL_TRAINER_CALLBACKS`` environment variable (an
explicit ``callbacks=`` argument, which this plugin always passes, takes precedence over it).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest

ENV = "SAS_INJECT"
MODES = ("off", "monitor", "replicas")
_MARK = "__sas_inject_wrapped__"

_trainers_built = 0
_reruns = 0


def mode() -> str:
    value = os.environ.get(ENV, "off").strip().lower() or "off"
    if value not in MODES:
        raise pytest.UsageError(f"{ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


def make_monitor(current_mode: str) -> Any:
    from lightning_sas import SASMonitor  # lazy: only when a Trainer is built

    if current_mode == "monitor":
        return SASMonitor(figure_every=0)
    if current_mode == "replicas":
        return SASMonitor(figure_every=0, replicas=2)
    raise ValueError(current_mode)


def with_monitor(callbacks: Any, current_mode: str) -> Any:
    """A new callback list: the caller's callbacks plus one monitor (unless one is present)."""
    if current_mode == "off":
        return callbacks
    if callbacks is None:
        existing: list[Any] = []
    elif isinstance(callbacks, (list, tuple)):
        existing = list(callbacks)  # a copy: the caller's list stays as it was
    else:
        existing = [callbacks]  # a single callback
    from lightning_sas import SASMonitor

    if any(isinstance(cb, SASMonitor) for cb in existing):
        return callbacks
    return existing + [make_monitor(current_mode)]


def _wrap(init: Any) -> Any:
    if getattr(init, _MARK, False):
        return init

    @functools.wraps(init)  # keeps __wrapped__: inspect.signature(Trainer.__init__) is unchanged
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        global _trainers_built
        _trainers_built += 1
        current_mode = mode()
        if current_mode != "off":
            kwargs["callbacks"] = with_monitor(kwargs.get("callbacks"), current_mode)
        init(self, *args, **kwargs)

    setattr(__init__, _MARK, True)
    return __init__


def _trainer_classes() -> list[type]:
    classes = []
    for name in ("lightning.pytorch.trainer.trainer", "pytorch_lightning.trainer.trainer"):
        try:
            module = __import__(name, fromlist=["Trainer"])
        except ImportError:
            continue
        cls = module.Trainer
        if cls not in classes:
            classes.append(cls)
    return classes


def install() -> list[type]:
    """Wrap ``Trainer.__init__`` of every importable namespace (idempotent)."""
    classes = _trainer_classes()
    for cls in classes:
        cls.__init__ = _wrap(cls.__dict__["__init__"])
    return classes


def pytest_configure(config: pytest.Config) -> None:
    current_mode = mode()
    classes = install()
    if not classes:
        raise pytest.UsageError("sas_inject: neither lightning.pytorch nor pytorch_lightning is importable")
    config._sas_inject_mode = current_mode  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> str:
    names = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in _trainer_classes())
    return f"sas_inject: {ENV}={mode()} (wrapped {names})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    global _trainers_built, _reruns
    _trainers_built = 0
    _reruns = 0
    item.user_properties.append(("nodeid", item.nodeid))
    item.user_properties.append(("sas_inject", mode()))
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    if call.when == "teardown":  # junitxml writes the teardown report's properties
        item.user_properties.append(("sas_trainers", str(_trainers_built)))
        item.user_properties.append(("sas_reruns", str(_reruns)))
    yield


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _reruns
    if report.outcome == "rerun":  # pytest-rerunfailures: an earlier attempt of a flaky-marked test failed
        _reruns += 1
