"""The project docs that code, configs and the README cite: every cited file and section exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".cfg"}
NAMES = {"Makefile", "Dockerfile"}
SKIP = {"artifacts", "exports", "node_modules", "results"}  # outputs, not sources
# `docs/x.md` followed by §-sections ("§2.3, §3", "§2.2 and §3.1") or quoted headings ("Speed" and "GPU").
CITATION = re.compile(
    r"docs/([\w-]+\.md)"
    r"((?:(?:,| and|;)? ?§\d+(?:\.\d+)*)*)"
    r"((?:(?:,| and)? ?\"[^\"\n]+\")*)"
)
HEADING = re.compile(r"^#+ +(?:(\d+(?:\.\d+)*)\.? +)?(.+?) *$", re.MULTILINE)
OLD_NAME = re.compile(r"(?<![\w/])(?:ALGORITHMS|DESIGN|BENCHMARKS)\.md")


def _sources() -> list[Path]:
    """Every text source of the repository, outside hidden folders and generated outputs."""
    found = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIP for p in parts[:-1]) or path == Path(__file__).resolve():
            continue
        if path.is_file() and (path.suffix in SUFFIXES or path.name in NAMES):
            found.append(path)
    return found


def _citations() -> list[tuple[str, str, str, str]]:
    """(citing file, cited docs file, its §-sections text, its quoted headings text) per citation."""
    out = []
    for path in _sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in CITATION.finditer(text):
            out.append((str(path.relative_to(ROOT)), *match.groups()))
    return out


def _headings(doc: str) -> tuple[set[str], set[str]]:
    """The section numbers and the heading titles of docs/<doc>."""
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    matches = HEADING.findall(text)
    return {number for number, _ in matches if number}, {title for _, title in matches}


def test_docs_citation_pattern_reads_sections_and_headings():
    found = [
        m.groups() for m in CITATION.finditer('see docs/algorithms.md §2.2 and §3.1, docs/x.md "A" and "B"')
    ]
    assert found == [("algorithms.md", " §2.2 and §3.1", ""), ("x.md", "", ' "A" and "B"')]


def test_docs_are_cited_and_every_cited_file_exists():
    citations = _citations()
    cited = {doc for _, doc, _, _ in citations}
    assert {"algorithms.md", "design.md", "benchmarks.md"} <= cited
    missing = sorted(
        {(source, doc) for source, doc, _, _ in citations if not (ROOT / "docs" / doc).is_file()}
    )
    assert not missing, f"cited docs that do not exist: {missing}"


def test_docs_every_cited_section_and_heading_exists():
    problems = []
    for source, doc, sections, quoted in _citations():
        if not (ROOT / "docs" / doc).is_file():
            continue  # reported by the test above
        numbers, titles = _headings(doc)
        for number in re.findall(r"§(\d+(?:\.\d+)*)", sections):
            if number not in numbers:
                problems.append(f"{source}: docs/{doc} has no §{number}")
        for title in re.findall(r"\"([^\"]+)\"", quoted):
            if title not in titles:
                problems.append(f'{source}: docs/{doc} has no heading "{title}"')
    assert not problems, "\n".join(problems)


def test_docs_old_brief_names_are_not_cited():
    stale = [
        f"{path.relative_to(ROOT)}: {match}"
        for path in _sources()
        for match in OLD_NAME.findall(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not stale, f"cite docs/algorithms.md, docs/design.md or docs/benchmarks.md instead: {stale}"


@pytest.mark.parametrize("doc", ["algorithms.md", "design.md", "benchmarks.md"])
def test_docs_relative_links_resolve(doc):
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#:]+\.md)\)", text)
    assert targets
    assert [t for t in targets if not (ROOT / "docs" / t).is_file()] == []


def test_docs_algorithms_keeps_the_brief_numbering_and_points_purify_to_its_doc():
    numbers, titles = _headings("algorithms.md")
    assert {"1", "2", "2.1", "2.2", "2.3", "3", "3.1", "3.2", "4", "5", "6", "7", "8", "9"} <= numbers
    assert "Purification" in titles
    text = (ROOT / "docs" / "algorithms.md").read_text(encoding="utf-8")
    section = text.split("### Purification", 1)[1].split("\n#", 1)[0]
    assert "purification.md" in section
