"""A private random stream for the replicas, so the main run's RNG is never consumed."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["PrivateRNG"]


class PrivateRNG:
    """Holds the CPU (and, on CUDA, the device) generator state of the replicas.

    ``with rng.active(device):`` forks the global RNG (``torch.random.fork_rng``), installs the
    replicas' state, and stores it back on exit, so dropout inside replica steps draws from its
    own seeded stream and the main run's stream is untouched.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.cpu_state = torch.Generator().manual_seed(seed).get_state()
        self.cuda_state: torch.Tensor | None = None

    @contextmanager
    def active(self, device: torch.device) -> Iterator[None]:
        cuda = device.type == "cuda"
        devices = [device] if cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if cuda:
                if self.cuda_state is None:
                    torch.cuda.manual_seed(self.seed)
                else:
                    torch.cuda.set_rng_state(self.cuda_state, device)
            try:
                yield
            finally:
                self.cpu_state = torch.get_rng_state()
                if cuda:
                    self.cuda_state = torch.cuda.get_rng_state(device)

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {"cpu": self.cpu_state.clone(), "cuda": None if self.cuda_state is None else self.cuda_state.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        self.cpu_state = state["cpu"].clone()  # type: ignore[union-attr]
        self.cuda_state = None if state.get("cuda") is None else state["cuda"].clone()  # type: ignore[union-attr]
