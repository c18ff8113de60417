"""What each summary key means: the one text per key of ``SASMonitor.summary()``, ``summary.json``,
``lightning-sas report`` and ``lightning-sas compare``.

The HTML report shows these texts next to the values; the tables of the docs (Tags, The SAS
estimate, CLI reference) quote them verbatim, and ``tests/test_key_explanations.py`` fails when a
table row says something else or a key the monitor reports has no text here. The texts are
markdown: code in backticks, ``|x|`` an absolute value (a table cell writes it ``\\|x\\|``).
``d_k(z)`` is replica k's time-averaged loss at ``z`` minus the control's; replica k swaps the
``m`` samples ``I_k`` of ``S`` for the ``m`` held-out samples ``Z'_k``.
"""

from __future__ import annotations

import html
import re

__all__ = ["KEY_EXPLANATIONS", "KEY_PATTERN_EXPLANATIONS", "explanation", "explanation_html"]

#: the window every statistic averages over, in the words of the texts below
_WINDOW = "the statistics window (the late phase, else the second half of the stream)"

#: summary key -> what it means (markdown)
KEY_EXPLANATIONS: dict[str, str] = {
    # the loss stream
    "steps": "Stream entries seen: optimizer steps in automatic optimization, batches in manual optimization.",
    "late_phase_start": "Stream entry where the late phase starts (count-weighted MSER on the loss stream's blocks, "
                        "re-evaluated every flush, or the fixed `late_phase_start`); None (not logged) while none is found.",
    "late_phase_found": "Whether the late phase is known: MSER found the end of the transient (or the start is fixed). "
                        "While not, the loss is still trending and every statistic uses the second half of the stream.",
    "late_phase_steps": f"Loss values in {_WINDOW}.",
    "window_start": "First step of the window every statistic averages over: the late-phase start, else the start of "
                    "the second half of the stream (`window` names which).",
    "window": "Which window every statistic averages over: `late phase`, or `second half` (of the stream) while no "
              "late phase is found.",
    "loss_mean": f"Time average of the training loss over {_WINDOW}.",
    "loss_se": "Batch-means standard error of `loss_mean` (batches longer than twice the IAT).",
    "loss_std": "Standard deviation of the loss over the statistics window: the amplitude of the oscillation.",
    "nonfinite_losses": "NaN/Inf losses so far, excluded from every statistic.",
    "lr": "Learning rate of the first parameter group of the first optimizer, at the last entry.",
    "lr_constant_in_late_phase": "Whether the learning rate stayed constant (relative change ≤ 1e-6) over the "
                                 "statistics window; a changing learning rate leaves no invariant measure to average over.",
    # oscillation: the raw window of the last `window` losses, inside the statistics window
    "iat": "Integrated autocorrelation time of the loss (FFT ACF, Sokal's automatic window), in entries: how many "
           "steps the loss takes to forget itself.",
    "ess": "Effective sample size: loss values in the statistics window divided by `iat`.",
    "dominant_period": "Period, in entries, at the peak of the periodogram of the loss (mean removed).",
    "power_fraction": "Share of the loss variance in the frequency bin of `dominant_period` (near 0: no dominant "
                      "oscillation).",
    "geweke_z": "Geweke's z of the first 10 % against the last 50 % of the loss in the statistics window, with "
                "spectral variances.",
    "stationary": "Whether |`geweke_z`| < 2 (consistent with stationarity).",
    # weights
    "weight_norm": "Norm of all trainable parameters, ‖θ_t‖, at the latest snapshot.",
    "update_size": "‖θ_t − θ_{t−1}‖: the size of the optimizer update at a snapshot step (exact, or from a sketch: "
                   "`WeightSnapshots(exact_distances=...)`).",
    "distance_from_init": "‖θ_t − θ_0‖: the distance of the weights from their initial values (exact, or from a "
                          "sketch: `WeightSnapshots(exact_distances=...)`).",
    "distance_to_ergodic_mean": "‖θ_t − θ̄‖, θ̄ the running mean of the snapshots since `ergodic_mean_start`: weights "
                                "that oscillate keep it flat and non-zero.",
    "ergodic_mean_start": "Entry from which the ergodic mean of the weights is accumulated: the late-phase start once "
                          "the late phase is stable (or `WeightSnapshots(ergodic_start=...)`), then fixed.",
    "grad_norm": "Gradient norm at the latest snapshot step, before the optimizer step (after AMP unscaling).",
    "layers": "Norm of each chosen parameter by its `named_parameters()` name (at most `max_layers`, filtered by "
              "`layer_filter`).",
    # probes and the ergodic gap
    "ergodic_gap": "The main model's time-averaged probe loss on held-out points minus on training points, with or "
                   "without replicas: the ergodic generalization gap, `P_test` from the first validation loader.",
    "ergodic_gap_se": "Standard error of `ergodic_gap`: batch means of the per-block gap series (detrended) and the "
                      "sampling of the probe points, in quadrature.",
    "ergodic_gap_source": "Where `ergodic_gap`'s `P_test` comes from: `validation`, or `validation (first of N loaders)`.",
    "probe_train_loss": "The main model's time-averaged loss over `P_train`.",
    "probe_test_loss": "The main model's time-averaged loss over `P_test`.",
    "nonfinite_probe_losses": "NaN/Inf probe losses, excluded and counted.",
    "control_heldout_gap": "With replicas: the control replica's gap on the held-out split of the training data "
                           "(`P_test` against `P_train` and every removed sample), the gap `stability_gap` estimates.",
    "control_heldout_gap_se": "Standard error of `control_heldout_gap`, computed as `ergodic_gap_se`.",
    "control_train_loss": "With replicas: the control's time-averaged loss over `P_train` and every removed sample.",
    "control_heldout_loss": "With replicas: the control's time-averaged loss over the held-out `P_test`.",
    # the SAS estimate (replicas)
    "replicas": "K, the perturbed replicas (besides the control).",
    "n_replicas": "K, the perturbed replicas the estimate averages over.",
    "n_blocks": "Time blocks of probe evaluations in the estimate.",
    "swaps": "m, the training samples each replica swaps for held-out ones (disjoint across replicas; resolved from "
             "`swaps=\"auto\"`).",
    "sas_max": "Mean over k of the max over `I_k ∪ Z'_k ∪ P_test` of |d_k(z)| (the definition's sup, averaged over "
               "random sets of swaps: the average case, not the worst case).",
    "sas_max_se": "Standard error of `sas_max`: the spread of the K per-replica maxima, sd / sqrt(K), and the "
                  "control's own noise on the shared points `P_test`, in quadrature (K = 1: the replica's temporal "
                  "batch-means SE).",
    "sas_max_null": "The level `sas_max` reaches from noise alone: the root mean square of the per-point temporal SEs "
                    "times sqrt(2/π) + sqrt(2 ln n), n the points the max runs over.",
    "sas_max_resolved": "Whether `sas_max` > `sas_max_null` + t · `sas_max_se`, t = `sas_critical_t`.",
    "sas_resolved": "The same as `sas_max_resolved`: whether `sas_max` > `sas_max_null` + t · `sas_max_se`, "
                    "t = `sas_critical_t`.",
    "sas_mean": "Mean over k and `P_test` of |d_k(z)| (held-out sensitivity).",
    "sas_mean_se": "Standard error of `sas_mean`: the crossed two-way SE of replicas × held-out points (both are random "
                   "samples, and every replica sees the same points) and the control's own noise on `P_test`, in "
                   "quadrature (K = 1: the replica's temporal batch-means SE).",
    "sas_mean_null": "The level `sas_mean` reaches from noise alone: sqrt(2/π) times the root mean square of the "
                     "per-point temporal SEs on `P_test`.",
    "sas_mean_resolved": "Whether `sas_mean` > `sas_mean_null` + t · `sas_mean_se`, t = `sas_mean_critical_t`.",
    "sas_mean_critical_t": "Student's t (97.5 %) with the Satterthwaite degrees of freedom of the crossed replicas × "
                           "held-out points SE in `sas_mean_se`: the t of `sas_mean_resolved` and of `sas_mean`'s "
                           "TensorBoard band (`sas_critical_t` when there is no crossed SE, as with K = 1).",
    "sas_replaced": "Mean over k and the `m` removed samples `i ∈ I_k` of |d_k(i)|.",
    "sas_replaced_se": "Standard error of `sas_replaced`: the spread of the K per-replica values, sd / sqrt(K) (K = 1: "
                       "the replica's temporal batch-means SE).",
    "sas_replaced_null": "The level `sas_replaced` reaches from noise alone: sqrt(2/π) times the root mean square of "
                         "the per-point temporal SEs on the removed samples.",
    "sas_replaced_resolved": "Whether `sas_replaced` > `sas_replaced_null` + t · `sas_replaced_se`, t = `sas_critical_t`.",
    "sas_critical_t": "Student's t (97.5 %) with K − 1 degrees of freedom (2 with K = 1): the t of the 95 % "
                      "intervals (`*_lower`, `*_upper`, the TensorBoard bands) and `*_resolved` flags of the replica "
                      "statistics but `sas_mean`, whose t is `sas_mean_critical_t`.",
    "stability_gap": "The replace-one estimate of the generalization gap from both sides of every swap: the mean over "
                     "k of `g_k`, replica k's mean over its `2m` values, `r_k(i) = d_k(i)` on the removed samples and "
                     "`a_k(z') = −d_k(z')` on the added ones; it estimates `control_heldout_gap`.",
    "stability_gap_se": "Standard error of `stability_gap`: the spread of the K per-replica values `g_k`, sd / sqrt(K), "
                        "which already holds each replica's temporal noise (K = 1: the replica's temporal batch-means SE).",
    "stability_gap_null": "0: a signed gap is compared with 0.",
    "stability_gap_resolved": "Whether the 95 % interval [`stability_gap_lower`, `stability_gap_upper`] excludes 0.",
    "stability_gap_removed": "The removed side alone: mean over k and `i ∈ I_k` of `d_k(i)`, the loss a replica has on "
                             "samples it never saw minus the control's, which trained on them (v0.1's `stability_gap`).",
    "stability_gap_removed_se": "Standard error of `stability_gap_removed`: the spread of the K per-replica values, "
                                "sd / sqrt(K) (K = 1: the replica's temporal batch-means SE).",
    "stability_gap_removed_null": "0: a signed gap is compared with 0.",
    "stability_gap_removed_resolved": "Whether the 95 % interval [`stability_gap_removed_lower`, "
                                      "`stability_gap_removed_upper`] excludes 0.",
    "stability_gap_added": "The added side alone: mean over k and `z' ∈ Z'_k` of `−d_k(z')`, the control's loss on "
                           "samples it never saw minus the replica's, which trained on them.",
    "stability_gap_added_se": "Standard error of `stability_gap_added`: the spread of the K per-replica values, "
                              "sd / sqrt(K) (K = 1: the replica's temporal batch-means SE).",
    "stability_gap_added_null": "0: a signed gap is compared with 0.",
    "stability_gap_added_resolved": "Whether the 95 % interval [`stability_gap_added_lower`, "
                                    "`stability_gap_added_upper`] excludes 0.",
    "stability_gap_max_share": "Largest replica's share of Σ_k |g_k|, g_k replica k's gap: near 1 when one replica "
                               "carries `stability_gap`, whose SE from K values is then not to be trusted (raise K or "
                               "`swaps`).",
    "sas_converged": "Whether `sas_max` over the last two doublings of the averaging window (half and all of the "
                     "blocks) agrees within twice their combined SE.",
    "paper_coefficient": "The authors' statistic: mean over the neighbouring pairs (in a run: the control and each "
                         "replica) of |difference of time-averaged mean test losses|.",
    "paper_coefficient_se": "Jackknife SE of `paper_coefficient`, leaving out one run (in a run: the control or a "
                            "replica) at a time; needs at least 3 runs.",
    "mean_pairwise_abs_difference": "Mean over the neighbouring pairs and `P_test` of |difference of time-averaged probe "
                                    "losses|.",
    "mean_pairwise_abs_difference_se": "Jackknife SE of `mean_pairwise_abs_difference`, leaving out one run at a time; "
                                       "needs at least 3 runs.",
    "d_replaced": "Per replica k, the mean of `d_k(i)` over its removed samples (an array).",
    "d_heldout_abs_mean": "Per replica k, the mean of |d_k(z)| over `P_test` (an array).",
    "replica_path": "The engine the replicas run on: `fast` (the replicas stacked) or `generic` (a copy of the module "
                    "per replica).",
    "replica_sampler": "How the replicas draw their batches: `common` (every replica the same positions) or "
                       "`independent` (each its own order).",
    "fork_step": "Entry at which the replicas were forked from the main model.",
    "steps_since_fork": "Entries since the fork.",
    "replica_checkpoint_bytes": "Bytes the replicas add to a checkpoint (once one was saved).",
    "unavailable": "Why each key whose value is None has none, as `{key: reason}`.",
    # lightning-sas compare
    "runs": "The number of runs compared.",
    "pairs": "The neighbouring pairs, by position (`0-1, 0-2, ...`).",
    "from_step": "Where the time averages start: the first probe step counted.",
    "heldout_max_abs_difference": "Mean over neighbouring pairs of the largest |difference of time-averaged probe "
                                  "losses| on the held-out points (not `sas_max`, whose max also covers the swapped "
                                  "samples).",
}

