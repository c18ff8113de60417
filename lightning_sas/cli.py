"""``lightning-sas``: offline reports and the multi-run SAS protocol.

* ``lightning-sas report DIR [--out DIR] [--json]``: the diagnostics table and PNG figures of a
  stored run (no Trainer, no GPU); ``DIR`` is the run or a folder with one run below it;
* ``lightning-sas perturb --n N ...``: a plan of neighbouring datasets for the multi-run protocol;
* ``lightning-sas compare RUN_DIR...``: SAS statistics across runs trained on neighbouring datasets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lightning_sas.formatting import format_table

__all__ = ["main", "format_table", "report_summary", "find_runs"]


def _progress(label: str) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        if total >= 20 and sys.stderr.isatty():
            sys.stderr.write(f"\r{label}: {done}/{total} chunks")
            if done == total:
                sys.stderr.write("\n")

    return show


def _load(path: str) -> Any:
    from lightning_sas.store import read_run

    run = read_run(path, progress=_progress(f"reading {path}"))
    for problem in run.problems:
        print(f"warning: {problem.line()}", file=sys.stderr)
    return run


def _output_folder(option: str, value: str | None) -> None:
    """An ordinary mistake in an output option, before anything is read: a folder option that
    names an existing file, or a file option that names a folder."""
    if value is None:
        return
    path = Path(value)
    if option == "--out" and path.exists() and not path.is_dir():
        raise UsageError(f"--out {value} is an existing file: pass a folder for the figures")
    if option == "--html" and path.is_dir():
        raise UsageError(f"--html {value} is a folder: pass the path of the HTML file to write")
    if option == "--html" and not path.parent.is_dir():
        raise UsageError(f"--html {value}: the folder {path.parent} does not exist")


class UsageError(ValueError):
    """A mistake in the command line, answered with one line and exit code 2."""


def report_summary(run: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(summary, status_summary)`` of a stored run: ``summary`` is
    :func:`~lightning_sas.diagnostics.summarize_run` (rebuilt from the streams, the report's
    table); ``status_summary`` adds what that lacks from the last live summary (``summary.json``:
    the SAS keys, ``control_heldout_gap``, ``unavailable``, ...) for the status. ``ergodic_gap``
    is the main model's in both, with or without replicas."""
    from lightning_sas.diagnostics import summarize_run, unavailable_reasons

    summary = summarize_run(run)
    stored = dict(run.summary or {})
    merged = dict(summary)
    for key, value in stored.items():
        if merged.get(key) is None:
            merged[key] = value
    # what is still missing after the merge, with the live run's reason where it stored one
    reasons = {**(summary.get("unavailable") or {}), **(stored.get("unavailable") or {})}
    merged["unavailable"] = unavailable_reasons(merged, reasons)
    return summary, merged


def _is_store(folder: Path) -> bool:
    """Does ``folder`` hold a run store (``meta.json`` or ``streams/``, as ``read_run`` reads it)?"""
    return (folder / "meta.json").is_file() or (folder / "streams").is_dir()


def find_runs(path: str | Path, max_depth: int = 8) -> list[Path]:
    """The run stores at or below ``path``: ``path`` itself or its ``sas/`` child when it is a run
    (a store, or a Lightning version directory), else every store found below it (e.g. a Hydra
    run folder's ``tensorboard/version_0/sas``, or ``lightning_sas/<run id>``), at most
    ``max_depth`` levels down, sorted. Symbolic links are not followed and a store's own
    folders are not searched."""
    root = Path(path)
    if not root.is_dir():
        return []
    if _is_store(root):
        return [root]
    child = root / "sas"
    if not child.is_symlink() and _is_store(child):  # a link out of the run is never followed
        return [child]
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth):
        below: list[Path] = []
        for folder in level:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
            except OSError:
                continue
            for child in children:
                (found if _is_store(child) else below).append(child)
        level = below
    return sorted(found)


def _resolve_run(path: str) -> str | None:
    """The one run that ``report PATH`` reads; several: they are listed and None is returned."""
    runs = find_runs(path)
    if len(runs) <= 1:
        return str(runs[0]) if runs else path  # none: read_run says why
    print(f"lightning-sas report: {len(runs)} runs below {path}; pick one:", file=sys.stderr)
    for run in runs:
        print(f"  lightning-sas report {run}", file=sys.stderr)
    return None


