"""Strings from files shown safely: in logs and the console, in CSV cells, in plots and in error messages.

A file name, a class name from a checkpoint or a folder, a config value: any of them can hold a
newline, a carriage return, an ANSI escape sequence or a Unicode bidi override that would forge a
log line or hide text on a terminal, or start with ``=`` so that a spreadsheet runs it as a formula.

* :func:`printable` escapes control characters repr-style (``\\n``, ``\\x1b``, ``\\u202e``) for
  logs and the console; every log record also passes through :func:`printable` with newlines kept
  (``utils.logger``), so no raw escape sequence reaches a log or a terminal.
* :func:`spreadsheet_cell` applies the OWASP rule to a CSV cell that comes from a file.
* :func:`shorten` cuts a long value quoted in an error message; :func:`quoted` is its ``repr``.
* :func:`check_class_names`: class names are a list of strings, one per class.
"""
from __future__ import annotations

import re
from typing import Any

# C0 and C1 controls (ESC, CR, NUL, ...), DEL, the Unicode line / paragraph separators and the bidi
# marks, embeddings, overrides and isolates (the "Trojan Source" characters).
_OTHER_UNSAFE = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_RE = re.compile(f"[\x00-\x1f{_OTHER_UNSAFE}]")
_UNSAFE_KEEP_NL_RE = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHER_UNSAFE}]")  # tab and newline kept

MAX_QUOTED = 300  # characters of one value quoted in an error message
MAX_MESSAGE = 4000  # characters of a whole error message


def _escape(match: re.Match[str]) -> str:
    return match.group(0).encode("unicode_escape").decode("ascii")


def printable(text: Any, keep_newlines: bool = False) -> str:
    """``str(text)`` with control characters, line separators and bidi controls escaped as
    ``repr`` writes them (``\\n``, ``\\r``, ``\\x1b``, ``\\u202e``); other text (accents, CJK,
    emoji) unchanged. ``keep_newlines``: leave ``\\n`` and ``\\t`` (a multi-line log message)."""
    text = str(text)
    return (_UNSAFE_KEEP_NL_RE if keep_newlines else _UNSAFE_RE).sub(_escape, text)


def shorten(text: Any, limit: int = MAX_QUOTED) -> str:
    """``str(text)``, its middle replaced by ``...(N characters cut)...`` when longer than ``limit``."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 20)
    head, tail = text[: keep * 2 // 3], text[len(text) - keep // 3:]
    return f"{head}...({len(text) - len(head) - len(tail)} characters cut)...{tail}"


def quoted(value: Any, limit: int = MAX_QUOTED) -> str:
    """``repr(value)`` for an error message, shortened to about ``limit`` characters."""
    try:
        text = repr(value)
    except RecursionError:  # a self-referencing structure
        text = f"<recursive {type(value).__name__}>"
    return shorten(text, limit)


# A cell a spreadsheet would evaluate (OWASP "CSV injection"): = + - @ at the start, or a tab / CR
# (some spreadsheets drop them and evaluate what follows).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str | None) -> str:
    """A CSV cell for a string taken from a file (a path, a class name): prefixed with a single
    quote when a spreadsheet would read it as a formula; the csv module then quotes it properly.
    Numbers the code writes itself are not passed through this."""
    text = "" if text is None else str(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


class ClassNamesError(ValueError):
    """``class_names`` is not a list of strings, one per class (the caller names the file)."""


def check_class_names(names: Any, cls_dim: int | None = None) -> list[str]:
    """``names`` as a list of strings: a list or tuple of strings (non-empty, no two equal), of
    length ``cls_dim`` when it is an int (a bad ``cls_dim`` is the config check's). Anything else
    (a string, a number, a list of numbers) is a :class:`ClassNamesError` saying what was found;
    callers add the file and key."""
    if not isinstance(names, (list, tuple)):
        raise ClassNamesError(f"expected a list of strings (one per class), got {type(names).__name__} "
                              f"{quoted(names, 80)}")
    bad = [i for i, n in enumerate(names) if not isinstance(n, str) or not n]
    if bad:
        i = bad[0]
        raise ClassNamesError(f"expected a list of non-empty strings, but entry {i} is {type(names[i]).__name__} "
                              f"{quoted(names[i], 80)}")
    seen = set()
    for n in names:
        if n in seen:
            raise ClassNamesError(f"class name {quoted(n, 80)} appears twice")
        seen.add(n)
    if isinstance(cls_dim, int) and not isinstance(cls_dim, bool) and len(names) != cls_dim:
        raise ClassNamesError(f"{len(names)} class names but model.cls_dim = {cls_dim}")
    return list(names)


__all__ = [
    "MAX_MESSAGE",
    "MAX_QUOTED",
    "ClassNamesError",
    "check_class_names",
    "printable",
    "quoted",
    "shorten",
    "spreadsheet_cell",
]
