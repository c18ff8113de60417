"""Every constructor argument is checked (type, range, a memory bound) before anything is
allocated, and the error names the argument."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest

from lightning_sas import LossStream, ProbeLosses, SASMonitor, SASReplicas, WeightSnapshots
from lightning_sas.validation import MEMORY_BOUND_BYTES, check_memory, format_bytes

PARTS: dict[str, Callable[..., Any]] = {
    "SASMonitor": SASMonitor,
    "LossStream": LossStream,
    "ProbeLosses": ProbeLosses,
    "WeightSnapshots": WeightSnapshots,
    "SASReplicas": SASReplicas,
}

#: (constructor, argument, bad value): each must raise a ValueError naming the argument
BAD = [
    # sizes far beyond memory: refused with the argument's name, not inside the allocator
    ("SASMonitor", "max_blocks", 10**12),
    ("LossStream", "max_blocks", 10**12),
    ("LossStream", "max_blocks", 2**30),  # a valid count, but 3 x 2^30 x 8 bytes of blocks
    ("SASMonitor", "flush_every", 10**9),
    ("LossStream", "flush_every", 10**9),
    ("WeightSnapshots", "flush_every", 10**9),
    ("ProbeLosses", "flush_every", 10**9),
    ("SASMonitor", "window", 10**12),
    ("LossStream", "window", 2**30),
    ("SASMonitor", "sketch_dim", 10**8),
    ("WeightSnapshots", "sketch_dim", 2**40),
    ("WeightSnapshots", "sketch_history", 10**9),
    ("SASMonitor", "num_train_probes", 10**9),
    ("SASMonitor", "num_test_probes", 10**9),
    ("ProbeLosses", "max_blocks", 10**7),
    ("SASReplicas", "replicas", 10**6),
    ("SASReplicas", "max_blocks", 10**7),
    ("SASReplicas", "num_heldout_probes", 10**12),
    ("SASReplicas", "pool_size", 10**12),
    ("SASReplicas", "swaps", 10**12),
    # types and ranges
    ("SASMonitor", "flush_every", 0),
    ("SASMonitor", "flush_every", 2.5),
    ("SASMonitor", "flush_every", "400"),
    ("SASMonitor", "flush_every", True),
    ("SASMonitor", "window", 15),
    ("SASMonitor", "max_blocks", 7),
    ("SASMonitor", "late_phase_start", -1),
    ("SASMonitor", "late_phase_start", "10"),
    ("SASMonitor", "snapshot_every", 0),
    ("SASMonitor", "sketch_every", None),
    ("SASMonitor", "sketch_dim", -1),
    ("SASMonitor", "max_layers", 1.5),
    ("SASMonitor", "probe_every", 0),
    ("SASMonitor", "num_train_probes", -1),
    ("SASMonitor", "num_train_probes", True),
    ("SASMonitor", "probe_batch_size", 0),
    ("ProbeLosses", "max_blocks", 3),
    ("ProbeLosses", "max_blocks", "128"),
    ("WeightSnapshots", "ergodic_start", -3),
    ("WeightSnapshots", "sketch_history", 0),
    # seeds
    ("SASMonitor", "seed", -1),
    ("SASMonitor", "seed", "0"),
    ("SASMonitor", "seed", 1.0),
    ("SASMonitor", "seed", 2**64),
    ("SASMonitor", "seed", None),
    ("ProbeLosses", "seed", -5),
    ("WeightSnapshots", "seed", "seed"),
    ("SASReplicas", "seed", -1),
    # layer_filter: a regular expression string or None
    ("SASMonitor", "layer_filter", 3),
    ("SASMonitor", "layer_filter", ["net"]),
    ("SASMonitor", "layer_filter", b"net"),
    ("WeightSnapshots", "layer_filter", "(["),
    # booleans: a string that looks like one is refused (it would count as true)
    ("SASMonitor", "track_init", "no"),
    ("SASMonitor", "track_init", "False"),
    ("SASMonitor", "track_init", 0),
    ("SASMonitor", "track_ergodic_mean", "no"),
    ("SASMonitor", "histograms", "no"),
    ("SASMonitor", "progress_bar", "yes"),
    ("WeightSnapshots", "track_update", None),
    ("SASReplicas", "holdout_excluded", "no"),
    ("SASReplicas", "checkpoint_replicas", "no"),
    # choices and fractions
    ("SASReplicas", "replicas", True),
    ("SASReplicas", "swaps", True),
    ("SASReplicas", "swaps", "8"),
    ("SASReplicas", "fork_at", True),
    ("SASReplicas", "fork_at", -1),
    ("SASReplicas", "sampler", "Common"),
    ("SASReplicas", "path", None),
    ("SASReplicas", "holdout_fraction", "0.1"),
    ("SASReplicas", "holdout_fraction", float("nan")),
    ("SASReplicas", "holdout_fraction", 0.0),
    ("SASReplicas", "num_train_probes", -1),
    ("SASReplicas", "batch_size", 0),
    ("SASReplicas", "probe_batch_size", 0),
    ("SASReplicas", "probe_every", 1.5),
    ("SASReplicas", "pool_size", 1),
    ("SASMonitor", "store", 3),
    ("SASMonitor", "histogram_every", -1),
    # configured parts
    ("SASMonitor", "loss_stream", "LossStream"),
    ("SASMonitor", "weights", 3),
]


@pytest.mark.parametrize("owner, argument, value", BAD, ids=[f"{o}-{a}-{v!r}"[:60] for o, a, v in BAD])
def test_bad_argument_is_refused_naming_it(owner: str, argument: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        PARTS[owner](**{argument: value})
    assert re.search(rf"\b{argument}\b", str(info.value)), str(info.value)


@pytest.mark.parametrize("owner, argument, value", [
    ("SASMonitor", "flush_every", 10**9),
    ("LossStream", "max_blocks", 2**30),
    ("WeightSnapshots", "sketch_dim", 10**8),
    ("SASMonitor", "num_train_probes", 10**9),
])
def test_memory_refusal_names_the_figure(owner: str, argument: str, value: Any) -> None:
    """A size refusal says how much memory the setting would take, and the bound."""
    with pytest.raises(ValueError, match=r"would reserve about [0-9.]+ (GiB|TiB)") as info:
        PARTS[owner](**{argument: value})
    assert format_bytes(MEMORY_BOUND_BYTES) in str(info.value)


def test_flush_every_of_a_configured_part_is_checked_by_the_monitor() -> None:
    """A part built with a small flush_every is flushed every flush_every of the monitor's:
    the monitor checks the part's buffers with its own cadence."""
    with pytest.raises(ValueError, match="flush_every"):
        SASMonitor(flush_every=10**7, probes=ProbeLosses(probe_every=1))


