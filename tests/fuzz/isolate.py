"""Run a reader on a file in a worker process that bounds its time and memory.

The worker is forked by a ``forkserver`` that has imported the project once (no thread or lock
state of the fuzzing process is copied, and a fresh worker starts in milliseconds); it caps its
address space (``RLIMIT_AS``: what it maps after the
imports plus ``memory_mb``). A reader that tries to allocate beyond that gets a MemoryError,
reported like any other exception that is not an InputError. The project's own size limits are
lowered below that cap (``INTERMAE_MAX_*``), so a reader that checks them refuses such a file
with its one-line error first. A reader that does not answer within ``timeout_s`` is a hang: the
worker is killed and a fresh one started; so is a worker that dies (a segfault in a C library).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import List, Optional

# The project's limits inside the worker: far above the fuzzer's small files, far below the cap.
WORKER_ENV = {
    "INTERMAE_MAX_ARRAY_MB": "64",
    "INTERMAE_MAX_POINTS": "100000",
    "INTERMAE_MAX_MODEL_PARAMS": "20000000",
    "INTERMAE_MAX_DEPTH": "64",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
IMPORTS = ("torch", "h5py", "trimesh", "PIL.Image", "safetensors.torch", "easydict", "datasets", "models",
           "datasets.io", "engine.features", "engine.predict", "utils.config", "utils.checkpoint")


@dataclass
class Outcome:
    """What one reader call did: ``kind`` 'ok' | 'input_error' | 'exception' | 'hang' | 'crash'."""
    kind: str
    error_type: str = ""
    message: str = ""
    where: str = ""                 # file:line of the innermost frame of the repository (exceptions)
    traceback: str = ""
    problem: Optional[str] = None   # for 'ok': what is wrong with the returned value, if anything
    seconds: float = 0.0
    input_error_bases: List[str] = field(default_factory=list)


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _repo_frame(tb, repo: str) -> str:
    frames = [f for f in traceback.extract_tb(tb) if f.filename.startswith(repo) and "/tests/" not in f.filename]
    if not frames:
        frames = traceback.extract_tb(tb)[-1:]
    if not frames:
        return ""
    f = frames[-1]
    return f"{os.path.relpath(f.filename, repo) if f.filename.startswith(repo) else f.filename}:{f.lineno}"


def _serve(conn, memory_mb: int) -> None:
    import importlib
    import resource
    import warnings

    os.environ.update(WORKER_ENV)
    os.environ.pop("DATA_ROOT", None)
    warnings.simplefilter("ignore")  # overflow in casts and the like: the verdict is on the outcome
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the readers' log lines
    for name in IMPORTS:  # already imported in the forkserver: nothing to do
        importlib.import_module(name)
    import torch

    from utils.cli import InputError

    from .targets import REPO, targets

    torch.set_num_threads(1)
    table = targets()
    cap = _vm_bytes() + memory_mb * 2 ** 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    repo = str(REPO) + os.sep
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        name, root, path = request
        target = table[name]
        start = time.perf_counter()
        try:
            result = target.read(root, path)
            problem = target.check(result)
            out = Outcome("ok", problem=problem)
            del result
        except InputError as e:
            out = Outcome("input_error", type(e).__name__, str(e), _repo_frame(e.__traceback__, repo),
                          input_error_bases=[c.__name__ for c in type(e).__mro__])
        except BaseException as e:  # noqa: BLE001  (SystemExit and KeyboardInterrupt from a reader are findings too)
            out = Outcome("exception", type(e).__name__, str(e)[:2000], _repo_frame(e.__traceback__, repo),
                          traceback.format_exc()[-6000:])
        out.seconds = time.perf_counter() - start
        conn.send(out)


def _ensure_forkserver() -> None:
    """Start the forkserver with this process's import path (Python 3.11's forkserver ignores the
    ``sys_path`` it is handed, so its preloading would not find the repository's modules)."""
    from multiprocessing import forkserver

    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    try:
        forkserver.ensure_running()
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


class Isolated:
    """One worker process at a time; :meth:`run` sends it a (target, root, path) and waits."""

    def __init__(self, timeout_s: float = 20.0, memory_mb: int = 1024, start_timeout_s: float = 300.0):
        self.timeout_s, self.memory_mb, self.start_timeout_s = timeout_s, memory_mb, start_timeout_s
        self.proc = None
        self.conn = None
        self.starts = 0

    def _start(self) -> None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(IMPORTS) + [__name__, __name__.rpartition(".")[0] + ".targets"])
        _ensure_forkserver()
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.memory_mb), daemon=True, name="fuzz-reader")
        self.proc.start()
        child.close()
        self.conn = parent
        self.starts += 1
        if not parent.poll(self.start_timeout_s) or parent.recv() != "ready":
            self.close()
            raise RuntimeError("the fuzzing worker did not start")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(10)
            self.conn.close()
        self.proc = self.conn = None

    def run(self, name: str, root: str, path: str) -> Outcome:
        if self.proc is None or not self.proc.is_alive():
            self.close()
            self._start()
        start = time.perf_counter()
        self.conn.send((name, root, path))
        if not self.conn.poll(self.timeout_s):
            self.close()
            return Outcome("hang", message=f"no answer within {self.timeout_s:g} s", seconds=time.perf_counter() - start)
        try:
            out = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(10)
            code = self.proc.exitcode
            self.close()
            return Outcome("crash", message=f"the reader's process died (exit code {code})",
                           seconds=time.perf_counter() - start)
        if out.kind == "exception" and out.error_type == "MemoryError":
            self.close()  # the worker's heap may be in any state after an allocation failed
        return out

    def __enter__(self) -> "Isolated":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
