"""The verdict on one reader call: a file loads (and what it returns is what the reader promises),
or is refused with the project's one-line error (an InputError whose message, as ``run_main``
prints it, names the file, is one line apart from the static layout text some dataset errors
append -- and the indented table of a checkpoint that does not fit the model -- and is at most
``utils.text.MAX_MESSAGE`` characters).
Anything else -- another exception, a MemoryError past the worker's cap, a hang, a dead worker,
a valid file refused -- is a finding."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, Optional, Tuple

from .isolate import Isolated, Outcome
from .targets import Target

MAX_MESSAGE = 4000  # characters of an error line (utils.text.MAX_MESSAGE): long values are shortened


def _as_printed(message: str) -> str:
    """The message as ``utils.cli.run_main`` prints it: shortened, control characters escaped
    (newlines kept: a message must not need them)."""
    try:
        from utils.text import printable
    except ImportError:  # a checkout before utils.text: the message as raised
        return message
    return printable(message, keep_newlines=True)


class Finding(str):
    """What is wrong with an outcome (the text), and its ``rule``: wrong-value, hang, crash,
    exception, refused-valid, multi-line, too-long, no-file-name."""

    rule: str

    def __new__(cls, rule: str, text: str) -> "Finding":
        self = super().__new__(cls, text)
        self.rule = rule
        return self


def problem_of(target: Target, path: str, mutations: int, out: Outcome) -> Optional[Finding]:
    """None when ``out`` is an acceptable outcome of reading ``path``; else what is wrong."""
    if out.kind == "ok":
        return Finding("wrong-value", f"loaded but returned a wrong value: {out.problem}") if out.problem else None
    if out.kind in ("hang", "crash"):
        return Finding(out.kind, f"{out.kind}: {out.message}")
    if out.kind == "exception":
        return Finding("exception", f"raised {out.error_type} (not the project's InputError) at {out.where}: "
                                    f"{out.message[:300]}\n{out.traceback}")
    if mutations == 0:
        return Finding("refused-valid", f"refused a valid file: {out.error_type}: {out.message[:300]}")
    shown = _as_printed(out.message)
    first, *rest = shown.split("\n")
    extra = [line for line in rest if line.strip() and line not in target.layout
             and not (target.report_lines and line.startswith("  "))]
    if extra:
        return Finding("multi-line", f"{out.error_type} message is not one line (beyond the layout text): "
                                     f"{shown[:400]!r}")
    if len(first) > MAX_MESSAGE:
        return Finding("too-long", f"{out.error_type} message is {len(first)} characters long: {first[:200]!r}...")
    # the file, or the same file under another extension (a pickle whose .npz twin is no regular file)
    sibling = os.path.join(os.path.basename(os.path.dirname(path)), os.path.splitext(os.path.basename(path))[0]) + "."
    folder = target.folder and os.path.dirname(path) in first  # (a model folder: named as a whole)
    if path not in first and os.path.basename(path) not in first and sibling not in first and not folder:
        return Finding("no-file-name", f"{out.error_type} message does not name the file {path}: {first[:300]!r}")
    return None


def signature(target: Target, finding: Finding, out: Outcome) -> Tuple[str, str, str, str]:
    """What makes two findings one crash class: the target, the rule broken, the exception type and
    where in the repository it was raised."""
    return target.name, finding.rule, out.error_type, out.where


def write_case(folder: str, files: Dict[str, Optional[bytes]]) -> str:
    """Write a case's files under ``folder`` (``None``: a FIFO); returns the path of the first."""
    paths = []
    for rel, data in files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if data is None:
            os.mkfifo(path)
        else:
            with open(path, "wb") as f:
                f.write(data)
        paths.append(path)
    return paths[0]


def run_case(worker: Isolated, target: Target, files: Dict[str, Optional[bytes]], mutations: int,
             base: Optional[str] = None) -> Tuple[Optional[Finding], Outcome]:
    """Write the case into a fresh folder, read it in the worker, judge; the folder is removed."""
    folder = tempfile.mkdtemp(prefix="fuzz-", dir=base)
    try:
        path = write_case(folder, files)
        out = worker.run(target.name, folder, path)
        return problem_of(target, path, mutations, out), out
    finally:
        shutil.rmtree(folder, ignore_errors=True)
