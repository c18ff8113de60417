"""TensorBoard as a person sees it: a real server on loopback, the SAS charts and the status text
in its API, and screenshots of the scalars, custom-scalars (Overview first), images and text pages
in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from conftest import TinyClassifier, loaders, make_classification, trainer_kwargs
from lightning_sas import SASMonitor, SASReplicas
from lightning_sas.loggers.status import STATUS_TAG
from lightning_sas.loggers.tags import FLAG_KEYS, OVERVIEW, SCALAR_TAGS, tag_for

ARTIFACTS = Path(os.environ.get("SAS_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def _written_scalar_tags(logdir: Path) -> set[str]:
    """Every scalar tag in the run's event files, read directly (TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in Path(logdir).rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags().get("scalars", []))
    assert tags, "the run wrote no scalars"
    return tags


def _cross_entropy(module: Any, batch: Any) -> Any:
    import torch

    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y, reduction="none")


@pytest.fixture(scope="module")
def tensorboard_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("browser")
    train, val = loaders()
    replicas = SASReplicas(replicas=4, loss_fn=_cross_entropy, probe_every=5, num_train_probes=32, num_heldout_probes=32)
    # a 300-step run: snapshots every 10 steps (the default 100 would leave one or two after the
    # ergodic mean starts, and none on an unlucky initialisation), and a fixed seed
    pl.seed_everything(0)
    monitor = SASMonitor(flush_every=50, snapshot_every=10, figure_every=1, figure_budget=0, replicas=replicas)
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
        written = _written_scalar_tags(tmp)
        deadline = time.time() + 120
        while time.time() < deadline:
            # TensorBoard loads event files in the background: wait until it serves every scalar
            # the run wrote, not merely the first ones (a slow machine otherwise sees half a run)
            try:
                served = {t for run_tags in _get(f"{url}/data/plugin/scalars/tags").values() for t in run_tags}
                if written <= served:
                    break
            except Exception:
                pass
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


#: the flags' tags as other loggers name them: none of them may reach TensorBoard as a scalar
FLAG_TAGS = sorted({tag_for(k) for k in FLAG_KEYS} | {tag_for(k) for k in SCALAR_TAGS if k.endswith("_resolved")}
                   | {tag_for(f"{k}_resolved") for k in ("sas_max", "sas_mean", "sas_replaced", "stability_gap")})


def _looks_like_flag(tag: str) -> bool:
    return tag in FLAG_TAGS or re.search(r"(resolved|converged|_found|stationary|lr_constant)[^/]*$", tag) is not None


def _chart_tags(chart: dict[str, Any]) -> list[str]:
    """The tags (margin charts) or tag regexes (multiline charts) of a layout chart."""
    if "margin" in chart:
        return [t for series in chart["margin"]["series"] for t in (series["value"], series["lower"], series["upper"])]
    return list(chart["multiline"]["tag"])


def _run_tags(url: str, plugin: str) -> tuple[str, list[str]]:
    tags = _get(f"{url}/data/plugin/{plugin}/tags")
    assert len(tags) == 1, tags
    run, run_tags = next(iter(tags.items()))
    return run, list(run_tags)


def test_sas_charts_are_served(tensorboard_url: str) -> None:
    layout = _get(f"{tensorboard_url}/data/plugin/custom_scalars/layout")
    titles = [c["title"] for c in layout["category"]]
    assert {"Loss dynamics", "Oscillation", "Weights", "SAS"} <= set(titles)
    sas = next(c for c in layout["category"] if c["title"] == "SAS")
    assert any("margin" in chart for chart in sas["chart"])
    _run, run_tags = _run_tags(tensorboard_url, "scalars")
    for tag in ("sas/sas/sas_max", "sas/sas/stability_gap", "sas/sas/ergodic_gap", "sas/oscillation/iat"):
        assert tag in run_tags, tag
    images = next(iter(_get(f"{tensorboard_url}/data/plugin/images/tags").values()))
    for tag in ("sas/figures/loss_stream", "sas/figures/acf", "sas/figures/periodogram",
                "sas/figures/sketch_trajectory", "sas/figures/sas_vs_window"):
        assert tag in images, tag


