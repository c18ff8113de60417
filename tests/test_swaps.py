"""The swap estimator end to end: ``swaps=1`` reproduces v0.1's one-replacement estimator, the
null of identical swaps, the defaults that adapt to the data, and errors naming the way out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from conftest import TinyClassifier, make_classification, trainer_kwargs
from lightning_sas import SASMonitor, SASReplicas
from lightning_sas.data import DEFAULT_SWAPS

#: the summary of the run below (first recorded with v0.1's code; ``tests/data/make_goldens.py``)
V01 = json.loads((Path(__file__).parent / "data" / "v01_one_replacement.json").read_text())


def _cross_entropy(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y, reduction="none")


def _run(tmp_path: Any, path: str, **replica_kwargs: Any) -> dict[str, Any]:
    pl.seed_everything(0)
    replica_kwargs.setdefault("holdout_fraction", 0.1)  # v0.1's split: 32 of the 320 samples held out
    replicas = SASReplicas(replicas=3, path=path, loss_fn=_cross_entropy, probe_every=5, num_train_probes=24,
                           num_heldout_probes=24, flush_every=50, batch_size=16, **replica_kwargs)
    monitor = SASMonitor(flush_every=50, figure_every=0, num_train_probes=0, replicas=replicas, store=False)
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=300, precision="64-true")).fit(
        TinyClassifier(), DataLoader(make_classification(320), batch_size=16, shuffle=False))
    return monitor.summary()


@pytest.mark.parametrize("path", ["fast", "generic"])
def test_one_swap_run_equals_the_recorded_one(tmp_path: Any, path: str) -> None:
    """``swaps=1`` end to end, on both paths: every statistic equals the recorded run
    (``tests/data/v01_one_replacement.json``). It was first recorded with v0.1's code (whose
    one-replacement estimator is ``swaps=1``; the formulas' equality with v0.1's is checked in
    ``tests/stats/test_stats_sas.py``), and rerecorded with ``python tests/data/make_goldens.py``
    when the window (never the probe at step 0; the second half while no late phase is found), the
    SE (no double-counted temporal term), the key of the control's gap
    (``control_heldout_gap``) and the batches of the per-point temporal SEs (the one batch-means
    rule of ``stats.batch_means``: the null levels and the common-mode SE terms) changed on purpose."""
    summary = _run(tmp_path, path, swaps=1)
    assert summary["swaps"] == 1
    for key, value in V01[path].items():
        if isinstance(value, float):
            assert summary[key] == pytest.approx(value, rel=1e-9, abs=1e-14), key
        else:
            assert summary[key] == value, key
    # the symmetric estimator adds the other side of each swap
    assert summary["stability_gap"] == pytest.approx(0.5 * (summary["stability_gap_removed"] + summary["stability_gap_added"]))


def test_identical_swaps_give_no_stability_gap(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The null of the issue: each replica swaps samples for themselves (its dataset is S). With
    independent batch orders the replicas still differ, so each side alone is noise, but the two
    sides cancel: the stability gap is 0 and not resolved."""
    import lightning_sas.replicas.data_setup as module

    def identical(train: np.ndarray, holdout: np.ndarray, k: int, m: int, seed: int, exclude: Any = None) -> Any:
        chosen = np.random.default_rng(seed).choice(train, size=k * m, replace=False)
        return [[(int(i), int(i)) for i in chosen[r * m : (r + 1) * m]] for r in range(k)]

    monkeypatch.setattr(module, "choose_swaps", identical)
    summary = _run(tmp_path, "fast", swaps=4, sampler="independent")
    assert summary["stability_gap"] == pytest.approx(0.0, abs=1e-12)
    assert not summary["stability_gap_resolved"]
    assert summary["stability_gap_removed"] == pytest.approx(-summary["stability_gap_added"], rel=1e-9)
    assert summary["stability_gap_removed"] != 0.0  # the sides alone are noise, not 0


