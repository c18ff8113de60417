"""torchmetrics ``Metric`` classes whose states sync under DDP and survive checkpoints."""

from lightning_sas.metrics.ergodic_gap import ErgodicGap
from lightning_sas.metrics.time_average import TimeAverage

__all__ = ["ErgodicGap", "SASEstimate", "TimeAverage"]


def __getattr__(name: str):  # SASEstimate imports the SAS statistics lazily
    if name == "SASEstimate":
        from lightning_sas.metrics.sas_estimate import SASEstimate

        return SASEstimate
    raise AttributeError(name)