def _report(args: argparse.Namespace) -> int:
    from lightning_sas.diagnostics import figure_inputs
    from lightning_sas.loggers import figures
    from lightning_sas.loggers.status import status_text

    _output_folder("--out", args.out)
    _output_folder("--html", args.html)
    resolved = _resolve_run(args.run_dir)
    if resolved is None:
        return 2
    run = _load(resolved)
    summary, for_status = report_summary(run)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        title = f"lightning-sas report: {run.root}"
        print("\n".join([title, "=" * len(title), "", "Status", "------", status_text(for_status), ""]))
        print(format_table(summary, title="Diagnostics"))
    out = Path(args.out) if args.out else run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = figure_inputs(run)
    drawn = {
        "loss_stream.png": figures.loss_stream_figure(data["steps"], data["loss"], data["late_phase_start"], data["lr"]),
        "acf.png": figures.acf_figure(data["acf"], data["iat"], data["iat_window"]),
        "periodogram.png": figures.periodogram_figure(data["freqs"], data["power"], data["dominant_period"]),
        "sketch_trajectory.png": figures.sketch_trajectory_figure(data["sketch_steps"], data["sketch"], data["late_phase_start"]),
    }
    for name, fig in drawn.items():
        fig.savefig(out / name)
    if args.html:
        from lightning_sas.html_report import html_page

        pngs = {name.removesuffix(".png"): figures.figure_to_png_bytes(fig) for name, fig in drawn.items()}
        notes = [p.line() for p in run.problems]
        page = html_page(f"lightning-sas report: {run.root}", summary, pngs, notes, status=for_status)
        Path(args.html).write_text(page)
    if not args.json:
        print(f"\nfigures written to {out}" + (f", HTML report to {args.html}" if args.html else ""))
    return 0


def _parse_pairs(text: str | None, n_runs: int) -> list[tuple[int, int]]:
    if not text:
        return [(0, k) for k in range(1, n_runs)]
    pairs = []
    for item in text.split(","):
        a, _, b = item.partition("-")
        p, q = int(a), int(b)
        if not (0 <= p < n_runs and 0 <= q < n_runs) or p == q:
            raise ValueError(f"--pairs: {item!r} is not a pair of distinct run positions in [0, {n_runs})")
        pairs.append((p, q))
    return pairs


def compare_runs(runs: Sequence[Any], pairs: Sequence[tuple[int, int]], from_step: int | None = None) -> dict[str, Any]:
    """SAS statistics across runs on neighbouring datasets, from their stored probe streams.

    Every run must have probed the same points (same seed and dataset sizes); the window starts at
    ``from_step``, else at the latest of the runs' statistics windows (late phase, else second
    half; never the probe at step 0). Returns ``mean_pairwise_abs_difference`` (mean over pairs
    and ``P_test`` of ``|<l_p(z)> - <l_q(z)>|``, with SE), ``heldout_max_abs_difference`` (mean
    over pairs of the max over ``P_test``: not ``sas_max``, whose max also runs over the swapped
    samples), the authors' ``paper_coefficient`` and per-run time-averaged test losses.

    Runs of a ``lightning-sas perturb`` plan (trained on
    :meth:`~lightning_sas.data.NeighbouringDataset.from_plan` sets) also probed every run's
    swapped samples: then the neighbours are the control (run 0) and each run ``k``, and the
    statistics are those of :func:`~lightning_sas.stats.sas.sas_statistics` with ``m`` swaps per
    run: ``sas_max`` over the swapped samples and ``P_test``, ``sas_replaced``, and the
    ``stability_gap`` from both sides of every swap (``stability_gap_removed``,
    ``stability_gap_added``), each with its SE (runs as the independent units, Student's t with
    K - 1 dof) and resolved flag.
    """
    from lightning_sas.diagnostics import summarize_run
    from lightning_sas.stats.sas import mean_pairwise_abs_difference, paper_coefficient

    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    probes, n_train, n_test = [], None, None
    for run in runs:
        stream = run.streams.get("probes")
        if not stream or "losses" not in stream:
            raise ValueError(f"{run.root} has no probe-loss stream (was ProbeLosses on, with a validation set?)")
        cfg = run.meta
        nt = int(cfg.get("probe_num_train", 0))
        if n_train is not None and nt != n_train or (probes and stream["losses"].shape[1] != probes[0]["losses"].shape[1]):
            raise ValueError("the runs probed different point sets: use the same seed and dataset sizes in every run")
        n_train = nt
        n_test = int(cfg.get("probe_num_test", stream["losses"].shape[1] - nt))
        probes.append(stream)
    if from_step is None:  # the latest of the runs' statistics windows, never the step-0 probe
        starts = [summarize_run(r).get("window_start") for r in runs]
        from_step = max([1, *(s for s in starts if s is not None)])
    per_point = []
    for stream in probes:
        keep = stream["step"] >= from_step
        if not keep.any():
            raise ValueError(f"no probe rows at or after step {from_step}")
        per_point.append(np.nanmean(stream["losses"][keep], axis=0))
    means = np.stack(per_point)  # (R, P)
    test = means[:, n_train : n_train + n_test]
    if test.shape[1] == 0:
        raise ValueError("the runs have no held-out probe points (P_test)")
    coef, coef_se = paper_coefficient(test.mean(axis=1), pairs)
    mpd, mpd_se = mean_pairwise_abs_difference(test, pairs)
    sup = float(np.mean([np.abs(test[p] - test[q]).max() for p, q in pairs]))
    out: dict[str, Any] = {
        "runs": len(runs),
        "pairs": ", ".join(f"{p}-{q}" for p, q in pairs),
        "from_step": int(from_step),
        "mean_pairwise_abs_difference": mpd,
        "mean_pairwise_abs_difference_se": mpd_se,
        "heldout_max_abs_difference": sup,
        "paper_coefficient": coef,
        "paper_coefficient_se": coef_se,
    }
    plan = [run.meta.get("plan_swaps") for run in runs]
    if all(p is not None for p in plan):
        out.update(_swap_statistics(runs, probes, n_train, n_test, int(from_step)))
    for r, run in enumerate(runs):
        out[f"run{r}_test_loss"] = float(test[r].mean())
        out[f"run{r}"] = str(run.root)
    out["_abs_diff"] = np.concatenate([np.abs(test[p] - test[q]) for p, q in pairs])
    return out


