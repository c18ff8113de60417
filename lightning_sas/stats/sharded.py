r"""Shard-aware weight statistics: per-rank pieces whose squares and sketches add up over ranks.

Under FSDP each rank holds a piece :math:`P_r` of every parameter; the pieces are disjoint and
cover it, so for parameters :math:`p, q` (weights, a stored copy, a gradient)

.. math::

    \|p\|^2 = \sum_r \|p_{P_r}\|^2, \qquad \|p - q\|^2 = \sum_r \|p_{P_r} - q_{P_r}\|^2, \qquad
    S(p) = \sum_r S(p_{P_r}),

where :math:`S` is the count-sketch of :class:`~lightning_sas.stats.sketch.RandomProjection`
evaluated at the pieces' *global* element indices. Each rank therefore computes squared norms,
squared distances and sketch parts of its own pieces (never gathering the model), one all-reduce
(SUM) at flush adds them, and the square roots come last.

Replicated copies must count once: a piece is *owned* by one rank of its replica group and the
other ranks contribute zero (coordinate 0 on every non-``Shard`` mesh dimension of a DTensor,
inter-node rank 0 under FSDP1 hybrid sharding, global rank 0 for a plain tensor in a model that is
otherwise sharded). Without sharded parameters (one process, DDP) every piece is the whole
parameter, nothing is reduced and nothing is masked.

Layouts: FSDP2 ``fully_shard`` (DTensor parameters; the local tensor is a box of the global
tensor: ``compute_local_shape_and_global_offset``), FSDP1 with ``use_orig_params=True`` (Lightning's
default: each original parameter is a 1-D view of the flat parameter's local shard, starting at
global flat index ``_ShardParamInfo.intra_param_start_idx``), and plain tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_sas._private import WRAPPER_NAME_SEGMENTS, dtensor_local_shape_and_offset, fsdp1_unit, is_flat_parameter
from lightning_sas.stats.sketch import RandomProjection

__all__ = ["ShardSpec", "ShardedParameters", "clean_parameter_name", "is_flat_parameter"]

_WRAPPER = re.compile(rf"(^|\.)({'|'.join(WRAPPER_NAME_SEGMENTS)})\.")


def clean_parameter_name(name: str) -> str:
    """``name`` without FSDP1/activation-checkpoint wrapper segments (``net._fsdp_wrapped_module.0.weight``
    -> ``net.0.weight``), so a sharded model's names, per-layer tags and sketch match the plain model's."""
    previous = None
    while previous != name:
        previous, name = name, _WRAPPER.sub(r"\1", name)
    return name


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # pragma: no cover - builds without torch.distributed
        return None
    return DTensor


def _global_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@dataclass(frozen=True)
class ShardSpec:
    """Where one rank's piece of a parameter lies in the whole parameter.

    ``flat``: the piece is elements ``offset[0] .. offset[0] + local_shape[0] - 1`` of the
    flattened parameter (FSDP1 views, simulated shards); otherwise it is the box
    ``offset[d] .. offset[d] + local_shape[d] - 1`` in every dimension ``d`` (DTensor).
    ``sharded``: other ranks hold the rest. ``owned``: this rank's piece counts in the sum over
    ranks (False for a replica that another rank already counts).
    """

    global_shape: tuple[int, ...]
    offset: tuple[int, ...]
    local_shape: tuple[int, ...]
    sharded: bool = False
    owned: bool = True
    flat: bool = False

    @classmethod
    def whole(cls, shape: Sequence[int], owned: bool = True) -> "ShardSpec":
        shape = tuple(int(s) for s in shape)
        return cls(shape, (0,) * len(shape), shape, sharded=False, owned=owned)

    @classmethod
    def flat_range(cls, global_shape: Sequence[int], start: int, numel: int, owned: bool = True) -> "ShardSpec":
        """Elements ``start .. start + numel - 1`` of the flattened parameter of ``global_shape``."""
        return cls(tuple(int(s) for s in global_shape), (int(start),), (int(numel),), sharded=True, owned=owned, flat=True)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.local_shape:
            n *= s
        return n

    def contiguous_start(self) -> int | None:
        """Global flat index of the piece's first element when the piece is one contiguous range
        of the flattened parameter (row-major), else None. A box is contiguous when the dimensions
        after the last partial one are whole and those before it have extent 1."""
        if self.flat or self.numel == 0:
            return self.offset[0] if self.flat else 0
        partial = [d for d, (l, g) in enumerate(zip(self.local_shape, self.global_shape)) if l != g]
        last = partial[-1] if partial else -1
        if any(self.local_shape[d] != 1 for d in range(last)):
            return None
        return sum(o * st for o, st in zip(self.offset, _strides(self.global_shape)))

    def global_indices(self, device: torch.device | str | None = None) -> Tensor:
        r"""Global flat indices (int64, row-major local order) of the piece's elements:
        :math:`\sum_d (\mathrm{offset}_d + i_d)\,\mathrm{stride}_d` over the local multi-index :math:`i`."""
        start = self.contiguous_start()
        if start is not None:
            return torch.arange(start, start + self.numel, dtype=torch.int64, device=device)
        idx = torch.zeros(self.local_shape, dtype=torch.int64, device=device)
        for d, (o, n, st) in enumerate(zip(self.offset, self.local_shape, _strides(self.global_shape))):
            view = [1] * len(self.local_shape)
            view[d] = n
            idx += ((torch.arange(n, dtype=torch.int64, device=device) + o) * st).view(view)
        return idx.reshape(-1)


def _strides(shape: Sequence[int]) -> list[int]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return out[::-1]


def _dtensor_spec(param: Any) -> ShardSpec:
    """Spec of a DTensor's local tensor: its box, sharded when any placement is ``Shard``, owned
    when this rank's coordinate is 0 on every other (replicated) mesh dimension."""
    from torch.distributed.tensor import Shard
    mesh, placements = param.device_mesh, param.placements
    local_shape, offset = dtensor_local_shape_and_offset(param.shape, mesh, placements)
    coord = mesh.get_coordinate()
    sharded = any(isinstance(pl, Shard) for pl in placements)
    owned = coord is not None and all(c == 0 for c, pl in zip(coord, placements) if not isinstance(pl, Shard))
    return ShardSpec(tuple(param.shape), tuple(int(o) for o in offset), tuple(int(s) for s in local_shape), sharded=sharded, owned=owned)


