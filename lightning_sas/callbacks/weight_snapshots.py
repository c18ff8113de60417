"""``WeightSnapshots``: norms, distances and a random-projection sketch of the weights."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_sas import _compat as pl  # pl.Trainer, pl.LightningModule: of either namespace
from lightning_sas.callbacks._common import device_float_dtype, warn_once
from lightning_sas.callbacks.base import FlushContext, StreamCallback
from lightning_sas.stats.sharded import ShardedParameters, is_flat_parameter
from lightning_sas.stats.sketch import RandomProjection

__all__ = ["WeightSnapshots"]

#: scalar quantities of one snapshot, in buffer column order
QUANTITIES = ("weight_norm", "update_size", "distance_from_init", "distance_to_ergodic_mean", "grad_norm")


class WeightSnapshots(StreamCallback):
    r"""Weight diagnostics every ``snapshot_every`` stream entries, at no host sync.

    Per snapshot at step ``t`` (all float64 on the training device, fused ``torch._foreach_*`` calls,
    no Python loop over parameters except for the sketch):

    * ``weight_norm`` :math:`\|\theta_t\|` and per-layer norms (capped by ``max_layers``,
      filtered by ``layer_filter``);
    * ``update_size`` :math:`\|\theta_t - \theta_{t-1}\|` (the parameters are copied just before
      the optimizer step of a snapshot step);
    * ``distance_from_init`` :math:`\|\theta_t - \theta_0\|` (one copy of the initial weights);
    * ``distance_to_ergodic_mean`` :math:`\|\theta_t - \bar\theta_t\|` with the running mean
      :math:`\bar\theta` of the snapshots since a frozen start (the first late-phase start found,
      or ``ergodic_start``), updated by ``torch._foreach_lerp_``;
    * ``grad_norm`` :math:`\|g_t\|` before the optimizer step (after AMP unscaling);
    * every ``sketch_every`` entries, a ``sketch_dim``-dimensional count-sketch of all parameters
      (:class:`~lightning_sas.stats.sketch.RandomProjection`), additive over shards; the last
      ``sketch_history`` sketches stay on the host for the trajectory figure (all are stored).

    Sharded parameters (FSDP2 ``fully_shard`` DTensors, FSDP1 ``use_orig_params=True`` views):
    each rank works on its own pieces only (:class:`~lightning_sas.stats.sharded.ShardedParameters`)
    and the buffers hold additive forms, :math:`\|x\|^2 = \sum_r \|x_{P_r}\|^2` per quantity and
    layer, and the sketch :math:`S(\theta) = \sum_r S(\theta_{P_r})`; at flush one all-reduce
    (SUM, on every rank) adds the ranks' buffers, then the square roots are taken. The model is
    never gathered, the copies are sharded like the weights, and nothing is reduced per step.
    Replicated parameters (one process, DDP) are not reduced. Under sharding the initial-weight and
    ergodic-mean copies are not restored from a checkpoint (it holds one rank's pieces): they
    restart at the resume step, with a warning.

    Memory: up to three parameter copies (previous, initial, ergodic mean; each switchable) plus
    buffers of ``flush_every / snapshot_every`` rows.
    """

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
    ) -> None:
        super().__init__(flush_every=flush_every)
        for name, value in (("snapshot_every", snapshot_every), ("sketch_every", sketch_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(sketch_dim, int) or sketch_dim < 0:
            raise ValueError(f"sketch_dim must be a non-negative integer (0 disables the sketch), got {sketch_dim!r}")
        if not isinstance(max_layers, int) or max_layers < 0:
            raise ValueError(f"max_layers must be a non-negative integer, got {max_layers!r}")
        if layer_filter is not None:
            try:
                re.compile(layer_filter)
            except re.error as err:
                raise ValueError(f"layer_filter={layer_filter!r} is not a valid regular expression: {err}") from err
        self.snapshot_every = snapshot_every
        self.sketch_every = sketch_every
        self.sketch_dim = sketch_dim
        self.track_update = track_update
        self.track_init = track_init
        self.track_ergodic_mean = track_ergodic_mean
        self.ergodic_start = ergodic_start
        self.max_layers = max_layers
        self.layer_filter = layer_filter
        self.seed = seed
        self.sketch_history = sketch_history
        self._projection = RandomProjection(k=sketch_dim, seed=seed) if sketch_dim else None
        self._reset_state()

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
        self._frozen_start: int | None = self.ergodic_start
        self._batches_seen = 0
        self._index = 0
        #: the entry whose gradient norm and pre-step weights were captured (once per entry)
        self._captured_index: int | None = None
        self._column_index: dict[tuple[tuple[int, ...], str], Tensor] = {}
        self._grad_sq: Tensor | None = None
        self._rows: Tensor | None = None
        self._layer_rows: Tensor | None = None
        self._update_rows: Tensor | None = None
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
        return index % self.snapshot_every == 0

    def should_sketch(self, index: int) -> bool:
        """Sketch the weights at stream entry ``index``? Default: every ``sketch_every``."""
        return self._projection is not None and index % self.sketch_every == 0

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
        trainer = getattr(pl_module, "_trainer", None)
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
        if self.track_init and self._init is None:
            self._init = [t.clone() for t in local]
        if self.track_update:
            self._prev = [torch.empty_like(t) for t in local]
        if self._restored is not None:
            self._apply_restored(self._restored)
            self._restored = None

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
        return -(-index // self.snapshot_every) * self.snapshot_every

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
        if self._layer_index is None or self._layer_index.device != device:
            self._layer_index = torch.tensor(self._layer_idx, dtype=torch.int64, device=device)

    def _columns_on(self, columns: tuple[int, ...], device: torch.device) -> Tensor:
        """Row positions of the quantities a snapshot has, on ``device`` (one copy per set)."""
        key = (columns, str(device))
        if key not in self._column_index:
            self._column_index[key] = torch.tensor(columns, dtype=torch.int64, device=device)
        return self._column_index[key]

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
        stepped = (not automatic) or trainer.global_step > self._index
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
        # every squared norm of this snapshot from one fused _foreach_norm: the weights, then the
        # differences the row needs (update, from init, from the ergodic mean), one group each
        groups, columns = [params], [0]
        if self._prev is not None and captured:
            groups.append(torch._foreach_sub(params, self._prev))
            columns.append(1)
        if self._init is not None:
            groups.append(torch._foreach_sub(params, self._init))
            columns.append(2)
        if self.track_ergodic_mean and self._frozen_start is not None and index >= self._frozen_start:
            if self._mean is None:
                self._mean = [p.clone() for p in params]
                self._mean_count = 1
            else:
                self._mean_count += 1
                torch._foreach_lerp_(self._mean, params, 1.0 / self._mean_count)
            groups.append(torch._foreach_sub(params, self._mean))
            columns.append(3)
        squares = layout.squared_norms([t for group in groups for t in group]).view(len(groups), len(params))
        row = self._rows[slot]
        row.fill_(float("nan"))
        row.index_copy_(0, self._columns_on(tuple(columns), row.device), squares.sum(1))
        if self._layer_idx:
            self._layer_rows[slot].copy_(squares[0].index_select(0, self._layer_index))
        if 1 in columns:
            self._update_rows[slot].copy_(squares[1])
        else:
            self._update_rows[slot].fill_(float("nan"))
        if self._grad_sq is not None and captured:
            row[4].copy_(self._grad_sq)
        self._row_steps.append(self._index)
        if self.should_sketch(self._index):
            assert self._projection is not None and self._sketch_rows is not None
            sslot = len(self._sketch_steps)
            self._sketch_rows = self._grow(self._sketch_rows, sslot)
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
        parts = [self._rows[:n], self._layer_rows[:n], self._update_rows[:n]]
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
        rows, layers, updates = (np.sqrt(a) for a in out[:3])
        sketch = out[3] if ns else np.zeros((0, self._sketch_rows.shape[1] if self._sketch_rows is not None else 1))
        return rows, layers, updates, sketch

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters and the ergodic-mean/initial copies (on CPU). Unflushed rows are dropped: the
        scalars they hold are recomputed at the next snapshot."""
        return {
            "config": self.config(),
            "batches_seen": self._batches_seen,
            "frozen_start": self._frozen_start,
            "mean_count": self._mean_count,
            "init": None if self._init is None else [t.detach().cpu().clone() for t in self._init],  # sync-ok
            "mean": None if self._mean is None else [t.detach().cpu().clone() for t in self._mean],  # sync-ok
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._frozen_start = state_dict["frozen_start"]

    def _apply_restored(self, state: dict[str, Any]) -> None:
        assert self._layout is not None
        if self._layout.reduces:
            # a checkpoint holds one rank's pieces; restoring them on the other ranks would mix
            # copies of different steps, so every rank restarts them (a rank-independent rule)
            if state.get("init") is not None or state.get("mean") is not None:
                warn_once(self, "shardedrestore", "WeightSnapshots: under sharded parameters the initial-weight and "
                          "ergodic-mean copies are not restored from the checkpoint; distance_from_init and "
                          "distance_to_ergodic_mean restart at the resume step.")
            return
        local = self._layout.local_tensors()

        def fits(saved: list[Tensor] | None) -> bool:
            return saved is not None and len(saved) == len(local) and all(t.shape == p.shape for t, p in zip(saved, local))

        if fits(state.get("init")):
            self._init = [t.to(device=p.device, dtype=p.dtype) for t, p in zip(state["init"], local)]
        if fits(state.get("mean")):
            self._mean = [t.to(device=p.device, dtype=p.dtype) for t, p in zip(state["mean"], local)]
            self._mean_count = int(state["mean_count"])
