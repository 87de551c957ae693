"""Several processes (gloo on CPU): exact resume with per-rank RNG states, DDP with the image
branch when a process has no views, and a run-directory refusal seen by every process."""
from __future__ import annotations

import copy
import datetime
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from conftest import REPO
from writers import TINY_PRETRAIN, write_tiny_pretrain_config

from utils.checkpoint import load_checkpoint_file

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def torchrun_main(cfg: Path, exp_root: Path, exp_name: str, *extra: str) -> str:
    """``main.py`` in 2 gloo processes (``--standalone``: a free port); returns the run's log text."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "main.py"), "--launcher", "pytorch", "--config", str(cfg), "--exp_name", exp_name,
           "--device", "cpu", "--experiment_root", str(exp_root), *extra]
    result = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return "".join(p.read_text() for p in sorted((exp_root / cfg.stem / exp_name).glob("*.log")))


# --------------------------------------------------------------------------------- exact resume
def stopped_after(exp: Path, run: str, epoch_ckpt: str, name: str) -> None:
    """A run directory ``name`` as a run of ``run`` killed right after writing ``epoch_ckpt`` leaves
    it: its saved config, and that checkpoint as its ``ckpt-last.pth``."""
    (exp / "tiny" / name).mkdir(parents=True)
    shutil.copy(exp / "tiny" / run / "config.yaml", exp / "tiny" / name / "config.yaml")
    shutil.copy(exp / "tiny" / run / epoch_ckpt, exp / "tiny" / name / "ckpt-last.pth")


def run_main(cfg: Path, exp: Path, name: str, *extra: str) -> str:
    """``main.py`` in this process (1 process); returns the run's log text."""
    import main as main_module

    main_module.main(["--config", str(cfg), "--exp_name", name, "--device", "cpu", "--experiment_root", str(exp),
                      *extra])
    return "".join(p.read_text() for p in sorted((exp / cfg.stem / name).glob("*.log")))


def assert_same_run(exp: Path, a: str, b: str, ranks: int) -> None:
    """Runs ``a`` and ``b`` end with bit-identical weights, metrics and RNG states."""
    full = load_checkpoint_file(str(exp / "tiny" / a / "ckpt-last.pth"))
    split = load_checkpoint_file(str(exp / "tiny" / b / "ckpt-last.pth"))
    assert full["epoch"] == split["epoch"] == 1
    assert full["metrics"] == split["metrics"]
    assert full["base_model"].keys() == split["base_model"].keys()
    for key, value in full["base_model"].items():
        assert torch.equal(value, split["base_model"][key]), key
    states = [(full["rng_states"][r], split["rng_states"][r]) for r in range(ranks)] if ranks > 1 else \
        [(full["rng_state"], split["rng_state"])]
    for rank, (x, y) in enumerate(states):  # every process ends on the same random streams
        assert torch.equal(x["torch"], y["torch"]) and torch.equal(x["numpy"]["key"], y["numpy"]["key"]), rank


def test_two_process_resume_equals_the_uninterrupted_run(tmp_path, shapenet55_root):
    """Pre-training draws masks, drop-path and augmentation from torch and point subsets from NumPy
    on every process: 2 epochs in one go, and the same run stopped after epoch 1 and continued
    with --resume, end bit for bit the same. Then: 1 process resuming the 2-process checkpoint."""
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=2)
    exp = tmp_path / "exp"
    torchrun_main(cfg, exp, "full", "--num_workers", "0")
    stopped_after(exp, "full", "ckpt-epoch-001.pth", "split")
    log = torchrun_main(cfg, exp, "split", "--num_workers", "0", "--resume")
    assert "RNG states (2 processes)" in log

    first = torch.load(exp / "tiny" / "full" / "ckpt-epoch-001.pth")  # plain torch.load: weights_only
    states = first["rng_states"]
    assert len(states) == 2
    assert not torch.equal(states[0]["torch"], states[1]["torch"])  # rank 1's own streams are kept
    assert not torch.equal(states[0]["numpy"]["key"], states[1]["numpy"]["key"])
    assert torch.equal(first["rng_state"]["torch"], states[0]["torch"])  # rank 0's, for older readers
    assert_same_run(exp, "full", "split", ranks=2)

    # the 2-process checkpoint resumed by 1 process cannot be exact: one warning line, then it goes on
    stopped_after(exp, "full", "ckpt-epoch-001.pth", "one")
    log = run_main(cfg, exp, "one", "--num_workers", "0", "--resume")
    warnings = [line for line in log.splitlines() if "WARNING: --resume" in line]
    assert len(warnings) == 1 and "the RNG states of 2 process(es) but this run has 1" in warnings[0], warnings
    assert torch.load(exp / "tiny" / "one" / "ckpt-last.pth")["epoch"] == 1


