#!/usr/bin/env python
"""Run Lightning's own test suite with and without an injected ``SASMonitor`` and compare.

Subcommands (see README.md in this folder):

``run``      export the tests of a Lightning tag, run pytest for each mode (off, monitor,
             replicas) and each folder with ``--junitxml``, then ``compare``
``compare``  read the junit files of a work directory and write summary.md / summary.json
``rerun``    run a list of test ids again in each mode (all in one pytest, or one pytest per id
             with ``--isolated``) and say which failures are deterministic
``export``   only export the tests of a tag

Runs are strictly sequential: one pytest process at a time.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from categories import REPLICA_HINT, categorize, cause  # noqa: E402

DEFAULT_REPO = os.environ.get("LIGHTNING_REPO", "/work/.mirror/Lightning-AI+pytorch-lightning/repo")
DEFAULT_TAG = "2.6.5"
DEFAULT_FOLDERS = (
    "tests_pytorch/callbacks",
    "tests_pytorch/trainer/flags",
    "tests_pytorch/loops",
    "tests_pytorch/checkpointing",
    "tests_pytorch/trainer/optimization",
    "tests_pytorch/loggers",
    "tests_pytorch/models",
)
MODES = ("off", "monitor", "replicas")
# node ids are relative to the export root (where Lightning's pyproject.toml is, as in its CI)
NODE_PREFIX = "tests/"


# ----------------------------------------------------------------------------------------------
# export and run


def export(repo: str, tag: str, dest: Path) -> Path:
    """``git archive <tag> tests pyproject.toml`` into ``dest`` (emptied first).

    Lightning's ``pyproject.toml`` is exported too: its ``[tool.pytest.ini_options]`` (strict
    markers, ``error::FutureWarning``, ``xfail_strict``, doctest modules) is the configuration its
    CI runs the suite with (from ``tests/tests_pytorch``, rootdir = the repository root).
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", f"--git-dir={repo}", "archive", tag, "tests", "pyproject.toml"],
        check=False, capture_output=True,
    )
    if archive.returncode != 0:
        raise SystemExit(f"git archive {tag} failed: {archive.stderr.decode(errors='replace')}")
    # (a partial mirror may print "error: invalid object ... for 'docs/...'" on stderr while
    # reading attributes of paths outside the export; the exit status is what counts)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    if not (dest / "tests" / "tests_pytorch" / "conftest.py").exists():
        raise SystemExit(f"export of {tag} has no tests/tests_pytorch/conftest.py")
    (dest / "EXPORTED_FROM").write_text(f"{repo} {tag}\n")
    return dest


def pytest_env(mode: str) -> dict[str, str]:
    env = dict(os.environ)
    env["SAS_INJECT"] = mode
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def pytest_command(python: str, junit: Path, timeout: int, targets: list[str], extra: list[str]) -> list[str]:
    return [
        python, "-m", "pytest", "-p", "sas_inject", "-p", "no:cacheprovider", "-q", "--color=no",
        f"--timeout={timeout}", f"--junitxml={junit}", "-o", "junit_family=xunit1",
        *extra, *targets,
    ]


