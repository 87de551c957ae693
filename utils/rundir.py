"""Run directories: one live run per directory (a lock with a heartbeat), and no silent reuse of
another run's checkpoints.

The lock ``<dir>/.lock`` is created exclusively (``O_CREAT | O_EXCL``) by the run's rank 0 and
holds ``pid host start-time token boot-id pid-namespace`` (the kernel's boot id and the inode of
the writer's PID namespace: :func:`process_namespace`). While the run lives, a daemon thread
refreshes the file's modification time (its *heartbeat*) every :data:`HEARTBEAT_S` seconds. A lock
that exists is

* **stale at once** when it was written in this process's PID namespace on this boot of this host
  (same host name, boot id and PID namespace) and its pid is not running (or the pid now belongs to
  a process started after the lock was written): replaced, with one log line;
* **stale** when its pid cannot be checked from here: another host (a requeued Slurm job on another
  node sharing the file system), or this host name but another boot or PID namespace (a container
  with host networking, ``apptainer --containall``), or a lock without those fields; and its
  heartbeat is older than the stale time (``stale_s``, default ``$INTERMAE_LOCK_STALE_S``, else
  :data:`DEFAULT_STALE_S`): taken over, with one log line naming the run it replaces;
* **live** otherwise: a :class:`RunDirError` naming the pid, the host, the heartbeat's age and the
  lock file, and saying how to clear it.

The takeover is atomic among racing takers: a taker first claims *that* stale lock by creating
``<dir>/.lock.takeover-<token of the stale lock>`` exclusively (one taker wins the claim), checks
that the lock still holds that token, removes it and creates its own lock exclusively; a taker that
loses the claim or the creation starts over and finds the winner's live lock. Locks of an older
version (``pid host``, no heartbeat) on another host are never taken over: they name the file to
delete. The heartbeat compares the file's modification time with this host's clock, so the stale
time must exceed the clock difference between the hosts (seconds on a cluster).
"""
from __future__ import annotations

import atexit
import functools
import glob
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from utils.cli import InputError

LOCK_NAME = ".lock"
CLAIM_SUFFIX = ".takeover-"  # <lock>.takeover-<token>: a taker's claim on one stale lock
DEFAULT_STALE_S = 120.0
STALE_ENV = "INTERMAE_LOCK_STALE_S"
HEARTBEAT_S = 30.0  # at most; a quarter of the stale time when that is shorter
GARBLED_GRACE_S = 10.0  # an unreadable lock this young may be one being written (file systems without hard links)


class RunDirError(InputError, RuntimeError):
    """An experiment directory cannot be used: it holds another run's checkpoints, or a live run holds it."""


def stale_seconds(stale_s: Optional[float] = None) -> float:
    """The heartbeat age after which another host's lock is stale: ``stale_s``, else
    ``$INTERMAE_LOCK_STALE_S``, else :data:`DEFAULT_STALE_S`."""
    if stale_s is None:
        text = os.environ.get(STALE_ENV, "").strip()
        try:
            stale_s = float(text) if text else DEFAULT_STALE_S
        except ValueError:
            raise RunDirError(f"${STALE_ENV} = {text!r}: expected a number of seconds") from None
    if stale_s <= 0:
        raise RunDirError(f"the lock's stale time must be > 0 seconds, got {stale_s}")
    return float(stale_s)


@functools.cache
def process_namespace() -> Tuple[str, str]:
    """(boot id, PID namespace) of this process: ``/proc/sys/kernel/random/boot_id`` and the link
    ``/proc/self/ns/pid`` (``pid:[4026531836]``); ``-`` for what this system does not tell. Two
    processes can check each other's pids only when both agree (and the host name does)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip() or "-"
    except OSError:
        boot = "-"
    try:
        pidns = os.readlink("/proc/self/ns/pid") or "-"
    except (OSError, AttributeError):
        pidns = "-"
    return "".join(boot.split()), "".join(pidns.split())


@dataclass
class LockInfo:
    """What a lock file says: pid, host, start time and token (None for older locks: ``pid host``),
    boot id and PID namespace (None for locks written before they were recorded), and its heartbeat
    (modification time)."""

    pid: int
    host: str
    started: Optional[float]
    token: Optional[str]
    heartbeat: float
    garbled: bool = False
    boot_id: Optional[str] = None
    pidns: Optional[str] = None

    def describe(self) -> str:
        since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}" if self.started else ""
        return f"pid {self.pid} on {self.host}{since}"

    def checkable_here(self) -> bool:
        """Whether this process can tell if the lock's pid runs: same host name, boot id and PID namespace."""
        return (self.garbled or (self.host == socket.gethostname()
                                 and (self.boot_id, self.pidns) == process_namespace()))

    def unchecked_because(self) -> str:
        """Why the pid cannot be checked from here (for the messages)."""
        if self.host != socket.gethostname():
            return "on another host"
        if self.boot_id is None or self.pidns is None:
            return "written without boot id and PID namespace"
        if self.boot_id != process_namespace()[0]:
            return "from another boot or machine with this host name"
        return "in another PID namespace (a container)"


