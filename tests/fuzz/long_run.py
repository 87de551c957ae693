"""The long fuzzing run (``make fuzz FUZZ_MINUTES=30``): rounds of Hypothesis over every target, in
turn, with fresh random examples, until the time is up.

A finding (:func:`tests.fuzz.judge.problem_of`) is shrunk to a small example, saved under
``<out>/findings/<target>/<rule>-<type>-<crc>/`` (the files as read, and ``finding.txt``), and
from then on counted, not re-reported, so the run goes on past a known crash class. One class =
one (target, rule, exception type, repository line). ``<out>/summary.json`` has the examples and
outcomes per target and every class with its count. Exit status 1 when anything was found.

    python tests/fuzz/long_run.py --minutes 30 --out experiments/fuzz [--targets cloud-ply config]
    python tests/fuzz/long_run.py --replay experiments/fuzz   # each saved finding against this code
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Tuple

if __name__ == "__main__":  # a script: the repository and tests/ on the import path
    _TESTS = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_TESTS.parent), str(_TESTS)]

from hypothesis import HealthCheck, Phase, Verbosity, given, settings  # noqa: E402

from fuzz.isolate import Isolated  # noqa: E402
from fuzz.judge import Finding, run_case, signature  # noqa: E402
from fuzz.mutate import cases  # noqa: E402
from fuzz.targets import TARGET_NAMES, crc, targets  # noqa: E402

Signature = Tuple[str, str, str, str]


class _Found(Exception):
    """Raised for a new crash class; one subclass per class, so that Hypothesis shrinks each apart."""


_FOUND_TYPES: Dict[Signature, type] = {}


def found_type(sig: Signature) -> type:
    if sig not in _FOUND_TYPES:
        _FOUND_TYPES[sig] = type(f"Found{len(_FOUND_TYPES)}", (_Found,), {})
    return _FOUND_TYPES[sig]


def save_finding(out: Path, sig: Signature, files, finding: Finding) -> str:
    name, rule, error_type, _ = sig
    first = next(iter(files.values())) or b""
    folder = out / "findings" / name / f"{rule}-{error_type or 'none'}-{crc(first)}"
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():  # FIFOs are named in finding.txt, not made
        if data is not None:
            (folder / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / "files" / rel).write_bytes(data)
    (folder / "finding.txt").write_text(f"target: {name}\nrule: {rule}\nwhere: {sig[3]}\n"
                                        f"fifos: {[k for k, v in files.items() if v is None]}\n\n{finding}\n")
    return str(folder)


def replay(out: Path, timeout: float) -> int:
    """Read every saved finding of ``out/findings`` again with this checkout's code; print whether
    it still fails. Returns the number still failing."""
    table = targets()
    failing = 0
    with Isolated(timeout_s=timeout) as worker:
        for text in sorted(out.glob("findings/*/*/finding.txt")):
            folder = text.parent
            info = dict(line.split(": ", 1) for line in text.read_text().splitlines()[:4] if ": " in line)
            target = table[info["target"]]
            files = {str(p.relative_to(folder / "files")): p.read_bytes()
                     for p in sorted((folder / "files").rglob("*")) if p.is_file()}
            for rel in json.loads(info.get("fifos", "[]").replace("'", '"')):
                files[rel] = None
            stem = os.path.splitext(target.filename)[0]
            primary = [r for r in files if os.path.splitext(r)[0] == stem and os.path.splitext(r)[1] in target.exts]
            primary = primary or list(files)
            files = {primary[0]: files.pop(primary[0]), **files}
            mutations = 0 if "refused a valid file" in text.read_text() else -1
            finding, outcome = run_case(worker, target, files, mutations)
            failing += finding is not None
            state = "STILL " + finding.rule if finding is not None else f"fixed ({outcome.kind} {outcome.error_type})"
            print(f"{state:40s} {folder.relative_to(out)}", flush=True)
    return failing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--out", default="experiments/fuzz")
    parser.add_argument("--targets", nargs="*", default=list(TARGET_NAMES), choices=TARGET_NAMES)
    parser.add_argument("--examples", type=int, default=100, help="examples per target and round")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a read is a hang")
    parser.add_argument("--replay", metavar="OUT", help="read the findings saved under OUT again, then stop")
    args = parser.parse_args()
    if args.replay:
        return 1 if replay(Path(args.replay), args.timeout) else 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = targets()
    deadline = time.monotonic() + 60.0 * args.minutes
    started = time.time()
    stats: Dict[str, Counter] = defaultdict(Counter)
    seconds: Dict[str, float] = defaultdict(float)
    slowest: Dict[str, float] = defaultdict(float)
    known: Dict[Signature, dict] = {}
    rounds = 0

    def write_summary() -> None:
        summary = {
            "minutes": round((time.time() - started) / 60, 2), "rounds": rounds,
            "examples": sum(sum(c.values()) for c in stats.values()),
            "targets": {n: {"examples": sum(stats[n].values()), "outcomes": dict(stats[n]),
                            "seconds": round(seconds[n], 1), "slowest_s": round(slowest[n], 2)} for n in args.targets},
            "findings": [{"target": s[0], "rule": s[1], "error_type": s[2], "where": s[3], **v}
                         for s, v in sorted(known.items())],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    with Isolated(timeout_s=args.timeout) as worker:
        while time.monotonic() < deadline:
            rounds += 1
            for name in args.targets:
                if time.monotonic() >= deadline:
                    break
                target = table[name]
                latest: Dict[Signature, tuple] = {}

                @settings(max_examples=args.examples, derandomize=False, database=None, deadline=None,
                          phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck),
                          report_multiple_bugs=False, verbosity=Verbosity.quiet)
                @given(case=cases(target))
                def prop(case):
                    if time.monotonic() >= deadline:
                        return
                    _, files, mutations = case
                    finding, outcome = run_case(worker, target, files, mutations)
                    stats[name][outcome.kind] += 1
                    seconds[name] += outcome.seconds
                    slowest[name] = max(slowest[name], outcome.seconds)
                    if finding is None:
                        return
                    sig = signature(target, finding, outcome)
                    if sig in known:
                        known[sig]["count"] += 1
                        return
                    latest[sig] = (files, finding)
                    raise found_type(sig)(str(finding)[:200])

                try:
                    prop()
                except _Found:
                    pass
                for sig, (files, finding) in latest.items():  # the last example of each class: the shrunk one
                    known[sig] = {"count": 1, "example": save_finding(out, sig, files, finding),
                                  "first_round": rounds, "text": str(finding).split("\n")[0][:300]}
                    print(f"[fuzz] new: {' | '.join(sig)}: {str(finding).splitlines()[0][:200]}", flush=True)
                write_summary()
            done = sum(sum(c.values()) for c in stats.values())
            print(f"[fuzz] round {rounds}: {done} examples, {len(known)} crash classes, "
                  f"{max(0.0, deadline - time.monotonic()) / 60:.1f} min left", flush=True)
    write_summary()
    print(f"[fuzz] {out / 'summary.json'}: {sum(sum(c.values()) for c in stats.values())} examples in "
          f"{(time.time() - started) / 60:.1f} min, {len(known)} crash classes")
    return 1 if known else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
