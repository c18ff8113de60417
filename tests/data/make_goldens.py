"""Rerecord the summaries that tests compare with, from the current code:

    python tests/data/make_goldens.py

writes ``tests/data/monitor_before_cost_work.json`` (``tests/test_statistics_unchanged.py``) and
``tests/data/v01_one_replacement.json`` (``tests/test_swaps.py``). Run it only when a statistic
changes on purpose, and say why in the commit message."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the test modules and conftest

#: the keys ``test_swaps`` compares for the one-swap run
ONE_SWAP_KEYS = ("sas_max", "sas_max_se", "sas_max_null", "sas_mean", "sas_mean_se", "sas_mean_null", "sas_replaced",
                 "sas_replaced_se", "sas_replaced_null", "stability_gap_removed", "stability_gap_removed_se",
                 "stability_gap", "stability_gap_se", "paper_coefficient", "paper_coefficient_se",
                 "mean_pairwise_abs_difference", "mean_pairwise_abs_difference_se", "control_heldout_gap",
                 "control_heldout_gap_se", "control_train_loss", "control_heldout_loss", "sas_converged",
                 "sas_resolved", "window", "window_start")


def _plain(summary: dict[str, Any], keys: Any) -> dict[str, Any]:
    return {k: summary[k] for k in keys if isinstance(summary.get(k), (int, float, str, bool, dict, type(None)))}


def main() -> None:
    import test_statistics_unchanged
    import test_swaps

    with tempfile.TemporaryDirectory() as tmp:
        before = json.loads((HERE / "monitor_before_cost_work.json").read_text())
        monitor = {name: _plain(test_statistics_unchanged.summary_of(name, Path(tmp) / name), before[name])
                   for name in ("plain", "accumulate", "manual")}
        one_swap = {path: _plain(test_swaps._run(Path(tmp) / path, path, swaps=1), ONE_SWAP_KEYS)
                    for path in ("fast", "generic")}
    (HERE / "monitor_before_cost_work.json").write_text(json.dumps(monitor, indent=1) + "\n")
    (HERE / "v01_one_replacement.json").write_text(json.dumps(one_swap, indent=1) + "\n")
    print("rewrote", HERE / "monitor_before_cost_work.json", "and", HERE / "v01_one_replacement.json")


if __name__ == "__main__":
    main()
