"""Elastic restarts: every group that torchrun re-forms after a failure forms at its first attempt
(its ranks never read the addresses of the group it replaces from torchrun's agent store, which
outlives the workers), and a job whose ranks are killed at several points completes with exactly
as many restarts as kills and ends as the uninterrupted run does."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from conftest import REPO
from writers import write_tiny_pretrain_config

from utils.checkpoint import load_checkpoint_file

FORMATIONS = 7

# One worker of a 2-process group that forms, is torn down and forms again FORMATIONS times in the
# same agent store, as under torchrun: the environment torchrun gives its workers, the restart count
# going up. In every formation one rank reaches init_process_group first while the other waits, so
# the first one finds only the entries that the previous formation left in the store.
REFORMING_WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import torch
import torch.distributed as dist
from utils.dist_utils import init_dist

rank = int(os.environ["RANK"])
agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
for formation in range({formations}):
    os.environ["TORCHELASTIC_RESTART_COUNT"] = str(formation)
    if formation % 2 != rank:
        time.sleep(1.5)
    start = time.monotonic()
    init_dist("pytorch")
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    print(f"formation {{formation}} rank {{rank}}: sum {{total.item():g}} after {{time.monotonic() - start:.1f}} s",
          flush=True)
    dist.destroy_process_group()
    agent.set(f"test/torn-down/{{formation}}/{{rank}}", "1")  # the next formation starts when this one is gone
    agent.wait([f"test/torn-down/{{formation}}/{{other}}" for other in (0, 1)])
"""


def run_group(script: Path, env: dict, logs: Path, timeout_s: float) -> tuple[list, str]:
    """``script`` as ranks 0 and 1 (started directly, not by torchrun); (exit statuses, output). When
    a rank fails, the other, which would wait for it until its own timeout, is killed."""
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(logs / f"rank{r}.txt", "w")) for r in (0, 1)]
        workers = [subprocess.Popen([sys.executable, str(script)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                                    stdout=f, stderr=subprocess.STDOUT) for r, f in enumerate(files)]
        deadline = time.monotonic() + timeout_s
        while any(w.poll() is None for w in workers):
            if time.monotonic() > deadline or any(w.poll() not in (None, 0) for w in workers):
                for w in workers:
                    if w.poll() is None:
                        w.kill()
            time.sleep(0.2)
    return [w.returncode for w in workers], "".join((logs / f"rank{r}.txt").read_text() for r in (0, 1))


def test_a_reformed_group_never_reads_the_addresses_of_the_group_it_replaces(tmp_path):
    """Two ranks form a gloo group, tear it down and form it again, seven times, in one store that
    lives on, as torchrun's agent store does across restarts; one rank always arrives 1.5 s before
    the other. Every formation succeeds at once (sum of ranks + 1 = 3). Before, the rank that came
    first could read the address its peer had published in the previous formation and fail with
    "connectFullMesh failed ... Connection refused" (whether it does depends on the order of the
    two addresses, so about every second formation)."""
    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    script = tmp_path / "reforming.py"
    script.write_text(REFORMING_WORKER.format(repo=str(REPO), formations=FORMATIONS))
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(agent.port), WORLD_SIZE="2",
               TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RUN_ID="test", INTERMAE_DIST_TIMEOUT="60")
    codes, output = run_group(script, env, tmp_path / "logs", timeout_s=300)
    assert codes == [0, 0], output[-4000:]
    assert "connectFullMesh" not in output, output[-4000:]
    for formation in range(FORMATIONS):
        for rank in (0, 1):
            assert f"formation {formation} rank {rank}: sum 3 " in output, output[-4000:]


# main.py under torchrun, with ranks killed (SIGKILL) at three points, one per attempt (3 training steps
# of 2 shapes per process and epoch): attempt 0, rank 1 in the middle of epoch 1 (its 5th training
# step); attempt 1 (resumed at epoch 1), rank 1 in the validation after epoch 2; attempt 2 (resumed at
# epoch 2), rank 0 half-way through writing ckpt-last after epoch 2. Without KILLS=1, main.py as it is.
KILLED_MAIN = """
import os, signal, sys
sys.path.insert(0, {repo!r})
if os.environ.get("KILLS") == "1":
    import torch
    from models.Inter_MAE import Inter_MAE
    from utils import checkpoint
    attempt, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])
    original, steps = Inter_MAE.forward, [0]

    def kill(where):
        print(f"[test] SIGKILL to rank {{rank}} of attempt {{attempt}} {{where}}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def forward(self, *args, **kwargs):
        steps[0] += self.training and torch.is_grad_enabled()  # training steps, not BatchNorm recalibration passes
        if (attempt, rank) == (0, 1) and self.training and steps[0] == 5:
            kill("mid-epoch")
        if (attempt, rank) == (1, 1) and not self.training and steps[0] == 6:
            kill("during validation")
        return original(self, *args, **kwargs)

    Inter_MAE.forward = forward
    if (attempt, rank) == (2, 0):
        def killed_while_writing(obj, path):
            def write(f):
                f.write(b"half a checkpoint")
                f.flush()
                kill("writing ckpt-last")
            checkpoint.atomic_write(path, write)
        checkpoint.atomic_save = killed_while_writing
import main
from utils.cli import run_main
sys.argv = ["main.py"] + sys.argv[1:]
run_main(main.main)
"""
KILLED_AT = ["rank 1 of attempt 0 mid-epoch", "rank 1 of attempt 1 during validation",
             "rank 0 of attempt 2 writing ckpt-last"]
