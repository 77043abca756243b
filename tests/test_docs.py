"""The docs' trap pages cite golden cases that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conformance import catalogue

TRAPS = sorted((Path(__file__).resolve().parent.parent / "docs" / "traps").glob("*.md"))
_CITED = re.compile(r"^- `([^`]+)`", re.MULTILINE)


@pytest.mark.parametrize("page", [p for p in TRAPS if p.name != "index.md"], ids=lambda p: p.stem)
def test_each_trap_is_pinned_by_golden_cases_that_exist(page):
    section = page.read_text().partition("## Pinned by")[2]
    cited = _CITED.findall(section)
    assert cited, f"{page.name} cites no golden case under '## Pinned by'"
    unknown = sorted(set(cited) - {case["id"] for case in catalogue.cases()})
    assert not unknown, f"{page.name} cites case ids the catalogue does not have: {unknown}"
