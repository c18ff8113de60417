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
    "&& python -m pytest -q -n auto"
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


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """Every ``python <script>.py [--flags]`` command named in the README and the docs, as
    (page, script, flags)."""
    import re

    pages = [README] + sorted(DOCS.rglob("*.md"))
    found = []
    for page in pages:
        for line in page.read_text(encoding="utf-8").splitlines():
            for match in re.finditer(r"python3? ((?:examples|benchmarks|tools)/[\w/]+\.py)([^`|#]*)", line):
                flags = re.findall(r"(?<![\w-])(--[a-z][\w-]*)", match.group(2))
                found.append((page.relative_to(ROOT).as_posix(), match.group(1), flags))
    return found


def test_every_named_command_exists_with_its_flags() -> None:
    """A figure's command named in the README or the docs runs a script that exists and accepts
    every flag the page gives it (its argparse declares the flag)."""
    commands = _documented_commands()
    assert len(commands) >= 10, "the README and docs name fewer commands than expected: is the pattern broken?"
    problems = []
    for page, script, flags in commands:
        path = ROOT / script
        if not path.is_file():
            problems.append(f"{page}: {script} does not exist")
            continue
        source = path.read_text(encoding="utf-8")
        # a LightningCLI script takes its options from the CLI (--config, --trainer.*, ...)
        flags = [f for f in flags if not ("LightningCLI" in source and (f == "--config" or "." in f))]
        problems += [f"{page}: {script} has no option {flag}" for flag in flags if f'"{flag}"' not in source]
    assert not problems, "\n".join(problems)


def test_lightning_sas_subcommands_named_in_the_docs_exist() -> None:
    import argparse
    import re

    from lightning_sas.cli import _build_parser

    parser = _build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    named = set()
    for page in [README] + sorted(DOCS.rglob("*.md")):
        named |= set(re.findall(r"`lightning-sas ([a-z]+)\b", page.read_text(encoding="utf-8")))
    assert named, "the docs name no lightning-sas subcommand: is the pattern broken?"
    unknown = sorted(named - set(subcommands))
    assert not unknown, f"the docs name lightning-sas subcommands that do not exist: {unknown}"


def test_nothing_cites_a_file_outside_the_repository() -> None:
    """The code, docs, benchmarks and changelog explain themselves: no reference to a design note
    that is not in the repository."""
    roots = [ROOT / "lightning_sas", DOCS, ROOT / "benchmarks", ROOT / "examples", ROOT / "tests"]
    files = [p for r in roots for p in r.rglob("*") if p.suffix in {".py", ".md"}] + [ROOT / "CHANGELOG.md", README]
    design = "DESIGN"  # spelled apart so that this test does not cite it itself
    markers = (design + ".md", design + " section", design + " 9", design + " 4")
    citing = sorted(p.relative_to(ROOT).as_posix() for p in files
                    if any(m in p.read_text(encoding="utf-8") for m in markers))
    assert not citing, f"these files cite a design note that is not in the repository: {citing}"
