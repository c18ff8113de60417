"""torchmetrics ``Metric`` classes whose states sync under DDP and survive checkpoints."""

from lightning_sas.metrics.ergodic_gap import ErgodicGap
from lightning_sas.metrics.time_average import TimeAverage

__all__ = ["ErgodicGap", "TimeAverage"]
