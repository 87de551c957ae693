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
    boot_id, pidns = rundir.process_namespace()  # this host, boot and PID namespace: the pid can be checked
    lock.write_text(f"{dead.pid} {socket.gethostname()} {time.time():.3f} {'a' * 32} {boot_id} {pidns}\n")  # fresh
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


def test_lock_records_the_boot_id_and_pid_namespace(tmp_path):
    path = acquire_run_lock(str(tmp_path), logger="silent", stale_s=100)
    try:
        words = Path(path).read_text().split()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert words[4:6] == [boot_id, os.readlink("/proc/self/ns/pid")]
        info = read_lock(path)
        assert (info.boot_id, info.pidns) == (boot_id, os.readlink("/proc/self/ns/pid"))
    finally:
        release_run_lock(path)


def write_local_lock(folder: Path, pid: int, age_s: float, boot_id: str, pidns: str) -> Path:
    """A lock of this host name, written as another process with ``boot_id`` / ``pidns`` writes it."""
    path = folder / LOCK_NAME
    path.write_text(f"{pid} {socket.gethostname()} {time.time() - age_s - 60:.3f} {'c' * 32} {boot_id} {pidns}\n")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


@pytest.mark.parametrize("other", ["pidns", "boot"])
def test_a_live_lock_of_another_pid_namespace_is_refused_until_its_heartbeat_is_stale(tmp_path, monkeypatch, capsys,
                                                                                      other):
    """A container on this host name (host networking, apptainer --containall) whose pids this
    process cannot see: its pid reads as dead here, but its fresh heartbeat says it lives."""
    if not Path("/proc/self/ns/pid").exists():
        pytest.skip("no PID namespaces here")
    monkeypatch.setenv(rundir.STALE_ENV, "30")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # the holder's pid, as seen from here: not running
    boot_id, pidns = rundir.process_namespace()
    if other == "pidns":
        pidns, why = "pid:[4026599999]", "in another PID namespace"
    else:
        boot_id, why = "0" * 8 + "-0000-0000-0000-" + "0" * 12, "from another boot or machine"
    lock = write_local_lock(tmp_path, dead.pid, age_s=2, boot_id=boot_id, pidns=pidns)
    with pytest.raises(RunDirError) as err:
        acquire_run_lock(str(tmp_path))
    assert why in str(err.value) and f"pid {dead.pid} on {socket.gethostname()}" in str(err.value)
    assert "heartbeat 2 s ago" in str(err.value) and read_lock(str(lock)).pid == dead.pid  # left alone
    write_local_lock(tmp_path, dead.pid, age_s=90, boot_id=boot_id, pidns=pidns)  # the heartbeat stopped 90 s ago
    path = acquire_run_lock(str(tmp_path))
    try:
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and "Took over the stale run lock" in out[0] and why in out[0]
        assert "heartbeat 90 s old, more than 30 s" in out[0] and read_lock(path).pid == os.getpid()
    finally:
        release_run_lock(path)


def test_a_lock_without_boot_id_and_pid_namespace_follows_the_heartbeat(tmp_path, monkeypatch, capsys):
    """A lock of this host name that does not say where its pid lives: the pid cannot be checked."""
    monkeypatch.setenv(rundir.STALE_ENV, "30")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_NAME
    lock.write_text(f"{dead.pid} {socket.gethostname()} {time.time():.3f} {'d' * 32}\n")  # fresh heartbeat
    with pytest.raises(RunDirError, match="written without boot id and PID namespace, heartbeat 0 s ago"):
        acquire_run_lock(str(tmp_path))
    os.utime(lock, (time.time() - 90, time.time() - 90))
    path = acquire_run_lock(str(tmp_path))
    try:
        assert "Took over the stale run lock" in capsys.readouterr().out
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


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", "", "a\\b", "x\n2026-01-01 - INFO - forged"])
def test_a_run_name_that_is_a_path_is_refused_before_anything_is_created(tmp_path, name):
    import main as main_module
    from segmentation import main as seg_main

    root = tmp_path / "root"
    with pytest.raises(RunDirError, match="--exp_name .*: it names one run folder inside the experiment root"):
        main_module.main(["--config", "cfgs/pretrain.yaml", "--exp_name", name, "--experiment_root", str(root / "exp"),
                          "--data_root", str(tmp_path / "none"), "--device", "cpu"])
    with pytest.raises(RunDirError, match="--log_dir .*: it names one run folder"):
        seg_main.main(["--log_dir", name, "--log_root", str(root / "log"), "--root", str(tmp_path / "none"),
                       "--device", "cpu"])
    assert os.listdir(tmp_path) == []  # nothing created, inside or outside the roots


def test_a_run_name_that_is_a_path_is_one_line_and_status_2(tmp_path):
    out = subprocess.run([sys.executable, "main.py", "--config", "cfgs/pretrain.yaml", "--exp_name", "../../x",
                          "--experiment_root", str(tmp_path / "exp")], capture_output=True, text=True, timeout=120,
                         check=False, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert out.stderr.startswith("main.py: error: --exp_name '../../x' is a path")
    assert not (tmp_path / "exp").exists() and not (tmp_path / "x").exists()
