"""A private random stream for the replicas, so the main run's generators are never consumed."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from lightning_sas.isolation import GlobalRNGState

__all__ = ["PrivateRNG"]


class PrivateRNG:
    """The replicas' own states of every global generator a training step may draw from: torch's
    CPU generator (and, on CUDA, the device's), numpy's global ``RandomState`` and Python's
    ``random`` (user code in ``training_step`` or a dataset's ``__getitem__`` may use any of them).

    ``with rng.active(device):`` saves the global states, installs the replicas' states, and on
    exit stores the replicas' advanced states and puts the global ones back, so dropout and random
    augmentations inside replica steps draw from their own seeded streams and the main run's
    streams are untouched (docs: Design, "The monitor is an observer").

    numpy's global generator is swapped with its exact legacy ``get_state``/``set_state`` (key,
    position and the cached Gaussian). A swap of its MT19937 bytes in place through ctypes saved
    about 0.3 ms per replica step, below the noise of a replica step on CPU (docs: Performance,
    "Replicas"), and wrote into numpy's private memory: removed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.cpu_state = torch.Generator().manual_seed(seed).get_state()
        self.cuda_state: torch.Tensor | None = None
        self.numpy_state: Any = np.random.RandomState(seed % 2**32).get_state()
        self.python_state: Any = random.Random(seed).getstate()

    @contextmanager
    def active(self, device: torch.device) -> Iterator[None]:
        cuda = device.type == "cuda"
        saved = GlobalRNGState()
        if cuda and device.index is not None and device.index not in saved.devices:
            saved.devices.append(device.index)
            saved.torch_cuda.append(torch.cuda.get_rng_state(device))
        try:
            torch.set_rng_state(self.cpu_state)
            np.random.set_state(self.numpy_state)  # rng-ok: installs the replicas' own state
            random.setstate(self.python_state)
            if cuda:
                if self.cuda_state is None:
                    torch.cuda.manual_seed(self.seed)
                else:
                    torch.cuda.set_rng_state(self.cuda_state, device)
            yield
        finally:
            self.cpu_state = torch.get_rng_state()
            self.numpy_state = np.random.get_state()  # rng-ok: reads the replicas' advanced state
            self.python_state = random.getstate()
            if cuda:
                self.cuda_state = torch.cuda.get_rng_state(device)
            saved.restore()

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only (``torch.load(weights_only=True)`` reads it)."""
        kind, keys, pos, has_gauss, gauss = self.numpy_state
        version, internal, gauss_next = self.python_state
        return {
            "cpu": self.cpu_state.clone(),
            "cuda": None if self.cuda_state is None else self.cuda_state.clone(),
            "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cpu_state = state["cpu"].clone()
        self.cuda_state = None if state.get("cuda") is None else state["cuda"].clone()
        if state.get("numpy") is not None:  # checkpoints of older versions lack them
            np_state = state["numpy"]
            keys = np_state["keys"].numpy().astype(np.uint32)
            self.numpy_state = ("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["gauss"])
        if state.get("python") is not None:
            py = state["python"]
            self.python_state = (py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"])

