"""Preemption and honest resume: SIGTERM / SIGINT mid-epoch write ckpt-last with the
position inside the epoch, and ``--resume`` then repeats the uninterrupted run bit for bit; the
command exits 143 / 130 with one line in the console and the run log; ``--resume`` lists changed
keys, follows a new max_epoch and lr, refuses a new model shape, and keeps the previous config;
``--resume auto`` starts or continues. Segmentation resumes exactly too."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import main as main_module
from conftest import REPO
from engine.preemption import Preempted
from models.Inter_MAE import Inter_MAE
from utils.checkpoint import load_checkpoint_file
from utils.config import ConfigError
from writers import write_shapenetpart, write_tiny_pretrain_config


def run_main(cfg: Path, exp_root: Path, name: str, *extra: str):
    return main_module.main(["--config", str(cfg), "--exp_name", name, "--num_workers", "0", "--device", "cpu",
                             "--experiment_root", str(exp_root), "--no_progress", *extra])


@pytest.fixture
def signal_at_call(monkeypatch):
    """``arm(n, signum)``: the n-th training forward (counted from 1) sends ``signum`` to this process."""
    state = {"n": None, "calls": 0, "signum": signal.SIGTERM}

    def arm(n, signum=signal.SIGTERM, cls=Inter_MAE):
        state.update(n=n, calls=0, signum=signum)
        original = cls.forward

        def forward(self, *args, **kwargs):
            step = self.training and torch.is_grad_enabled()  # not a BatchNorm recalibration pass (no_grad)
            state["calls"] += step
            if step and state["calls"] == state["n"]:
                os.kill(os.getpid(), state["signum"])
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", forward)

    return arm


def weights(path: Path) -> dict:
    return load_checkpoint_file(str(path))["base_model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path, shapenet55_root, signal_at_call,
                                                                     signum):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=3)  # 3 batches an epoch
    run_main(cfg, tmp_path / "exp", "full")
    signal_at_call(5, signum)  # epoch 1, its second batch: the step finishes, then the run stops
    with pytest.raises(Preempted) as stopped:
        run_main(cfg, tmp_path / "exp", "cut")
    assert stopped.value.exit_status == 128 + int(signum)
    assert "after batch 2/3 of epoch 1" in str(stopped.value) and "--resume" in str(stopped.value)
    run_dir = tmp_path / "exp" / "tiny" / "cut"
    ckpt = load_checkpoint_file(str(run_dir / "ckpt-last.pth"))
    assert (ckpt["epoch"], ckpt["next_step"]) == (0, 2) and ckpt["epoch_rng_states"]
    assert not (run_dir / ".lock").exists()
    log = next(run_dir.glob("*.log")).read_text()
    assert f"stopped by {signal.Signals(signum).name} after batch 2/3 of epoch 1" in log
    signal_at_call(None)
    run_main(cfg, tmp_path / "exp", "cut", "--resume")
    full, cut = (load_checkpoint_file(str(tmp_path / "exp" / "tiny" / n / "ckpt-last.pth")) for n in ("full", "cut"))
    assert full["epoch"] == cut["epoch"] == 2 and cut["next_step"] == 0
    assert_same_weights(tmp_path / "exp" / "tiny" / "full" / "ckpt-last.pth", run_dir / "ckpt-last.pth")
    assert full["optimizer"]["state"].keys() == cut["optimizer"]["state"].keys()


def test_the_command_exits_143_with_one_line_and_the_resume_command(tmp_path, shapenet55_root):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=2)
    # The real command, with its first model step sending SIGTERM to the process (as a scheduler would).
    script = tmp_path / "preempt.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from models.Inter_MAE import Inter_MAE
        original = Inter_MAE.forward
        def forward(self, *a, **k):
            if self.training and not getattr(Inter_MAE, "_sent", False):
                Inter_MAE._sent = True
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, *a, **k)
        Inter_MAE.forward = forward
        import main
        from utils.cli import run_main
        sys.argv = ["main.py"] + sys.argv[1:]
        run_main(main.main)
    """))
    args = ["--config", str(cfg), "--exp_name", "job", "--num_workers", "0", "--device", "cpu",
            "--experiment_root", str(tmp_path / "exp"), "--no_progress"]
    result = subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if "stopped by SIGTERM" in ln]
    assert len(lines) == 1 and "main.py" in lines[0] and "--resume" in lines[0]
    run_dir = tmp_path / "exp" / "tiny" / "job"
    assert not (run_dir / ".lock").exists() and (run_dir / "ckpt-last.pth").is_file()
    assert not list(run_dir.glob(".tmp-*"))


