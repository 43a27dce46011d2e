"""The README holds together: its links and pictures exist, its table of contents names every section, and its
architecture diagram renders with Mermaid in Chromium, as GitHub renders it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import README_PICTURES
from tests.e2e.standalone.test_airflow_ui import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
IMAGES = ROOT / "docs" / "images"
MERMAID = ROOT / ".tools" / "mermaid" / "mermaid.min.js"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose() -> str:
    """The README without its fenced blocks (a ``#`` or a link inside a code block is not markdown)."""
    return re.sub(r"^```.*?^```", "", README.read_text(), flags=re.M | re.S)


def headings(level: str) -> list[str]:
    return re.findall(rf"^{level} (.+)$", prose(), flags=re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def mermaid_blocks() -> list[str]:
    return re.findall(r"^```mermaid\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_every_relative_link_and_picture_of_the_readme_exists() -> None:
    targets = [t.split("#")[0] for t in LINK.findall(prose()) if not t.startswith(("http", "#", "mailto:"))]
    assert targets, "the README links no file"
    assert [t for t in targets if not (ROOT / t).exists()] == []


def test_every_in_page_link_lands_on_a_heading() -> None:
    anchors = {anchor(h) for h in headings("#{2,4}")}
    links = [t[1:] for t in LINK.findall(prose()) if t.startswith("#")]
    assert links, "the README has no table of contents"
    assert [link for link in links if link not in anchors] == []


def test_the_table_of_contents_lists_every_section_in_order() -> None:
    contents = re.search(r"^## Contents\n(.*?)^## ", prose(), flags=re.M | re.S)
    assert contents, "the README has no '## Contents' section"
    listed = re.findall(r"^- \[[^\]]+\]\(#([^)]+)\)", contents.group(1), flags=re.M)
    assert listed == [anchor(h) for h in headings("##") if h != "Contents"]


def test_the_readme_shows_every_picture_the_tests_take_and_no_other() -> None:
    shown = {Path(t).name for t in LINK.findall(prose()) if t.startswith("docs/images/")}
    committed = {p.name for p in IMAGES.glob("*.png")}
    assert shown == committed == {f"{name}.png" for names in README_PICTURES.values() for name in names}
    for name in committed:
        picture = (IMAGES / name).read_bytes()
        assert picture.startswith(PNG_SIGNATURE) and len(picture) > 20_000, f"{name} is not a real screenshot"


def test_the_readme_opens_with_the_two_commands_and_the_architecture_picture() -> None:
    top = README.read_text().split("\n## ", 1)[0]
    assert "make demo" in top and "make test" in top
    assert "```mermaid" in top and "docs/images/" in top
    assert len(mermaid_blocks()) == 1


@pytest.mark.long
@pytest.mark.browser
def test_the_architecture_diagram_renders_with_mermaid_in_chromium() -> None:
    """Mermaid's own parser and renderer (its browser bundle, ``make mermaid``) in a real Chromium: a syntax error
    or a node lost in the rendering fails here, not on GitHub's page."""
    from playwright.sync_api import sync_playwright

    assert MERMAID.exists(), f"{MERMAID} is missing: `make mermaid` (make test-scheduler runs it) fetches it"
    (diagram,) = mermaid_blocks()
    labels = re.findall(r'\["([^"<]+)', diagram)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_content("<html><body></body></html>")
        page.add_script_tag(path=str(MERMAID))
        svg = page.evaluate(
            """async diagram => {
                mermaid.initialize({startOnLoad: false});
                await mermaid.parse(diagram);
                return (await mermaid.render("architecture", diagram)).svg;
            }""",
            diagram,
        )
        browser.close()
    assert svg.startswith("<svg") and "Syntax error" not in svg
    assert labels and [label for label in labels if label.strip() not in svg] == []


def tables() -> list[tuple[int, list[str]]]:
    """Each run of table rows in the README's prose, with the number of its first line."""
    found: list[tuple[int, list[str]]] = []
    fenced = False
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("|"):
            if found and found[-1][0] + len(found[-1][1]) == number:
                found[-1][1].append(line)
            else:
                found.append((number, [line]))
    return found


def cells(row: str) -> int:
    """How many cells GitHub reads in a table row: the pipes between them, an escaped one (``\\|``) not counted."""
    return len(re.findall(r"(?<!\\)\|", row.strip().strip("|"))) + 1


def test_every_table_of_the_readme_is_whole() -> None:
    """A table is a header, its delimiter row and rows of as many cells, after a blank line: a paragraph between
    two of its rows makes GitHub render the rows after it as text (as the DAG parse time table once was)."""
    assert tables(), "the README has no table"
    lines = README.read_text().splitlines()
    broken = []
    for first, rows in tables():
        width = cells(rows[0])
        if len(rows) < 2 or not re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", rows[1].strip()):
            broken.append(f"line {first}: no delimiter row under its header")
        elif cells(rows[1]) != width or any(cells(row) != width for row in rows[2:]):
            broken.append(f"line {first}: rows of other widths than its header's {width} cells")
        elif first > 1 and lines[first - 2].strip():
            broken.append(f"line {first}: no blank line before it")
    assert broken == []
