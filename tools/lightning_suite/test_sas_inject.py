"""Self-check of the injection plugin, collected by the project's test run (pyproject's
``testpaths``) and runnable alone: ``python -m pytest tools/lightning_suite/test_sas_inject.py -q``."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sas_inject  # noqa: E402

import lightning.pytorch as L  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from lightning_sas import SASMonitor  # noqa: E402

NAMESPACES = [pytest.param(L, id="lightning.pytorch"), pytest.param(pl, id="pytorch_lightning")]


@pytest.fixture(autouse=True)
def installed():
    originals = {cls: cls.__dict__["__init__"] for cls in sas_inject._trainer_classes()}
    sas_inject.install()
    yield
    for cls, init in originals.items():
        cls.__init__ = init


def monitors(trainer):
    return [cb for cb in trainer.callbacks if isinstance(cb, SASMonitor)]


def build(ns, **kwargs):
    return ns.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("mode", ["monitor", "replicas"])
def test_injects_one_monitor_and_leaves_the_callers_list_alone(ns, mode, monkeypatch):
    monkeypatch.setenv("SAS_INJECT", mode)
    timer = ns.callbacks.Timer()
    given = [timer]
    trainer = build(ns, callbacks=given)
    assert given == [timer]
    (monitor,) = monitors(trainer)
    assert (monitor.replicas is not None) == (mode == "replicas")
    assert monitor.figure_every == 0
    assert timer in trainer.callbacks
    assert len(monitors(build(ns))) == 1  # callbacks=None
    assert len(monitors(build(ns, callbacks=ns.callbacks.Timer()))) == 1  # a single callback
    assert len(monitors(build(ns, callbacks=(ns.callbacks.Timer(),)))) == 1  # a tuple


@pytest.mark.parametrize("ns", NAMESPACES)
def test_off_injects_nothing_and_an_existing_monitor_is_not_doubled(ns, monkeypatch):
    monkeypatch.setenv("SAS_INJECT", "off")
    assert monitors(build(ns)) == []
    monkeypatch.setenv("SAS_INJECT", "monitor")
    own = SASMonitor(figure_every=0)
    assert monitors(build(ns, callbacks=[own])) == [own]


def test_signature_kept_and_install_idempotent(monkeypatch):
    before = inspect.signature(L.Trainer.__init__)
    sas_inject.install()
    assert inspect.signature(L.Trainer.__init__) == before
    assert "callbacks" in before.parameters
    monkeypatch.setenv("SAS_INJECT", "monitor")
    assert len(monitors(build(L))) == 1


def test_bad_mode_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("SAS_INJECT", "sometimes")
    with pytest.raises(pytest.UsageError):
        sas_inject.mode()
