"""Calibration of the SAS estimate's standard errors over many seeds.

For each setting (data set, optimizer, label noise) the same training run is repeated with
``--seeds`` seeds; a seed changes the initialization, the data order, the replicas' held-out split
and swaps and the probe points, while the data set and its noisy labels stay fixed. Every run
trains the main model with ``SASMonitor(replicas=SASReplicas(K))`` and keeps the replicas' block
means (``<out>/<setting>/seed<k>.npz``), so the statistics can be recomputed from the stored runs
with the current code (``--table-only``) without training again. For ``stability_gap``, the
control's held-out gap ``control_heldout_gap`` (the gap ``stability_gap`` estimates), ``sas_mean``
and ``sas_max`` it prints:

* ``spread``: the standard deviation of the estimates over seeds;
* ``mean SE``: the mean of the standard errors the runs reported, and ``ratio`` = mean SE / spread
  (a calibrated SE gives about 0.92 at K = 4: the mean of a standard deviation from 4 values);
* ``coverage``: the share of runs whose reported 95 % interval (``<name>_lower`` to
  ``<name>_upper``: on the log scale for ``sas_*``, skewness-corrected for the gaps) holds the
  seed-averaged value;
* ``bias``: ``stability_gap - control_heldout_gap`` averaged over seeds, ± its standard error;
* with ``--json``, per row also ``value_se_correlation`` (the correlation of the estimates and
  their SEs over seeds) and ``mean_shift_se`` (how far the reported interval's midpoint sits above
  the estimate, in SEs);
* the sampling error of the study itself: a 95 % bootstrap interval of the ratio (seeds resampled)
  and the Wilson 95 % interval of the coverage (with 30 seeds a calibrated 95 % interval covers
  between 83 % and 99 % of the time), and ``goal``: ``met`` when the ratio is in [0.8, 1.25] and
  the coverage in [90 %, 98 %], ``within noise`` when both intervals reach those ranges, else
  ``missed``.

    # the study in docs/sas-estimate.md (60 seeds, two processes, one per data set):
    python benchmarks/calibration.py --settings mnist1d-sgd-0 mnist1d-sgd-40 --seeds 60 --steps 1500 --probe-every 25 --out runs/calibration
    python benchmarks/calibration.py --settings digits-adam-0 digits-adam-40 --seeds 60 --steps 1500 --probe-every 25 --out runs/calibration
    python benchmarks/calibration.py --table-only --variants --seeds 60 --steps 1500 --out runs/calibration  # the table
    python benchmarks/calibration.py --settings mnist1d-sgd-0 --seeds 4 --steps 300   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

#: name -> (data set, optimizer, learning rate, label noise)
SETTINGS: dict[str, tuple[str, str, float, float]] = {
    "mnist1d-sgd-0": ("mnist1d", "sgd", 0.5, 0.0),
    "mnist1d-sgd-40": ("mnist1d", "sgd", 0.5, 0.4),
    "digits-adam-0": ("digits", "adam", 1e-3, 0.0),
    "digits-adam-40": ("digits", "adam", 1e-3, 0.4),
}

#: statistics of the table: (name, key of the estimate, key of its critical value or None for 1.96)
STATISTICS = ("stability_gap", "control_heldout_gap", "sas_mean", "sas_max")
#: ``--variants``: other standard errors of stability_gap, for comparison (samples: the 2mK
#: per-swap values taken as independent; max: the larger of that and the replicas' spread;
#: previous: the spread and the temporal batch-means SE in quadrature, before the calibration)
#: ``[± t SE]``: the same estimate and SE with the symmetric interval ``value ± t SE`` that the
#: product reported before its intervals followed the skew of per-sample losses;
#: ``[skew: per swap]``: the same SE with the skewness-corrected interval, its skew taken from the
#: ``2mK`` per-swap values as if independent instead of from the K per-replica values)
LINEAR = " [± t SE]"
PER_SWAP_SKEW = "stability_gap [skew: per swap]"
VARIANTS = ("stability_gap [SE: samples]", "stability_gap [SE: max]", "stability_gap [SE: previous]",
            PER_SWAP_SKEW) + tuple(name + LINEAR for name in STATISTICS)


def load_arrays(dataset: str) -> dict[str, np.ndarray]:
    """The fixed data: mnist1d (4000 train / 1000 test, generated offline) or scikit-learn's
    digits (the first 1200 images to train, the other 597 to test, pixels scaled to [0, 1])."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = (digits.data / 16.0).astype(np.float32), digits.target
        return {"x": x[:1200], "y": y[:1200], "x_test": x[1200:], "y_test": y[1200:]}
    from mnist1d_common import make_mnist1d

    return make_mnist1d(seed=0)