def test_auto_swaps_adapt_to_the_data(tmp_path: Any) -> None:
    """``DEFAULT_SWAPS = 32`` comes from ``benchmarks/swap_study.py`` (K = 4, mnist1d MLP, 4000
    steps, 20 % held out; bias = ``stability_gap - ergodic_gap`` in combined SEs)::

    | optimizer, noise | m = 1 | m = 8 | m = 32 | m = 128 | `control_heldout_gap` (m = 32 run) |
    |---|---|---|---|---|---|
    | sgd, 0% | 1.05 ± 0.67 (-0.2) | 0.95 ± 0.21 (-0.9) | 0.94 ± 0.08 (-1.0) | 1.05 ± 0.05 (+0.0) | 1.09 ± 0.13 |
    | sgd, 40% | 2.34 ± 0.45 (-2.4) | 2.77 ± 0.30 (-2.1) | 3.44 ± 0.18 (-0.1) | 3.64 ± 0.07 (-0.9) | 3.48 ± 0.22 |
    | momentum, 0% | 1.90 ± 1.10 (+0.6) | 1.11 ± 0.20 (-0.8) | 0.96 ± 0.09 (-1.2) | 1.15 ± 0.03 (-0.1) | 1.16 ± 0.14 |
    | momentum, 40% | 2.80 ± 0.58 (-1.4) | 2.68 ± 0.18 (-3.3) | 3.41 ± 0.21 (-0.6) | 3.64 ± 0.12 (-1.4) | 3.59 ± 0.23 |

    m = 32 is the smallest m whose bias stays within about one combined SE in all four settings
    (-1.00, -0.14, -1.22, -0.58), with an SE of 0.08-0.21. m = 1 has the largest SE (0.45-1.10,
    unresolved at 0 % noise) and is low by 2.4 SE at 40 % on SGD; m = 8 is biased low at 40 %
    noise on both optimizers (-2.1 and -3.3 SE). m = 128 has a smaller SE still (0.03-0.12) but is
    low by 1.4 SE with momentum at 40 %, and needs K m + 1 = 513 held-out samples (the 20 % split of
    this study). So DEFAULT_SWAPS = 32. ``benchmarks/calibration.py`` then compared m = 11 (1 % of
    S, the previous cap) with m = 32 on scikit-learn's digits (1200 samples, Adam, 30 seeds): with
    11 swaps the heavy-tailed per-sample losses left the 95 % intervals of ``stability_gap`` and
    ``sas_max`` holding the seed average in 73-77 % of the runs; with 32 (3.6 % of S, 128 P_test
    points) in 90-97 %. So the cap is 4 % of S, and by default the held-out split makes room for
    K x 32 replacements and 128 P_test points (at most half the data).
    """
    big = SASReplicas(replicas=4)
    assert big.resolve_swaps(5000) == (DEFAULT_SWAPS, 500)  # 10 % held out is room enough
    assert big.resolve_swaps(1200) == (DEFAULT_SWAPS, 256)  # digits: 4 x 32 + 128 held out, not 10 %
    assert big.resolve_swaps(1000) == (30, 256)  # 4 % of S (744 samples)
    assert big.resolve_swaps(60) == (1, 30)  # at most half the data is held out; 4 % of 30 rounds to 1
    assert SASReplicas(replicas=4, holdout_fraction=0.1).resolve_swaps(1200) == (15, 120)  # as given; half kept for P_test
    # with default arguments a 1000-sample dataset never gets a set-up error
    monitor = SASMonitor(flush_every=20, figure_every=0, store=False, replicas=4)
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=20)).fit(
        TinyClassifier(), DataLoader(make_classification(1000), batch_size=32, shuffle=True))
    assert monitor.summary()["swaps"] == 30


def test_explicit_swaps_that_do_not_fit_name_the_way_out(tmp_path: Any) -> None:
    monitor = SASMonitor(figure_every=0, store=False, replicas=4, swaps=200)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=5))
    with pytest.raises(ValueError, match=r"swaps=200.*at most half.*holdout_fraction"):
        trainer.fit(TinyClassifier(), DataLoader(make_classification(1000), batch_size=32))
    with pytest.raises(ValueError, match="swaps must be"):
        SASReplicas(swaps=0)