def test_refused_before_anything_is_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The block summary (the first allocation of a LossStream) is never built for a refused size."""
    import lightning_sas.callbacks.loss_stream as loss_stream

    built = []
    monkeypatch.setattr(loss_stream, "BlockMoments", lambda *a, **k: built.append((a, k)))
    with pytest.raises(ValueError, match="max_blocks"):
        LossStream(max_blocks=2**30)
    with pytest.raises(ValueError, match="flush_every"):
        LossStream(flush_every=10**9)
    assert built == []


def test_track_init_string_does_not_switch_it_on() -> None:
    with pytest.raises(ValueError, match="track_init must be True or False, got 'no'"):
        SASMonitor(track_init="no")
    assert SASMonitor(track_init=False).weights.track_init is False


def test_valid_settings_still_construct() -> None:
    """The defaults, large-but-sane sizes and numpy integers are accepted."""
    import numpy as np

    SASMonitor()
    SASMonitor(replicas=4, flush_every=10_000, window=1 << 16, max_blocks=1024, seed=2**40, layer_filter="net\\.0")
    SASReplicas(replicas=8, fork_at=100, holdout_fraction=0.2, seed=np.int64(3))
    WeightSnapshots(sketch_dim=0, flush_every=np.int64(400))


def test_check_memory_lists_the_buffers() -> None:
    check_memory("X", [("small", 10.0, "a x b")], "fix")
    with pytest.raises(ValueError, match=r"X: .*big: n \(9\) x 8 bytes = .*lower n"):
        check_memory("X", [("big", 4.0 * MEMORY_BOUND_BYTES, "n (9) x 8 bytes"), ("small", 1.0, "1")], "lower n")
