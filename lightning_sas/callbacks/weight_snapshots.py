"""``WeightSnapshots``: norms, distances and a random-projection sketch of the weights."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_sas import _compat as pl  # pl.Trainer, pl.LightningModule: of either namespace
from lightning_sas._private import module_trainer
from lightning_sas.callbacks._common import device_float_dtype, entry_completed, is_due, next_due, warn_once
from lightning_sas.validation import check_bool, check_int, check_regex, check_seed
from lightning_sas.callbacks.base import FlushContext, StreamCallback
from lightning_sas.stats.sharded import ShardedParameters, is_flat_parameter
from lightning_sas.stats.sketch import RandomProjection

__all__ = ["WeightSnapshots"]

#: scalar quantities of one snapshot, in buffer column order
QUANTITIES = ("weight_norm", "update_size", "distance_from_init", "distance_to_ergodic_mean", "grad_norm")


class WeightSnapshots(StreamCallback):
    r"""Weight diagnostics every ``snapshot_every`` stream entries, at no host sync.

    Per snapshot at step ``t`` (float64 on the training device, no host sync):

    * ``weight_norm`` :math:`\|\theta_t\|` and per-layer norms (capped by ``max_layers``,
      filtered by ``layer_filter``), exact, from one fused ``torch._foreach_norm``;
    * ``update_size`` :math:`\|\theta_t - \theta_{t-1}\|` (the parameters, or their sketch, are
      taken just before the optimizer step of a snapshot step);
    * ``distance_from_init`` :math:`\|\theta_t - \theta_0\|`;
    * ``distance_to_ergodic_mean`` :math:`\|\theta_t - \bar\theta_t\|` with the running mean
      :math:`\bar\theta` of the snapshots since a frozen start (the first late-phase start found,
      or ``ergodic_start``);
    * ``grad_norm`` :math:`\|g_t\|` before the optimizer step (after AMP unscaling);
    * every ``sketch_every`` entries, a ``sketch_dim``-dimensional count-sketch of all parameters
      (:class:`~lightning_sas.stats.sketch.RandomProjection`), additive over shards; the last
      ``sketch_history`` sketches stay on the host for the trajectory figure (all are stored).

    **Exact or sketched distances.** The three distances need the previous, initial and mean
    weights. With ``exact_distances=True`` they are kept as copies on the training device (three
    parameter copies) and each distance is computed a group of parameters at a time
    (:meth:`~lightning_sas.stats.sharded.ShardedParameters.squared_distances`), so the extra
    temporary is at most the largest parameter. With ``exact_distances=False`` nothing of the
    model's size is kept: the distances are norms of differences of a linear count-sketch
    :math:`S` of dimension :math:`k` = ``distance_sketch_dim`` (default 4096),

    .. math::

        \|S\theta_t - S\theta_0\|, \qquad \|S\theta_t - S\theta_{t-1}\|, \qquad
        \|S\theta_t - \tfrac{1}{n}\textstyle\sum_s S\theta_s\|,

    since :math:`S` is linear the sketch of the mean is the mean of the sketches, and the state is
    three :math:`k`-vectors. The default ``None`` is exact for models of at most
    :attr:`EXACT_DISTANCE_MAX_PARAMETERS` (1,000,000) parameters and sketched above.

    *Error of the sketched distances.* For a fixed vector :math:`x` (a difference of weights) and
    the count-sketch's random buckets :math:`h` and signs :math:`s`,
    :math:`\|Sx\|^2 = \sum_j x_j^2 + \sum_{j \ne l} s_j s_l x_j x_l [h_j = h_l]`; the cross terms
    have mean 0 and, as only the pairs :math:`\{j, l\} = \{j', l'\}` survive
    :math:`E[s_j s_l s_{j'} s_{l'}]` and :math:`P(h_j = h_l) = 1/k`,

    .. math::

        E\|Sx\|^2 = \|x\|^2, \qquad
        \mathrm{Var}\,\|Sx\|^2 = \frac{2}{k}\Big(\|x\|^4 - \sum_j x_j^4\Big) \le \frac{2}{k}\|x\|^4,

    so the squared distance has a relative standard deviation of at most :math:`\sqrt{2/k}` and
    the distance (delta method) :math:`\sqrt{1/(2k)}`: 2.2 % and 1.1 % for :math:`k = 4096`. The
    error is over the choice of ``seed``: one run uses one fixed linear map, so a trajectory of
    distances is consistent from snapshot to snapshot. In this mode the per-layer update sizes
    (the ``weights/update_size_per_layer`` histogram) are not computed (they need a copy).

    Memory (sketched mode): a few :math:`k`-vectors and, while sketching, temporaries of one
    chunk (``chunk_size = clamp(n / 256, 2^16, 2^22)`` elements of 24 bytes, under 0.025 x the
    float32 parameter bytes for large models); both sketches of a snapshot share one hash per
    weight when ``sketch_dim`` and ``distance_sketch_dim`` are powers of two.

    Sharded parameters (FSDP2 ``fully_shard`` DTensors, FSDP1 ``use_orig_params=True`` views):
    each rank works on its own pieces only (:class:`~lightning_sas.stats.sharded.ShardedParameters`)
    and the buffers hold additive forms, :math:`\|x\|^2 = \sum_r \|x_{P_r}\|^2` per quantity and
    layer, and the sketches :math:`S(\theta) = \sum_r S(\theta_{P_r})` (the distance sketches
    too: their rows are reduced before squaring); at flush one all-reduce (SUM, on every rank) adds
    the ranks' buffers, then the squares and square roots are taken. The model is never gathered,
    the copies are sharded like the weights, and nothing is reduced per step. Replicated
    parameters (one process, DDP) are not reduced.

    Checkpoints hold the pending (unflushed) rows, the counters, the distance sketches (or, in
    exact mode, the initial and mean copies, on CPU) and the last values. Under sharding
    :meth:`state_dict` sums the additive parts over ranks (one all-reduce: call it on every rank,
    as Lightning does) and after loading rank 0 keeps the sums and the other ranks zeros, so the
    sums over ranks resume exactly; exact-mode copies are one rank's pieces and are not restored
    (they restart at the resume step, with a warning).
    """

    #: ``exact_distances=None`` keeps exact copies up to this many parameters (three copies of a
    #: 1M-parameter float32 model are 12 MB) and sketches the distances above
    EXACT_DISTANCE_MAX_PARAMETERS = 1_000_000

    def __init__(
        self,
        snapshot_every: int = 100,
        sketch_every: int = 100,
        sketch_dim: int = 32,
        flush_every: int = 400,
        track_update: bool = True,
        track_init: bool = True,
        track_ergodic_mean: bool = True,
        ergodic_start: int | None = None,
        max_layers: int = 16,
        layer_filter: str | None = None,
        seed: int = 0,
        sketch_history: int = 256,
        exact_distances: bool | None = None,
        distance_sketch_dim: int = 4096,
    ) -> None:
        super().__init__(flush_every=flush_every)
        self.snapshot_every = check_int("snapshot_every", snapshot_every, 1)
        self.sketch_every = check_int("sketch_every", sketch_every, 1)
        self.sketch_dim = check_int("sketch_dim", sketch_dim, 0, (1 << 30) - 1, meaning=" (0 disables the sketch)")
        self.distance_sketch_dim = check_int("distance_sketch_dim", distance_sketch_dim, 1, (1 << 24))
        if exact_distances is not None:
            exact_distances = check_bool("exact_distances", exact_distances)
        self.exact_distances = exact_distances
        self.max_layers = check_int("max_layers", max_layers, 0)
        self.layer_filter = check_regex("layer_filter", layer_filter)
        self.track_update = check_bool("track_update", track_update)
        self.track_init = check_bool("track_init", track_init)
        self.track_ergodic_mean = check_bool("track_ergodic_mean", track_ergodic_mean)
        self.ergodic_start = check_int("ergodic_start", ergodic_start, 0, 1 << 62, allow_none=True)
        self.seed = check_seed("seed", seed)
        self.sketch_history = check_int("sketch_history", sketch_history, 1)
        self.check_memory(self.flush_every)
        self._projection = RandomProjection(k=sketch_dim, seed=seed) if sketch_dim else None
        #: the distance sketch (sketched mode only; set at attach)
        self._distance_projection: RandomProjection | None = None
        self._reset_state()

    def reserved_buffers(self, flush_every: int) -> list[tuple[str, float, str]]:
        rows = flush_every // self.snapshot_every + 2
        sketch_rows = flush_every // self.sketch_every + 2
        dim = max(self.sketch_dim, 1)
        return [
            ("layer-norm rows", rows * self.max_layers * 8,
             f"(flush_every // snapshot_every + 2) ({rows}) x max_layers ({self.max_layers}) x 8 bytes"),
            ("sketch rows", sketch_rows * dim * 8,
             f"(flush_every // sketch_every + 2) ({sketch_rows}) x sketch_dim ({dim}) x 8 bytes"),
            ("sketch history", self.sketch_history * dim * 8, f"sketch_history ({self.sketch_history}) x sketch_dim ({dim}) x 8 bytes"),
            ("sketch slots", 2 * dim * 8 * 2, f"sketch_dim ({dim}) x 2 slots x 8 bytes x 2"),
            ("distance sketches", 4 * self.distance_sketch_dim * 8,
             f"distance_sketch_dim ({self.distance_sketch_dim}) x 4 (init, previous, mean, current) x 8 bytes"),
        ]

    def _reset_state(self) -> None:
        self._names: list[str] = []
        self._params: list[Tensor] = []
        self._layout: ShardedParameters | None = None
        self._layer_index: Tensor | None = None
        self._layer_idx: list[int] = []
        self._prev: list[Tensor] | None = None
        self._init: list[Tensor] | None = None
        self._mean: list[Tensor] | None = None
        self._mean_count = 0
        #: sketched mode: S(theta_0), S(theta_{t-1}) and the mean of S(theta_s), (k,) float64
        self._init_sketch: Tensor | None = None
        self._prev_sketch: Tensor | None = None
        self._mean_sketch: Tensor | None = None
        self._exact = True
        self._frozen_start: int | None = self.ergodic_start
        self._batches_seen = 0
        self._index = 0
        #: the entry whose gradient norm and pre-step weights were captured (once per entry)
        self._captured_index: int | None = None
        self._grad_sq: Tensor | None = None
        self._rows: Tensor | None = None
        self._layer_rows: Tensor | None = None
        self._update_rows: Tensor | None = None
        #: sketched mode: per row, the sketches of theta_t - theta_{t-1}, - theta_0, - mean, (3, k)
        self._distance_rows: Tensor | None = None
        self._sketch_rows: Tensor | None = None
        self._row_steps: list[int] = []
        self._sketch_steps: list[int] = []
        self._last: dict[str, Any] = {}
        self._last_layers: dict[str, float] = {}
        self._restored: dict[str, Any] | None = None
        # the last ``SKETCH_HISTORY`` sketches, on the host, for the trajectory figure
        self._sketch_history_steps = np.zeros(0, dtype=np.int64)
        self._sketch_history = np.zeros((0, max(self.sketch_dim, 1)), dtype=np.float64)

    def config(self) -> dict[str, Any]:
        return {
            "snapshot_every": self.snapshot_every,
            "sketch_every": self.sketch_every,
            "sketch_dim": self.sketch_dim,
            "flush_every": self.flush_every,
            "max_layers": self.max_layers,
            "layer_filter": self.layer_filter,
            "seed": self.seed,
        }

    # -- cadence --------------------------------------------------------------------------
    def should_snapshot(self, index: int) -> bool:
        """Snapshot the weights at stream entry ``index``? Default: every ``snapshot_every``."""
        return is_due(index, self.snapshot_every)

    def should_sketch(self, index: int) -> bool:
        """Sketch the weights at stream entry ``index``? Default: every ``sketch_every``."""
        return self._projection is not None and is_due(index, self.sketch_every)

    # -- setup ----------------------------------------------------------------------------
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.attach(pl_module)

    def attach(self, pl_module: "pl.LightningModule") -> None:
        """Collect the trainable parameters (after device placement and sharding), the spec of
        this rank's piece of each, and the copies we track (of the local pieces)."""
        named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        if not named:
            warn_once(self, "noparams", "WeightSnapshots: the module has no trainable parameters; weight diagnostics are off.")
        elif any(is_flat_parameter(p) for _, p in named):
            warn_once(self, "flatparams", "WeightSnapshots: FSDP with use_orig_params=False exposes flat parameters, "
                      "whose shards cannot be told apart; weight diagnostics are off (use use_orig_params=True, "
                      "Lightning's default, or FSDP2 fully_shard).")
            named = []
        trainer = module_trainer(pl_module)
        roots = [pl_module] + [m for m in (getattr(trainer, "model", None),) if isinstance(m, torch.nn.Module) and m is not pl_module]
        self._layout = ShardedParameters.from_named(named, roots)
        self._names = self._layout.names
        self._params = self._layout.params
        self._layer_index = None
        pattern = re.compile(self.layer_filter) if self.layer_filter else None
        chosen = [i for i, n in enumerate(self._names) if pattern is None or pattern.search(n)]
        self._layer_idx = chosen[: self.max_layers]
        if not self._params:
            return
        local = self._layout.local_tensors()
        self._exact = (self._layout.global_numel <= self.EXACT_DISTANCE_MAX_PARAMETERS
                       if self.exact_distances is None else bool(self.exact_distances))
        if self._exact:
            if self.track_init and self._init is None:
                self._init = [t.clone() for t in local]
            if self.track_update:
                self._prev = [torch.empty_like(t) for t in local]
        else:
            # chunks of n / 256 elements (24 bytes each while hashing): bounded temporaries
            chunk = min(max(self._layout.local_numel // 256, 1 << 16), 1 << 22)
            self._distance_projection = RandomProjection(k=self.distance_sketch_dim, seed=self.seed, chunk_size=chunk)
            if self._projection is not None:
                self._projection.chunk_size = chunk
                self._projection.CACHE_ELEMENTS = 0  # no cached hashes of the model's size
            if self.track_init and self._init_sketch is None:
                self._init_sketch = self._sketch_slots(local)[0]
        if self._restored is not None:
            self._apply_restored(self._restored)
            self._restored = None

    @property
    def exact(self) -> bool:
        """Distances from parameter copies (True) or from the distance sketch (False); decided at
        attach from ``exact_distances`` and the parameter count."""
        return self._exact

    def _sketch_slots(self, tensors: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Sketched mode: the distance sketch ``S(theta)`` of this rank's pieces (``(k,)``) and its
        slot accumulator (for folding the trajectory sketch out of it)."""
        assert self._layout is not None and self._distance_projection is not None
        acc = self._layout.sketch_slots(self._distance_projection, tensors)
        return RandomProjection.signed(acc), acc

    @property
    def layer_names(self) -> list[str]:
        """Names of the parameters whose norms are logged per layer (after the cap and filter)."""
        return [self._names[i] for i in self._layer_idx]

    def freeze_ergodic_start(self, step: int | None) -> None:
        """Start the running ergodic mean of the weights at ``step`` (first call wins)."""
        if self._frozen_start is None and step is not None:
            self._frozen_start = int(step)

    def next_due(self, index: int) -> int | None:
        """The first entry at or after ``index`` with a snapshot (None: never). Computed from
        ``snapshot_every`` unless :meth:`should_snapshot` is overridden (then every entry is
        asked), so a step with nothing due costs the monitor one integer compare."""
        if not self._params:
            return None
        if type(self).should_snapshot is not WeightSnapshots.should_snapshot:
            return index
        return next_due(index, self.snapshot_every)

    # -- hot path (only at snapshot steps) ------------------------------------------------
    def begin_batch(self, index: int) -> None:
        self._index = index

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        if self._params and self.should_snapshot(self._index):
            self.capture(self._index)

    def capture(self, index: int) -> None:
        """Before the optimizer step of snapshot entry ``index`` (once per entry): the squared
        gradient norm and a copy of the weights, for the update size."""
        if self._captured_index == index or not self._params:
            return
        self._captured_index = index
        assert self._layout is not None
        grads = self._layout.local_grads()
        # squared (additive over shards); the root is taken at flush
        self._grad_sq = self._layout.squared_norm(grads) if grads is not None else None
        if self._prev is not None:
            torch._foreach_copy_(self._prev, self._layout.local_tensors())
        elif not self._exact and self.track_update:
            self._prev_sketch = self._sketch_slots(self._layout.local_tensors())[0]

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.record(trainer, pl_module)
        if not self.owned and self._row_steps and self.should_flush(self._index):
            self._standalone_flush(trainer, pl_module, trainer.global_step)

    def _ensure_buffers(self, device: torch.device) -> None:
        rows = self.flush_every // self.snapshot_every + 2
        if self._rows is None or self._rows.device != device:
            dtype = device_float_dtype(device)
            self._rows = torch.full((rows, len(QUANTITIES)), float("nan"), dtype=dtype, device=device)
            self._layer_rows = torch.zeros((rows, len(self._layer_idx)), dtype=dtype, device=device)
            self._update_rows = torch.zeros((rows, len(self._params)), dtype=dtype, device=device)
            sketch_rows = self.flush_every // self.sketch_every + 2
            self._sketch_rows = torch.zeros((sketch_rows, max(self.sketch_dim, 1)), dtype=dtype, device=device)
            k = 0 if self._exact else self.distance_sketch_dim
            self._distance_rows = torch.full((rows, 3, k), float("nan"), dtype=dtype, device=device)
        if self._layer_index is None or self._layer_index.device != device:
            self._layer_index = torch.tensor(self._layer_idx, dtype=torch.int64, device=device)

    @staticmethod
    def _grow(buffer: Tensor, needed: int) -> Tensor:
        if needed < buffer.shape[0]:
            return buffer
        return torch.cat([buffer, torch.full_like(buffer, float("nan"))])

    def record(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """After each batch (when used on its own): a snapshot when the entry is due."""
        automatic = pl_module.automatic_optimization
        self._batches_seen += 1
        if not self._params:
            return
        stepped = entry_completed(trainer, automatic, self._index)
        if stepped and self.should_snapshot(self._index):
            self.snapshot(self._index)

    def snapshot(self, index: int) -> None:
        """Snapshot entry ``index`` (after its optimizer step): one row of on-device quantities.

        The row holds *squared* norms and distances of this rank's pieces (additive over shards);
        :meth:`flush` reduces them over ranks when sharded and takes the square roots."""
        self._index = index
        if not self._params or (self._row_steps and self._row_steps[-1] == index):
            return
        captured = self._captured_index == index
        layout = self._layout
        assert layout is not None
        params = layout.local_tensors()
        self._ensure_buffers(params[0].device)
        assert self._rows is not None and self._layer_rows is not None and self._update_rows is not None
        assert self._layer_index is not None
        slot = len(self._row_steps)
        self._rows = self._grow(self._rows, slot)
        self._layer_rows = self._grow(self._layer_rows, slot)
        self._update_rows = self._grow(self._update_rows, slot)
        assert self._distance_rows is not None
        self._distance_rows = self._grow(self._distance_rows, slot)
        in_mean = self.track_ergodic_mean and self._frozen_start is not None and index >= self._frozen_start
        weight_sq = layout.squared_norms(params)
        row = self._rows[slot]
        row.fill_(float("nan"))
        row[0].copy_(weight_sq.sum())
        if self._layer_idx:
            self._layer_rows[slot].copy_(weight_sq.index_select(0, self._layer_index))
        self._update_rows[slot].fill_(float("nan"))
        folded: Tensor | None = None
        if self._exact:
            # squared distances a group of parameters at a time (the temporary is at most the
            # largest parameter): update, from init, from the ergodic mean
            if self._prev is not None and captured:
                update_sq = layout.squared_distances(params, self._prev)
                row[1].copy_(update_sq.sum())
                self._update_rows[slot].copy_(update_sq)
            if self._init is not None:
                row[2].copy_(layout.squared_distances(params, self._init).sum())
            if in_mean:
                if self._mean is None:
                    self._mean = [p.clone() for p in params]
                    self._mean_count = 1
                else:
                    self._mean_count += 1
                    torch._foreach_lerp_(self._mean, params, 1.0 / self._mean_count)
                row[3].copy_(layout.squared_distances(params, self._mean).sum())
        else:
            # differences of the distance sketch (squared after the reduction over ranks, at flush)
            current, acc = self._sketch_slots(params)
            distance = self._distance_rows[slot]
            distance.fill_(float("nan"))
            if self._prev_sketch is not None and captured:
                torch.sub(current, self._prev_sketch, out=distance[0])
            if self._init_sketch is not None:
                torch.sub(current, self._init_sketch, out=distance[1])
            if in_mean:
                if self._mean_sketch is None:
                    self._mean_sketch = current.clone()
                    self._mean_count = 1
                else:
                    self._mean_count += 1
                    self._mean_sketch.lerp_(current, 1.0 / self._mean_count)
                torch.sub(current, self._mean_sketch, out=distance[2])
            if self._projection is not None and self._distance_projection is not None \
                    and self._distance_projection.can_fold_to(self._projection):
                folded = acc
        if self._grad_sq is not None and captured:
            row[4].copy_(self._grad_sq)
        self._row_steps.append(self._index)
        if self.should_sketch(self._index):
            assert self._projection is not None and self._sketch_rows is not None
            sslot = len(self._sketch_steps)
            self._sketch_rows = self._grow(self._sketch_rows, sslot)
            if folded is not None:
                assert self._distance_projection is not None
                self._sketch_rows[sslot].copy_(self._distance_projection.fold(folded, self._projection))
            else:
                self._sketch_rows[sslot].copy_(layout.sketch(self._projection, params))
            self._sketch_steps.append(self._index)

    # -- flush ----------------------------------------------------------------------------
    def flush(self, ctx: FlushContext) -> None:
        if self.track_ergodic_mean and ctx.late_phase_stable:
            self.freeze_ergodic_start(ctx.late_phase_start)
        n = len(self._row_steps)
        if n and self._rows is not None and self._layer_rows is not None and self._update_rows is not None:
            ns = len(self._sketch_steps) if self._sketch_rows is not None else 0
            rows, layers, updates, sketch = self._reduced(n, ns)
            steps = np.asarray(self._row_steps, dtype=np.int64)
            columns: dict[str, np.ndarray] = {"step": steps}
            for i, name in enumerate(QUANTITIES):
                columns[name] = rows[:, i]
            columns["layer_norms"] = layers
            columns["ergodic_mean_start"] = np.full(n, -1 if self._frozen_start is None else self._frozen_start, dtype=np.int64)
            if ctx.writer is not None:
                ctx.writer.append("weights", columns)
            if ns:
                sketch_steps = np.asarray(self._sketch_steps, dtype=np.int64)
                if ctx.writer is not None:
                    ctx.writer.append("sketch", {"step": sketch_steps, "sketch": sketch})
                self._sketch_history_steps = np.concatenate([self._sketch_history_steps, sketch_steps])[-self.sketch_history :]
                self._sketch_history = np.concatenate([self._sketch_history, sketch])[-self.sketch_history :]
            last = rows[-1]
            self._last = {name: (float(last[i]) if np.isfinite(last[i]) else None) for i, name in enumerate(QUANTITIES)}
            self._last["ergodic_mean_start"] = self._frozen_start
            self._last_layers = {self._names[j]: float(layers[-1, i]) for i, j in enumerate(self._layer_idx)}
            finite_updates = updates[np.isfinite(updates)]
            if finite_updates.size:
                ctx.histograms["weights/update_size_per_layer"] = finite_updates
            self._row_steps, self._sketch_steps = [], []
        ctx.summary.update(self._last)
        ctx.figure_data["sketch"] = (self._sketch_history_steps, self._sketch_history)
        for name, value in self._last_layers.items():
            ctx.summary.setdefault("layers", {})[name] = value

    def _reduced(self, n: int, ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The first ``n`` rows (and ``ns`` sketch rows) as host float64: packed into one tensor,
        summed over ranks when sharded (one collective, on every rank), copied to the host once,
        and square-rooted (all but the sketch, which is additive itself)."""
        assert self._rows is not None and self._layer_rows is not None and self._update_rows is not None
        assert self._distance_rows is not None
        parts = [self._rows[:n], self._layer_rows[:n], self._update_rows[:n], self._distance_rows[:n]]
        if ns:
            assert self._sketch_rows is not None
            parts.append(self._sketch_rows[:ns])
        packed = torch.cat([t.reshape(-1) for t in parts])
        if self._layout is not None:
            self._layout.all_reduce_(packed)
        host = packed.cpu().numpy().astype(np.float64)  # sync-ok: once per flush
        out, at = [], 0
        for t in parts:
            out.append(host[at : at + t.numel()].reshape(t.shape))
            at += t.numel()
        if not self._exact:  # squared norms of the (reduced) distance sketches: columns 1..3
            out[0][:, 1:4] = np.square(out[3]).sum(axis=2)
        rows, layers, updates = (np.sqrt(a) for a in out[:3])
        sketch = out[4] if ns else np.zeros((0, self._sketch_rows.shape[1] if self._sketch_rows is not None else 1))
        return rows, layers, updates, sketch

    # -- state ----------------------------------------------------------------------------
    #: the parts of the state that add up over ranks under sharding (rows of squares and sketches)
    _ADDITIVE = ("rows", "layer_rows", "update_rows", "distance_rows", "sketch_rows", "init_sketch", "mean_sketch")

    def state_dict(self) -> dict[str, Any]:
        """Counters, the pending (unflushed) rows, the distance sketches or (exact mode) the
        initial and mean copies, and the last flushed values; tensors on CPU and Python
        primitives only. Under sharding the additive parts are summed over ranks first (one
        all-reduce: call this on every rank, as Lightning does)."""
        n, ns = len(self._row_steps), len(self._sketch_steps)
        additive: dict[str, Tensor] = {}
        if n and self._rows is not None:
            assert self._layer_rows is not None and self._update_rows is not None and self._distance_rows is not None
            additive.update(rows=self._rows[:n], layer_rows=self._layer_rows[:n], update_rows=self._update_rows[:n],
                            distance_rows=self._distance_rows[:n])
        if ns and self._sketch_rows is not None:
            additive["sketch_rows"] = self._sketch_rows[:ns]
        if self._init_sketch is not None:
            additive["init_sketch"] = self._init_sketch
        if self._mean_sketch is not None:
            additive["mean_sketch"] = self._mean_sketch
        if additive and self._layout is not None and self._layout.reduces:
            packed = torch.cat([t.reshape(-1).to(torch.float64) for t in additive.values()])
            self._layout.all_reduce_(packed)
            at = 0
            for name, t in list(additive.items()):
                additive[name] = packed[at : at + t.numel()].reshape(t.shape)
                at += t.numel()
        host = {name: t.detach().cpu().clone() for name, t in additive.items()}  # sync-ok: checkpoint time
        return {
            "config": self.config(),
            "batches_seen": self._batches_seen,
            "frozen_start": self._frozen_start,
            "mean_count": self._mean_count,
            "exact": self._exact,
            "distance_sketch_dim": self.distance_sketch_dim,
            "init": None if self._init is None else [t.detach().cpu().clone() for t in self._init],  # sync-ok
            "mean": None if self._mean is None else [t.detach().cpu().clone() for t in self._mean],  # sync-ok
            "init_sketch": host.get("init_sketch"),
            "mean_sketch": host.get("mean_sketch"),
            "pending": {
                "row_steps": list(self._row_steps),
                "sketch_steps": list(self._sketch_steps),
                **{name: host[name] for name in ("rows", "layer_rows", "update_rows", "distance_rows", "sketch_rows")
                   if name in host},
            },
            "last": dict(self._last),
            "last_layers": dict(self._last_layers),
            "sketch_history_steps": torch.from_numpy(self._sketch_history_steps.copy()),
            "sketch_history": torch.from_numpy(self._sketch_history.copy()),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._frozen_start = state_dict["frozen_start"]
        self._last = dict(state_dict.get("last") or {})
        self._last_layers = {str(k): float(v) for k, v in (state_dict.get("last_layers") or {}).items()}
        if state_dict.get("sketch_history") is not None:
            self._sketch_history_steps = state_dict["sketch_history_steps"].numpy().astype(np.int64)
            self._sketch_history = state_dict["sketch_history"].numpy().astype(np.float64)

    def _apply_restored(self, state: dict[str, Any]) -> None:
        import torch.distributed as dist

        assert self._layout is not None
        local = self._layout.local_tensors()
        device = local[0].device
        sharded = self._layout.reduces
        # under sharding the saved additive parts are sums over ranks: rank 0 keeps them, the others
        # start from zeros, so the sums over ranks go on exactly
        keep = not sharded or dist.get_rank() == 0

        def mine(t: Tensor) -> Tensor:
            t = t.to(device=device)
            return t if keep else torch.zeros_like(t)

        same_sketch = state.get("config", {}).get("seed", self.seed) == self.seed
        if self._exact:
            if sharded:
                # exact copies in a checkpoint are one rank's pieces; restoring them on the other
                # ranks would mix copies of different steps, so every rank restarts them
                if state.get("init") is not None or state.get("mean") is not None:
                    warn_once(self, "shardedrestore", "WeightSnapshots: under sharded parameters the initial-weight and "
                              "ergodic-mean copies are not restored from the checkpoint; distance_from_init and "
                              "distance_to_ergodic_mean restart at the resume step.")
            else:
                def fits(saved: list[Tensor] | None) -> bool:
                    return saved is not None and len(saved) == len(local) and all(t.shape == p.shape for t, p in zip(saved, local))

                if fits(state.get("init")):
                    self._init = [t.to(device=p.device, dtype=p.dtype) for t, p in zip(state["init"], local)]
                if fits(state.get("mean")):
                    self._mean = [t.to(device=p.device, dtype=p.dtype) for t, p in zip(state["mean"], local)]
                    self._mean_count = int(state["mean_count"])
        elif same_sketch and state.get("exact") is False and state.get("distance_sketch_dim") == self.distance_sketch_dim:
            if state.get("init_sketch") is not None:
                self._init_sketch = mine(state["init_sketch"].to(torch.float64))
            if state.get("mean_sketch") is not None:
                self._mean_sketch = mine(state["mean_sketch"].to(torch.float64))
                self._mean_count = int(state["mean_count"])
        self._restore_pending(state.get("pending"), device, mine, same_sketch and state.get("exact") == self._exact)

    def _restore_pending(self, pending: dict[str, Any] | None, device: torch.device, mine: Any, same_mode: bool) -> None:
        """Put the checkpoint's unflushed rows back into the buffers (when they fit this run)."""
        if not pending or not same_mode or not pending.get("row_steps"):
            return
        self._ensure_buffers(device)
        n, ns = len(pending["row_steps"]), len(pending["sketch_steps"])
        names = ["rows", "layer_rows", "update_rows", "distance_rows"] + (["sketch_rows"] if ns else [])
        for name in names:
            saved, buffer = pending.get(name), getattr(self, f"_{name}")
            if saved is None or buffer is None or tuple(saved.shape[1:]) != tuple(buffer.shape[1:]):
                return  # another layout (parameters, layers, sketch sizes): the rows are dropped
        for name in names:
            count = n if name != "sketch_rows" else ns
            buffer = getattr(self, f"_{name}")
            while buffer.shape[0] <= count:
                buffer = self._grow(buffer, buffer.shape[0])
            buffer[:count].copy_(mine(pending[name]))
            setattr(self, f"_{name}", buffer)
        self._row_steps = [int(v) for v in pending["row_steps"]]
        self._sketch_steps = [int(v) for v in pending["sketch_steps"]]