def test_resume_follows_a_longer_schedule_and_a_new_lr(tmp_path, shapenet55_root):
    """--resume --opts max_epoch=4 after a 2-epoch run: the changed keys in one line, a cosine over 4
    epochs from the restored position (lr per epoch against the formula), the new lr applied, the
    previous config kept as config.resume-1.yaml."""
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=2)
    run_main(cfg, tmp_path / "exp", "grow")
    run_dir = tmp_path / "exp" / "tiny" / "grow"
    run_main(cfg, tmp_path / "exp", "grow", "--resume", "--opts", "max_epoch=4", "optimizer.kwargs.lr=0.002")
    log = sorted(run_dir.glob("*.log"))[-1].read_text()
    assert "--resume with 3 changed key(s): " in log
    for key in ("max_epoch: 2 -> 4", "optimizer.kwargs.lr: 0.001 -> 0.002", "scheduler.kwargs.epochs: 2 -> 4"):
        assert key in log
    assert (run_dir / "config.resume-1.yaml").is_file()
    assert "max_epoch: 4" in (run_dir / "config.yaml").read_text()
    assert "max_epoch: 2" in (run_dir / "config.resume-1.yaml").read_text()

    def cosine(epoch, base, epochs=4, warmup=1, lr_min=1e-6, warmup_init=1e-6):
        if epoch < warmup:
            return warmup_init + epoch * (base - warmup_init) / warmup
        return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * epoch / epochs))

    lrs = {}
    for line in log.splitlines():
        if "[Training] EPOCH:" in line:
            epoch = int(line.split("EPOCH:")[1].split()[0])
            lrs[epoch] = float(line.rsplit("lr = ", 1)[1])
    assert 2 in lrs and 3 in lrs  # the resumed epochs (the log may also hold the first run's lines)
    for epoch in (2, 3):
        assert lrs[epoch] == pytest.approx(cosine(epoch, 0.002), abs=1e-6)
    ckpt = load_checkpoint_file(str(run_dir / "ckpt-last.pth"))
    assert ckpt["epoch"] == 3 and ckpt["scheduler"]["epochs"] == 4
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.002)


def test_resume_refuses_a_new_model_shape_naming_the_key(tmp_path, shapenet55_root):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=1)
    run_main(cfg, tmp_path / "exp", "shape")
    with pytest.raises(ConfigError, match=r"--resume cannot change 'model.group_size' \(16 -> 8\)"):
        run_main(cfg, tmp_path / "exp", "shape", "--resume", "--opts", "max_epoch=2", "model.group_size=8")
    # a key that only changes what the next steps do is applied
    run_main(cfg, tmp_path / "exp", "shape", "--resume", "--opts", "max_epoch=2",
             "model.transformer_config.mask_ratio=0.5")
    assert "mask_ratio: 0.5" in (tmp_path / "exp" / "tiny" / "shape" / "config.yaml").read_text()


def test_resume_auto_starts_then_continues(tmp_path, shapenet55_root):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=1)
    run_main(cfg, tmp_path / "exp", "auto", "--resume", "auto")  # nothing yet: a new run
    run_dir = tmp_path / "exp" / "tiny" / "auto"
    assert load_checkpoint_file(str(run_dir / "ckpt-last.pth"))["epoch"] == 0
    run_main(cfg, tmp_path / "exp", "auto", "--resume", "auto", "--opts", "max_epoch=2")  # continues
    assert load_checkpoint_file(str(run_dir / "ckpt-last.pth"))["epoch"] == 1
    assert "resumed from" in sorted(run_dir.glob("*.log"))[-1].read_text()


# --------------------------------------------------------------------------------- segmentation
def seg_args(root: Path, log_root: Path, name: str, *extra: str):
    from segmentation.main import get_args

    return get_args(["--root", str(root), "--log_root", str(log_root), "--log_dir", name, "--npoint", "128",
                     "--device", "cpu", "--num_workers", "0", "--batch_size", "4", "--epoch", "3",
                     "--warmup_epoch", "1", "--trans_dim", "32", "--depth", "3", "--num_heads", "2",
                     "--num_group", "16", "--group_size", "8", "--no_progress", *extra])


