"""The replicas of the in-run SAS estimate: generic (deep copies running the module's own code)
and stacked (``torch.func``) engines, their trainer view, optimizers, sampler, private random
stream and placement over DDP ranks; and what ``SASReplicas`` delegates to: its argument checks
(``arguments``), the data set-up (``data_setup``), the engine choice (``engine_choice``), the
checkpoint state (``checkpoint_state``) and the summary keys (``summary``)."""

from lightning_sas.replicas.generic import GenericReplicas
from lightning_sas.replicas.stacked import StackedReplicas
from lightning_sas.replicas.trainer_view import ReplicaTrainerError, ReplicaTrainerView

__all__ = ["GenericReplicas", "ReplicaTrainerError", "ReplicaTrainerView", "StackedReplicas"]
