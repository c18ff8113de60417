"""lightning-sas: late-phase training diagnostics and statistical algorithmic stability (SAS)
for PyTorch Lightning (Chandramoorthy et al., "On the generalization of learning algorithms that
do not converge", NeurIPS 2022)."""

from lightning_sas.callbacks import LossStream, ProbeLosses, SASMonitor, SASReplicas, SASWarning, WeightSnapshots

__version__ = "0.1.0"

__all__ = ["LossStream", "ProbeLosses", "SASMonitor", "SASReplicas", "SASWarning", "WeightSnapshots", "__version__"]