def _fsdp1_specs(roots: Iterable[torch.nn.Module]) -> dict[int, ShardSpec]:
    """``id(original parameter) -> spec`` for every FSDP1 handle with ``use_orig_params=True``
    under ``roots`` (the flat parameter knows, per original parameter, which part is local)."""
    import torch.distributed as dist

    specs: dict[int, ShardSpec] = {}
    for root in roots:
        for module in root.modules():
            unit = fsdp1_unit(module)
            if unit is None or not unit.layout:
                continue
            if not unit.sharded:  # NO_SHARD: whole, replicated
                for p, shape, _ in unit.layout:
                    specs[id(p)] = ShardSpec.whole(shape)
                continue
            owned = True
            if unit.hybrid:  # replicated across the inter-node group: its rank 0 counts
                owned = unit.inter_node_group is None or dist.get_rank(unit.inter_node_group) == 0
            layout = unit.layout
            for p, shape, info in layout:
                start = int(info.intra_param_start_idx) if info.in_shard else 0
                numel = int(info.numel_in_shard) if info.in_shard else 0
                specs[id(p)] = ShardSpec.flat_range(tuple(shape), start, numel, owned=owned)
    return specs


class ShardedParameters:
    r"""Named parameters with the spec of this rank's piece of each; the shard-additive math.

    :meth:`local_tensors` returns the pieces (DTensor -> ``to_local()``, FSDP1 views and plain
    tensors as they are); :meth:`squared_norms` gives :math:`o_i \|x_i\|^2` per parameter ``i``
    (ownership mask :math:`o_i \in \{0, 1\}`) with one fused ``_foreach_norm``; :meth:`sketch`
    the count-sketch of the owned pieces at their global indices; :meth:`all_reduce_` sums a
    tensor over ranks when :attr:`needs_reduction` (and is a no-op otherwise).
    """

    def __init__(self, names: Sequence[str], params: Sequence[Tensor], specs: Sequence[ShardSpec]) -> None:
        if not len(names) == len(params) == len(specs):
            raise ValueError("names, params and specs must have the same length")
        self.names = list(names)
        self.params = list(params)
        self.specs = list(specs)
        dtensor = _dtensor_type()
        self._is_dtensor = [dtensor is not None and isinstance(p, dtensor) for p in self.params]
        #: some piece is a strict part of its parameter: statistics are sums over ranks
        self.needs_reduction = any(s.sharded for s in self.specs)
        self.owned = [s.owned for s in self.specs]
        self._mask: dict[torch.device, Tensor] = {}

    @classmethod
    def from_named(cls, named: Sequence[tuple[str, Tensor]], roots: Iterable[torch.nn.Module] = ()) -> "ShardedParameters":
        """Specs for ``named`` parameters; FSDP1 handles are looked up under ``roots`` (the
        module and its wrapper). In a sharded model, plain tensors are replicated and owned by
        global rank 0 only."""
        dtensor = _dtensor_type()
        fsdp1 = _fsdp1_specs(roots)
        specs: list[ShardSpec | None] = []
        for _, p in named:
            if dtensor is not None and isinstance(p, dtensor):
                specs.append(_dtensor_spec(p))
            else:
                specs.append(fsdp1.get(id(p)))
        sharded = any(s is not None and s.sharded for s in specs)
        rank0 = _global_rank() == 0
        filled = [s if s is not None else ShardSpec.whole(p.shape, owned=rank0 or not sharded) for s, (_, p) in zip(specs, named)]
        return cls([clean_parameter_name(n) for n, _ in named], [p for _, p in named], filled)

    def __len__(self) -> int:
        return len(self.params)

    # -- pieces ----------------------------------------------------------------------------
    def local_tensors(self) -> list[Tensor]:
        """This rank's piece of every parameter (detached views, no copies)."""
        with torch.no_grad():
            return [p.to_local() if d else p.detach() for p, d in zip(self.params, self._is_dtensor)]

    def local_grads(self) -> list[Tensor] | None:
        """The pieces' gradients, aligned with the parameters (an empty tensor where a parameter
        has none: it adds zero). None when no parameter has a gradient here and nothing is
        sharded (when sharded, another rank may hold the gradients: zeros are contributed)."""
        if not self.params:
            return None
        with torch.no_grad():
            grads = [None if p.grad is None else (p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad) for p in self.params]
        present = [g for g in grads if g is not None]
        if not present and not self.needs_reduction:
            return None
        empty = present[0].new_zeros(0) if present else self.local_tensors()[0].new_zeros(0)
        return [empty if g is None else g for g in grads]

    # -- shard-additive math ---------------------------------------------------------------
    def _ownership(self, device: torch.device) -> Tensor | None:
        if all(self.owned):
            return None
        if device not in self._mask:  # one host-to-device copy per device, then cached
            self._mask[device] = torch.tensor([1.0 if o else 0.0 for o in self.owned], dtype=torch.float64, device=device)
        return self._mask[device]

    def squared_norms(self, tensors: Sequence[Tensor]) -> Tensor:
        r""":math:`o_i \|x_i\|^2` per piece (float64, ``(P,)``, on the pieces' device), one fused
        ``_foreach_norm``; the sum over ranks is the squared norm of each whole parameter."""
        if not tensors:
            return torch.zeros(0, dtype=torch.float64)
        sq = torch.stack(torch._foreach_norm(list(tensors))).to(torch.float64).square()
        mask = self._ownership(sq.device)
        return sq if mask is None else sq * mask

    def squared_norm(self, tensors: Sequence[Tensor]) -> Tensor:
        r""":math:`\sum_i o_i \|x_i\|^2` (float64 scalar)."""
        return self.squared_norms(tensors).sum()

    def squared_distances(self, tensors: Sequence[Tensor], others: Sequence[Tensor], max_elements: int | None = None) -> Tensor:
        r""":math:`o_i \|x_i - y_i\|^2` per piece (float64, ``(P,)``), computed a group of pieces at a
        time: each group's differences (one fused ``_foreach_sub``) hold at most ``max_elements``
        elements, or one piece when a piece is larger (default: the largest piece), so the peak
        temporary is at most the largest piece, never a copy of the model."""
        tensors, others = list(tensors), list(others)
        if not tensors:
            return torch.zeros(0, dtype=torch.float64)
        sizes = [int(t.numel()) for t in tensors]
        budget = max(sizes) if max_elements is None else max(int(max_elements), 1)
        parts, group, filled = [], [], 0
        for i, n in enumerate(sizes):
            if group and filled + n > budget:
                parts.append(group)
                group, filled = [], 0
            group.append(i)
            filled += n
        parts.append(group)
        norms: list[Tensor] = []
        for group in parts:
            diff = torch._foreach_sub([tensors[i] for i in group], [others[i] for i in group])
            norms.extend(torch._foreach_norm(diff))
            del diff
        sq = torch.stack(norms).to(torch.float64).square()
        mask = self._ownership(sq.device)
        return sq if mask is None else sq * mask

    def sketch_slots(self, projection: RandomProjection, tensors: Sequence[Tensor] | None = None) -> Tensor:
        """The ``(2k,)`` slot accumulator (:meth:`RandomProjection.slot_sums`) of the owned pieces
        at their global element indices, chunk by chunk and uncached (bounded temporaries, for
        large models); ``projection.signed`` of it is :meth:`sketch`, and it is additive over
        ranks like the sketch."""
        tensors = self.local_tensors() if tensors is None else tensors
        device = tensors[0].device if len(tensors) else None
        acc = torch.zeros(2 * projection.k, dtype=torch.float64, device=device)
        for name, t, spec in zip(self.names, tensors, self.specs):
            if not spec.owned or t.numel() == 0:
                continue
            start = spec.contiguous_start()
            if start is not None:
                projection.slot_sums(name, t, int(start), out=acc)
            else:
                projection.slot_sums(name, t, indices=spec.global_indices(t.device), out=acc)
        return acc

    @property
    def global_numel(self) -> int:
        """Elements of the whole (unsharded) parameters: the same number on every rank."""
        total = 0
        for spec in self.specs:
            n = 1
            for s in spec.global_shape:
                n *= s
            total += n
        return total

    @property
    def local_numel(self) -> int:
        """Elements of this rank's pieces."""
        return sum(spec.numel for spec in self.specs)

    def sketch(self, projection: RandomProjection, tensors: Sequence[Tensor] | None = None) -> Tensor:
        """Count-sketch of the owned pieces at their global element indices (``(k,)`` float64);
        the sum over ranks is the sketch of the whole model."""
        tensors = self.local_tensors() if tensors is None else tensors
        pieces = [(name, t, spec) for name, t, spec in zip(self.names, tensors, self.specs) if spec.owned and t.numel()]
        starts = [spec.contiguous_start() for _, _, spec in pieces]
        if pieces and all(start is not None for start in starts):  # one accumulation for every piece
            return projection.project_many([(name, t, int(start)) for (name, t, _), start in zip(pieces, starts)])
        out: Tensor | None = None
        for name, t, spec in zip(self.names, tensors, self.specs):
            if not spec.owned or t.numel() == 0:
                continue
            start = spec.contiguous_start()
            if start is not None:
                part = projection.project_flat(name, t, start)
            else:
                part = projection.project_indexed(name, t, spec.global_indices(t.device))
            out = part if out is None else out + part.to(out.device)
        if out is None:
            device = tensors[0].device if len(tensors) else None
            return torch.zeros(projection.k, dtype=torch.float64, device=device)
        return out

    @property
    def reduces(self) -> bool:
        """:attr:`needs_reduction` and a process group of more than one rank is up."""
        import torch.distributed as dist

        return self.needs_reduction and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over all ranks in place (one collective) when :attr:`reduces`; a no-op
        otherwise. Call it on every rank."""
        import torch.distributed as dist

        if not self.reduces:
            return tensor
        target = tensor
        if tensor.device.type == "cpu" and "gloo" not in str(dist.get_backend()).lower() and torch.cuda.is_available():
            target = tensor.to(torch.device("cuda", torch.cuda.current_device()))  # NCCL reduces on the GPU
        dist.all_reduce(target, op=dist.ReduceOp.SUM)
        if target is not tensor:
            tensor.copy_(target)
        return tensor
