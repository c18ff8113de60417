"""The monitor is an observer: everything it runs leaves the user's run exactly as it was.

Nothing the monitor does may draw from a random
stream the user's run draws from (torch's CPU and CUDA generators, numpy's and Python's global
generators), and every module mode it flips is put back. Every forward pass of ours (probe dry
runs, probes, replica steps and their data loading) runs inside :func:`isolated_rng`;
:func:`eval_mode` and :func:`observed` add the module modes and ``no_grad``.
"""

from __future__ import annotations

import random
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["GlobalRNGState", "isolated_rng", "eval_mode", "observed", "cuda_devices_in_use"]


def cuda_devices_in_use() -> list[int]:
    """Indices of the CUDA devices whose generators may have been used (none before CUDA is
    initialised: reading a generator would initialise it)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return list(range(torch.cuda.device_count()))


class GlobalRNGState:
    """A snapshot of every global generator a training run draws from: torch CPU, each CUDA
    device in use, numpy's legacy global ``RandomState`` and Python's ``random``."""

    def __init__(self, numpy: bool = True) -> None:
        """``numpy=False``: the caller saves and restores numpy's generator itself."""
        self.devices = cuda_devices_in_use()
        self.torch_cpu = torch.get_rng_state()
        self.torch_cuda = [torch.cuda.get_rng_state(d) for d in self.devices]
        self.numpy = np.random.get_state() if numpy else None  # rng-ok: a snapshot, no draw
        self.python = random.getstate()

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        for device, state in zip(self.devices, self.torch_cuda):
            torch.cuda.set_rng_state(state, device)
        if self.numpy is not None:
            np.random.set_state(self.numpy)  # rng-ok: restores the snapshot
        random.setstate(self.python)


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run the block with every global generator forked: whatever it draws (dropout, random
    augmentations in ``__getitem__``, ``np.random`` or ``random`` in user hooks) is undone on exit,
    so the user's streams continue exactly as if the block had never run."""
    saved = GlobalRNGState()
    try:
        yield
    finally:
        saved.restore()


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block, then its own ``training`` flag restored (a
    model may keep parts in eval mode on purpose, e.g. a frozen backbone). The flags are set
    directly: a module's ``train()``/``eval()``, which a user may override or record, is never
    called."""
    modes = [(m, m.training) for m in module.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def observed(module: torch.nn.Module, trainer: Any = None) -> Iterator[None]:
    """The context of every monitor forward pass on the user's module: forked global generators,
    eval mode (dropout off, BatchNorm running statistics untouched), ``no_grad`` and the precision
    plugin's forward context (autocast under mixed precision)."""
    plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
    forward = plugin.forward_context() if plugin is not None else nullcontext()
    with isolated_rng(), eval_mode(module), torch.no_grad(), forward:
        yield
