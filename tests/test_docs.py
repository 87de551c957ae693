"""The documentation holds together: every relative link of README.md and docs/*.md reaches an
existing file (and, for ``#anchor``, a heading of that page by GitHub's anchor rule), README.md
stays a front door under 300 lines, each page of docs/ under 450, and the README keeps the two
quick-start commands and the citation."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from doc_pages import REPO, anchors, github_slug, pages, relative_links

README_MAX_LINES = 300
PAGE_MAX_LINES = 450


def test_github_slug_follows_githubs_rule():
    assert github_slug("Safe loading") == "safe-loading"
    assert github_slug("Fine-tune (ScanObjectNN, ModelNet40)") == "fine-tune-scanobjectnn-modelnet40"
    assert github_slug("One-line faults: data, configs, loader workers, full disks") == \
        "one-line-faults-data-configs-loader-workers-full-disks"
    assert github_slug("Flags every `main.py` job takes") == "flags-every-mainpy-job-takes"
    assert github_slug("Visualise: reconstructions, t-SNE, training curves") == \
        "visualise-reconstructions-t-sne-training-curves"
    assert github_slug("The `bn_recalibration` rule") == "the-bn_recalibration-rule"


def test_anchors_skip_code_blocks_and_number_duplicates():
    text = "# A\n\n```bash\n#!/bin/bash\n# not a heading\n```\n\n## B c\n\n## B c\n"
    assert anchors(text) == {"a", "b-c", "b-c-1"}


def test_relative_links_skip_urls_and_code():
    text = ("[a](docs/x.md#y) ![i](docs/p.png) [u](https://example.org) `[c](not/a/link.md)`\n"
            "```\n[d](in/code.md)\n```\n[e](#here)\n")
    assert relative_links(text) == ["docs/x.md#y", "docs/p.png", "#here"]


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_reaches_a_file_and_a_heading(page: Path):
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(REPO)}")
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < README_MAX_LINES
    assert "make demo" in text and "make test" in text
    assert "## Citation" in text and "@article{liu2023inter" in text
    linked = {t.partition("#")[0] for t in relative_links(text)}
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_each_docs_page_is_short_and_links_back(page: Path):
    text = page.read_text(encoding="utf-8")
    assert len(text.splitlines()) < PAGE_MAX_LINES, f"{page.name}: {len(text.splitlines())} lines"
    assert "../README.md" in {t.partition("#")[0] for t in relative_links(text)}, \
        f"{page.name} does not link back to the README"


def test_pages_named_in_code_configs_and_tests_exist():
    """Error messages, config comments and docstrings that send a reader to ``docs/<page>.md``
    name a page that exists."""
    named = {}
    for folder in ("cfgs", "datasets", "engine", "extensions", "models", "segmentation", "tools", "utils", "tests",
                   "demo", "bench"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".yml") and path.is_file() and path.name != "test_docs.py":
                for page in re.findall(r"docs/([\w.-]+\.md)", path.read_text(encoding="utf-8")):
                    named.setdefault(page, path.relative_to(REPO).as_posix())
    for path in (REPO / "requirements.txt", REPO / "Makefile", REPO / "main.py", REPO / "main_vis.py"):
        for page in re.findall(r"docs/([\w.-]+\.md)", path.read_text(encoding="utf-8")):
            named.setdefault(page, path.name)
    assert "own-data.md" in named and "data.md" in named
    missing = {page: where for page, where in named.items() if not (REPO / "docs" / page).is_file()}
    assert not missing, missing


def test_settings_table_of_the_docs_is_the_one_the_code_derives():
    """docs/ARCHITECTURE.md's "where each setting comes from" table, between its markers, is the
    table made from utils/settings_table.py's SETTINGS (regenerate it with
    ``python -c "from utils.settings_table import markdown_table; print(markdown_table())"``)."""
    from utils.settings_table import markdown_table

    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    found = re.search(r"<!-- settings-table:[^>]*-->\n(.*?)<!-- /settings-table -->", text, re.S)
    assert found, "docs/ARCHITECTURE.md lost its settings-table markers"
    assert found.group(1) == markdown_table(), "docs/ARCHITECTURE.md's settings table differs from utils/settings_table.py"
