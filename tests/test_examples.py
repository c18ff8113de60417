"""The sequence-model example runs without a ``loss_fn``: the per-sequence loss is inferred from
its dict batches and the replicas run its own ``training_step`` (a short run here; the full run's
time is measured in the docs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_char_transformer_example_summary_has_its_keys(tmp_path: Any) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import char_transformer
    finally:
        sys.path.remove(str(EXAMPLES))
    summary = char_transformer.main(["--steps", "60", "--logdir", str(tmp_path)])
    for key in ("loss_mean", "iat", "weight_norm", "ergodic_gap", "control_heldout_gap", "sas_max", "stability_gap",
                "swaps"):
        assert summary[key] is not None, (key, summary["unavailable"].get(key))
    assert summary["replica_path"] == "generic"  # no loss_fn: the module's own training_step
    assert set(summary["unavailable"]) == {k for k, v in summary.items() if v is None}
    assert (tmp_path / "char_transformer" / "version_0" / "sas" / "summary.json").exists()
