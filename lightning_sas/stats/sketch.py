"""Seeded count-sketch of model weights: a ``k``-dimensional random projection without a matrix.

Each weight ``w_j`` (``j`` = global element index within its named parameter) goes to one bucket
``h(name, j)`` in ``[0, k)`` with a sign ``s(name, j)`` in ``{+1, -1}``:

    sketch[b] = sum_{name} sum_{j : h(name, j) = b} s(name, j) * w_{name, j}.

This is the count-sketch of M. Charikar, K. Chen & M. Farach-Colton, "Finding frequent items in
data streams" (ICALP 2002), a.k.a. the hashing trick of K. Weinberger et al., "Feature hashing for
large scale multitask learning" (ICML 2009). Because the signs are independent of each other and
of the buckets, ``E[s_j s_l] = delta_jl`` and inner products are preserved in expectation over
seeds: ``E[<S x, S y>] = <x, y>`` (no ``1/sqrt(k)`` scaling needed).

``(h, s)`` are a pure function of ``(seed, name, j)``: a splitmix64 stream [G. Steele, D. Lea &
C. Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014] keyed by the seed and the
CRC-32 of the name (stable across processes, unlike Python's ``hash``), evaluated on the tensor's
device with int64 arithmetic. So the projection is linear and *additive over shards*: a rank
holding elements ``offset .. offset + m - 1`` of a parameter projects them alone and the sums over
shards equal the projection of the whole tensor. Nothing of size ``d x k`` is built and no random
numbers are drawn per weight; memory is a few int64 temporaries per chunk.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["RandomProjection"]

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64 increment (2^64 / golden ratio)
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_NAME_MUL = 0xD6E8FEB86659FD93


def _signed(u: int) -> int:
    """A uint64 value as the int64 with the same bits."""
    u &= _M64
    return u - (1 << 64) if u >= (1 << 63) else u


def _mix64_py(z: int) -> int:
    """splitmix64 finaliser on Python ints (mod 2^64)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    return z ^ (z >> 31)


def _mix_top_(z: Tensor, tmp: Tensor) -> Tensor:
    """splitmix64 finaliser on an int64 tensor, in place, *without its last xorshift*.

    The last step ``z ^= z >>> 31`` leaves the top 33 bits unchanged and only the top 31 bits are
    used, so it is skipped. torch's ``>>`` on int64 is arithmetic: the sign fill is masked off to
    get the logical shift; int64 multiplication wraps mod 2^64, which is what the mixer needs.
    """
    for shift, mul in ((30, _MIX1), (27, _MIX2)):
        torch.bitwise_right_shift(z, shift, out=tmp)
        tmp.bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(tmp)
        z.mul_(_signed(mul))
    return z


