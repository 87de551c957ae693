"""Run-directory locks (utils/rundir.py): heartbeat, takeover of another host's stale lock (a
requeued job on another node), refusals that say how to clear them, atomic takeover among racing
takers. Another host is faked by writing the lock file by hand with an old or a fresh mtime.
See README "Reliability and security"."""
from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils import rundir
from utils.rundir import LOCK_NAME, RunDirError, acquire_run_lock, read_lock, release_run_lock

OTHER_HOST = "node-elsewhere-017"


def write_foreign_lock(folder: Path, age_s: float, host: str = OTHER_HOST, pid: int = 4242,
                       token: str = "f" * 32) -> Path:
    """A lock as another host's run writes it, last heartbeat ``age_s`` seconds ago."""
    path = folder / LOCK_NAME
    started = time.time() - age_s - 600
    path.write_text(f"{pid} {host} {started:.3f} {token}\n# written by hand\n")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_lock_holds_pid_host_start_and_token_and_release_stops_the_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.05)
    path = acquire_run_lock(str(tmp_path), logger="silent", stale_s=100)
    try:
        pid, host, started, token = Path(path).read_text().split()[:4]
        assert (int(pid), host) == (os.getpid(), socket.gethostname()) and abs(float(started) - time.time()) < 60
        assert rundir.held_locks()[os.path.abspath(path)] == token
        os.utime(path, (1, 1))  # an old heartbeat ...
        deadline = time.time() + 10
        while os.stat(path).st_mtime < time.time() - 60 and time.time() < deadline:
            time.sleep(0.02)
        assert os.stat(path).st_mtime > time.time() - 60  # ... refreshed by the heartbeat thread
        thread = next(t for t in __import__("threading").enumerate() if t.name.startswith("run-lock-heartbeat"))
    finally:
        release_run_lock(path)
    assert not Path(path).exists() and os.path.abspath(path) not in rundir.held_locks()
    thread.join(2)
    assert not thread.is_alive()


def test_another_hosts_stale_lock_is_taken_over_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(rundir.STALE_ENV, "5")
    write_foreign_lock(tmp_path, age_s=60)
    path = acquire_run_lock(str(tmp_path))
    try:
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and "Took over the stale run lock" in out[0]
        assert f"pid 4242 on {OTHER_HOST}" in out[0] and "heartbeat 60 s old, more than 5 s" in out[0]
        assert read_lock(path).pid == os.getpid()
    finally:
        release_run_lock(path)
    assert not Path(path).exists()


def test_another_hosts_live_lock_is_refused_saying_how_to_clear_it(tmp_path, monkeypatch):
    monkeypatch.setenv(rundir.STALE_ENV, "120")
    lock = write_foreign_lock(tmp_path, age_s=3)
    with pytest.raises(RunDirError) as err:
        acquire_run_lock(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    for words in (f"in use by another run (pid 4242 on {OTHER_HOST}", "heartbeat 3 s ago", "wait for it to finish",
                  "taken over automatically once its heartbeat is older than 120 s", f"delete {lock}"):
        assert words in message, (words, message)
    assert read_lock(str(lock)).pid == 4242  # left alone


def test_an_older_lock_without_heartbeat_on_another_host_is_never_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv(rundir.STALE_ENV, "1")
    lock = tmp_path / LOCK_NAME
    lock.write_text(f"4242 {OTHER_HOST}\n")
    os.utime(lock, (1, 1))
    with pytest.raises(RunDirError, match=f"older version without heartbeat.*if no run is alive, delete {lock}"):
        acquire_run_lock(str(tmp_path))


def test_same_host_dead_pid_is_stale_at_once_and_live_pid_is_refused(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_NAME
    lock.write_text(f"{dead.pid} {socket.gethostname()} {time.time():.3f} {'a' * 32}\n")  # fresh heartbeat
    path = acquire_run_lock(str(tmp_path), stale_s=3600)
    try:
        out = capsys.readouterr().out
        assert f"pid {dead.pid} on {socket.gethostname()}" in out and "is not running" in out
        assert read_lock(path).pid == os.getpid()
        with pytest.raises(RunDirError) as err:  # our own live lock
            acquire_run_lock(str(tmp_path), stale_s=3600, other_run="use another --log_dir")
        assert f"pid {os.getpid()} on" in str(err.value) and "use another --log_dir" in str(err.value)
        assert f"if no run is alive, delete {path}" in str(err.value)
    finally:
        release_run_lock(path)


def test_a_bad_stale_time_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(rundir.STALE_ENV, "soon")
    with pytest.raises(RunDirError, match="INTERMAE_LOCK_STALE_S"):
        acquire_run_lock(str(tmp_path))


def _race(folder: str, start_at: float, queue) -> None:
    os.environ[rundir.STALE_ENV] = "5"
    while time.time() < start_at:
        pass
    try:
        path = acquire_run_lock(folder, logger="silent")
        queue.put(("won", os.getpid()))
        time.sleep(2)  # hold it while the others look
        release_run_lock(path)
    except RunDirError as e:
        queue.put(("refused", str(e)))


def test_racing_takers_of_one_stale_lock_never_both_win(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(2):
        folder = tmp_path / f"r{round_}"
        folder.mkdir()
        write_foreign_lock(folder, age_s=600, token=f"{round_}" * 32)
        queue = ctx.Queue()
        start_at = time.time() + 0.7
        procs = [ctx.Process(target=_race, args=(str(folder), start_at, queue)) for _ in range(4)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        winners = [r for r in results if r[0] == "won"]
        assert len(winners) == 1, results
        assert all("in use by another run" in r[1] for r in results if r[0] == "refused"), results
        assert not (folder / LOCK_NAME).exists() and not list(folder.glob(LOCK_NAME + rundir.CLAIM_SUFFIX + "*"))