def _swap_statistics(runs: Sequence[Any], probes: Sequence[dict[str, np.ndarray]], n_train: int, n_test: int,
                     from_step: int) -> dict[str, Any]:
    """The swap statistics across the runs of one perturb plan (run 0 the control): each probe row
    at or after ``from_step`` that every run has is one block of :func:`sas_statistics`."""
    from lightning_sas.stats.sas import sas_statistics

    order = [run.meta.get("plan_run") for run in runs]
    if sorted(order) != list(range(len(runs))):
        raise ValueError(f"the runs are runs {order} of the plan: pass the control (run 0) and every run of the plan once")
    swaps = runs[0].meta["plan_swaps"]
    k, m = len(swaps), len(swaps[0]) if swaps else 0
    if k != len(runs) - 1 or m < 1:
        raise ValueError(f"the plan has {k} perturbed runs with {m} swaps each, but {len(runs)} runs were given")
    by_run = {order[r]: probes[r] for r in range(len(runs))}
    common = set(by_run[0]["step"][by_run[0]["step"] >= from_step].tolist())
    for stream in by_run.values():
        common &= set(stream["step"].tolist())
    steps = np.asarray(sorted(common), dtype=np.int64)
    if steps.size < 2:
        raise ValueError(f"the runs share fewer than 2 probe steps at or after step {from_step}")

    def rows(run: int) -> np.ndarray:
        stream = by_run[run]
        index = {int(s): i for i, s in enumerate(stream["step"])}
        return stream["losses"][[index[int(s)] for s in steps]]

    test = n_train + np.arange(n_test)
    swap0 = n_train + n_test  # the swap group: every run's removed samples, then every run's added samples
    perturbed, control = [], []
    control_rows = rows(0)
    for r in range(1, k + 1):
        cols = np.concatenate([test, swap0 + (r - 1) * m + np.arange(m), swap0 + k * m + (r - 1) * m + np.arange(m)])
        perturbed.append(rows(r)[:, cols])
        control.append(control_rows[:, cols])
    stats = sas_statistics(np.stack(perturbed), np.stack(control), np.ones(steps.size), n_test + np.arange(m),
                           n_test + m + np.arange(m), np.arange(n_test))
    keys = ("swaps", "sas_max", "sas_max_se", "sas_max_resolved", "sas_replaced", "sas_replaced_se", "stability_gap",
            "stability_gap_se", "stability_gap_resolved", "stability_gap_removed", "stability_gap_removed_se",
            "stability_gap_added", "stability_gap_added_se", "sas_critical_t")
    bounds = tuple(f"{key[:-3]}_{end}" for key in keys if key.endswith("_se") for end in ("lower", "upper"))
    return {key: stats[key] for key in keys + bounds}


def _compare(args: argparse.Namespace) -> int:
    from lightning_sas.loggers import figures

    _output_folder("--out", args.out)
    _output_folder("--html", args.html)
    runs = [_load(p) for p in args.run_dirs]
    result = compare_runs(runs, _parse_pairs(args.pairs, len(runs)), args.from_step)
    abs_diff = result.pop("_abs_diff")
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(format_table(result, title="lightning-sas compare"))
    out = Path(args.out or "sas-compare")
    out.mkdir(parents=True, exist_ok=True)
    hist = figures.histogram_figure(abs_diff, "|difference of time-averaged probe losses| over pairs", "|Δ loss|")
    hist.savefig(out / "abs_differences.png")
    if args.html:
        from lightning_sas.html_report import html_page

        Path(args.html).write_text(html_page("lightning-sas compare", result, {"abs_differences": figures.figure_to_png_bytes(hist)}))
    if not args.json:
        print(f"\nfigures written to {out}")
    return 0


