"""The bias study behind ``SASReplicas(swaps="auto")``: m = 1, 8, 32, 128 swaps per replica at
K = 4 on mnist1d, clean and with 40 % label noise, on two optimizers.

For each setting it trains the label-noise example's MLP with ``SASMonitor(replicas=SASReplicas(4,
swaps=m))`` and reports the symmetric ``stability_gap`` (both sides of every swap), its two sides,
and the ``control_heldout_gap`` measured on the control replica against the same held-out split; the
bias is ``stability_gap - control_heldout_gap`` in units of their combined SE. The held-out split is
20 % of the data so that m = 128 fits (K m + 1 = 513 held-out samples: 4 x 128 replacements and a P_test point).

    python benchmarks/swap_study.py                    # 16 runs, about 10 minutes on 2 CPU cores
    python benchmarks/swap_study.py --json study.json
    python benchmarks/swap_study.py --from-json study.json --pivot   # the README's table, no rerun
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
from label_noise_sas import run  # noqa: E402
from mnist1d_common import make_mnist1d  # noqa: E402

OPTIMIZERS = {"sgd": 0.5, "momentum": 0.05}


def _pm(summary: dict[str, Any], key: str) -> str:
    value, se = summary.get(key), summary.get(f"{key}_se")
    if value is None:
        return "n/a"
    return f"{value:.3f} ± {se:.3f}" if se is not None else f"{value:.3f}"


def bias_in_se(summary: dict[str, Any]) -> float | None:
    """(stability_gap - control_heldout_gap) over their combined SE."""
    keys = ("stability_gap", "stability_gap_se", "control_heldout_gap", "control_heldout_gap_se")
    if any(summary.get(k) is None for k in keys):
        return None
    se = math.hypot(summary["stability_gap_se"], summary["control_heldout_gap_se"])
    return (summary["stability_gap"] - summary["control_heldout_gap"]) / se if se > 0 else None


def print_rows(rows: list[dict[str, Any]]) -> None:
    """One line per run: every column of the study."""
    print("| optimizer | noise | m | `stability_gap` | removed side | added side | `control_heldout_gap` | bias (SE) | resolved |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in rows:
        bias = bias_in_se(s)
        print(f"| {s['optimizer']} | {s['label_noise']:.0%} | {s['swaps']} | {_pm(s, 'stability_gap')} | "
              f"{_pm(s, 'stability_gap_removed')} | {_pm(s, 'stability_gap_added')} | {_pm(s, 'control_heldout_gap')} | "
              f"{'n/a' if bias is None else f'{bias:+.2f}'} | {'yes' if s.get('stability_gap_resolved') else 'no'} |")


def print_pivot(rows: list[dict[str, Any]], reference_m: int = 32) -> None:
    """The README's table: one row per (optimizer, noise), one column per m, each cell
    ``stability_gap ± SE (bias)``, and the measured gap of the ``reference_m`` run last."""
    swaps = sorted({int(s["swaps_requested"]) for s in rows})
    settings = list(dict.fromkeys((s["optimizer"], s["label_noise"]) for s in rows))
    cells = {(s["optimizer"], s["label_noise"], int(s["swaps_requested"])): s for s in rows}
    print("| optimizer, noise | " + " | ".join(f"m = {m}" for m in swaps) + f" | `control_heldout_gap` (m = {reference_m} run) |")
    print("|---" * (len(swaps) + 2) + "|")
    for optimizer, noise in settings:
        line = []
        for m in swaps:
            s = cells.get((optimizer, noise, m))
            if s is None or s.get("stability_gap") is None:
                line.append("n/a")
                continue
            bias = bias_in_se(s)
            line.append(f"{s['stability_gap']:.2f} ± {s['stability_gap_se']:.2f} "
                        f"({'n/a' if bias is None else f'{bias:+.1f}'})")
        ref = cells.get((optimizer, noise, reference_m))
        gap = "n/a" if ref is None or ref.get("control_heldout_gap") is None else \
            f"{ref['control_heldout_gap']:.2f} ± {ref['control_heldout_gap_se']:.2f}"
        print(f"| {optimizer}, {noise:.0%} | " + " | ".join(line) + f" | {gap} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.4])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every summary here")
    parser.add_argument("--from-json", help="print the tables of a study saved with --json (no training)")
    parser.add_argument("--pivot", action="store_true", help="also print the README's table (one column per m)")
    args = parser.parse_args()

    if args.from_json:
        with open(args.from_json) as fh:
            rows = json.load(fh)
        print_rows(rows)
        if args.pivot:
            print()
            print_pivot(rows)
        return
    data = make_mnist1d(seed=args.seed)
    rows: list[dict[str, Any]] = []
    started = time.time()
    for optimizer in args.optimizers:
        for noise in args.noise:
            for m in args.swaps:
                settings = SimpleNamespace(
                    replicas=args.replicas, swaps=m, holdout_fraction=args.holdout_fraction, sampler="common",
                    probe_every=20, steps=args.steps, optimizer=optimizer, lr=OPTIMIZERS[optimizer],
                    logdir=os.path.join("runs", "swap_study"), seed=args.seed,
                )
                summary = run(noise, settings, data)
                summary.update(optimizer=optimizer, swaps_requested=m)
                rows.append(summary)
                print(f"{optimizer} noise {noise:.0%} m={m}: stability_gap {_pm(summary, 'stability_gap')}, "
                      f"control_heldout_gap {_pm(summary, 'control_heldout_gap')}, bias {bias_in_se(summary)}", flush=True)
    print(f"\nK = {args.replicas}, {args.steps} steps, holdout_fraction {args.holdout_fraction}, "
          f"{time.time() - started:.0f} s in all\n")
    print_rows(rows)
    if args.pivot:
        print()
        print_pivot(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