def test_overview_comes_first_with_data(tensorboard_url: str) -> None:
    """The custom-scalars page opens on the Overview (the plugin returns the categories in the
    order the layout lists them), then the detailed sections; every Overview chart has data."""
    layout = _get(f"{tensorboard_url}/data/plugin/custom_scalars/layout")
    titles = [c["title"] for c in layout["category"]]
    assert OVERVIEW in titles[0]
    assert titles[1:] == ["Loss dynamics", "Oscillation", "Weights", "SAS"]
    overview = layout["category"][0]["chart"]
    assert 1 <= len(overview) <= 6
    gaps = next(c for c in overview if "margin" in c and len(c["margin"]["series"]) == 3
                and {s["value"] for s in c["margin"]["series"]} == {"sas/sas/stability_gap", "sas/sas/control_heldout_gap",
                                                                    "sas/sas/ergodic_gap"})
    assert {s["lower"] for s in gaps["margin"]["series"]} == {"sas/sas/stability_gap_lower",
                                                              "sas/sas/control_heldout_gap_lower", "sas/sas/ergodic_gap_lower"}
    _run, run_tags = _run_tags(tensorboard_url, "scalars")
    for chart in overview:
        for tag in _chart_tags(chart):
            if "margin" in chart:
                assert tag in run_tags, (chart["title"], tag)
            else:
                assert any(re.search(tag, t) for t in run_tags), (chart["title"], tag)


def test_flags_are_neither_charted_nor_scalars(tensorboard_url: str) -> None:
    layout = _get(f"{tensorboard_url}/data/plugin/custom_scalars/layout")
    for category in layout["category"]:
        for chart in category["chart"]:
            assert "resolved" not in chart["title"] and "found" not in chart["title"], chart["title"]
            for tag in _chart_tags(chart):
                assert not _looks_like_flag(tag), (category["title"], chart["title"], tag)
                if "multiline" in chart:  # a regex: it must match no flag's tag
                    assert not [f for f in FLAG_TAGS if re.search(tag, f)], (chart["title"], tag)
    _run, run_tags = _run_tags(tensorboard_url, "scalars")
    flags = [t for t in run_tags if _looks_like_flag(t)]
    assert not flags, flags


def test_status_text_is_served(tensorboard_url: str) -> None:
    run, tags = _run_tags(tensorboard_url, "text")
    # SummaryWriter.add_text("sas/status", ...) stores the tag as "sas/status/text_summary"
    status = [t for t in tags if t.startswith(STATUS_TAG)]
    assert status == [f"{STATUS_TAG}/text_summary"], tags
    query = urllib.parse.urlencode({"run": run, "tag": status[0]})
    entries = _get(f"{tensorboard_url}/data/plugin/text/text?{query}")
    assert entries and entries[-1]["step"] == max(e["step"] for e in entries)
    text = entries[-1]["text"]  # markdown rendered to HTML by the text plugin
    for words in ("Late phase", "Stationarity", "Learning rate", "Generalization gap", "SAS estimate"):
        assert words in text, (words, text)
    assert "<li>" in text and "<code>stability_gap</code>" in text and "<code>ergodic_gap</code>" in text
    assert re.search(r"(not )?resolved", text)


def _screenshot(url: str, page: str, shot: Path, profile: Path, size: str = "1400,1000") -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if shot.exists():
        shot.unlink()
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=15000",
         f"--screenshot={shot}", f"{url}/?darkMode=false#{page}"],
        capture_output=True, timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not an empty canvas


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("page", ["scalars", "custom_scalars", "images", "text"])
def test_screenshots_in_headless_chromium(tensorboard_url: str, page: str, tmp_path: Any) -> None:
    """Screenshots kept as artifacts (the text page shows the status)."""
    _screenshot(tensorboard_url, page, ARTIFACTS / f"tensorboard_{page}.png", tmp_path / "profile")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_overview_screenshot(tensorboard_url: str, tmp_path: Any) -> None:
    """The custom-scalars page opens on the Overview, its six charts in two rows of three at this
    size: ``docs/tensorboard_overview.png`` (README) is a copy of this artifact."""
    _screenshot(tensorboard_url, "custom_scalars", ARTIFACTS / "tensorboard_overview.png", tmp_path / "profile",
                size="1480,800")