def train_once(setting: str, seed: int, args: argparse.Namespace, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """One run of ``setting`` with ``seed``: the stored block means and the live summary."""
    import pytorch_lightning as pl
    import torch
    from mnist1d_common import MLP, MNIST1DDataModule, cross_entropy_per_sample, flip_labels

    from lightning_sas import SASMonitor, SASReplicas

    dataset, optimizer, lr, noise = SETTINGS[setting]

    class FixedLabels(MNIST1DDataModule):
        """Labels flipped with seed 0 in every run; the data order follows ``seed``."""

        def __init__(self) -> None:
            noisy = dict(data, y=flip_labels(data["y"], noise, seed=0) if noise > 0 else data["y"])
            super().__init__(noisy, batch_size=args.batch_size, label_noise=0.0, seed=seed)

    pl.seed_everything(seed, verbose=False)
    replicas = SASReplicas(replicas=args.replicas, swaps="auto" if args.swaps == "auto" else int(args.swaps),
                           holdout_fraction=args.holdout_fraction, loss_fn=cross_entropy_per_sample,
                           probe_every=args.probe_every, num_train_probes=args.probes, num_heldout_probes=args.probes,
                           seed=seed)
    monitor = SASMonitor(replicas=replicas, figure_every=0, store=False, seed=seed)
    trainer = pl.Trainer(max_steps=args.steps, callbacks=[monitor], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    sizes = (data["x"].shape[1], args.width, args.width, 10)
    model = MLP(sizes=sizes, lr=lr, optimizer=optimizer, weight_decay=args.weight_decay if optimizer == "sgd" else 0.0)
    torch.set_num_threads(1)
    trainer.fit(model, datamodule=FixedLabels())
    summary = monitor.summary()
    metric = monitor.replicas.metric
    layout = metric.layout
    with metric.synced():
        blocks = metric.replica_block_means(None)
    return {
        "perturbed": blocks["perturbed"], "control": blocks["control"], "control_full": blocks["control_full"],
        "counts": blocks["counts"], "starts": blocks["starts"],
        "removed": layout.removed_columns, "added": layout.added_columns, "heldout": layout.heldout_columns,
        "train": layout.control_train_columns(),
        "window_start": -1 if summary.get("window_start") is None else int(summary["window_start"]),
        "fork_step": int(summary.get("fork_step") or 0),
        "summary": json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool, type(None)))}),
    }


def statistics_of(run: dict[str, np.ndarray]) -> dict[str, Any]:
    """The estimate of a stored run over its statistics window, with the current code."""
    from lightning_sas.diagnostics import probe_window_start
    from lightning_sas.stats.intervals import skew_corrected_interval, third_cumulant_of_mean
    from lightning_sas.stats.sas import _temporal_se, heldout_gap, sas_statistics, time_average

    window = None if int(run["window_start"]) < 0 else int(run["window_start"])
    start = max(probe_window_start(window, run["starts"]), int(run["fork_step"]))
    keep = run["starts"] >= start
    counts = run["counts"][keep]
    out = sas_statistics(run["perturbed"][:, keep], run["control"][:, keep], counts, run["removed"], run["added"],
                         run["heldout"])
    gap = heldout_gap(run["control_full"][keep], counts, run["train"], run["heldout"])
    out["control_heldout_gap"], out["control_heldout_gap_se"] = gap["gap"], gap["gap_se"]
    out["control_heldout_gap_lower"], out["control_heldout_gap_upper"] = gap["gap_lower"], gap["gap_upper"]
    out["window_blocks"] = int(keep.sum())
    # candidate SEs for stability_gap, compared by the study (the estimate is the same)
    d = time_average(run["perturbed"][:, keep], counts) - time_average(run["control"][:, keep], counts)
    values = np.concatenate([d[:, run["removed"]], -d[:, run["added"]]], axis=1)  # (K, 2m): r_k(i), a_k(z')
    pooled = float(values.std(ddof=1) / math.sqrt(values.size))
    out["stability_gap [SE: samples]"] = out["stability_gap"]
    out["stability_gap [SE: samples]_se"] = pooled
    out["stability_gap [SE: max]"] = out["stability_gap"]
    out["stability_gap [SE: max]_se"] = max(pooled, out["stability_gap_se"] or 0.0)
    out[PER_SWAP_SKEW], out[PER_SWAP_SKEW + "_se"] = out["stability_gap"], out["stability_gap_se"]
    out[PER_SWAP_SKEW + "_lower"], out[PER_SWAP_SKEW + "_upper"] = skew_corrected_interval(
        out["stability_gap"], out["stability_gap_se"], out["sas_critical_t"], third_cumulant_of_mean(values))
    # the SE before the calibration: the spread between replicas and the temporal batch-means SE in
    # quadrature (the temporal noise counted twice)
    diff = run["perturbed"][:, keep] - run["control"][:, keep]
    series = 0.5 * (diff[:, :, run["removed"]].mean(axis=2) - diff[:, :, run["added"]].mean(axis=2))[:, :, None]
    temporal = _temporal_se(series, counts, None)
    if temporal is not None and out["stability_gap_se"] is not None:
        out["stability_gap [SE: previous]"] = out["stability_gap"]
        out["stability_gap [SE: previous]_se"] = math.sqrt(out["stability_gap_se"] ** 2 + float(np.mean(temporal**2)) / len(temporal))
    for name in STATISTICS:
        out[name + LINEAR], out[name + LINEAR + "_se"] = out.get(name), out.get(f"{name}_se")
    return out