def test_swaps_are_restored_not_redrawn(tmp_path: Any) -> None:
    from pytorch_lightning.callbacks import ModelCheckpoint

    data = DataLoader(make_classification(320), batch_size=32)
    first = SASMonitor(flush_every=10, figure_every=0, store=False, replicas=SASReplicas(replicas=2, swaps=3))
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    kwargs = trainer_kwargs(tmp_path, max_steps=10, enable_checkpointing=True)
    pl.Trainer(callbacks=[first, ckpt], **kwargs).fit(TinyClassifier(), data)
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=10.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert saved["replicas"]["swaps"] == first.replicas._swaps_json()
    # a second run with another seed would draw other swaps: resumed, it keeps the checkpoint's
    second = SASMonitor(flush_every=10, figure_every=0, store=False, seed=5, replicas=SASReplicas(replicas=2, swaps=3))
    kwargs["max_steps"] = 20
    pl.Trainer(callbacks=[second, ModelCheckpoint(dirpath=str(tmp_path / "c2"))], **kwargs).fit(
        TinyClassifier(), data, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt"))
    assert second.replicas._swaps_json() == first.replicas._swaps_json()


def test_setting_errors_name_the_way_out(tmp_path: Any) -> None:
    from lightning_sas import LossStream
    from lightning_sas.cli import main as cli_main

    with pytest.raises(ValueError, match=r"loss_stream=.*window"):
        SASMonitor(loss_stream=LossStream(), window=64)
    with pytest.raises(ValueError, match=r"replicas=.*swaps"):
        SASMonitor(replicas=SASReplicas(replicas=2), swaps=4)
    with pytest.raises(ValueError, match="histogram_every"):
        SASMonitor(histogram_every=-1)
    assert cli_main(["perturb", "--n", "100", "--runs", "4", "--swaps", "5", "--holdout-fraction", "0.1"]) == 2  # 21 needed, 10 given
    assert cli_main(["perturb", "--n", "100", "--runs", "4", "--swaps", "13"]) == 2  # 53 needed, at most half (50) by default


def test_a_checkpoint_with_other_swaps_is_refused(tmp_path: Any) -> None:
    from pytorch_lightning.callbacks import ModelCheckpoint

    data = DataLoader(make_classification(320), batch_size=32)
    first = SASMonitor(flush_every=10, figure_every=0, store=False, replicas=SASReplicas(replicas=2, swaps=3))
    kwargs = trainer_kwargs(tmp_path, max_steps=10, enable_checkpointing=True)
    pl.Trainer(callbacks=[first, ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)],
               **kwargs).fit(TinyClassifier(), data)
    second = SASMonitor(flush_every=10, figure_every=0, store=False, replicas=SASReplicas(replicas=2, swaps=2))
    kwargs["max_steps"] = 20
    with pytest.raises(ValueError, match="swaps"):
        pl.Trainer(callbacks=[second], **kwargs).fit(TinyClassifier(), data,
                                                     ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt"))


def test_one_rule_for_the_held_out_size_and_the_swaps() -> None:
    """SASReplicas and `lightning-sas perturb` size the held-out split and m by one function."""
    from lightning_sas.data import auto_swaps, resolve_swaps

    assert resolve_swaps(1000, 0.1, 4, "auto") == (auto_swaps(900, 100, 4), 100)
    assert resolve_swaps(1000, 0.1, 4, 24) == (24, 100)  # 4 * 24 + 1 = 97 held-out samples fit in 100
    assert resolve_swaps(20, 0.1, 4, "auto")[1] == 5  # at least K + 1
    assert resolve_swaps(1000, None, 4, "auto") == (auto_swaps(744, 256, 4), 256)  # the default split
    assert resolve_swaps(1000, None, 4, 50) == (50, 328)  # room for an explicit m: 4 * 50 + 128
    with pytest.raises(ValueError, match=r"--swaps=25 with --runs=4 needs 101 held-out .*--holdout-fraction"):
        resolve_swaps(1000, 0.1, 4, 25, names=("--swaps", "--runs", "--holdout-fraction"))
    with pytest.raises(ValueError, match="swaps must be 'auto' or a positive integer"):
        resolve_swaps(1000, 0.1, 4, "many")
    assert SASReplicas(replicas=4, swaps=24, holdout_fraction=0.1).resolve_swaps(1000) == (24, 100)
    with pytest.raises(ValueError, match=r"swaps=25 with replicas=4 needs 101"):
        SASReplicas(replicas=4, swaps=25, holdout_fraction=0.1).resolve_swaps(1000)
