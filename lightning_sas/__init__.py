"""lightning-sas: late-phase training diagnostics and statistical algorithmic stability (SAS)
for PyTorch Lightning (Chandramoorthy et al., "On the generalization of learning algorithms that
do not converge", NeurIPS 2022)."""

import typing as _typing

from lightning_sas import callbacks as _callbacks
from lightning_sas._compat import use_imported_namespaces as _use_imported_namespaces
from lightning_sas.callbacks import SASWarning

if _typing.TYPE_CHECKING:
    from lightning_sas.callbacks import LossStream, ProbeLosses, SASMonitor, SASReplicas, WeightSnapshots

__version__ = "0.1.0"

__all__ = ["LossStream", "ProbeLosses", "SASMonitor", "SASReplicas", "SASWarning", "WeightSnapshots", "__version__"]

_CALLBACKS = frozenset({"LossStream", "ProbeLosses", "SASMonitor", "SASReplicas", "WeightSnapshots"})


def __getattr__(name: str) -> _typing.Any:
    """The callback classes, looked up here each time so that they are subclasses of the
    ``Callback`` of every Lightning namespace imported by then, whatever the order of the imports
    (``LightningCLI`` checks ``issubclass`` on ``lightning_sas.SASMonitor`` before creating one)."""
    if name in _CALLBACKS:
        _use_imported_namespaces()
        return getattr(_callbacks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
