"""Fuzzing every reader of user files: PLY, OFF, OBJ, STL, text, .npy, .npz, HDF5, the released
ModelNet .dat and few-shot .pkl pickles, ShapeNet files, split files, view images, configs and
checkpoints (tests/fuzz/targets.py lists the entry points).

Each example is a valid file of the format with a few mutations, or raw bytes, read in a worker
process that bounds time (a hang) and address space (unbounded allocation). Each must load, with
the shape and type the reader promises, or be refused with the project's one-line InputError
naming the file; a valid file must load.

Profiles (``INTERMAE_FUZZ_PROFILE``): ``ci`` (default) is short and derandomized, so ``make
test`` sees the same examples every run; ``long`` is what ``make fuzz`` runs per round
(tests/fuzz/long_run.py).
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("hypothesis")
from fuzz.isolate import Isolated  # noqa: E402
from fuzz.judge import run_case  # noqa: E402
from fuzz.mutate import cases, describe  # noqa: E402
from fuzz.targets import TARGET_NAMES, targets  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

_COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=False)
# ci: no shrinking (a failure is reported at once, with its files); the same examples every run.
settings.register_profile("ci", max_examples=40, derandomize=True, database=None,
                          phases=(Phase.explicit, Phase.generate), **_COMMON)
settings.register_profile("long", max_examples=200, derandomize=False, **_COMMON)
PROFILE = os.environ.get("INTERMAE_FUZZ_PROFILE", "ci")


@pytest.fixture(scope="module")
def worker():
    with Isolated(timeout_s=float(os.environ.get("INTERMAE_FUZZ_TIMEOUT", "30"))) as w:
        yield w


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_reader_loads_or_refuses_in_one_line(name, worker, tmp_path):
    target = targets()[name]
    profile = settings.get_profile(PROFILE)
    examples = max(4, profile.max_examples // 2) if target.slow else profile.max_examples

    @settings(profile, max_examples=examples)
    @given(case=cases(target))
    def check(case):
        _, files, mutations = case
        problem, _ = run_case(worker, target, files, mutations, base=str(tmp_path))
        assert problem is None, f"{name}: {problem}\nfiles:\n  " + "\n  ".join(describe(files))

    check()


def test_worker_bounds_time_and_memory_and_survives_crashes(tmp_path):
    """The harness itself: a reader that sleeps past the timeout is a hang, one that allocates past
    the cap gets a MemoryError (the machine's memory is not used up), another exception is reported
    with its type, a dying process is a crash; after each the next file is read by a fresh worker."""
    from fuzz.judge import write_case

    def run(w, text):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        return w.run("selftest", str(folder), write_case(str(folder), {"do.txt": text.encode()}))

    with Isolated(timeout_s=5.0, memory_mb=512) as w:
        assert run(w, "ok").kind == "ok"
        assert run(w, "sleep 60").kind == "hang"
        out = run(w, "alloc 2048")
        assert (out.kind, out.error_type) == ("exception", "MemoryError")
        assert run(w, "alloc 16").kind == "ok"
        out = run(w, "raise boom")
        assert (out.kind, out.error_type, out.message) == ("exception", "KeyError", "'boom'")
        assert run(w, "exit").kind == "crash"
        assert run(w, "ok").kind == "ok"
        assert w.starts == 4  # the first, and after the hang, the MemoryError and the crash
