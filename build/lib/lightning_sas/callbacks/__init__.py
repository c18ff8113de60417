"""Lightning callbacks: the parts (``LossStream``, ``ProbeLosses``, ``WeightSnapshots``) and the
composite ``SASMonitor``."""

from lightning_sas.callbacks._common import SASWarning
from lightning_sas.callbacks.loss_stream import LossStream
from lightning_sas.callbacks.monitor import SASMonitor
from lightning_sas.callbacks.probe_losses import ProbeLosses
from lightning_sas.callbacks.sas_replicas import SASReplicas
from lightning_sas.losses import infer_per_sample_loss
from lightning_sas.callbacks.weight_snapshots import WeightSnapshots

__all__ = ["LossStream", "ProbeLosses", "SASMonitor", "SASReplicas", "SASWarning", "WeightSnapshots", "infer_per_sample_loss"]
