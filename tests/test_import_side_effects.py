"""Importing lightning_sas changes nothing in Lightning: it imports neither Lightning namespace by
itself, never the one the user did not import, and Lightning's loggers (levels, handlers,
propagation, where ``rank_zero_info`` writes) and the log lines a fit prints are exactly as without
our import. Each case runs in a fresh interpreter, since an import cannot be undone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
OTHER = {"lightning.pytorch": "pytorch_lightning", "pytorch_lightning": "lightning.pytorch"}

# A Hydra-like program: the root logger has a handler before Lightning is imported (so Lightning's
# loggers propagate to it); after the fit, the user silences Lightning's info lines with one
# setLevel call and builds a second Trainer.
SCRIPT = textwrap.dedent(
    """
    import importlib, json, logging, sys, warnings
    warnings.simplefilter("ignore")
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append([record.name, record.levelname, record.getMessage()])

    logging.basicConfig(level=logging.INFO, handlers=[Collect()])
    namespace, order = sys.argv[1], sys.argv[2]
    if order == "sas-first":
        import lightning_sas
    L = importlib.import_module(namespace)
    if order == "sas-after":
        import lightning_sas
    def lightning_loggers():
        roots = ("lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities")
        return {name: [logger.level, logger.propagate, logger.disabled,
                       [[type(h).__name__, h.level] for h in logger.handlers]]
                for name, logger in sorted(logging.Logger.manager.loggerDict.items())
                if isinstance(logger, logging.Logger) and name.split(".")[0] in roots}

    after_import = lightning_loggers()
    callbacks = []
    if order != "without":
        callbacks = [lightning_sas.SASMonitor(flush_every=2, figure_every=0, store=False)]
    BoringModel = importlib.import_module(namespace + ".demos.boring_classes").BoringModel
    trainer = L.Trainer(callbacks=callbacks, accelerator="cpu", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=sys.argv[3])
    trainer.fit(BoringModel())
    fit_records = list(records)
    logging.getLogger(namespace).setLevel(logging.WARNING)
    L.Trainer(callbacks=list(callbacks), accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_checkpointing=False, default_root_dir=sys.argv[3])
    print(json.dumps({
        "loggers_after_import": after_import,
        "loggers_after_fit": lightning_loggers(),
        "rank_zero_log": sys.modules["lightning_utilities.core.rank_zero"].log.name,
        "records": fit_records,
        "records_when_silenced": records[len(fit_records):],
        "namespaces": [name for name in ("lightning.pytorch", "pytorch_lightning") if name in sys.modules],
        "callback_ok": [isinstance(cb, L.Callback) and cb in trainer.callbacks for cb in callbacks],
        "steps": [cb.summary()["steps"] for cb in callbacks],
    }))
    """
)


_RUNS: dict[tuple[str, str], dict[str, Any]] = {}


def _run(tmp_path: Path, namespace: str, order: str) -> dict[str, Any]:
    """Run SCRIPT in a fresh interpreter (each case once per session) and return what it printed."""
    if (namespace, order) in _RUNS:
        return _RUNS[namespace, order]
    script = tmp_path / "imports.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / f"{namespace}-{order}"
    proc = subprocess.run([sys.executable, str(script), namespace, order, str(run_dir)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _RUNS[namespace, order] = json.loads(proc.stdout.strip().splitlines()[-1])
    return _RUNS[namespace, order]


@pytest.fixture(params=NAMESPACES)
def namespace(request: pytest.FixtureRequest) -> str:
    pytest.importorskip(request.param)
    return request.param


def test_importing_lightning_sas_imports_no_namespace(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = ("import sys, lightning_sas; "
            "print([m for m in ('lightning.pytorch', 'pytorch_lightning', 'lightning_fabric', 'lightning.fabric') "
            "if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("order", ["sas-after", "sas-first"])
def test_lightning_logging_is_as_without_us(namespace: str, order: str, tmp_path: Path) -> None:
    """Either import order: only the user's namespace is imported, SASMonitor is a Callback of it
    and its Trainer runs it, and Lightning's loggers and log lines equal a run without us."""
    without = _run(tmp_path, namespace, "without")
    with_us = _run(tmp_path, namespace, order)
    assert with_us["namespaces"] == [namespace] == without["namespaces"]
    assert with_us["callback_ok"] == [True] and with_us["steps"] == [3]
    assert with_us["rank_zero_log"] == without["rank_zero_log"] == f"{namespace}.utilities.rank_zero"
    assert with_us["loggers_after_import"] == without["loggers_after_import"]
    assert with_us["loggers_after_fit"] == without["loggers_after_fit"]
    assert with_us["records"] == without["records"]
    assert any("GPU available" in message for _, _, message in without["records"])


def test_silencing_lightning_still_silences_it(namespace: str, tmp_path: Path) -> None:
    """``logging.getLogger(<namespace>).setLevel(WARNING)`` silences Lightning's info lines with
    lightning_sas imported (importing the other namespace moved them to a logger it does not reach)."""
    with_us = _run(tmp_path, namespace, "sas-after")
    assert with_us["steps"] == [3]
    assert any(level == "INFO" for _, level, _ in with_us["records"])
    assert [r for r in with_us["records_when_silenced"] if r[1] == "INFO"] == []


CLI_SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys, warnings
    warnings.simplefilter("ignore")
    import lightning_sas  # before Lightning: the class is checked before any callback exists
    namespace = sys.argv[1]
    LightningCLI = importlib.import_module(namespace + ".cli").LightningCLI
    BoringModel = importlib.import_module(namespace + ".demos.boring_classes").BoringModel
    cli = LightningCLI(BoringModel, run=False, save_config_callback=None,
                       args=["--trainer.callbacks+=lightning_sas.SASMonitor", "--trainer.callbacks.flush_every=7",
                             "--trainer.logger=false", "--trainer.default_root_dir=" + sys.argv[2]])
    monitors = [cb for cb in cli.trainer.callbacks if isinstance(cb, lightning_sas.SASMonitor)]
    print(json.dumps({"flush_every": [cb.flush_every for cb in monitors],
                      "namespaces": [n for n in ("lightning.pytorch", "pytorch_lightning") if n in sys.modules]}))
    """
)


def test_lightning_cli_after_importing_us_first(namespace: str, tmp_path: Path) -> None:
    """``import lightning_sas`` before Lightning, then ``LightningCLI`` with
    ``--trainer.callbacks+=lightning_sas.SASMonitor`` (checked with ``issubclass`` against the
    namespace's ``Callback``): accepted, and the other namespace is still not imported (the
    annotations of our modules import no namespace, not even under ``TYPE_CHECKING``, which
    jsonargparse executes)."""
    pytest.importorskip("jsonargparse")
    script = tmp_path / "cli.py"
    script.write_text(CLI_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), namespace, str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"flush_every": [7], "namespaces": [namespace]}