def run_pytest(python: str, export_root: Path, mode: str, targets: list[str], junit: Path, log: Path,
               timeout: int, extra: list[str]) -> int:
    """One pytest process, cwd ``tests/tests_pytorch`` of the export (as Lightning's CI does)."""
    cwd = export_root / "tests" / "tests_pytorch"
    junit.parent.mkdir(parents=True, exist_ok=True)
    if len(targets) > 50:  # long id lists go through an args file (pytest >= 8.2)
        args_file = junit.with_suffix(".args")
        args_file.write_text("\n".join(targets) + "\n")
        targets = [f"@{args_file}"]
    cmd = pytest_command(python, junit, timeout, targets, extra)
    start = time.time()
    with open(log, "w") as out:
        out.write(f"# SAS_INJECT={mode} cwd={cwd}\n# {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=pytest_env(mode), stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.time() - start
    print(f"[{_now()}] {mode:9s} {' '.join(targets)[:70]:70s} rc={proc.returncode} {elapsed:7.1f}s", flush=True)
    return proc.returncode


def _now() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S")


def _slug(folder: str) -> str:
    return folder.replace("tests_pytorch/", "").replace("/", "__")


def cmd_run(args: argparse.Namespace) -> None:
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    folders = args.folders or list(DEFAULT_FOLDERS)
    meta = {
        "tag": args.tag, "repo": args.repo, "folders": folders, "modes": args.modes,
        "timeout": args.timeout, "python": args.python, "extra": args.pytest_args,
        "started": _dt.datetime.now().isoformat(timespec="seconds"), "versions": _versions(args.python),
        "lightning_sas_commit": _git_head(HERE),
    }
    (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for mode in args.modes:
        mode_dir = work / mode
        export_root = mode_dir / "src"
        # a fresh export per mode: files a run leaves behind cannot leak into the next mode
        if not (args.resume and export_root.exists()):
            export(args.repo, args.tag, export_root)
        for folder in folders:
            junit = mode_dir / f"{_slug(folder)}.xml"
            if args.resume and junit.exists():
                print(f"[{_now()}] {mode:9s} {folder}: kept {junit.name}", flush=True)
                continue
            target = folder.removeprefix("tests_pytorch/")
            run_pytest(args.python, export_root, mode, [target], junit, junit.with_suffix(".log"),
                       args.timeout, args.pytest_args)
        _left_behind(export_root, args.repo, args.tag, mode_dir / "left_behind.txt")
    meta["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    compare(work, Path(args.out) if args.out else work)


def _left_behind(export_root: Path, repo: str, tag: str, out: Path) -> None:
    """Files in the export after the run that the tag does not have (what tests wrote into it)."""
    listed = subprocess.run(["git", f"--git-dir={repo}", "ls-tree", "-r", "--name-only", tag, "tests"],
                            capture_output=True, text=True, check=False).stdout.split()
    tracked = set(listed) | {"pyproject.toml", "EXPORTED_FROM"}
    extra = sorted(
        str(p.relative_to(export_root)) for p in export_root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and str(p.relative_to(export_root)) not in tracked
    )
    out.write_text("\n".join(extra) + ("\n" if extra else ""))


def _versions(python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "d={'python': sys.version.split()[0]}\n"
        "for n in ('torch','lightning','pytorch-lightning','torchmetrics','pytest','lightning-sas','numpy'):\n"
        "    try: d[n]=m.version(n)\n"
        "    except Exception: d[n]=None\n"
        "print(json.dumps(d))\n"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return {}


def _git_head(path: Path) -> str | None:
    """HEAD of the checkout this tool lives in, the last commit that touched lightning_sas/, and
    whether lightning_sas/ has uncommitted changes (the runs import the installed package, which
    is expected to be an editable install of this checkout)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(path), *a], capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    top = git("rev-parse", "--show-toplevel")
    pkg = str(Path(top) / "lightning_sas")
    last = git("log", "-1", "--format=%h", "--", pkg)
    dirty = git("status", "--porcelain", "--", pkg)
    return f"{head[:10]} (lightning_sas/ last changed in {last}{', with uncommitted changes' if dirty else ''})"


# ----------------------------------------------------------------------------------------------
# reading junit


def read_junit(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """node id -> {outcome, phase, message, text, trainers, reruns}; outcome is passed, failed,
    skipped or xfailed. A test that passed its call but errored in teardown is failed."""
    results: dict[str, dict[str, Any]] = {}
    for path in paths:
        if not path.exists():
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as err:
            print(f"warning: {path}: {err}", file=sys.stderr)
            continue
        for case in root.iter("testcase"):
            props = {p.get("name"): p.get("value") for p in case.iter("property")}
            nodeid = props.get("nodeid") or _nodeid_from_case(case)
            entry = results.setdefault(nodeid, {"outcome": "passed", "phase": None, "message": "", "text": "",
                                                "trainers": 0, "reruns": 0, "time": 0.0})
            entry["trainers"] = max(entry["trainers"], int(props.get("sas_trainers") or 0))
            entry["reruns"] = max(entry["reruns"], int(props.get("sas_reruns") or 0))
            entry["time"] += float(case.get("time") or 0.0)
            for child in case:
                tag = child.tag
                if tag in ("failure", "error"):
                    message = child.get("message") or ""
                    if entry["outcome"] != "failed":  # the first failure is the one that matters
                        entry.update(outcome="failed", phase=_phase(tag, message), message=message,
                                     text=child.text or "")
                    else:
                        entry["text"] += "\n\n--- further error ---\n" + (child.text or "")
                elif tag == "skipped" and entry["outcome"] == "passed":
                    kind = child.get("type") or ""
                    entry["outcome"] = "xfailed" if "xfail" in kind else "skipped"
                    entry["message"] = child.get("message") or ""
    return results


def _phase(tag: str, message: str) -> str:
    if tag == "failure":
        return "call"
    m = re.match(r"failed on (setup|teardown)", message)
    return m.group(1) if m else "collection" if "collect" in message.lower() else "error"


def _nodeid_from_case(case: ET.Element) -> str:
    file = case.get("file")
    if file:
        return f"{file}::{case.get('name')}"
    return f"{case.get('classname')}::{case.get('name')}"


def folder_of(nodeid: str, folders: list[str]) -> str:
    path = nodeid.split("::", 1)[0].removeprefix(NODE_PREFIX)
    best = ""
    for folder in folders:
        folder = folder.rstrip("/")
        if (path == folder or path.startswith(folder + "/")) and len(folder) > len(best):
            best = folder
    return best or path.rsplit("/", 1)[0]


_E_EXC = re.compile(r"^E\s+((?:[\w.]+\.)?\w*(?:Error|Exception|Warning|Interrupt)\w*: .*)$", re.M)


def key_line(entry: dict[str, Any]) -> str:
    """The error's key line: junit's message (the crash line), else the first ``E`` line; for an
    error re-raised from a spawned process, the child's last exception line."""
    msg = (entry.get("message") or "").strip()
    text = entry.get("text") or ""
    msg = re.sub(r"\s*\[\+\d+ more lines?; full report in element text\]$", "", msg)
    if msg.startswith("torch.multiprocessing.spawn.ProcessRaisedException"):
        inner = [m for m in _E_EXC.findall(text) if "ProcessRaisedException" not in m]
        if inner:
            msg = "ProcessRaisedException from the spawned process: " + inner[-1].strip()
    if msg.startswith("failed on setup with") or msg.startswith("failed on teardown with"):
        msg = msg.split(" with ", 1)[1].strip().strip('"')
    if not msg or msg in ("AssertionError", "assert False"):
        e_lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
        if e_lines:
            msg = e_lines[0] if not msg else f"{msg}: {e_lines[0]}"
    msg = REPLICA_HINT.sub("", " ".join(msg.split()))
    first_text = text.split("--- further error ---", 1)[0]
    underlying = cause(entry.get("message") or "", first_text)
    if underlying and underlying[:60] not in msg:
        # the test reports something else (a regex mismatch, a missing warning) because our error came first
        msg = f"{msg[:200]} <- {underlying}"
    return msg[:400]


_OUR_FRAME = re.compile(r"^(\S*lightning_sas/\S+\.py):(\d+)(?::\s*(\S.*))?$", re.M)
_ANY_FRAME = re.compile(r"^(\S+\.py):(\d+): (\w+(?:Error|Exception|Warning|Timeout|Interrupt)\w*)$", re.M)


def our_frame(text: str) -> str | None:
    """The innermost ``lightning_sas`` frame of the traceback text (``path:line``), if any."""
    hits = _OUR_FRAME.findall(text or "")
    if not hits:
        return None
    path, line, _ = hits[-1]
    return f"lightning_sas/{path.split('lightning_sas/', 1)[1]}:{line}"


def crash_frame(text: str) -> str | None:
    hits = _ANY_FRAME.findall(text or "")
    if not hits:
        return None
    path, line, exc = hits[-1]
    for marker in ("site-packages/", "tests/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line} {exc}"


# ----------------------------------------------------------------------------------------------
# comparing


def load_modes(work: Path, modes: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
    return {mode: read_junit(sorted((work / mode).glob("*.xml"))) for mode in modes if (work / mode).is_dir()}


def compare(work: Path, out: Path) -> dict[str, Any]:
    meta = json.loads((work / "meta.json").read_text()) if (work / "meta.json").exists() else {}
    folders = meta.get("folders") or list(DEFAULT_FOLDERS)
    results = load_modes(work, MODES)
    if "off" not in results:
        raise SystemExit(f"{work}: no results for mode 'off'")
    plain = results["off"]
    out.mkdir(parents=True, exist_ok=True)

    counts: dict[str, dict[str, Any]] = {}
    only: dict[str, list[dict[str, Any]]] = {}
    fixed: dict[str, list[str]] = {}
    for folder in folders + ["TOTAL"]:
        counts[folder] = {}
    for mode, res in results.items():
        for nodeid, entry in res.items():
            for folder in (folder_of(nodeid, folders), "TOTAL"):
                c = counts.setdefault(folder, {}).setdefault(mode, Counter())
                c["tests"] += 1
                c[entry["outcome"]] += 1
                c["with_trainer"] += entry["trainers"] > 0
        if mode == "off":
            continue
        only[mode] = []
        fixed[mode] = []
        for nodeid, entry in sorted(res.items()):
            base = plain.get(nodeid)
            if entry["outcome"] == "failed" and (base is None or base["outcome"] != "failed"):
                category = categorize(entry["message"], entry["text"], mode)
                only[mode].append({
                    "id": nodeid,
                    "folder": folder_of(nodeid, folders),
                    "plain": base["outcome"] if base else "not run",
                    "phase": entry["phase"],
                    "category": category,
                    "error": key_line(entry),
                    "our_frame": our_frame(entry["text"].split("--- further error ---", 1)[0]),
                    "crash_frame": crash_frame(entry["text"].split("--- further error ---", 1)[0]),
                    "also_fails_in_teardown": "--- further error ---" in entry["text"],
                    "reruns": entry["reruns"],
                    "also_with_monitor": (mode == "replicas" and results.get("monitor", {}).get(nodeid, {}).get("outcome") == "failed"),
                })
                for folder in (folder_of(nodeid, folders), "TOTAL"):
                    counts[folder].setdefault(mode, Counter())["only_here"] += 1
            elif base is not None and base["outcome"] == "failed" and entry["outcome"] != "failed":
                fixed[mode].append(nodeid)
        missing = sorted(set(plain) - set(res))
        if missing:
            fixed[mode + "_missing"] = missing

    plain_failures = [
        {"id": n, "folder": folder_of(n, folders), "error": key_line(e), "reruns": e["reruns"]}
        for n, e in sorted(plain.items()) if e["outcome"] == "failed"
    ]
    summary = {
        "meta": meta,
        "counts": {f: {m: dict(c) for m, c in v.items()} for f, v in counts.items()},
        "failed_plain": plain_failures,
        "only_with": only,
        "passed_with_injection_but_failed_plain": fixed,
        "categories": {m: dict(Counter(x["category"] for x in lst).most_common()) for m, lst in only.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(render_markdown(summary, folders))
    for mode, lst in only.items():
        (out / f"only_{mode}.txt").write_text("".join(x["id"] + "\n" for x in lst))
    print(f"wrote {out / 'summary.md'} and {out / 'summary.json'}")
    return summary


def render_markdown(summary: dict[str, Any], folders: list[str]) -> str:
    meta = summary["meta"]
    counts = summary["counts"]
    lines = ["# Lightning's test suite with an injected SASMonitor", ""]
    if meta:
        v = meta.get("versions", {})
        lines += [
            f"- Lightning tests: tag `{meta.get('tag')}`; installed: lightning {v.get('lightning')}, "
            f"pytorch-lightning {v.get('pytorch-lightning')}, torch {v.get('torch')}, python {v.get('python')}, "
            f"pytest {v.get('pytest')}",
            f"- lightning-sas commit: `{meta.get('lightning_sas_commit')}`",
            f"- per-test timeout: {meta.get('timeout')} s; started {meta.get('started')}, finished {meta.get('finished')}",
            "- monitor = `SASMonitor(figure_every=0)`, replicas = `SASMonitor(figure_every=0, replicas=2)`, "
            "appended to the callbacks of every Trainer",
            "",
        ]
    modes = [m for m in MODES if any(m in counts[f] for f in counts)]
    lines += ["## Counts", "",
              "`tests`: test ids run (passed + failed + skipped + xfailed); `failed`: failed or errored; "
              "`only`: failed in this mode but not without injection.", ""]
    header = "| folder | tests | failed plain |"
    sep = "|---|---:|---:|"
    for m in modes[1:]:
        header += f" failed {m} | only {m} |"
        sep += "---:|---:|"
    lines += [header, sep]
    for folder in folders + ["TOTAL"]:
        c = counts.get(folder, {})
        off = c.get("off", {})
        row = f"| {folder.removeprefix('tests_pytorch/')} | {off.get('tests', 0)} | {off.get('failed', 0)} |"
        for m in modes[1:]:
            cm = c.get(m, {})
            row += f" {cm.get('failed', 0)} | {cm.get('only_here', 0)} |"
        lines.append(row)
    off_total = counts.get("TOTAL", {}).get("off", {})
    lines += ["", f"Plain run: {off_total.get('passed', 0)} passed, {off_total.get('failed', 0)} failed, "
              f"{off_total.get('skipped', 0)} skipped, {off_total.get('xfailed', 0)} xfailed; "
              f"{off_total.get('with_trainer', 0)} tests built at least one Trainer.", ""]

    for mode, lst in summary["only_with"].items():
        lines += [f"## Failing only with {mode} ({len(lst)})", ""]
        cats = summary["categories"][mode]
        lines += ["| category | count |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in cats.items()] + [""]
        by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for x in lst:
            by_cat[x["category"]].append(x)
        for cat in cats:
            lines += [f"### {cat} ({len(by_cat[cat])})", ""]
            for x in by_cat[cat]:
                where = f" [{x['our_frame']}]" if x["our_frame"] else ""
                extra = " (also fails with monitor)" if x.get("also_with_monitor") else ""
                extra += " (and again in teardown)" if x.get("also_fails_in_teardown") else ""
                lines.append(f"- `{x['id'].removeprefix(NODE_PREFIX)}` ({x['phase']}){extra}: {x['error']}{where}")
            lines.append("")
    lines += ["## Failing without injection (grouped by error, numbers and paths masked)", ""]
    groups: dict[str, list[str]] = defaultdict(list)
    for x in summary["failed_plain"]:
        groups[_mask(x["error"])].append(x["id"].removeprefix(NODE_PREFIX))
    for err, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(f"`{i}`" for i in ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        lines.append(f"- {len(ids)} x {err[:300]}: {shown}")
    lines.append("")
    fixed = summary["passed_with_injection_but_failed_plain"]
    if any(fixed.values()):
        lines += ["## Failed plain but not with injection (or missing)", ""]
        for k, ids in fixed.items():
            for n in ids:
                lines.append(f"- {k}: `{n.removeprefix(NODE_PREFIX)}`")
        lines.append("")
    return "\n".join(lines)


def _mask(error: str) -> str:
    error = re.sub(r"/\S+/", "<path>/", error)
    return re.sub(r"\d+(?:\.\d+)*", "N", error)


#: the replica set-up errors, by the message each raises (the table in docs/development.md)
SETUP_ERRORS: list[tuple[str, str]] = [
    ("no per-sample loss (bare-tensor batches, a module without forward)", r"SASReplicas needs the per-sample loss"),
    ("a training set of 2-4 samples", r"a training set of \d+ samples is too small"),
    ("no training dataset (dataloader_iter, bare iterators)", r"SASReplicas needs training data"),
]


def setup_error_counts(summary: dict, mode: str = "replicas") -> dict[str, int]:
    """How many of the failures only with ``mode`` carry each of :data:`SETUP_ERRORS`' messages
    (anywhere in the error, also when a test's own assertion quotes it); the rest is "other"."""
    counts = {label: 0 for label, _ in SETUP_ERRORS}
    counts["other"] = 0
    for failure in summary["only_with"].get(mode, []):
        error = failure.get("error") or ""
        label = next((label for label, pattern in SETUP_ERRORS if re.search(pattern, error)), "other")
        counts[label] += 1
    return counts


def cmd_setup_errors(args: argparse.Namespace) -> None:
    summary = json.loads((Path(args.results) / "summary.json").read_text())
    counts = setup_error_counts(summary, args.mode)
    print(f"| failing only with {args.mode}: set-up error | count |")
    print("|---|---:|")
    for label, count in counts.items():
        print(f"| {label} | {count} |")
    print(f"| all | {sum(counts.values())} |")


def cmd_compare(args: argparse.Namespace) -> None:
    work = Path(args.workdir).resolve()
    compare(work, Path(args.out) if args.out else work)


# ----------------------------------------------------------------------------------------------
# rerun


def read_ids(path: str) -> list[str]:
    ids = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):  # ids may contain spaces and '#'; whole-line comments only
            ids.append(line)
    return ids


def _target(nodeid: str) -> str:
    return nodeid.removeprefix(NODE_PREFIX).removeprefix("tests_pytorch/")


def cmd_rerun(args: argparse.Namespace) -> None:
    ids = read_ids(args.ids_file)
    if not ids:
        raise SystemExit(f"{args.ids_file}: no test ids")
    work = Path(args.workdir).resolve() / ("rerun-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    export_root = work / "src"
    export(args.repo, args.tag, export_root)
    (work / "ids.txt").write_text("".join(i + "\n" for i in ids))
    (work / "rerun-meta.json").write_text(json.dumps(
        {"ids_file": str(args.ids_file), "isolated": args.isolated, "modes": args.modes}, indent=2) + "\n")
    for mode in args.modes:
        if args.isolated:
            for i, nodeid in enumerate(ids):
                junit = work / mode / f"{i:04d}.xml"
                run_pytest(args.python, export_root, mode, [_target(nodeid)], junit, junit.with_suffix(".log"),
                           args.timeout, args.pytest_args)
        else:
            junit = work / mode / "all.xml"
            run_pytest(args.python, export_root, mode, [_target(n) for n in ids], junit, junit.with_suffix(".log"),
                       args.timeout, args.pytest_args)
    print(rerun_report(work))
    print(f"wrote {work / 'rerun.md'}")


def rerun_report(work: Path) -> str:
    """rerun.md/rerun.json of a rerun folder: per id the outcome in each mode, and for each
    injected mode whether the test fails with it and not without injection."""
    meta = json.loads((work / "rerun-meta.json").read_text())
    ids = read_ids(str(work / "ids.txt"))
    modes = meta["modes"]
    injected = [m for m in modes if m != "off"]
    results = {mode: read_junit(sorted((work / mode).glob("*.xml"))) for mode in modes}
    rows = []
    for nodeid in ids:
        outcomes = {m: (results[m][nodeid]["outcome"] if nodeid in results[m] else "not run") for m in modes}
        errors = {m: key_line(results[m][nodeid]) for m in modes
                  if nodeid in results[m] and results[m][nodeid]["outcome"] == "failed"}
        clean = outcomes.get("off") in ("passed", "skipped", "xfailed")
        only = [m for m in injected if clean and outcomes[m] == "failed"]
        rows.append({"id": nodeid, "outcomes": outcomes, "fails_only_with": only, "errors": errors})
    (work / "rerun.json").write_text(json.dumps({**meta, "tests": rows}, indent=2) + "\n")
    how = "one pytest per id" if meta["isolated"] else "one pytest per mode"
    md = [f"# Rerun of {len(ids)} test ids ({how})", "",
          "| test | " + " | ".join(modes) + " | fails only with |", "|---|" + "---|" * (len(modes) + 1)]
    for r in rows:
        md.append(f"| `{r['id'].removeprefix(NODE_PREFIX)}` | " + " | ".join(r["outcomes"][m] for m in modes)
                  + f" | {', '.join(r['fails_only_with']) or '-'} |")
    md.append("")
    for m in injected:
        n = sum(m in r["fails_only_with"] for r in rows)
        md.append(f"- {n} of {len(rows)} fail with {m} and pass (or skip) without injection.")
    md.append("")
    text = "\n".join(md)
    (work / "rerun.md").write_text(text)
    return text


def cmd_rerun_report(args: argparse.Namespace) -> None:
    print(rerun_report(Path(args.dir).resolve()))


def cmd_export(args: argparse.Namespace) -> None:
    print(export(args.repo, args.tag, Path(args.dest).resolve()))


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", default=DEFAULT_REPO, help="Lightning git dir (bare mirror) [%(default)s]")
        p.add_argument("--tag", default=DEFAULT_TAG, help="Lightning tag whose tests/ to run [%(default)s]")
        p.add_argument("--python", default=sys.executable, help="interpreter with lightning + lightning_sas [%(default)s]")
        p.add_argument("--timeout", type=int, default=180, help="per-test timeout, seconds [%(default)s]")
        p.add_argument("--modes", type=lambda s: [m for m in s.split(",") if m], default=list(MODES),
                       help="comma-separated subset of off,monitor,replicas [off,monitor,replicas]")
        p.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[],
                       help="extra pytest arguments (must come last)")

    p_run = sub.add_parser("run", help="export, run every mode, compare")
    p_run.add_argument("--workdir", required=True, help="where exports, junit files and logs go")
    p_run.add_argument("--folders", nargs="+", help="test folders, e.g. tests_pytorch/callbacks [the seven defaults]")
    p_run.add_argument("--out", help="where summary.md/json go [workdir]")
    p_run.add_argument("--resume", action="store_true", help="keep existing junit files (finish an interrupted run)")
    common(p_run)
    p_run.set_defaults(func=cmd_run)

    p_cmp = sub.add_parser("compare", help="summarise the junit files of a workdir")
    p_cmp.add_argument("--workdir", required=True)
    p_cmp.add_argument("--out", help="where summary.md/json go [workdir]")
    p_cmp.set_defaults(func=cmd_compare)

    p_se = sub.add_parser("setup-errors", help="count the replica-only failures by set-up error (from summary.json)")
    p_se.add_argument("--results", required=True, help="a results/<tag>_<commit> folder")
    p_se.add_argument("--mode", default="replicas")
    p_se.set_defaults(func=cmd_setup_errors)

    p_re = sub.add_parser("rerun", help="rerun test ids in each mode")
    p_re.add_argument("--workdir", required=True, help="a rerun-<time> folder is made in it")
    p_re.add_argument("--ids-file", required=True, help="one node id per line (as in only_<mode>.txt)")
    p_re.add_argument("--isolated", action="store_true", help="one pytest process per id")
    common(p_re)
    p_re.set_defaults(func=cmd_rerun)

    p_rr = sub.add_parser("rerun-report", help="rewrite rerun.md/json of a rerun folder from its junit files")
    p_rr.add_argument("--dir", required=True, help="a rerun-<time> folder")
    p_rr.set_defaults(func=cmd_rerun_report)

    p_ex = sub.add_parser("export", help="only export tests/ (and pyproject.toml) of a tag")
    p_ex.add_argument("--dest", required=True)
    p_ex.add_argument("--repo", default=DEFAULT_REPO)
    p_ex.add_argument("--tag", default=DEFAULT_TAG)
    p_ex.set_defaults(func=cmd_export)

    args = parser.parse_args(argv)
    for m in getattr(args, "modes", []):
        if m not in MODES:
            parser.error(f"unknown mode {m!r}")
    args.func(args)


if __name__ == "__main__":
    main()
