"""Streaming statistics in float64 (numpy/torch, no Lightning): the functional layer.

* ``autocorrelation``, ``integrated_autocorr_time``, ``effective_sample_size`` (FFT ACF, Sokal's
  automatic window), ``mser5`` / ``mser_truncation`` (transient truncation), ``geweke_z``
  (stationarity), ``periodogram`` / ``dominant_period`` (oscillation), ``batch_means_se``;
* ``RunningMoments`` (mergeable moments), ``BlockMoments`` (bounded block summaries),
  ``RandomProjection`` (count-sketch of the weights, additive over shards), ``ShardedParameters``
  (this rank's pieces of sharded parameters: squared norms and sketches that add up over ranks);
* ``log_interval``, ``skew_corrected_interval`` (95 % intervals that follow the skew of
  per-sample losses).
"""

from lightning_sas.stats.autocorr import (
    autocorrelation,
    effective_sample_size,
    iat_window,
    integrated_autocorr_time,
    integrated_autocorr_time_and_window,
)
from lightning_sas.stats.batch_means import batch_means_se, batch_means_se_from_blocks
from lightning_sas.stats.blocks import BlockMoments, blocks_from_series
from lightning_sas.stats.moments import RunningMoments, merge_moments
from lightning_sas.stats.intervals import log_interval, skew_corrected_interval
from lightning_sas.stats.mser import mser5, mser_truncation
from lightning_sas.stats.sharded import ShardedParameters, ShardSpec
from lightning_sas.stats.sketch import RandomProjection
from lightning_sas.stats.spectral import dominant_period, periodogram
from lightning_sas.stats.stationarity import geweke_z

__all__ = [
    "BlockMoments",
    "RandomProjection",
    "RunningMoments",
    "ShardSpec",
    "ShardedParameters",
    "autocorrelation",
    "batch_means_se",
    "batch_means_se_from_blocks",
    "blocks_from_series",
    "dominant_period",
    "effective_sample_size",
    "geweke_z",
    "iat_window",
    "integrated_autocorr_time",
    "integrated_autocorr_time_and_window",
    "log_interval",
    "merge_moments",
    "mser5",
    "mser_truncation",
    "periodogram",
    "skew_corrected_interval",
]