def read_lock(path: str) -> Optional[LockInfo]:
    """The lock at ``path``; None when it is gone. Unreadable or garbled contents read as pid -1 on
    this host (stale once older than :data:`GARBLED_GRACE_S`)."""
    try:
        heartbeat = os.stat(path).st_mtime
        with open(path) as f:
            words = f.readline().split()
    except FileNotFoundError:
        return None
    except OSError:
        words, heartbeat = [], time.time()
    try:
        pid = int(words[0])
        host = words[1] if len(words) > 1 else socket.gethostname()
        started = float(words[2]) if len(words) > 2 else None
        token = words[3] if len(words) > 3 else None
        boot_id = words[4] if len(words) > 4 else None
        pidns = words[5] if len(words) > 5 else None
    except (ValueError, IndexError):
        return LockInfo(-1, socket.gethostname(), None, None, heartbeat, garbled=True)
    return LockInfo(pid, host, started, token, heartbeat, boot_id=boot_id, pidns=pidns)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (Unix time; Linux ``/proc``), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _holder_alive_here(info: LockInfo) -> bool:
    """Whether the lock's process (on this host) still runs: its pid is alive and is not a newer
    process that reuses the pid (started after the lock was written)."""
    if info.pid <= 0 or not _pid_alive(info.pid):
        return False
    if info.pid == os.getpid():
        return True
    if info.started is not None:
        began = _process_start_time(info.pid)
        if began is not None and began > info.started + 2.0:
            return False
    return True


# path -> (token, stop event, thread, pid) of the locks this process holds (pid: a forked child holds none)
_HELD: Dict[str, tuple] = {}
_HELD_GUARD = threading.Lock()


def _heartbeat(path: str, token: str, stop: threading.Event, interval: float, logger) -> None:
    from utils.logger import print_log

    warned = False
    while not stop.wait(interval):
        info = read_lock(path)
        if info is not None and info.token == token:
            try:
                os.utime(path, None)
            except OSError:
                pass  # a transient file-system error: the next beat tries again
            continue
        if not warned:  # removed by hand, or taken over while this process was stalled
            who = "removed" if info is None else f"taken over by {info.describe()}"
            print_log(f"WARNING: the run lock {path} of this run was {who}; this run no longer holds its "
                      f"directory", logger=logger)
            warned = True


def _claim_path(path: str, token: str) -> str:
    return path + CLAIM_SUFFIX + token


