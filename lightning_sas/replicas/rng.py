"""A private random stream for the replicas, so the main run's generators are never consumed."""

from __future__ import annotations

import ctypes
import random
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from lightning_sas.isolation import GlobalRNGState

__all__ = ["PrivateRNG"]

#: bytes of numpy's ``mt19937_state`` struct: ``uint32 key[624]`` and ``int pos``
_MT_BYTES = 624 * 4 + 4


def _mt_address() -> int | None:
    """Address of the state of numpy's global MT19937, or None where its layout is not the one
    assumed (checked against ``bit_generator.state``; the exact legacy path is used then)."""
    try:
        generator = np.random.mtrand._rand._bit_generator
        address = int(generator.ctypes.state_address)
        state = generator.state["state"]
        expected = _mt_bytes(state["key"], state["pos"])
        return address if ctypes.string_at(address, _MT_BYTES) == expected else None
    except Exception:  # noqa: BLE001 - any surprise: the exact (slower) path
        return None


def _mt_bytes(key: Any, pos: int) -> bytes:
    return np.asarray(key, dtype=np.uint32).tobytes() + int(pos).to_bytes(4, sys.byteorder, signed=True)


_MT_ADDRESS = _mt_address()


class PrivateRNG:
    """The replicas' own states of every global generator a training step may draw from: torch's
    CPU generator (and, on CUDA, the device's), numpy's global ``RandomState`` and Python's
    ``random`` (user code in ``training_step`` or a dataset's ``__getitem__`` may use any of them).

    ``with rng.active(device):`` saves the global states, installs the replicas' states, and on
    exit stores the replicas' advanced states and puts the global ones back, so dropout and random
    augmentations inside replica steps draw from their own seeded streams and the main run's
    streams are untouched (docs: Design, "The monitor is an observer").

    numpy's legacy ``get_state``/``set_state`` take about 35 us each, four per replica step, so
    numpy's generator is swapped as the 2500 bytes of its MT19937 state (key and position, read
    and written in place, under a microsecond) while the replicas have never drawn from it. The
    legacy Gaussian cache (``has_gauss``, ``gauss``) is not in those bytes: the first replica
    step, and every step once a replica step has drawn from numpy (the bytes changed), use the
    exact legacy swap. The one case the bytes cannot cover is a replica whose first numpy draw
    comes after its first step and is a legacy ``normal``/``randn`` while the main run holds a
    cached Gaussian.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.cpu_state = torch.Generator().manual_seed(seed).get_state()
        self.cuda_state: torch.Tensor | None = None
        self.numpy_state: Any = np.random.RandomState(seed % 2**32).get_state()
        self.python_state: Any = random.Random(seed).getstate()
        #: the replicas have drawn from numpy's global generator: swap it with the exact legacy calls
        self.numpy_drawn = False
        self._steps = 0

    @contextmanager
    def active(self, device: torch.device) -> Iterator[None]:
        cuda = device.type == "cuda"
        address = _MT_ADDRESS if (self._steps and not self.numpy_drawn and self.numpy_state[3] == 0) else None
        self._steps += 1
        saved = GlobalRNGState(numpy=address is None)
        if cuda and device.index is not None and device.index not in saved.devices:
            saved.devices.append(device.index)
            saved.torch_cuda.append(torch.cuda.get_rng_state(device))
        if address is not None:
            main_numpy = ctypes.string_at(address, _MT_BYTES)
            replica_numpy = _mt_bytes(self.numpy_state[1], self.numpy_state[2])
        try:
            torch.set_rng_state(self.cpu_state)
            if address is None:
                np.random.set_state(self.numpy_state)  # rng-ok: installs the replicas' own state
            else:
                ctypes.memmove(address, replica_numpy, _MT_BYTES)
            random.setstate(self.python_state)
            if cuda:
                if self.cuda_state is None:
                    torch.cuda.manual_seed(self.seed)
                else:
                    torch.cuda.set_rng_state(self.cuda_state, device)
            yield
        finally:
            self.cpu_state = torch.get_rng_state()
            if address is None:
                before = self.numpy_state
                self.numpy_state = np.random.get_state()  # rng-ok: reads the replicas' advanced state
                if not self.numpy_drawn and not _same_numpy_state(before, self.numpy_state):
                    self.numpy_drawn = True
            else:
                after = ctypes.string_at(address, _MT_BYTES)
                if after != replica_numpy:
                    self.numpy_drawn = True
                    self.numpy_state = ("MT19937", np.frombuffer(after[:-4], dtype=np.uint32).copy(),
                                        int.from_bytes(after[-4:], sys.byteorder, signed=True), 0, 0.0)
                ctypes.memmove(address, main_numpy, _MT_BYTES)
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
        self._steps = 0  # the first step after a resume takes the exact path again


def _same_numpy_state(a: Any, b: Any) -> bool:
    """Two legacy numpy generator state tuples are equal (key array, position, Gaussian cache)."""
    return a[2] == b[2] and a[3] == b[3] and a[4] == b[4] and np.array_equal(a[1], b[1])
