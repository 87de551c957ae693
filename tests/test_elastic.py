"""Elastic restarts: every group that torchrun re-forms after a failure forms at its first attempt
(its ranks never read the addresses of the group it replaces from torchrun's agent store, which
outlives the workers), and a job whose ranks are killed at several points completes with exactly
as many restarts as kills and ends as the uninterrupted run does."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
    files = [open(logs / f"rank{r}.txt", "w") for r in (0, 1)]
    workers = [subprocess.Popen([sys.executable, str(script)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                                stdout=f, stderr=subprocess.STDOUT) for r, f in enumerate(files)]
    deadline = time.monotonic() + timeout_s
    while any(w.poll() is None for w in workers):
        if time.monotonic() > deadline or any(w.poll() not in (None, 0) for w in workers):
            for w in workers:
                if w.poll() is None:
                    w.kill()
        time.sleep(0.2)
    for f in files:
        f.close()
    return [w.returncode for w in workers], "".join((logs / f"rank{r}.txt").read_text() for r in (0, 1))


def test_a_reformed_group_never_reads_the_addresses_of_the_group_it_replaces(tmp_path):
    """Two ranks form a gloo group, tear it down and form it again, seven times, in one store that
    lives on, as torchrun's agent store does across restarts; one rank always arrives 1.5 s before
    the other. Every formation succeeds at once (sum of ranks + 1 = 3). Before, the rank that came
    first read the address its peer had published in the previous formation and failed with
    "connectFullMesh failed ... Connection refused" about every second time."""
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
