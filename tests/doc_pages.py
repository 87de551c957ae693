"""The documentation as the tests read it: README.md (the front door) and the pages of docs/."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USAGE_PAGE = REPO / "docs" / "usage.md"


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/, sorted."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documentation() -> str:
    """The text of every page, one after the other: where a fact is stated need not matter."""
    return "\n".join(page.read_text(encoding="utf-8") for page in pages())


def without_code(text: str) -> str:
    """``text`` with fenced code blocks blanked (their lines kept, so line numbers stay)."""
    out, fenced = [], False
    for line in text.splitlines():
        if re.match(r"^\s*(```|~~~)", line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: Markdown code / emphasis marks and punctuation other than
    hyphens and underscores removed, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (duplicates numbered as GitHub numbers them)."""
    seen: dict[str, int] = {}
    found = set()
    for match in re.finditer(r"^#{1,6} +(.+?) *#*$", without_code(text), flags=re.MULTILINE):
        slug = github_slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def relative_links(text: str) -> list[str]:
    """Targets of the Markdown links and images of a page that are not URLs (code excluded)."""
    prose = re.sub(r"`[^`\n]*`", "", without_code(text))
    targets = re.findall(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]