def test_segmentation_interrupted_and_resumed_equals_the_uninterrupted_run(tmp_path, signal_at_call):
    from engine.partseg import run
    from models.PartSegTransformer import PartSegTransformer

    root = write_shapenetpart(tmp_path / "part", {"Bag": (5, 1, 2), "Table": (5, 1, 2)})  # 12 trainval: 3 batches
    run(seg_args(root, tmp_path / "log", "full"))
    signal_at_call(5, signal.SIGTERM, PartSegTransformer)
    with pytest.raises(Preempted, match="after batch 2/3 of epoch 1"):
        run(seg_args(root, tmp_path / "log", "cut"))
    cut = tmp_path / "log" / "part_seg" / "cut"
    assert (cut / "config.yaml").is_file() and not (cut / ".lock").exists()
    signal_at_call(None, signal.SIGTERM, PartSegTransformer)
    run(seg_args(root, tmp_path / "log", "cut", "--resume"))
    full = tmp_path / "log" / "part_seg" / "full"
    assert_same_weights(full / "checkpoints" / "ckpt-last.pth", cut / "checkpoints" / "ckpt-last.pth")
    assert_same_weights(full / "checkpoints" / "best_model.pth", cut / "checkpoints" / "best_model.pth")
    ckpt = load_checkpoint_file(str(cut / "checkpoints" / "ckpt-last.pth"))
    assert ckpt["config"]["model"]["NAME"] == "PartSegTransformer" and ckpt["scheduler"] is not None
    # metrics.jsonl: epoch 1 (stopped, then finished by the resumed run) once; each epoch's test figures
    # equal the uninterrupted run's (the training means of epoch 1 cover the batches after the resume only)
    full_lines, cut_lines = ([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                             for run in (full, cut))
    assert [line["epoch"] for line in cut_lines] == [line["epoch"] for line in full_lines] == [0, 1, 2]
    tested = ("accuracy", "class_avg_accuracy", "class_avg_iou", "instance_avg_iou")
    assert [[line[k] for k in tested] for line in cut_lines] == [[line[k] for k in tested] for line in full_lines]
    assert cut_lines[2]["train_loss"] == full_lines[2]["train_loss"] and cut_lines[1]["lr"] == full_lines[1]["lr"]
    # the saved model section rebuilds the model for --test, without the model flags
    from segmentation.main import get_args
    metrics = run(get_args(["--test", "--root", str(root), "--log_root", str(tmp_path / "log"), "--log_dir", "cut",
                            "--npoint", "128", "--device", "cpu", "--num_workers", "0", "--batch_size", "4"]))
    assert 0.0 <= metrics["instance_avg_iou"] <= 1.0


def test_a_rank0_write_failure_stops_every_rank_with_the_same_line(tmp_path, shapenet55_root):
    """Disk full on rank 0 while saving ckpt-last: both processes end with exit status 2 and the same
    CheckpointWriteError line (none keeps training), and the run log has it too."""
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=2)
    script = tmp_path / "full_disk.py"
    script.write_text(textwrap.dedent(f"""
        import errno, os, sys
        sys.path.insert(0, {str(REPO)!r})
        from utils import checkpoint
        if os.environ.get("RANK") == "0":
            def full(f):
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            checkpoint.atomic_save = lambda obj, path: checkpoint.atomic_write(path, full)
        import main
        from utils.cli import run_main
        sys.argv = ["main.py"] + sys.argv[1:]
        run_main(main.main)
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "--launcher", "pytorch", "--config", str(cfg), "--exp_name", "full", "--num_workers", "0", "--device", "cpu",
           "--experiment_root", str(tmp_path / "exp"), "--no_progress"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if "error: writing" in ln and "[CheckpointWriteError]" in ln]
    assert len(lines) == 2 and len({ln.split("error: ", 1)[1] for ln in lines}) == 1, result.stderr[-3000:]
    assert "No space left on device" in lines[0] and "Traceback" not in result.stderr.split("error: writing")[0][-500:]
    run_dir = tmp_path / "exp" / "tiny" / "full"
    assert "CheckpointWriteError" in next(run_dir.glob("*.log")).read_text()
    assert not (run_dir / "ckpt-last.pth").exists() and not list(run_dir.glob(".tmp-*"))


def test_resume_auto_takes_the_warm_start_of_a_new_run_and_ignores_it_on_requeue(tmp_path, shapenet55_root):
    """The same command line for the first start and every requeue: ``--resume auto --ckpts P``
    starts from P when the run has no ckpt-last, and continues the run when it has one."""
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=1)
    run_main(cfg, tmp_path / "exp", "first")
    warm = tmp_path / "exp" / "tiny" / "first" / "ckpt-last.pth"
    run_main(cfg, tmp_path / "exp", "job", "--ckpts", str(warm), "--resume", "auto")
    run_dir = tmp_path / "exp" / "tiny" / "job"
    assert "warm start from" in sorted(run_dir.glob("*.log"))[-1].read_text()
    run_main(cfg, tmp_path / "exp", "job", "--ckpts", str(warm), "--resume", "auto", "--opts", "max_epoch=2")
    assert load_checkpoint_file(str(run_dir / "ckpt-last.pth"))["epoch"] == 1
    assert "resumed from" in "".join(p.read_text() for p in run_dir.glob("*.log"))