KILLS = len(KILLED_AT)


def torchrun(script: Path, cfg: Path, exp_root: Path, name: str, kills: bool) -> subprocess.Popen:
    """``script`` under ``torchrun --standalone --nproc_per_node 2 --max-restarts KILLS`` (started, not waited for)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), INTERMAE_DIST_TIMEOUT="120",
               KILLS="1" if kills else "0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max-restarts",
           str(KILLS), str(script), "--launcher", "pytorch", "--config", str(cfg), "--exp_name", name, "--resume", "auto",
           "--num_workers", "0", "--device", "cpu", "--experiment_root", str(exp_root), "--no_progress"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finished(job: subprocess.Popen, deadline: float) -> str:
    """``job``'s output once it exits; at ``deadline`` it is killed with its workers (torchrun, killed
    alone, would leave them running) and the output ends with a line saying so."""
    try:
        return job.communicate(timeout=max(deadline - time.monotonic(), 1))[0]
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        return job.communicate()[0] + "\n[test] torchrun killed at its deadline\n"


def test_torchrun_survives_three_kills_with_three_restarts_and_ends_as_the_uninterrupted_run(tmp_path, shapenet55_root):
    """``torchrun --max-restarts 3`` (2 gloo processes, ``--resume auto``) with a rank killed mid-epoch,
    during validation and during a checkpoint write: the job completes, each restart's group formed
    at its first attempt (3 kills use exactly the 3 restarts; one failed formation would have ended
    the job), each restart resumed from ckpt-last, and the final checkpoint equals that of the same
    job run without kills (run alongside): weights, metrics and every rank's RNG states."""
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=3)
    script = tmp_path / "killed_main.py"
    script.write_text(KILLED_MAIN.format(repo=str(REPO)))
    exp = tmp_path / "exp"
    jobs = [torchrun(script, cfg, exp, "killed", kills=True), torchrun(script, cfg, exp, "plain", kills=False)]
    deadline = time.monotonic() + 480
    killed, plain = [finished(job, deadline) for job in jobs]
    assert jobs[1].returncode == 0, plain[-4000:]
    assert jobs[0].returncode == 0, killed[-4000:]
    assert "connectFullMesh" not in killed and "init_process_group" not in killed, killed[-4000:]
    # each of the 3 restarts followed a kill: had a restarted group failed to form, that attempt's kill
    # would not have happened (or the job would have run out of restarts)
    assert [line.split("SIGKILL to ", 1)[1] for line in killed.splitlines() if "[test] SIGKILL" in line] == KILLED_AT, \
        killed[-4000:]
    run_dir = exp / "tiny" / "killed"
    logs = "".join(p.read_text() for p in sorted(run_dir.glob("*.log")))
    resumed = [line for line in logs.splitlines() if "resumed from" in line]
    assert len(resumed) == KILLS, resumed
    assert not (run_dir / ".lock").exists()
    # the killed write's temporary file (if not yet removed: only files older than a minute are) is all it left
    assert all(tmp.read_bytes() == b"half a checkpoint" for tmp in run_dir.glob(".tmp-*"))

    a = load_checkpoint_file(str(exp / "tiny" / "plain" / "ckpt-last.pth"))
    b = load_checkpoint_file(str(run_dir / "ckpt-last.pth"))
    assert a["epoch"] == b["epoch"] == 2 and a["metrics"] == b["metrics"]
    assert a["base_model"].keys() == b["base_model"].keys()
    for key, value in a["base_model"].items():
        assert torch.equal(value, b["base_model"][key]), key
    for rank in (0, 1):
        assert torch.equal(a["rng_states"][rank]["torch"], b["rng_states"][rank]["torch"]), rank
        assert torch.equal(a["rng_states"][rank]["numpy"]["key"], b["rng_states"][rank]["numpy"]["key"]), rank
