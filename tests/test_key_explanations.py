"""One text per summary key: ``lightning_sas.keys`` explains every key the monitor reports, the
HTML report shows those texts, and every docs table that explains a key quotes its text."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from conftest import TinyClassifier, loaders, trainer_kwargs
from lightning_sas import SASMonitor, SASReplicas
from lightning_sas.diagnostics import LOSS_KEYS, PROBE_KEYS, WEIGHT_KEYS
from lightning_sas.html_report import html_page
from lightning_sas.keys import KEY_EXPLANATIONS, KEY_PATTERN_EXPLANATIONS, explanation, explanation_html
from lightning_sas.loggers.tags import SCALAR_TAGS, is_flag
from lightning_sas.replicas.summary import SAS_KEYS

DOCS = Path(__file__).resolve().parents[1] / "docs"

#: the column headings of a table that explains keys: (key column, text column)
KEY_HEADINGS = ("summary key", "key")
TEXT_HEADINGS = ("meaning", "definition")

#: the marker that the tags page puts before the text of a flag
FLAG_MARK = "*(flag)* "

#: every documented name (the numbered compare keys by their pattern's name) -> its text
DOCUMENTED = {**KEY_EXPLANATIONS, **{name: text for _pattern, name, text in KEY_PATTERN_EXPLANATIONS}}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _normalise(text: str) -> str:
    """A table cell or a source text compared as plain words: ``\\|`` is ``|``, whitespace runs are
    one space."""
    return " ".join(text.replace("\\|", "|").split())


def key_table_rows(page: Path) -> list[tuple[int, str, str]]:
    """(line number, key cell, text cell) of every row of every table of ``page`` whose heading
    has a key column and a meaning (or definition) column."""
    rows: list[tuple[int, str, str]] = []
    heading: list[str] | None = None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("|"):
            heading = None
            continue
        cells = _cells(line)
        if heading is None:
            heading = [c.lower() for c in cells]
            continue
        if all(set(c) <= {"-", ":"} for c in cells):
            continue
        key_col = next((heading.index(h) for h in KEY_HEADINGS if h in heading), None)
        text_col = next((heading.index(h) for h in TEXT_HEADINGS if h in heading), None)
        if key_col is not None and text_col is not None:
            rows.append((number, cells[key_col], cells[text_col]))
    return rows


def _all_rows() -> list[tuple[str, int, str, str]]:
    return [(page.name, n, key, text) for page in sorted(DOCS.glob("*.md")) for n, key, text in key_table_rows(page)]


def drift(rows: list[tuple[str, int, str, str]]) -> list[str]:
    """Every row whose text is not its key's source text, or whose key has none."""
    problems = []
    for page, number, key_cell, text in rows:
        match = re.fullmatch(r"`([^`]+)`", key_cell)
        if match is None:
            problems.append(f"{page}:{number}: the key cell {key_cell!r} is not one `key`")
            continue
        key = match.group(1)
        if key not in DOCUMENTED:
            problems.append(f"{page}:{number}: `{key}` has no text in lightning_sas/keys.py")
            continue
        flagged = text.startswith(FLAG_MARK)
        if page == "tags.md" and flagged != is_flag(key):
            problems.append(f"{page}:{number}: `{key}` is {'' if is_flag(key) else 'not '}a flag, the row says otherwise")
        words = _normalise(text.removeprefix(FLAG_MARK))
        if words != _normalise(DOCUMENTED[key]):
            problems.append(f"{page}:{number}: `{key}` says\n    {words}\n  lightning_sas/keys.py says\n    "
                            f"{_normalise(DOCUMENTED[key])}")
    return problems


def test_docs_tables_quote_the_source_text() -> None:
    rows = _all_rows()
    assert len(rows) > 60, "the key tables of the docs were not found"
    problems = drift(rows)
    assert not problems, "docs tables differ from lightning_sas/keys.py:\n" + "\n".join(problems)


def test_a_changed_text_is_found() -> None:
    """The comparison sees a changed word, and a row of a key without a text."""
    rows = [row for row in _all_rows() if row[2] == "`sas_mean_se`"]
    assert rows
    page, number, key, text = rows[0]
    assert not drift([(page, number, key, text)])
    assert drift([(page, number, key, text.replace("crossed", "pooled"))])
    assert drift([(page, number, "`no_such_key`", text)])


def test_every_explained_key_is_in_a_docs_table() -> None:
    documented = {cell.strip("`") for _page, _n, cell, _text in _all_rows()}
    missing = sorted(set(DOCUMENTED) - documented)
    assert not missing, f"keys with a text in lightning_sas/keys.py but in no docs table: {missing}"


def test_every_listed_key_has_a_text() -> None:
    keys = set(LOSS_KEYS + WEIGHT_KEYS + PROBE_KEYS + SAS_KEYS) | set(SCALAR_TAGS)
    missing = sorted(key for key in keys if explanation(key) is None)
    assert not missing, f"summary keys without a text in lightning_sas/keys.py: {missing}"


def test_every_key_of_a_real_run_with_replicas_has_a_text(tmp_path: Any) -> None:
    train, val = loaders()
    replicas = SASReplicas(replicas=2, swaps=2, fork_at="start", probe_every=5, num_train_probes=8, num_heldout_probes=8)
    monitor = SASMonitor(flush_every=20, store=False, figure_every=0, replicas=replicas, num_train_probes=8,
                         num_test_probes=8, probe_every=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=60, limit_val_batches=1.0))
        trainer.fit(TinyClassifier(), train, val)
    summary = monitor.summary()
    assert summary["sas_max"] is not None and summary["sas_mean_critical_t"] is not None
    for name in ("sas_max", "stability_gap", "control_heldout_gap", "ergodic_gap"):  # a real run reports intervals
        assert summary[f"{name}_lower"] < summary[f"{name}_upper"], name
    missing = sorted(key for key in summary if explanation(key) is None)
    assert not missing, f"summary() keys without a text in lightning_sas/keys.py: {missing}"


@pytest.mark.parametrize("key", ["sas_mean_se", "run3_test_loss"])
def test_html_report_shows_the_source_text(key: str) -> None:
    page = html_page("t", {key: 0.5}, {})
    assert explanation_html(key) and explanation_html(key) in page
    if "`" in (explanation(key) or ""):
        assert "<code>" in explanation_html(key)


def test_compare_key_patterns() -> None:
    assert explanation("run12") == DOCUMENTED["run<r>"]
    assert explanation("run0_test_loss") == DOCUMENTED["run<r>_test_loss"]
    assert explanation("runs") == KEY_EXPLANATIONS["runs"]
    assert explanation("run_x") is None