def _write_new_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _create(path: str, token: str, logger, stale_s: float) -> bool:
    """Create the lock exclusively, complete with its contents, and start its heartbeat; False when
    a lock exists. The contents are written to a private file first and hard-linked to ``path``
    (``link`` fails when ``path`` exists), so no one ever reads a half-written lock; where the file
    system has no hard links, ``O_CREAT | O_EXCL`` then write."""
    interval = min(HEARTBEAT_S, stale_s / 4)
    boot_id, pidns = process_namespace()
    text = (f"{os.getpid()} {socket.gethostname()} {time.time():.3f} {token} {boot_id} {pidns}\n"
            f"# pid host start-time(unix s) token boot-id pid-namespace; the run refreshes this file's modification time every "
            f"{interval:g} s (its heartbeat)\n")
    private = f"{path}.new-{token}"
    try:
        _write_new_file(private, text)
        try:
            os.link(private, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            try:
                _write_new_file(path, text)
            except FileExistsError:
                return False
    finally:
        try:
            os.remove(private)
        except OSError:
            pass
    stop = threading.Event()
    thread = threading.Thread(target=_heartbeat, args=(path, token, stop, interval, logger),
                              name=f"run-lock-heartbeat {path}", daemon=True)
    with _HELD_GUARD:
        _HELD[os.path.abspath(path)] = (token, stop, thread, os.getpid())
    thread.start()
    atexit.register(release_run_lock, path)
    return True


def _take_over(path: str, info: LockInfo, stale_s: float) -> bool:
    """Remove the stale lock ``info`` at ``path`` if this process wins the claim on it; True when
    it was removed by this process (the caller then creates its own lock exclusively)."""
    key = info.token or f"pid{info.pid}-{info.host}-{info.heartbeat:.0f}"
    claim = _claim_path(path, key)
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # a claim left by a taker that died during its takeover (which takes milliseconds)
            if time.time() - os.stat(claim).st_mtime > stale_s:
                os.remove(claim)
        except OSError:
            pass
        return False
    os.close(fd)
    try:
        now = read_lock(path)
        if now is None or (now.token, now.pid, now.host, now.heartbeat) != (info.token, info.pid, info.host,
                                                                            info.heartbeat):
            return False  # gone or refreshed since it was judged stale: start over
        os.remove(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        try:
            os.remove(claim)
        except OSError:
            pass


def acquire_run_lock(folder: str, logger=None, stale_s: Optional[float] = None,
                     other_run: str = "use another --exp_name") -> str:
    """Take ``<folder>/.lock`` for this process (rank 0 of a run); returns its path.

    A live lock raises :class:`RunDirError` saying whose it is and how to clear it; a stale one (see
    the module's docstring) is replaced with one log line. The heartbeat runs until
    :func:`release_run_lock` (also registered with ``atexit``). ``stale_s``: the heartbeat age after
    which another host's lock is taken over (default ``$INTERMAE_LOCK_STALE_S``, else 120 s);
    ``other_run``: the refusal's advice for starting elsewhere (segmentation: ``use another --log_dir``).
    """
    from utils.logger import print_log

    stale_s = stale_seconds(stale_s)
    path = os.path.join(folder, LOCK_NAME)
    token = uuid.uuid4().hex
    replaced = None  # (lock info, why) of the stale lock this process removed
    for _ in range(20):
        if _create(path, token, logger, stale_s):
            if replaced is not None:
                print_log(f"Took over the stale run lock {path} of {replaced[0].describe()} ({replaced[1]})",
                          logger=logger)
            return path
        info = read_lock(path)
        if info is None:
            continue  # released meanwhile
        age = time.time() - info.heartbeat
        if info.garbled and age < GARBLED_GRACE_S:
            time.sleep(0.1)  # perhaps being written (no hard links): look again
            continue
        if info.checkable_here():
            if _holder_alive_here(info):
                raise RunDirError(f"experiment directory {folder} is in use by another run ({info.describe()}, lock "
                                  f"file {path}); wait for it to finish or {other_run}; if no run is alive, delete "
                                  f"{path}") from None
            why = "its contents are unreadable" if info.garbled else f"{info.describe()} is not running"
        elif info.token is None:
            raise RunDirError(f"experiment directory {folder} is in use by another run ({info.describe()}, lock file "
                              f"{path}, {info.unchecked_because()}, written by an older version without heartbeat, "
                              f"so never taken over automatically); wait for it to finish or {other_run}; if no run "
                              f"is alive, delete {path}") from None
        elif age <= stale_s:
            raise RunDirError(f"experiment directory {folder} is in use by another run ({info.describe()}, "
                              f"{info.unchecked_because()}, heartbeat {max(age, 0):.0f} s ago, lock file {path}); "
                              f"wait for it to finish or {other_run}; "
                              f"the lock is taken over automatically once its heartbeat is older than {stale_s:g} s "
                              f"(${STALE_ENV}), or delete {path} if no run is alive") from None
        else:
            why = f"{info.unchecked_because()}, heartbeat {age:.0f} s old, more than {stale_s:g} s"
        if _take_over(path, info, stale_s):
            replaced = (info, why)
        else:
            time.sleep(0.05)  # another taker is at work: look again
    raise RunDirError(f"could not take the lock {path} (other processes kept taking it); if no run is alive, "
                      f"delete {path}")


def release_run_lock(path) -> None:
    """Stop the heartbeat of the lock at ``path`` and remove the lock if this process holds it."""
    if not path:
        return
    with _HELD_GUARD:
        held = _HELD.get(os.path.abspath(path))
        if held is None or held[3] != os.getpid():  # not ours, or a forked child's copy of the parent's
            return
        del _HELD[os.path.abspath(path)]
    token, stop, thread, _ = held
    stop.set()
    if thread is not threading.current_thread():
        thread.join(timeout=5)
    info = read_lock(path)
    if info is not None and info.token == token:
        try:
            os.remove(path)
        except OSError:
            pass


def held_locks() -> Dict[str, str]:
    """``{lock path: token}`` of the locks this process holds (tests, diagnostics)."""
    with _HELD_GUARD:
        return {p: held[0] for p, held in _HELD.items() if held[3] == os.getpid()}


MAX_RUN_NAME = 200  # characters; file systems allow 255 bytes per name


def check_run_name(value: str, flag: str = "--exp_name") -> str:
    """``value`` when it is a name for one folder (``--exp_name``, segmentation's ``--log_dir``):
    not empty, not ``.`` or ``..``, no ``/`` or ``\\`` (so no absolute path and nothing outside the
    experiment root), no control characters, at most :data:`MAX_RUN_NAME` characters. Anything else
    is a one-line :class:`RunDirError`, before anything is created."""
    from utils.text import printable, quoted

    why = None
    if not value or not value.strip():
        why = "is empty"
    elif value in (".", ".."):
        why = "names the folder itself or the one above it"
    elif "/" in value or "\\" in value or os.path.isabs(value):
        why = "is a path (it holds '/' or '\\')"
    elif printable(value) != value:
        why = "holds control characters"
    elif len(value) > MAX_RUN_NAME:
        why = f"is longer than {MAX_RUN_NAME} characters"
    if why is not None:
        raise RunDirError(f"{flag} {quoted(value, 80)} {why}: it names one run folder inside the experiment root "
                          f"(e.g. {flag} my_run), not a path")
    return value


def run_name_type(flag: str):
    """An argparse ``type`` for a run-name flag (:func:`check_run_name`): a bad name ends the
    command in one line (a :class:`RunDirError`, exit status 2 through ``utils.cli.run_main``)."""
    def run_name(value: str) -> str:
        return check_run_name(value, flag)

    return run_name


def check_no_checkpoints(folder: str, resume: bool, overwrite: bool) -> None:
    """A new run refuses an experiment directory that holds checkpoints, unless --resume or --overwrite."""
    found = sorted(glob.glob(os.path.join(glob.escape(folder), "ckpt-*.pth")))
    if found and not resume and not overwrite:
        raise RunDirError(f"experiment directory {folder} already holds checkpoints ({os.path.basename(found[0])}"
                          f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}): pass --resume to continue "
                          f"that run, --overwrite to start a new run over it, or choose another --exp_name")


