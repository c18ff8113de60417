"""The documentation keeps up with the code: every option and tag is documented, and the README
stays a landing page that still holds the two setup commands. Reads files only."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from lightning_sas import LossStream, ProbeLosses, SASMonitor, SASReplicas, WeightSnapshots
from lightning_sas.loggers.tags import MARGIN_CHARTS, SCALAR_TAGS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

#: the two commands the README must keep exactly as they are
MAIN_EXAMPLE_COMMAND = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[dev]" '
    "&& python examples/mnist1d_monitor.py"
)
TEST_COMMAND = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[dev]" '
    "&& python -m pytest -q"
)
README_LIMIT_BYTES = 10 * 1024

CALLBACKS = (SASMonitor, SASReplicas, LossStream, ProbeLosses, WeightSnapshots)


def _parameters(cls: type) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda cls: cls.__name__)
def test_every_constructor_argument_is_in_the_options_page(cls: type) -> None:
    page = (DOCS / "options.md").read_text(encoding="utf-8")
    missing = [name for name in _parameters(cls) if f"`{name}`" not in page]
    assert not missing, f"docs/options.md does not document {cls.__name__} arguments {missing}"


def test_options_page_has_a_section_per_callback() -> None:
    page = (DOCS / "options.md").read_text(encoding="utf-8")
    for cls in CALLBACKS:
        assert f"\n## {cls.__name__}\n" in page, f"docs/options.md has no '## {cls.__name__}' section"


def test_every_scalar_tag_is_in_the_tags_page() -> None:
    page = (DOCS / "tags.md").read_text(encoding="utf-8")
    missing = [tag for _group, tag in SCALAR_TAGS.values() if f"`{tag}`" not in page]
    missing += [key for key in SCALAR_TAGS if f"`{key}`" not in page]
    assert not missing, f"docs/tags.md does not document {missing}"


def test_margin_tags_are_in_the_tags_page() -> None:
    page = (DOCS / "tags.md").read_text(encoding="utf-8")
    missing = []
    for _group, _title, key, _se in MARGIN_CHARTS:
        tag = SCALAR_TAGS[key][1]
        missing += [t for t in (f"{tag}_lower", f"{tag}_upper") if f"`{t}`" not in page]
    assert not missing, f"docs/tags.md does not document the margin tags {missing}"


def test_readme_is_a_short_landing_page_with_the_setup_commands() -> None:
    size = README.stat().st_size
    assert size < README_LIMIT_BYTES, f"README.md is {size} bytes; keep it under {README_LIMIT_BYTES} (move reference to docs/)"
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert MAIN_EXAMPLE_COMMAND in lines, "README.md lost the 'Set up and run the main example' command"
    assert TEST_COMMAND in lines, "README.md lost the 'Set up and run the tests' command"


def test_readme_links_point_at_existing_files() -> None:
    import re

    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "README.md links nowhere into the docs"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files {missing}"


def test_every_docs_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    missing = [page for page in pages if f": {page}\n" not in config]
    assert not missing, f"mkdocs.yml nav lacks {missing}"
