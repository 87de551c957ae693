"""Pre-training through main.py (engine/pretrain.py): one run, exact resume, non-finite loss,
2-process torchrun."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main as main_module
from conftest import REPO
from engine.engine import NonFiniteLossError
from models.Inter_MAE import Inter_MAE
from utils.checkpoint import load_checkpoint_file
from writers import write_tiny_pretrain_config


def run_main(cfg: Path, exp_root: Path, exp_name: str, *extra: str) -> None:
    main_module.main(["--config", str(cfg), "--exp_name", exp_name, "--num_workers", "0", "--device", "cpu",
                      "--experiment_root", str(exp_root), *extra])


def test_one_run_writes_layout_and_loss_falls(tmp_path, shapenet55_root):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=2)
    run_main(cfg, tmp_path / "exp", "one")
    exp = tmp_path / "exp" / "tiny" / "one"
    assert (exp / "config.yaml").is_file() and list(exp.glob("*.log"))
    assert (exp / "ckpt-epoch-000.pth").is_file() and (exp / "ckpt-epoch-001.pth").is_file()  # 0-based, as released
    assert list((tmp_path / "exp" / "tiny" / "TFBoard" / "one" / "train").glob("events.*"))
    ckpt = load_checkpoint_file(str(exp / "ckpt-last.pth"))
    assert ckpt["epoch"] == 1
    assert not any(k.startswith("module.") for k in ckpt["base_model"])
    assert all(isinstance(v, float) for v in ckpt["metrics"].values())
    assert {"optimizer", "scheduler", "rng_state", "best_metrics"} <= set(ckpt)
    # the feature-health line of each validation: 4 validation shapes span at most 3 centred directions
    assert 1.0 <= ckpt["metrics"]["feature_rank"] <= 3.0 + 1e-6
    assert 1.0 / 3.0 - 1e-6 <= ckpt["metrics"]["feature_first_share"] <= 1.0
    log = "".join(p.read_text() for p in exp.glob("*.log"))
    assert "[Feature health] EPOCH: 0 validation features: effective rank" in log and "(4 shapes, 64 dimensions)" in log
    # metrics.jsonl: one line per epoch, in order, with that epoch's checkpointed figures and lr
    lines = metrics_lines(exp)
    assert [line["epoch"] for line in lines] == [0, 1]
    for epoch, line in enumerate(lines):
        assert set(line) == {"epoch", "train_loss", "train_loss_rec", "val_loss_rec", "feature_rank",
                             "feature_first_share", "feature_std", "lr", "epoch_time_s", "wall_time"}
        saved = load_checkpoint_file(str(exp / f"ckpt-epoch-{epoch:03d}.pth"))
        assert {k: line[k] for k in saved["metrics"]} == saved["metrics"]
        assert line["lr"] == saved["optimizer"]["param_groups"][0]["lr"] and line["epoch_time_s"] > 0
    assert lines[0]["wall_time"] <= lines[1]["wall_time"]


def metrics_lines(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def figures(lines: list) -> list:
    """The lines without their timings (which differ between runs)."""
    return [{k: v for k, v in line.items() if k not in ("epoch_time_s", "wall_time")} for line in lines]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, shapenet55_root):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=3)
    run_main(cfg, tmp_path / "exp", "full")
    # stopped after 2 of 3 epochs: the schedule stays the 3-epoch one (set explicitly, else it follows max_epoch)
    run_main(cfg, tmp_path / "exp", "split", "--opts", "max_epoch=2", "scheduler.kwargs.epochs=3")
    # as if killed after epoch 1's metrics line but before its checkpoint: the run resumes after epoch 0
    split_dir = tmp_path / "exp" / "tiny" / "split"
    (split_dir / "ckpt-epoch-000.pth").replace(split_dir / "ckpt-last.pth")
    run_main(cfg, tmp_path / "exp", "split", "--resume", "--opts", "max_epoch=3")
    full = load_checkpoint_file(str(tmp_path / "exp" / "tiny" / "full" / "ckpt-last.pth"))
    split = load_checkpoint_file(str(tmp_path / "exp" / "tiny" / "split" / "ckpt-last.pth"))
    assert full["epoch"] == split["epoch"] == 2
    assert full["metrics"] == split["metrics"]
    for key, value in full["base_model"].items():
        assert torch.equal(value, split["base_model"][key]), key
    lines = metrics_lines(split_dir)
    assert [line["epoch"] for line in lines] == [0, 1, 2]  # epoch 1 once, from the resumed run
    assert figures(lines) == figures(metrics_lines(tmp_path / "exp" / "tiny" / "full"))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, shapenet55_root, monkeypatch):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=1)
    run_main(cfg, tmp_path / "exp", "nan")
    path = tmp_path / "exp" / "tiny" / "nan" / "ckpt-last.pth"
    before = path.read_bytes()
    original = Inter_MAE.forward

    def nan_forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(Inter_MAE, "forward", nan_forward)
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        run_main(cfg, tmp_path / "exp", "nan", "--resume", "--opts", "max_epoch=2")
    assert path.read_bytes() == before


def test_torchrun_two_cpu_processes(tmp_path, shapenet55_root):
    cfg = write_tiny_pretrain_config(tmp_path / "tiny.yaml", shapenet55_root, epochs=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # --standalone: a rendezvous on a free local port, so runs can overlap and repeat.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "main.py"), "--launcher", "pytorch", "--config", str(cfg), "--exp_name", "ddp",
           "--num_workers", "0", "--device", "cpu", "--experiment_root", str(tmp_path / "exp")]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpt = load_checkpoint_file(str(tmp_path / "exp" / "tiny" / "ddp" / "ckpt-last.pth"))
    assert ckpt["epoch"] == 0 and not any(k.startswith("module.") for k in ckpt["base_model"])
    logs = list((tmp_path / "exp" / "tiny" / "ddp").glob("*.log"))
    assert len(logs) == 1 and "world size 2" in logs[0].read_text()