def covers(values: np.ndarray, ses: np.ndarray, crit: np.ndarray, centre: float) -> np.ndarray:
    """Whether each run's symmetric interval ``value ± crit SE`` holds ``centre``."""
    return np.abs(values - centre) <= crit * ses


def covers_reported(runs: list[dict[str, Any]], name: str, centre: float) -> np.ndarray | None:
    """Whether each run's reported interval ``[<name>_lower, <name>_upper]`` holds ``centre``;
    None when a run reports none (a variant, or runs stored before the product had intervals)."""
    ends = [(r.get(f"{name}_lower"), r.get(f"{name}_upper")) for r in runs]
    if any(low is None or high is None for low, high in ends):
        return None
    return np.asarray([low <= centre <= high for low, high in ends])


def _critical(stats: dict[str, Any], name: str) -> float:
    """The critical value of a symmetric interval: 2 for the measured gap (the product's), 1.96
    for the per-sample SE, ``sas_mean_critical_t`` for ``sas_mean``, Student's t with K - 1 dof
    for the rest."""
    name = name.removesuffix(LINEAR)
    if name == "control_heldout_gap":
        return 2.0
    if "samples" in name:
        return 1.959963984540054
    if name == "sas_mean" and stats.get("sas_mean_critical_t") is not None:
        return float(stats["sas_mean_critical_t"])  # Satterthwaite dof of its crossed SE
    return float(stats["sas_critical_t"])