def test_resume_with_a_loader_worker_equals_the_uninterrupted_run(tmp_path, shapenet55_root):
    """With ``--num_workers 1`` the point subsets are drawn in a worker seeded from the torch RNG
    when each epoch's iterator is made: the restored torch state must give the same worker seed."""
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=2)
    exp = tmp_path / "exp"
    run_main(cfg, exp, "full", "--num_workers", "1")
    stopped_after(exp, "full", "ckpt-epoch-001.pth", "split")
    run_main(cfg, exp, "split", "--num_workers", "1", "--resume")
    assert_same_run(exp, "full", "split", ranks=1)


# ------------------------------------------------------------------------ DDP without views
def _fixed_mask(batch: int, groups: int, masked: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, groups, dtype=torch.bool)
    for row in mask:
        row[torch.randperm(groups, generator=gen)[:masked]] = True
    return mask


def _flat_grads(model: torch.nn.Module) -> torch.Tensor:
    """Every trainable parameter's gradient, flattened and concatenated (None counts as zeros)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters() if p.requires_grad])


# (rank 0, rank 1) have views? Step 2 has none anywhere; an unused parameter in a step shows in the next.
VIEW_PLAN = [(True, False), (False, False), (True, True), (False, True)]


def _no_views_worker(rank: int, store: str, report: str) -> None:
    """One process of :func:`test_ddp_step_when_a_process_has_no_views`; failures go to ``report``."""
    try:
        import torch.distributed as dist
        from test_image_branch import branch_model_cfg

        from models import build_model_from_cfg

        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=60))
        torch.manual_seed(0)  # the same initial model on both processes
        model = build_model_from_cfg(branch_model_cfg()).train()
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False
        for step, plan in enumerate(VIEW_PLAN):
            gen = torch.Generator().manual_seed(100 * step + rank)
            pts = torch.rand(4, 128, 3, generator=gen)
            imgs = torch.rand(4, 2, 3, 32, 32, generator=gen) if plan[rank] else None
            mask = _fixed_mask(4, 16, 9, seed=10 * step + rank)
            # what this process alone contributes: the same step on a copy, without DDP
            local = copy.deepcopy(model)
            local.zero_grad(set_to_none=True)
            local(pts, imgs, mask=mask)["loss"].backward()
            expected = _flat_grads(local)
            dist.all_reduce(expected)
            expected /= 2

            ddp.zero_grad(set_to_none=True)
            out = ddp(pts, imgs, mask=mask)
            assert set(out) == {"loss", "loss_rec", "loss_con_raw", "loss_con_weighted"}, set(out)
            if not plan[rank]:
                assert out["loss_con_raw"].item() == 0.0 and out["loss_con_weighted"].item() == 0.0
            out["loss"].backward()
            grads = _flat_grads(model)
            both = [torch.empty_like(grads) for _ in range(2)]
            dist.all_gather(both, grads)
            assert torch.equal(both[0], both[1]), f"step {step}: the processes hold different gradients"
            assert torch.allclose(grads, expected, rtol=1e-5, atol=1e-8), \
                f"step {step}: gradients are not the mean of the processes' own (max diff {(grads - expected).abs().max()})"
            inv_head = torch.cat([p.grad.reshape(-1) for p in model.image_branch.inv_head.parameters()])
            assert (inv_head.abs().sum() > 0) == any(plan), f"step {step}"
        dist.destroy_process_group()
    except BaseException:
        Path(report).write_text(traceback.format_exc())
        raise


def run_two_processes(target, tmp_path: Path, timeout: float = 180.0) -> None:
    """``target(rank, store, report)`` in 2 spawned processes (a file store: no port); fails with the
    processes' tracebacks, or when they have not finished after ``timeout`` s (a collective mismatch)."""
    ctx = torch.multiprocessing.get_context("spawn")
    reports = [tmp_path / f"rank{r}.err" for r in range(2)]
    procs = [ctx.Process(target=target, args=(r, str(tmp_path / "store"), str(reports[r]))) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    errors = "\n".join(f"rank {r}:\n{f.read_text()}" for r, f in enumerate(reports) if f.exists())
    assert not hung, f"ranks {hung} still running after {timeout} s (a collective that not every process joined)\n{errors}"
    assert all(p.exitcode == 0 for p in procs), errors or [p.exitcode for p in procs]


def test_ddp_step_when_a_process_has_no_views(tmp_path):
    """Inter-MAE with its image branch under DDP (no find_unused_parameters), while one or both
    processes have no views: every step completes and both processes hold the same gradients, the
    mean of what each would compute alone (views absent contributing nothing)."""
    run_two_processes(_no_views_worker, tmp_path)


# ---------------------------------------------------------------------- run directory refusals
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_ranks(cmd: list, timeout: float = 120.0) -> list:
    """``cmd`` as ranks 0 and 1 of one job, started directly (not by torchrun, which would stop the
    survivors of a failed rank and hide a hang); returns (exit code, stderr) per rank. Fails when a
    rank is still running after ``timeout`` s."""
    env = dict(ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    procs = [subprocess.Popen(cmd, cwd=REPO, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    results, hung = [], []
    deadline = time.monotonic() + timeout
    for rank, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            hung.append(rank)
        results.append((proc.returncode, err))
    assert not hung, f"ranks {hung} did not stop within {timeout} s:\n" + "\n".join(e[-2000:] for _, e in results)
    return results


@pytest.mark.parametrize("job", ["pretrain", "partseg"])
def test_a_live_lock_stops_every_process(tmp_path, job):
    """Rank 0 finds the run directory locked by a live process (this one): both ranks exit non-zero
    at once, each naming the lock, instead of rank 1 waiting for rank 0 at a barrier."""
    if job == "pretrain":
        cfg = tmp_path / "cfg.yaml"  # valid (it is checked first); its data is never read: the directory is refused
        cfg.write_text(TINY_PRETRAIN.format(root=tmp_path / "no_data", epochs=1))
        run_dir = tmp_path / "exp" / "cfg" / "locked"
        cmd = [sys.executable, str(REPO / "main.py"), "--launcher", "pytorch", "--config", str(cfg), "--exp_name",
               "locked", "--device", "cpu", "--experiment_root", str(tmp_path / "exp")]
    else:
        run_dir = tmp_path / "log" / "part_seg" / "locked"
        cmd = [sys.executable, str(REPO / "segmentation" / "main.py"), "--launcher", "pytorch", "--root",
               str(tmp_path / "no_data"), "--log_root", str(tmp_path / "log"), "--log_dir", "locked", "--device",
               "cpu", "--num_workers", "0"]
    run_dir.mkdir(parents=True)
    lock = run_dir / ".lock"
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    for rank, (code, err) in enumerate(launch_two_ranks(cmd)):
        assert code != 0, f"rank {rank} exited 0"
        assert f"in use by another run (pid {os.getpid()} on" in err and str(lock) in err, f"rank {rank}:\n{err[-3000:]}"
    assert lock.read_text().split()[0] == str(os.getpid())  # the other run's lock is left alone
