"""Coverage-guided fuzzing of the same readers with atheris (libFuzzer): ``make fuzz FUZZ_ENGINE=atheris``
(needs the ``[fuzz]`` extra: ``pip install -e '.[fuzz]'``).

An input's first byte picks the target and extension (:data:`PAIRS`); the rest is the content of
the file the target reads (the files beside it are those its maker writes, FIFOs left out). The
corpus starts from valid files of every target. The readers run in this process, instrumented
for coverage; a reader that raises anything but the project's InputError, breaks the message
rules of :func:`tests.fuzz.judge.problem_of` or returns a wrong value raises, which libFuzzer
saves as ``<out>/crash-<sha1>`` and stops on. Hangs: a watchdog thread writes the input that runs
longer than ``--timeout`` seconds to ``<out>/hang-<crc>`` and ends the process (libFuzzer's own
``-timeout`` alarm is off: under atheris its SIGALRM killed the process before the crash file was
written); memory: the address space is capped (``RLIMIT_AS``, a MemoryError is a crash) and
libFuzzer's ``-rss_limit_mb``.

    python tests/fuzz/atheris_run.py --minutes 30 --out experiments/fuzz-atheris
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

if __name__ == "__main__":  # a script: the repository and tests/ on the import path
    _TESTS = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_TESTS.parent), str(_TESTS)]

import atheris  # noqa: E402
import numpy as np  # noqa: E402

with atheris.instrument_imports(include=["datasets", "engine", "utils", "models"]):
    import datasets.io  # noqa: E402,F401
    import datasets.modelnet_cache  # noqa: E402,F401
    import datasets.ModelNetDatasetFewShot  # noqa: E402,F401
    import datasets.ModelNetH5Dataset  # noqa: E402,F401
    import datasets.PointCloudFolder  # noqa: E402,F401
    import datasets.ScanObjectNNDataset  # noqa: E402,F401
    import datasets.ShapeNet55Dataset  # noqa: E402,F401
    import datasets.ShapeNetPartDataset  # noqa: E402,F401
    import datasets.views  # noqa: E402,F401
    import engine.features  # noqa: E402,F401
    import engine.predict  # noqa: E402,F401
    import utils.checkpoint  # noqa: E402,F401
    import utils.config  # noqa: E402,F401

from fuzz.isolate import WORKER_ENV, Outcome  # noqa: E402
from fuzz.judge import problem_of  # noqa: E402
from fuzz.targets import TAMPERED, TARGET_NAMES, targets  # noqa: E402
from utils.cli import InputError  # noqa: E402

TABLE = targets()
PAIRS = [(name, ext) for name in TARGET_NAMES for ext in TABLE[name].exts]
SCRATCH = tempfile.mkdtemp(prefix="atheris-")
_LAYOUTS: dict = {}
_RUNNING: dict = {}  # the input being read and since when (the watchdog's view)


class Finding(Exception):
    """A reader's outcome that is neither a load nor the one-line InputError."""


def _layout(index: int):
    """(folder, path of the fuzzed file) of pair ``index``, with the files beside it written once."""
    if index not in _LAYOUTS:
        name, ext = PAIRS[index]
        files = TABLE[name].make(np.random.default_rng(0), ext)
        files.pop(TAMPERED, None)
        folder = os.path.join(SCRATCH, str(index))
        first = next(iter(files))
        for rel, data in files.items():
            path = os.path.join(folder, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if rel != first and data is not None:
                with open(path, "wb") as f:
                    f.write(data)
        _LAYOUTS[index] = (folder, os.path.join(folder, first))
    return _LAYOUTS[index]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    index = data[0] % len(PAIRS)
    name = PAIRS[index][0]
    target = TABLE[name]
    folder, path = _layout(index)
    with open(path, "wb") as f:
        f.write(data[1:])
    _RUNNING.update(data=data, since=time.monotonic())
    try:
        result = target.read(folder, path)
        out = Outcome("ok", problem=target.check(result))
    except InputError as e:
        out = Outcome("input_error", type(e).__name__, str(e))
    finally:
        _RUNNING.pop("since", None)
    finding = problem_of(target, path, -1, out)
    if finding is not None:
        raise Finding(f"{name}: {finding}")


def watchdog(out: Path, timeout: float) -> None:
    """Write the input that has run for more than ``timeout`` seconds to ``out/hang-<crc>``; exit 70."""
    while True:
        time.sleep(1.0)
        since = _RUNNING.get("since")
        if since is not None and time.monotonic() - since > timeout:
            data = _RUNNING["data"]
            path = out / f"hang-{zlib.crc32(data):08x}"
            path.write_bytes(data)
            print(f"\n=== hang: {PAIRS[data[0] % len(PAIRS)][0]} ran for more than {timeout:g} s; input written to "
                  f"{path}", file=sys.stderr, flush=True)
            os._exit(70)


def write_corpus(folder: Path, per_pair: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, ext) in enumerate(PAIRS):
        for seed in range(per_pair):
            files = TABLE[name].make(np.random.default_rng(1000 + seed), ext)
            files.pop(TAMPERED, None)
            (folder / f"seed-{index:02d}-{seed}").write_bytes(bytes([index]) + (next(iter(files.values())) or b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--out", default="experiments/fuzz-atheris")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a read is a hang")
    args, rest = parser.parse_known_args()
    out = Path(args.out).resolve()
    corpus = out / "corpus"
    if not corpus.is_dir() or not any(corpus.iterdir()):
        write_corpus(corpus)
    os.environ.update(WORKER_ENV)
    os.environ.pop("DATA_ROOT", None)
    cap = 4 * 2 ** 30 + int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    threading.Thread(target=watchdog, args=(out, args.timeout), daemon=True).start()
    argv = [sys.argv[0], f"-max_total_time={int(60 * args.minutes)}", "-timeout=0", "-max_len=65536",
            "-rss_limit_mb=6144", f"-artifact_prefix={out}/", "-print_final_stats=1", *rest, str(corpus)]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