#: the calibration goal: ratio SE / spread and coverage of the 95 % interval
RATIO_GOAL, COVERAGE_GOAL = (0.8, 1.25), (0.90, 0.98)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion [E. B. Wilson, JASA 22(158), 1927]:
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = successes / n``."""
    p, zz = successes / n, z * z
    centre, half = p + zz / (2 * n), z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))
    return min(p, (centre - half) / (1 + zz / n)), max(p, (centre + half) / (1 + zz / n))


def ratio_interval(values: np.ndarray, ses: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``mean(ses) / std(values)``, the seeds resampled."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    spread = values[idx].std(axis=1, ddof=1)
    ratios = ses[idx].mean(axis=1)[spread > 0] / spread[spread > 0]
    if ratios.size == 0:  # every resample without spread: no ratio to bound
        return math.nan, math.nan
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def goal_verdict(ratio: float | None, ratio_ci: tuple[float, float], coverage: float, coverage_ci: tuple[float, float]) -> str:
    """``met`` (both point values in the goal), ``within noise`` (both intervals reach the goal) or ``missed``."""
    def inside(x: float, goal: tuple[float, float]) -> bool:
        return goal[0] <= x <= goal[1]

    def reaches(ci: tuple[float, float], goal: tuple[float, float]) -> bool:
        return ci[0] <= goal[1] and ci[1] >= goal[0]

    if ratio is not None and inside(ratio, RATIO_GOAL) and inside(coverage, COVERAGE_GOAL):
        return "met"
    if ratio is not None and reaches(ratio_ci, RATIO_GOAL) and reaches(coverage_ci, COVERAGE_GOAL):
        return "within noise"
    return "missed"


def calibration_rows(results: dict[str, list[dict[str, Any]]], variants: bool = False) -> list[dict[str, Any]]:
    """Spread, mean SE, ratio, coverage per setting and statistic, and the bias of stability_gap."""
    rows = []
    for setting, runs in results.items():
        for name in STATISTICS + (VARIANTS if variants else ()):
            ok = [r for r in runs if r.get(name) is not None and r.get(f"{name}_se") is not None]
            if len(ok) < 3:
                continue
            values = np.asarray([r[name] for r in ok])
            ses = np.asarray([r[f"{name}_se"] for r in ok])
            crit = np.asarray([_critical(r, name) for r in ok])
            centre = values.mean()
            spread = float(values.std(ddof=1))
            reported = covers_reported(ok, name, centre)
            covered = int(np.sum(covers(values, ses, crit, centre) if reported is None else reported))
            coverage = covered / len(ok)
            ratio = float(ses.mean() / spread) if spread > 0 else None
            ratio_ci = ratio_interval(values, ses)
            coverage_ci = wilson_interval(covered, len(ok))
            row = {"setting": setting, "statistic": name, "runs": len(ok), "mean": float(centre), "spread": spread,
                   "mean_se": float(ses.mean()), "ratio": ratio, "ratio_ci": ratio_ci, "coverage": coverage,
                   "coverage_ci": coverage_ci, "goal": goal_verdict(ratio, ratio_ci, coverage, coverage_ci),
                   "z_sd": float(np.std((values - centre) / ses, ddof=1)),
                   "value_se_correlation": float(np.corrcoef(values, ses)[0, 1]) if np.std(ses) > 0 else None}
            if reported is not None:  # where the reported interval sits: its midpoint above the value, in SEs
                mids = np.asarray([(r[f"{name}_lower"] + r[f"{name}_upper"]) / 2 for r in ok])
                row["mean_shift_se"] = float(np.mean((mids - values) / np.where(ses > 0, ses, np.nan)))
            if name == "stability_gap":
                pairs = [(r["stability_gap"], r["control_heldout_gap"]) for r in ok if r.get("control_heldout_gap") is not None]
                diff = np.asarray([a - b for a, b in pairs])
                row["bias"] = float(diff.mean())
                row["bias_se"] = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else None
                row["gap"] = float(np.mean([b for _, b in pairs]))
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | statistic | runs | mean | spread over seeds | mean SE | ratio (95 % interval) | "
             "coverage of 95 % (Wilson) | goal | bias of `stability_gap` |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bias = ""
        if "bias" in r:
            bias = f"{r['bias']:+.3f} ± {r['bias_se']:.3f} (gap {r['gap']:.3f})" if r["bias_se"] is not None else ""
        low, high = r["ratio_ci"]
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f} ({low:.2f}–{high:.2f})"
        c_low, c_high = r["coverage_ci"]
        lines.append(f"| {r['setting']} | `{r['statistic']}` | {r['runs']} | {r['mean']:.3f} | {r['spread']:.3f} | "
                     f"{r['mean_se']:.3f} | {ratio} | {r['coverage']:.0%} ({c_low:.0%}–{c_high:.0%}) | {r['goal']} | {bias} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, default=20, help="runs per setting (seeds first-seed ... first-seed + n - 1)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=4, help="K perturbed replicas")
    parser.add_argument("--swaps", default="auto", help="m swaps per replica ('auto': the default)")
    parser.add_argument("--holdout-fraction", type=float, default=None)
    parser.add_argument("--probe-every", type=int, default=20)
    parser.add_argument("--probes", type=int, default=200, help="training and held-out probe points each")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=256, help="hidden width of the 2-layer MLP")
    parser.add_argument("--weight-decay", type=float, default=1e-3, help="SGD's weight decay (Adam runs use none)")
    parser.add_argument("--out", default="runs/calibration", help="stored runs (one .npz per seed)")
    parser.add_argument("--table-only", action="store_true", help="no training: the table from the stored runs")
    parser.add_argument("--json", help="also write the table rows here")
    parser.add_argument("--variants", action="store_true", help="also rows for other standard errors of stability_gap")
    args = parser.parse_args()

    started = time.time()
    results: dict[str, list[dict[str, Any]]] = {setting: [] for setting in args.settings}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):  # seeds outside: every setting grows alike
        for setting in args.settings:
            folder = os.path.join(args.out, f"{setting}-{args.steps}steps")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"seed{seed}.npz")
            if not os.path.exists(path):
                if args.table_only:
                    continue
                dataset = SETTINGS[setting][0]
                if dataset not in arrays:
                    arrays[dataset] = load_arrays(dataset)
                t0 = time.time()
                run = train_once(setting, seed, args, arrays[dataset])
                np.savez(path + ".tmp.npz", **run)
                os.replace(path + ".tmp.npz", path)
                print(f"{setting} seed {seed}: {time.time() - t0:.0f} s", flush=True)
            with np.load(path) as stored:
                run = {k: stored[k] for k in stored.files}
            results[setting].append(statistics_of(run))
    rows = calibration_rows(results, variants=args.variants)
    print(f"\nK = {args.replicas}, {args.steps} steps, {time.time() - started:.0f} s\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
