"""Run one stage of ``make demo`` and record its wall time.

    python -m demo.stage NAME [--timings experiments/demo/timings.json] -- COMMAND [ARGS ...]

Runs ``COMMAND`` (inheriting the console), prints ``[demo] NAME: 1.4 min`` when it ends and
stores ``{NAME: seconds}`` in the timings file (written atomically; other stages' entries are
kept, a stage run again replaces its own). The command's exit status is returned, so ``make``
stops at the first failing stage; a failed stage is not recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

DEFAULT_TIMINGS = os.path.join("experiments", "demo", "timings.json")


def read_timings(path: str) -> Dict[str, float]:
    """The stage -> seconds map at ``path`` ({} when absent; unreadable files are an error naming it)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"demo.stage: cannot read the timings file {path}: {e}; delete it and run the stage again")
    if not isinstance(data, dict):
        raise SystemExit(f"demo.stage: {path} holds {type(data).__name__}, expected a JSON object of stage -> seconds")
    return {str(k): float(v) for k, v in data.items()}


def record(path: str, name: str, seconds: float) -> None:
    timings = read_timings(path)
    timings[name] = round(seconds, 2)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(timings, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: python -m demo.stage NAME [--timings FILE] -- COMMAND [ARGS ...]", file=sys.stderr)
        return 2
    split = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m demo.stage", description="Run one demo stage and record its time.")
    ap.add_argument("name", help="stage name, e.g. pretrain")
    ap.add_argument("--timings", default=DEFAULT_TIMINGS, help="JSON file of stage -> seconds (default %(default)s)")
    args = ap.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        ap.error("no command after --")
    start = time.perf_counter()
    rc = subprocess.call(command)
    seconds = time.perf_counter() - start
    if rc != 0:
        print(f"[demo] {args.name}: failed (exit status {rc}) after {seconds / 60:.1f} min", file=sys.stderr)
        return rc
    record(args.timings, args.name, seconds)
    print(f"[demo] {args.name}: {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