#: keys with a number in their name (``lightning-sas compare``): (pattern, documented name, text)
KEY_PATTERN_EXPLANATIONS: tuple[tuple[str, str, str], ...] = (
    (r"run\d+", "run<r>", "The directory of run r (its position among the runs compared)."),
    (r"run\d+_test_loss", "run<r>_test_loss", "Run r's time-averaged loss over `P_test`."),
    (r"(sas_max|sas_mean|sas_replaced)_lower", "<sas statistic>_lower",
     "Lower end of the statistic's 95 % interval, taken on the log scale (the statistic is positive and its SE grows "
     "with it): value · exp(−t · SE / value), t its critical value (`sas_mean_critical_t` for `sas_mean`, else "
     "`sas_critical_t`)."),
    (r"(sas_max|sas_mean|sas_replaced)_upper", "<sas statistic>_upper",
     "Upper end of the statistic's 95 % interval, taken on the log scale: value · exp(t · SE / value)."),
    (r"(stability_gap|stability_gap_removed|stability_gap_added|control_heldout_gap|ergodic_gap)_lower", "<gap>_lower",
     "Lower end of the gap's 95 % interval, skewness-corrected (Hall's transformation of the studentized gap, the skew "
     "from the units of its SE: the K per-replica values, or the probe points of a measured gap): about value + SE · γ "
     "(2z² + 1) / 6 − t · SE, γ the gap's skewness, z = 1.96, t = `sas_critical_t` for the stability gaps, 2 for the "
     "measured gaps."),
    (r"(stability_gap|stability_gap_removed|stability_gap_added|control_heldout_gap|ergodic_gap)_upper", "<gap>_upper",
     "Upper end of the gap's 95 % interval, skewness-corrected: about value + SE · γ (2z² + 1) / 6 + t · SE."),
)


def explanation(key: str) -> str | None:
    """The text of summary key ``key`` (markdown), None for a key without one."""
    if key in KEY_EXPLANATIONS:
        return KEY_EXPLANATIONS[key]
    for pattern, _name, text in KEY_PATTERN_EXPLANATIONS:
        if re.fullmatch(pattern, key):
            return text
    return None


def explanation_html(key: str) -> str:
    """The text of ``key`` as HTML (code spans as ``<code>``); empty for a key without one."""
    text = explanation(key) or ""
    parts = html.escape(text, quote=False).split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))
