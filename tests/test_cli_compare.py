"""The multi-run protocol: ``perturb`` plans neighbours, ``compare`` reads the runs' probe streams."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from conftest import TinyClassifier, make_classification, trainer_kwargs
from lightning_sas import SASMonitor
from lightning_sas.cli import main as cli_main
from lightning_sas.data import NeighbouringDataset
from lightning_sas.keys import explanation, explanation_html
from lightning_sas.store import read_run


def test_perturb_then_compare(tmp_path: Any, capsys: pytest.CaptureFixture) -> None:
    """Four runs of a plan with m = 2 swaps each, trained on ``NeighbouringDataset.from_plan``:
    every run probes the same points (every run's swapped samples included), and ``compare``
    equals brute force from the stored streams."""
    assert cli_main(["perturb", "--n", "320", "--runs", "3", "--swaps", "2", "--out", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert len(plan["runs"]) == 4 and plan["runs"][0]["replace"] == {} and plan["swaps"] == 2
    assert all(len(run["replace"]) == 2 for run in plan["runs"][1:])
    base = make_classification(320)
    dirs = []
    for run in plan["runs"]:
        pl.seed_everything(0)
        data = NeighbouringDataset.from_plan(base, plan, run["run"])
        assert len(data) == len(plan["train_indices"])
        out = tmp_path / f"run{run['run']}"
        monitor = SASMonitor(flush_every=50, probe_every=5, figure_every=0, num_train_probes=32, num_test_probes=32,
                             store=str(out / "sas"))
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(out, max_steps=150, limit_val_batches=1.0))
        trainer.fit(TinyClassifier(), DataLoader(data, batch_size=32, shuffle=False),
                    DataLoader(make_classification(64, seed=9), batch_size=32))
        assert read_run(out).meta["plan_run"] == run["run"]
        dirs.append(str(out))
    capsys.readouterr()
    html = tmp_path / "compare.html"
    assert cli_main(["compare", *dirs, "--json", "--out", str(tmp_path / "cmp"), "--html", str(html), "--from-step", "50"]) == 0
    result = json.loads(capsys.readouterr().out)
    unexplained = [key for key in result if explanation(key) is None]
    assert not unexplained, f"compare keys without a text in lightning_sas/keys.py: {unexplained}"
    assert explanation_html("heldout_max_abs_difference") in html.read_text()
    # brute force from the stored streams
    rows = []
    for d in dirs:
        probes = read_run(d).streams["probes"]
        rows.append(probes["losses"][probes["step"] >= 50])
    avg = np.stack([r.mean(axis=0) for r in rows])  # (runs, points): [P_train 32, P_test 32, removed 6, added 6]
    tests = avg[:, 32:64]
    diffs = [np.abs(tests[0] - tests[k]).mean() for k in (1, 2, 3)]
    assert result["mean_pairwise_abs_difference"] == pytest.approx(np.mean(diffs), rel=1e-9)
    coef = np.mean([abs(tests[0].mean() - tests[k].mean()) for k in (1, 2, 3)])
    assert result["paper_coefficient"] == pytest.approx(coef, rel=1e-9)
    assert np.isfinite(result["paper_coefficient_se"]) and result["paper_coefficient_se"] > 0
    assert result["heldout_max_abs_difference"] == pytest.approx(np.mean([np.abs(tests[0] - tests[k]).max() for k in (1, 2, 3)]), rel=1e-9)
    removed = [64 + 2 * (k - 1) + np.arange(2) for k in (1, 2, 3)]
    added = [70 + 2 * (k - 1) + np.arange(2) for k in (1, 2, 3)]
    g = [0.5 * ((avg[k, removed[k - 1]] - avg[0, removed[k - 1]]).mean() + (avg[0, added[k - 1]] - avg[k, added[k - 1]]).mean())
         for k in (1, 2, 3)]
    assert result["swaps"] == 2
    assert result["stability_gap"] == pytest.approx(np.mean(g), rel=1e-9)
    assert np.isfinite(result["stability_gap_se"]) and result["stability_gap_se"] > 0
    for name in ("stability_gap", "stability_gap_removed", "stability_gap_added", "sas_replaced", "sas_max"):
        assert result[f"{name}_lower"] < result[f"{name}_upper"], name  # the 95 % intervals come along
    sup = [np.abs(avg[k, np.concatenate([np.arange(32, 64), removed[k - 1], added[k - 1]])]
                  - avg[0, np.concatenate([np.arange(32, 64), removed[k - 1], added[k - 1]])]).max() for k in (1, 2, 3)]
    assert result["sas_max"] == pytest.approx(np.mean(sup), rel=1e-9)
    removed_side = [(avg[k, removed[k - 1]] - avg[0, removed[k - 1]]).mean() for k in (1, 2, 3)]
    assert result["stability_gap_removed"] == pytest.approx(np.mean(removed_side), rel=1e-9)
    # the removed samples are the plan's: run k never trained on them, the control did
    swapped = read_run(dirs[1]).meta["plan_swaps"]
    assert [[int(i), int(j)] for i, j in swapped[0]] == [[int(i), j] for i, j in plan["runs"][1]["replace"].items()]
    assert (tmp_path / "cmp" / "abs_differences.png").exists() and html.exists()
    assert cli_main(["compare", dirs[0]]) == 2
    # without --from-step: the latest of the runs' statistics windows, never the probe at step 0
    from lightning_sas.diagnostics import summarize_run

    capsys.readouterr()
    assert cli_main(["compare", *dirs, "--json", "--out", str(tmp_path / "cmp2")]) == 0
    default = json.loads(capsys.readouterr().out)
    starts = [summarize_run(read_run(d))["window_start"] for d in dirs]
    assert None not in starts and default["from_step"] == max(starts) >= 1