def _perturb(args: argparse.Namespace) -> int:
    from lightning_sas.data import choose_swaps, resolve_swaps, split_holdout

    # the held-out size of SASReplicas' split (resolve_swaps), so a plan and the replicas split alike
    m, n_hold = resolve_swaps(args.n, args.holdout_fraction, args.runs, args.swaps,
                              names=("--swaps", "--runs", "--holdout-fraction"))
    s_idx, holdout = split_holdout(args.n, args.holdout_fraction, args.seed, min_holdout=n_hold)
    swaps = choose_swaps(s_idx, holdout, args.runs, m, args.seed)
    plan = {
        "n": args.n,
        "seed": args.seed,
        "holdout_fraction": args.holdout_fraction,
        "swaps": m,
        "train_indices": [int(i) for i in s_idx],
        "holdout_indices": [int(i) for i in holdout],
        "runs": [{"run": 0, "replace": {}}]
        + [{"run": k, "replace": {str(i): int(j) for i, j in pairs}} for k, pairs in enumerate(swaps, start=1)],
    }
    text = json.dumps(plan, indent=1)
    if args.out:
        Path(args.out).write_text(text)
        print(f"plan for {args.runs + 1} runs (control + {args.runs} neighbours, {m} swaps each) "
              f"written to {args.out}")
    else:
        print(text)
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-sas", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="summary table and figures of a stored run")
    rep.add_argument("run_dir", help="a run's store (…/sas), its Lightning version directory, or a folder with "
                                     "one run below it (several: they are listed, exit code 2)")
    rep.add_argument("--out", help="folder for the PNG figures (default RUN/report)")
    rep.add_argument("--json", action="store_true", help="print the summary as JSON")
    rep.add_argument("--html", help="also write one self-contained HTML page (figures embedded) here")
    rep.set_defaults(func=_report)
    cmp_ = sub.add_parser("compare", help="SAS across runs trained on neighbouring datasets")
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.add_argument("--pairs", help="neighbouring pairs as 'p-q,...' (default: run 0 against each other run)")
    cmp_.add_argument("--from-step", type=int, default=None, help="late-phase start (default: latest MSER start)")
    cmp_.add_argument("--out", help="folder for figures (default sas-compare)")
    cmp_.add_argument("--json", action="store_true")
    cmp_.add_argument("--html", help="also write one self-contained HTML page here")
    cmp_.set_defaults(func=_compare)
    per = sub.add_parser("perturb", help="plan neighbouring datasets for the multi-run protocol")
    per.add_argument("--n", type=int, required=True, help="size of the training set")
    per.add_argument("--runs", type=int, default=4, help="number of perturbed runs (plus one control)")
    per.add_argument("--swaps", default="auto",
                     help="samples each run swaps for held-out ones: m, or 'auto' (the default of SASReplicas: at most "
                          "4 %% of S, keeping 128 P_test points)")
    per.add_argument("--holdout-fraction", type=float, default=None,
                     help="share of --n held out (default: 10 %%, or room for the swaps and 128 P_test points, at most half)")
    per.add_argument("--seed", type=int, default=0)
    per.add_argument("--out", help="write the plan JSON here (default: stdout)")
    per.set_defaults(func=_perturb)
    return parser


#: exit codes: 0 the report was written (damaged files, if any, were listed on stderr, one
#: ``warning: damaged file ...`` line each, and left out); 2 nothing could be reported (a missing
#: path, not a run directory, an output path that is a file, arguments that do not fit); 1 an
#: unexpected error (one line; ``LIGHTNING_SAS_DEBUG=1`` shows the traceback)
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; never a traceback (see :data:`EXIT_USAGE` and friends)."""
    import os

    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError) as err:
        text = str(err) if not isinstance(err, OSError) or not err.filename else f"{err.filename}: {err.strerror or err}"
        print(f"lightning-sas {args.command}: error: {' '.join(text.split())}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - one line instead of a traceback
        if os.environ.get("LIGHTNING_SAS_DEBUG"):
            raise
        print(f"lightning-sas {args.command}: internal error ({type(err).__name__}: {' '.join(str(err).split())[:300]}); "
              "rerun with LIGHTNING_SAS_DEBUG=1 for the traceback", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
