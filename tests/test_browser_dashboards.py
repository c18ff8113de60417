"""TensorBoard as a person sees it: a real server on loopback, the SAS charts in its API, and
screenshots of the scalars, custom-scalars and images pages in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from conftest import TinyClassifier, loaders, make_classification, trainer_kwargs
from lightning_sas import SASMonitor, SASReplicas

ARTIFACTS = Path(os.environ.get("SAS_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def _cross_entropy(module: Any, batch: Any) -> Any:
    import torch

    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y, reduction="none")


@pytest.fixture(scope="module")
def tensorboard_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("browser")
    train, val = loaders()
    replicas = SASReplicas(replicas=2, loss_fn=_cross_entropy, probe_every=5, num_train_probes=32, num_heldout_probes=32)
    monitor = SASMonitor(flush_every=50, figure_every=1, figure_budget=0, replicas=replicas)
    logger = TensorBoardLogger(str(tmp), name="run")
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp, max_steps=300, logger=logger, limit_val_batches=1.0)).fit(
        TinyClassifier(), DataLoader(make_classification(400), batch_size=32, shuffle=True), val)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if _get(f"{url}/data/plugin/scalars/tags"):
                    break
            except Exception:
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_sas_charts_are_served(tensorboard_url: str) -> None:
    layout = _get(f"{tensorboard_url}/data/plugin/custom_scalars/layout")
    titles = [c["title"] for c in layout["category"]]
    assert {"Loss dynamics", "Oscillation", "Weights", "SAS"} <= set(titles)
    sas = next(c for c in layout["category"] if c["title"] == "SAS")
    assert any("margin" in chart for chart in sas["chart"])
    tags = _get(f"{tensorboard_url}/data/plugin/scalars/tags")
    run_tags = next(iter(tags.values()))
    for tag in ("sas/sas/sas_max", "sas/sas/stability_gap", "sas/sas/ergodic_gap", "sas/oscillation/iat"):
        assert tag in run_tags, tag
    images = next(iter(_get(f"{tensorboard_url}/data/plugin/images/tags").values()))
    assert "sas/figures/loss_stream" in images and "sas/figures/sas_vs_window" in images


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("page", ["scalars", "custom_scalars", "images"])
def test_screenshots_in_headless_chromium(tensorboard_url: str, page: str, tmp_path: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"tensorboard_{page}.png"
    if shot.exists():
        shot.unlink()
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=15000",
         f"--screenshot={shot}", f"{tensorboard_url}/?darkMode=false#{page}"],
        capture_output=True, timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not an empty canvas