class RandomProjection:
    """Count-sketch of named tensors to ``k`` float64 coordinates, seeded and shard-additive.

    ``project([(name, tensor), ...], offsets)`` returns ``sketch`` of shape ``(k,)`` (float64, on
    the tensors' device) with ``sketch[b] = sum_j s(name, j) w_j`` over the elements ``j`` with
    ``h(name, j) = b`` (module docstring). ``j = offsets[name] + flat index`` is the element's
    index in the *full* parameter, so shards add up to the whole. Values are cast to float64
    before projecting, so every dtype gives the same sketch of the same values.
    """

    #: slots kept between sketches, in elements (int32, 4 bytes each): small models are sketched
    #: without rehashing; larger ones rehash each chunk (bounded temporary memory)
    CACHE_ELEMENTS = 1 << 21

    def __init__(self, k: int = 32, seed: int = 0, chunk_size: int = 1 << 22) -> None:
        if not 1 <= k < (1 << 30):
            raise ValueError(f"k must be in [1, 2^30), got {k}")
        self.k = int(k)
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self._seed_key = _mix64_py(_mix64_py(self.seed) + _GOLDEN)
        self._slot_cache: dict[tuple[str, int, int, str], Tensor] = {}
        self._many_cache: dict[Any, Tensor] = {}
        self._cached_elements = 0

    def _name_key(self, name: str) -> int:
        crc = zlib.crc32(name.encode("utf-8"))
        return _signed(_mix64_py(self._seed_key ^ ((crc * _NAME_MUL) & _M64)))

    def _slots(self, name: str, offset: int, numel: int, device, indices: Tensor | None = None) -> Tensor:
        """``2 h + (1 - s) / 2`` in ``[0, 2k)`` for global indices ``offset .. offset + numel - 1``
        (or for the int64 global indices ``indices``, when given).

        One splitmix64 output per element, ``z = mix64(key(seed, name) + (j + 1) * GOLDEN)``;
        its top 31 bits ``u`` are reduced to ``[0, 2k)`` by Lemire's multiply-shift
        ``(u * 2k) >> 31`` (no int64 overflow for ``k < 2^30``; for ``k`` a power of two this is
        just the top ``log2(2k)`` bits). The slot's high part is the bucket and its low bit the
        sign: each (bucket, sign) pair is equally likely (up to ``2^-31``), so bucket and sign are
        independent.
        """
        if indices is None:
            z = torch.arange(offset + 1, offset + 1 + numel, dtype=torch.int64, device=device)
        else:
            z = indices.to(device=device, dtype=torch.int64).reshape(-1) + 1
        z.mul_(_signed(_GOLDEN)).add_(self._name_key(name))
        _mix_top_(z, torch.empty_like(z))
        m = 2 * self.k
        if m & (m - 1) == 0:  # power of two: top log2(m) bits, same result as the general branch
            b = m.bit_length() - 1
            z.bitwise_right_shift_(64 - b).bitwise_and_(m - 1)
        else:
            z.bitwise_right_shift_(33).bitwise_and_((1 << 31) - 1)
            z.mul_(m).bitwise_right_shift_(31)
        return z

    def buckets_and_signs(
        self, name: str, offset: int, numel: int, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(h, s)`` for the global indices ``offset .. offset + numel - 1`` of ``name``:
        ``h`` int64 in ``[0, k)``, ``s`` float64 in ``{+1, -1}`` (see :meth:`_slots`)."""
        slots = self._slots(name, offset, numel, device)
        return slots >> 1, 1.0 - 2.0 * (slots & 1).to(torch.float64)

    def project_flat(self, name: str, flat_tensor: Tensor, offset: int = 0) -> Tensor:
        """Sketch (``(k,)`` float64) of one shard: elements ``offset ..`` of parameter ``name``.

        Accumulates ``+w`` into slot ``2h`` or ``-w`` into slot ``2h + 1`` with ``index_add_``
        (deterministic on CUDA under ``torch.use_deterministic_algorithms``), in chunks of
        ``chunk_size`` elements, then returns ``slot[0::2] - slot[1::2]``.
        """
        flat = flat_tensor.detach().reshape(-1)
        return self._accumulate(flat, lambda start, n: self._cached_slots(name, offset + start, n, flat.device))

    def _cached_slots(self, name: str, offset: int, numel: int, device: Any) -> Tensor:
        """:meth:`_slots`, kept (as int32) while the cache holds at most :attr:`CACHE_ELEMENTS`
        elements: the same slots, hashed once per run for small models."""
        key = (name, int(offset), int(numel), str(device))
        cached = self._slot_cache.get(key)
        if cached is not None:
            return cached
        slots = self._slots(name, offset, numel, device)
        if self._cached_elements + numel <= self.CACHE_ELEMENTS:
            slots = slots.to(torch.int32)
            self._slot_cache[key] = slots
            self._cached_elements += numel
        return slots

    def project_indexed(self, name: str, values: Tensor, indices: Tensor) -> Tensor:
        """Sketch (``(k,)`` float64) of the elements ``values`` of parameter ``name`` whose global
        (flat, row-major) indices are ``indices`` (same number of elements): a shard that is not
        one contiguous range of the flattened parameter, e.g. a ``Shard(1)`` block of a matrix.
        Equals :meth:`project_flat` when ``indices`` is ``offset + arange(n)``."""
        flat = values.detach().reshape(-1)
        idx = indices.reshape(-1)
        if idx.numel() != flat.numel():
            raise ValueError(f"{name}: {flat.numel()} values but {idx.numel()} indices")
        return self._accumulate(flat, lambda start, n: self._slots(name, 0, n, flat.device, indices=idx[start : start + n]))

    def _accumulate(self, flat: Tensor, slots_of: Callable[[int, int], Tensor]) -> Tensor:
        """``slot[0::2] - slot[1::2]`` after adding ``flat`` into the slots ``slots_of(start, n)``
        of each chunk of ``chunk_size`` elements (bounded temporary memory)."""
        acc = torch.zeros(2 * self.k, dtype=torch.float64, device=flat.device)
        for start in range(0, flat.numel(), self.chunk_size):
            chunk = flat[start : start + self.chunk_size].to(torch.float64)
            acc.index_add_(0, slots_of(start, chunk.numel()), chunk)
        return acc[0::2] - acc[1::2]

    # -- raw slot sums (no cache; for large models) ----------------------------------------
    def slot_sums(self, name: str, flat_tensor: Tensor, offset: int = 0, indices: Tensor | None = None,
                  out: Tensor | None = None) -> Tensor:
        """The ``(2k,)`` float64 slot accumulator of one piece, added into ``out`` when given:
        slot ``2h`` holds the sum of ``+w``, slot ``2h + 1`` the sum of ``-w`` of the elements with
        bucket ``h``, so :meth:`signed` of it is :meth:`project_flat` (or :meth:`project_indexed`
        with ``indices``). Nothing is cached: the temporaries are three 8-byte values per element
        of one chunk of ``chunk_size`` elements (the float64 values and two int64 hash words)."""
        flat = flat_tensor.detach().reshape(-1)
        acc = torch.zeros(2 * self.k, dtype=torch.float64, device=flat.device) if out is None else out
        idx = None if indices is None else indices.reshape(-1)
        for start in range(0, flat.numel(), self.chunk_size):
            chunk = flat[start : start + self.chunk_size].to(torch.float64)
            n = chunk.numel()
            if idx is None:
                slots = self._slots(name, offset + start, n, flat.device)
            else:
                slots = self._slots(name, 0, n, flat.device, indices=idx[start : start + n])
            acc.index_add_(0, slots, chunk)
            del slots, chunk
        return acc

    @staticmethod
    def signed(acc: Tensor) -> Tensor:
        """The sketch ``slot[0::2] - slot[1::2]`` of a :meth:`slot_sums` accumulator."""
        return acc[0::2] - acc[1::2]

    def can_fold_to(self, other: "RandomProjection") -> bool:
        """True when :meth:`fold` gives ``other``'s sketch: same seed, both ``k`` powers of two,
        ``other.k <= self.k``."""
        return (other.seed == self.seed and other.k <= self.k
                and self.k & (self.k - 1) == 0 and other.k & (other.k - 1) == 0)

    def fold(self, acc: Tensor, other: "RandomProjection") -> Tensor:
        """``other``'s sketch from this projection's slot accumulator ``acc`` (:meth:`can_fold_to`).

        For ``2k`` a power of two the slot is the top ``log2(2k)`` bits of the element's hash
        word, so ``other``'s slot is this slot shifted right by ``log2(k / other.k)``: its
        accumulator is the sum of ``k / other.k`` neighbouring slots here (one hash per element
        serves both sketches; equal up to float64 summation order)."""
        if not self.can_fold_to(other):
            raise ValueError(f"cannot fold a k={self.k}, seed={self.seed} sketch to k={other.k}, seed={other.seed}")
        return self.signed(acc.view(2 * other.k, -1).sum(1))

    def project_many(self, items: Sequence[tuple[str, Tensor, int]]) -> Tensor:
        """Sum of :meth:`project_flat` over ``(name, flat tensor, offset)`` items as one
        accumulation: the items' values are concatenated (float64) and added into the slots with
        one ``index_add_``, their slots concatenated once and kept (while the total is within
        :attr:`CACHE_ELEMENTS`; else each item is projected on its own)."""
        total = sum(int(t.numel()) for _, t, _ in items)
        if not items or total > self.CACHE_ELEMENTS:
            out = torch.zeros(self.k, dtype=torch.float64, device=items[0][1].device if items else None)
            for name, t, offset in items:
                out = out + self.project_flat(name, t, offset).to(out.device)
            return out
        device = items[0][1].device
        key = ("\0".join(name for name, _, _ in items), tuple(int(o) for _, _, o in items),
               tuple(int(t.numel()) for _, t, _ in items), str(device))
        slots = self._many_cache.get(key)
        if slots is None:
            slots = torch.cat([self._slots(name, offset, t.numel(), device) for name, t, offset in items]).to(torch.int32)
            self._many_cache = {key: slots}  # one set of pieces per run
        values = torch.cat([t.detach().reshape(-1) for _, t, _ in items]).to(torch.float64)
        acc = torch.zeros(2 * self.k, dtype=torch.float64, device=device)
        acc.index_add_(0, slots, values)
        return acc[0::2] - acc[1::2]

    def project(
        self,
        named_tensors: Iterable[tuple[str, Tensor]],
        offsets: Mapping[str, int] | None = None,
    ) -> Tensor:
        """Sum of :meth:`project_flat` over ``named_tensors`` (each flattened, offset from
        ``offsets``, default 0). Returns zeros on the CPU when nothing is given."""
        out: Tensor | None = None
        for name, t in named_tensors:
            off = 0 if offsets is None else int(offsets.get(name, 0))
            part = self.project_flat(name, t, off)
            out = part if out is None else out + part.to(out.device)
        return torch.zeros(self.k, dtype=torch.float64) if out is None else out