def check_no_saved_models(folder: str, run_dir: str) -> None:
    """A new segmentation run refuses a run directory whose ``folder`` (its ``checkpoints/``) holds a
    saved model; --overwrite or --resume let it through."""
    saved = sorted(p for p in os.listdir(folder) if p.endswith(".pth")) if os.path.isdir(folder) else []
    if saved:
        raise RunDirError(f"segmentation run directory {run_dir} already holds checkpoints "
                          f"({saved[0]}): pass --resume to continue that run, --overwrite to train a new model over "
                          f"it, or choose another --log_dir")


def open_run_dir(folder: str, subdirs: Tuple[Optional[str], ...] = (), checkpoints: Optional[str] = None,
                 logger=None, other_run: str = "use another --exp_name") -> str:
    """Make ``folder`` and ``subdirs`` (None entries skipped), take the run's lock (:func:`acquire_run_lock`, ``other_run``:
    its refusal's advice) and remove the temporary files of a save a kill interrupted in
    ``checkpoints`` (default ``folder``). Rank 0 only, after the refusal checks
    (:func:`check_no_checkpoints`). Returns the lock path."""
    from utils.checkpoint import remove_orphan_temporaries

    for path in (folder, *subdirs):
        if path:
            os.makedirs(path, exist_ok=True)
    lock = acquire_run_lock(folder, logger, other_run=other_run)
    remove_orphan_temporaries(checkpoints or folder, logger)
    return lock
