"""Hypothesis strategies: a valid file of a target's format with a few mutations (bytes flipped,
truncated, inserted or spliced; a number in a header made huge; an integer field overwritten; a
text token replaced by NaN, a huge exponent or a control character), or raw bytes.

A case is ``(ext, files, mutations)``: ``files`` maps relative paths to contents (the first one is
the mutated file; ``None`` makes a FIFO), ``mutations`` counts the mutations applied (0: the
valid file as made, which must load; -1: raw bytes or a file made with a tampered value)."""
from __future__ import annotations

import re
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np
from hypothesis import strategies as st

from .targets import TAMPERED, Target

MAX_FILE = 1 << 16
# Sizes a tampered header declares: limits of the integer types, and counts far beyond the file.
HUGE = (0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 64 - 1, 10 ** 12, 40000 * 2048 * 3,
        10 ** 100)
TOKENS = (b"nan", b"inf", b"-inf", b"1e999", b"-0", b"", b"\x00", b"\xff\xfe", b"\xe2\x80\xae", b"\x1b[2J",
          b"'", b'"', b"{", b"[", b"*", b"&a", b"!!python/object:os.system", b"\n", b"\t", b"..", b"-1")
NUMBER = re.compile(rb"-?\d+")
WORD = re.compile(rb"[^\s,;:\[\]{}()]+")


@st.composite
def _mutation(draw, data: bytearray, text: bool) -> bytearray:
    ops = ["flip", "truncate", "insert", "delete", "number", "int_field", "splice", "repeat"] + \
        (["token"] * 2 if text else [])
    op = draw(st.sampled_from(ops))
    n = len(data)
    if op == "flip" and n:
        at = draw(st.integers(0, n - 1))
        data[at] ^= draw(st.integers(1, 255))
    elif op == "truncate":
        del data[draw(st.integers(0, n)):]
    elif op == "insert":
        at = draw(st.integers(0, n))
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif op == "delete" and n:
        at = draw(st.integers(0, n - 1))
        del data[at: at + draw(st.integers(1, 64))]
    elif op == "number":
        found = list(NUMBER.finditer(bytes(data[:4096])))
        if found:
            m = found[draw(st.integers(0, len(found) - 1))]
            data[m.start(): m.end()] = str(draw(st.sampled_from(HUGE)) * draw(st.sampled_from((1, -1)))).encode()
    elif op == "int_field" and n >= 8:
        at = draw(st.integers(0, min(n, 4096) - 8))
        fmt = draw(st.sampled_from(("<I", "<Q", ">I", ">Q", "<i")))
        value = draw(st.sampled_from(HUGE)) % (2 ** (8 * struct.calcsize(fmt) - (fmt == "<i")))
        data[at: at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    elif op == "splice" and n:
        a = draw(st.integers(0, n - 1))
        chunk = bytes(data[a: a + draw(st.integers(1, 256))])
        at = draw(st.integers(0, n))
        data[at:at] = chunk
    elif op == "repeat":  # a short chunk many times: deep nesting ("[[[["), endless lines and values
        chunk = draw(st.sampled_from((b"[", b"{", b"- ", b"a", b"0", b"9", b"&a [*a, *a]\n", b" 1", b"\xff")))
        at = draw(st.integers(0, n))
        data[at:at] = chunk * draw(st.sampled_from((100, 1000, 10000, 60000)))
    elif op == "token":
        found = list(WORD.finditer(bytes(data[:8192])))
        if found:
            m = found[draw(st.integers(0, len(found) - 1))]
            data[m.start(): m.end()] = draw(st.sampled_from(TOKENS))
    del data[MAX_FILE:]
    return data


@st.composite
def cases(draw, target: Target) -> Tuple[str, Dict[str, Optional[bytes]], int]:
    ext = draw(st.sampled_from(target.exts))
    raw = draw(st.integers(0, 9)) == 0
    seed = draw(st.integers(0, 2 ** 32 - 1))
    files = target.make(np.random.default_rng(seed), ext)
    tampered = files.pop(TAMPERED, None) is not None
    first = next(iter(files))
    if raw:  # raw bytes (or, now and then, a FIFO) in place of the file; the files beside it as made
        files[first] = None if draw(st.integers(0, 4)) == 0 else draw(st.binary(max_size=2048))
        return ext, files, -1
    data = bytearray(files[first] or b"")
    count = draw(st.integers(0, 4))
    for _ in range(count):
        data = draw(_mutation(data, target.text))
    files[first] = bytes(data)
    return ext, files, -1 if tampered else count


def describe(files: Dict[str, Optional[bytes]]) -> List[str]:
    """Short lines describing a case's files (for failure messages)."""
    out = []
    for name, data in files.items():
        out.append(f"{name}: FIFO" if data is None else f"{name}: {len(data)} bytes {data[:160]!r}")
    return out
