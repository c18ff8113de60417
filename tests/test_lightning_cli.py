"""Every callback is configurable from LightningCLI YAML (class_path/init_args, import-path loss_fn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_example_config_runs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mnist1d")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.chdir(tmp_path)
    from mnist1d_cli import main

    cli = main(["fit", "--config", str(EXAMPLES / "sas_config.yaml"), "--trainer.max_steps", "40",
                "--data.num_samples", "600", "--trainer.enable_progress_bar", "false"])
    from lightning_sas import SASMonitor, SASReplicas

    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, SASMonitor))
    assert isinstance(monitor.replicas, SASReplicas) and monitor.replicas.replicas == 4
    assert monitor.probes.loss_fn is not None and monitor.probes.loss_fn.__name__ == "cross_entropy_per_sample"
    summary = monitor.summary()
    assert summary["steps"] == 40 and summary["replica_path"] == "fast"
    assert (tmp_path / "runs" / "mnist1d_cli" / "version_0" / "sas" / "summary.json").exists()
