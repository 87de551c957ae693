"""Bad inputs, one class each, through the real command line where practical (``main.main``, or a
subprocess for the exit code): every one gives a clear error naming what was wrong and where.
See docs/reliability.md."""
from __future__ import annotations

import errno
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import main as main_module
from datasets import DATASETS
from datasets.common import DatasetFormatError
from datasets.io import read_ply, write_ply
from datasets.modelnet_cache import load_cache
from engine.engine import NonFiniteInputError, NonFiniteLossError, log_validation
from engine.finetune import make_eval_step
from engine.engine import AccuracyMeter
from models import MODELS
from utils import checkpoint as ckpt_mod
from utils import parser, rundir
from utils.checkpoint import CheckpointError, atomic_save, load_checkpoint_file
from utils.config import ConfigError, cfg_from_yaml_file
from utils.validate import validate_config
from utils.rundir import RunDirError, acquire_run_lock, release_run_lock
from writers import TINY_FINETUNE, TINY_PRETRAIN

REPO = Path(__file__).resolve().parent.parent


def write_cfg(tmp_path: Path, text: str, name: str = "bad.yaml", **replace) -> Path:
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def pretrain_text(tmp_path: Path, epochs: int = 1) -> str:
    return TINY_PRETRAIN.format(root=tmp_path / "data", epochs=epochs)


def finetune_text(tmp_path: Path, epochs: int = 1) -> str:
    return TINY_FINETUNE.format(root=tmp_path / "mn", epochs=epochs)


def run_main(tmp_path: Path, cfg: Path, *extra: str, exp_name: str = "run"):
    return main_module.main(["--config", str(cfg), "--exp_name", exp_name, "--num_workers", "0", "--device", "cpu",
                             "--experiment_root", str(tmp_path / "exp"), *extra])


def config_error(tmp_path, text: str, *extra: str) -> str:
    cfg = write_cfg(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        run_main(tmp_path, cfg, *extra)
    return str(err.value)


# ------------------------------------------------------------------------------ config values
def test_numeric_strings_become_numbers(tmp_path):
    cfg = cfg_from_yaml_file(write_cfg(tmp_path, pretrain_text(tmp_path), **{"lr: 0.001": "lr: 1e-3",
                                                                              "weight_decay: 0.05": "weight_decay: 5e-2"}))
    assert cfg.optimizer.kwargs.lr == "1e-3"  # PyYAML reads 1e-3 as a string
    validate_config(cfg, "pretrain", MODELS, DATASETS)
    assert cfg.optimizer.kwargs.lr == pytest.approx(1e-3) and isinstance(cfg.optimizer.kwargs.lr, float)
    assert cfg.optimizer.kwargs.weight_decay == pytest.approx(0.05)


@pytest.mark.parametrize("old,new,words", [
    ("max_epoch: 1", "max_epoch: two", ["'max_epoch' = 'two'", "an integer"]),
    ("total_bs: 4", "total_bs: 0", ["'total_bs' = 0", "> 0"]),
    ("total_bs: 4", "total_bs: -8", ["'total_bs' = -8"]),
    ("step_per_update: 1", "step_per_update: 0", ["'step_per_update' = 0", ">= 1"]),
    ("lr: 0.001", "lr: fast", ["'optimizer.kwargs.lr' = 'fast'", "a number > 0"]),
    ("mask_ratio: 0.6", "mask_ratio: 1.0", ["'model.transformer_config.mask_ratio' = 1.0", "< 1"]),
    ("mask_ratio: 0.6", "mask_ratio: 0", ["'model.transformer_config.mask_ratio' = 0", "> 0"]),
    ("num_group: 16", "num_group: 300", ["'model.num_group' = 300", "npoints = 256"]),
])
def test_bad_values_name_file_key_value_and_expectation(tmp_path, old, new, words):
    message = config_error(tmp_path, pretrain_text(tmp_path).replace(old, new))
    for word in words + ["bad.yaml"]:
        assert word in message, (word, message)
    assert not list((tmp_path / "exp").rglob("ckpt-*.pth"))


def test_booleans_are_parsed_strictly(tmp_path):
    text = pretrain_text(tmp_path) + "svm_validation: {enabled: 'no'}\n"
    cfg = cfg_from_yaml_file(write_cfg(tmp_path, text))
    validate_config(cfg, "pretrain", MODELS, DATASETS)
    assert cfg.svm_validation.enabled is False  # the string "no" is not true
    message = config_error(tmp_path, pretrain_text(tmp_path) + "svm_validation: {enabled: maybe}\n")
    assert "'svm_validation.enabled' = 'maybe'" in message and "true or false" in message


def test_total_bs_must_divide_by_world_size(tmp_path):
    cfg = cfg_from_yaml_file(write_cfg(tmp_path, pretrain_text(tmp_path)))
    with pytest.raises(ConfigError, match="'total_bs' = 4: expected a multiple of the 3 processes"):
        validate_config(cfg, "pretrain", MODELS, DATASETS, world_size=3)
    validate_config(cfg, "pretrain", MODELS, DATASETS, world_size=2)


@pytest.mark.parametrize("flags", [("--finetune_model", "--ckpts", "x.pth"), ("--test", "--ckpts", "x.pth")])
def test_pretraining_model_with_finetune_or_test_flags(tmp_path, flags):
    message = config_error(tmp_path, pretrain_text(tmp_path), *flags)
    assert "'Inter_MAE' is a pre-training model" in message and "use a fine-tuning config" in message


def test_finetuning_model_without_finetune_flags(tmp_path):
    message = config_error(tmp_path, finetune_text(tmp_path))
    assert "'PointTransformer' is a fine-tuning model" in message
    assert "--finetune_model" in message and "--scratch_model" in message


def test_unknown_key_suggests_the_closest(tmp_path):
    message = config_error(tmp_path, pretrain_text(tmp_path).replace("max_epoch:", "max_epochs:"))
    assert "did you mean 'max_epoch'?" in message
    message = config_error(tmp_path, pretrain_text(tmp_path).replace("mask_ratio:", "mask_ratoi:"))
    assert "did you mean 'mask_ratio'?" in message


def test_typo_in_others_is_reported_against_the_file_that_wrote_it(tmp_path):
    text = pretrain_text(tmp_path).replace("others: {subset: train, npoints: 256", "others: {subset: train, npoint: 256")
    message = config_error(tmp_path, text)
    assert "unknown key 'dataset.train.others.npoint'" in message and "did you mean 'npoints'?" in message
    assert message.endswith("bad.yaml)") and "ShapeNet-55.yaml" not in message


def test_bad_config_exits_non_zero_through_the_command_line(tmp_path):
    cfg = write_cfg(tmp_path, pretrain_text(tmp_path).replace("max_epoch: 1", "max_epoch: two"))
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "--config", str(cfg), "--num_workers", "0",
                           "--device", "cpu", "--experiment_root", str(tmp_path / "exp")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "ConfigError" in proc.stderr and "'max_epoch' = 'two'" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # one line: the script, the message naming key, value and file
    assert last.startswith("main.py: error: ")
    assert "bad.yaml" in last


def test_input_errors_end_in_one_line_and_status_2(capsys):
    """utils.cli.run_main: the errors a user causes (config, checkpoint, data, run directory, point
    cloud file) derive from InputError and end as one line on stderr with exit status 2; any other
    exception keeps its traceback."""
    from datasets.ShapeNetPartDataset import ShapeNetPartFormatError
    from datasets.common import DatasetFormatError
    from engine.features import PointCloudFileError
    from utils.checkpoint import CheckpointError, CheckpointWriteError
    from utils.cli import InputError, run_main
    from utils.config import ConfigError

    for cls in (ConfigError, CheckpointError, CheckpointWriteError, DatasetFormatError, ShapeNetPartFormatError,
                PointCloudFileError, RunDirError):
        assert issubclass(cls, InputError), cls

        def fails(cls=cls):
            raise cls("file 'x.pth': bad value 3, expected 4")

        with pytest.raises(SystemExit) as exit_info:
            run_main(fails, prog="tool.py")
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err == f"tool.py: error: file 'x.pth': bad value 3, expected 4 [{cls.__name__}]\n"
    assert issubclass(DatasetFormatError, FileNotFoundError) and issubclass(ConfigError, ValueError)

    def bug():
        raise KeyError("not an input error")

    with pytest.raises(KeyError):
        run_main(bug, prog="tool.py")
    assert run_main(lambda: 7) == 7


@pytest.mark.parametrize("key, value", [("epoch_count", "weird"), ("lr_schedule", "lagged"), ("embed_compute", "quick")])
def test_choice_keys_are_checked_when_the_config_is_loaded(tmp_path, key, value):
    message = config_error(tmp_path, pretrain_text(tmp_path) + f"\n{key}: {value}\n")
    assert f"'{key}' = '{value}'" in message and "expected one of" in message and message.endswith("bad.yaml)")


def test_choice_words_agree_with_the_code_that_reads_them():
    from engine.builder import LR_SCHEDULES
    from models.layers import DEFAULT_EMBED_COMPUTE, EMBED_COMPUTE_MODES
    from utils.settings_table import CHOICE_KEYS
    from utils.settings import epochs_to_run

    assert set(CHOICE_KEYS["embed_compute"]) == set(EMBED_COMPUTE_MODES)
    assert CHOICE_KEYS["embed_compute"][0] == DEFAULT_EMBED_COMPUTE
    assert CHOICE_KEYS["epoch_count"] == ("released", "exact") and LR_SCHEDULES == ("exact", "released")
    assert epochs_to_run(3, CHOICE_KEYS["epoch_count"][0]) == 4  # the default word: released, max_epoch + 1


# ------------------------------------------------------------------------------ --ckpts in pre-training
def test_ckpts_in_pretraining_is_a_warm_start(capsys):
    args = parser.get_args(["--config", "cfgs/pretrain.yaml", "--ckpts", "w.pth"])
    assert args.start_ckpts == "w.pth" and args.ckpts_warm_start
    for extra, reason in ((["--start_ckpts", "v.pth"], "not both"), (["--resume"], "--resume and --ckpts")):
        with pytest.raises(SystemExit) as exit_info:  # parser.error: exit status 2, the reason on stderr
            parser.get_args(["--config", "cfgs/pretrain.yaml", "--ckpts", "w.pth", *extra])
        assert exit_info.value.code == 2 and reason in capsys.readouterr().err
    ft = parser.get_args(["--config", "cfgs/finetune_modelnet.yaml", "--ckpts", "w.pth", "--finetune_model"])
    assert ft.start_ckpts is None and not ft.ckpts_warm_start


# ------------------------------------------------------------------------------ run directories
def no_data_cfg(tmp_path) -> Path:
    """A valid config whose data is absent: the run stops at its data, after the run-directory checks."""
    return write_cfg(tmp_path, pretrain_text(tmp_path))


def test_a_bad_config_writes_nothing(tmp_path):
    """The config is checked before the run directory exists: a bad value leaves no directory behind."""
    cfg = write_cfg(tmp_path, pretrain_text(tmp_path).replace("max_epoch: 1", "max_epoch: two"))
    with pytest.raises(ConfigError, match="'max_epoch' = 'two'"):
        run_main(tmp_path, cfg)
    assert not (tmp_path / "exp").exists()


def test_existing_checkpoints_refuse_a_new_run(tmp_path):
    cfg = no_data_cfg(tmp_path)
    exp = tmp_path / "exp" / "bad" / "run"
    exp.mkdir(parents=True)
    (exp / "ckpt-last.pth").write_bytes(b"old run")
    with pytest.raises(RunDirError) as err:
        run_main(tmp_path, cfg)
    message = str(err.value)
    assert str(exp) in message and "--resume" in message and "--overwrite" in message
    with pytest.raises(DatasetFormatError):  # past the directory check
        run_main(tmp_path, cfg, "--overwrite")
    assert (exp / "ckpt-last.pth").read_bytes() == b"old run"
    assert not (exp / ".lock").exists()


def test_live_lock_refuses_and_stale_lock_is_replaced(tmp_path):
    cfg = no_data_cfg(tmp_path)
    exp = tmp_path / "exp" / "bad" / "run"
    exp.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        boot_id, pidns = rundir.process_namespace()  # a lock of this host, boot and PID namespace
        (exp / ".lock").write_text(f"{live.pid} {socket.gethostname()} {time.time():.3f} {'a' * 32} {boot_id} {pidns}\n")
        with pytest.raises(RunDirError, match=f"in use by another run \\(pid {live.pid} on"):
            run_main(tmp_path, cfg)
    finally:
        live.kill()
        live.wait()
    assert (exp / ".lock").exists()  # not ours: left alone
    # now the pid is dead: the lock is stale, replaced, and removed when the run ends
    with pytest.raises(DatasetFormatError):
        run_main(tmp_path, cfg)
    assert not (exp / ".lock").exists()


def test_lock_is_exclusive_within_one_host(tmp_path):
    path = acquire_run_lock(str(tmp_path))
    try:
        assert Path(path).read_text().split()[:2] == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            acquire_run_lock(str(tmp_path))
    finally:
        release_run_lock(path)
    assert not Path(path).exists()


# ------------------------------------------------------------------------------ checkpoint writes
def test_disk_full_checkpoint_write(tmp_path, monkeypatch):
    path = tmp_path / "ckpt-last.pth"
    atomic_save({"epoch": 1}, str(path))

    def no_space(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", no_space)
    with pytest.raises(CheckpointError) as err:
        atomic_save({"epoch": 2}, str(path))
    message = str(err.value)
    assert "\n" not in message
    assert f"writing {path} failed" in message and "No space left on device" in message
    assert f"the previous checkpoint at {path} is intact" in message
    monkeypatch.undo()
    assert load_checkpoint_file(str(path))["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-last.pth"]  # temporary file removed
    monkeypatch.setattr(ckpt_mod.torch, "save", no_space)
    with pytest.raises(CheckpointError, match="no file was written at"):
        atomic_save({"epoch": 1}, str(tmp_path / "new.pth"))


# ------------------------------------------------------------------------------ non-finite figures
def test_non_finite_validation_stops_before_it_is_logged():
    """Every job hands its validation figures to log_validation before any checkpoint is written."""
    logged = []

    class Writer:
        def add_scalar(self, *a):
            logged.append(a)

    with pytest.raises(NonFiniteLossError, match="validation at epoch 0 gave non-finite figures"):
        log_validation(0, {"acc": float("nan")}, Writer())
    assert logged == []


def test_non_finite_test_points_name_the_batch():
    step = make_eval_step(torch.device("cpu"), npoints=8)
    pts = torch.rand(2, 8, 3)
    pts[1, 3, 0] = float("nan")
    model = lambda x: torch.zeros(x.shape[0], 4)  # noqa: E731
    step(model, (["t", "t"], ["a", "b"], (torch.rand(2, 8, 3), torch.zeros(2))), AccuracyMeter(torch.device("cpu")))
    with pytest.raises(NonFiniteInputError, match=r"evaluation batch 1: samples \[1\] \(model ids \['b'\]\)"):
        step(model, (["t", "t"], ["a", "b"], (pts, torch.zeros(2))), AccuracyMeter(torch.device("cpu")))


# ------------------------------------------------------------------------------ data
def write_cache(path: Path, points, labels) -> Path:
    with open(path, "wb") as f:
        pickle.dump([points, labels], f)
    return path


def test_modelnet_cache_ragged_and_non_finite(tmp_path):
    good = [np.zeros((8, 6), np.float32) for _ in range(3)]
    labels = [np.array([0], np.int32)] * 3
    load_cache(str(write_cache(tmp_path / "ok.dat", good, labels)), 8)
    ragged = good[:2] + [np.zeros((7, 6), np.float32)]
    path = write_cache(tmp_path / "ragged.dat", ragged, labels)
    with pytest.raises(DatasetFormatError, match=r"ragged.dat': entry 2 has shape \(7, 6\), expected \(8, 6\)"):
        load_cache(str(path), 8)
    nan = [g.copy() for g in good]
    nan[1][5, 2] = np.inf
    path = write_cache(tmp_path / "nan.dat", nan, labels)
    with pytest.raises(DatasetFormatError, match=r"nan.dat', entry 1: non-finite coordinate inf at index \(5, 2\)"):
        load_cache(str(path), 8)


def test_scanobjectnn_truncated_and_non_finite_h5(tmp_path):
    import h5py

    from datasets.ScanObjectNNDataset import read_h5

    path = tmp_path / "train.h5"
    data = np.zeros((3, 16, 3), np.float32)
    with h5py.File(path, "w") as h5:
        h5["data"], h5["label"] = data, np.zeros(3, np.int64)
    read_h5(str(path))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetFormatError, match="truncated.h5: not a readable HDF5 file"):
        read_h5(str(truncated))
    data[2, 7, 1] = np.nan
    with h5py.File(path, "w") as h5:
        h5["data"], h5["label"] = data, np.zeros(3, np.int64)
    with pytest.raises(DatasetFormatError, match="train.h5: cloud 2 has a non-finite coordinate nan at point 7"):
        read_h5(str(path))


def test_shapenet_npy_non_finite(tmp_path):
    from utils.schema import merge_into

    root = tmp_path / "sn"
    (root / "ShapeNet-55").mkdir(parents=True)
    (root / "shapenet_pc").mkdir()
    pts = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    pts[10, 0] = np.nan
    np.save(root / "shapenet_pc" / "02691156-abc.npy", pts)
    (root / "ShapeNet-55" / "train.txt").write_text("02691156-abc.npy\n")
    base = cfg_from_yaml_file(REPO / "cfgs" / "dataset_configs" / "ShapeNet-55.yaml")
    ds = DATASETS.build(merge_into(base, dict(subset="train", npoints=32, DATA_PATH=str(root / "ShapeNet-55"),
                                              PC_PATH=str(root / "shapenet_pc"))))
    with pytest.raises(DatasetFormatError, match=r"02691156-abc.npy \(item 0\): non-finite coordinate nan at index \(10, 0\)"):
        ds[0]


@pytest.mark.parametrize("binary", [True, False])
def test_ply_non_finite(tmp_path, binary):
    xyz = np.zeros((5, 3), np.float32)
    xyz[3, 1] = np.inf
    path = tmp_path / "cloud.ply"
    write_ply(str(path), xyz, binary=binary)
    with pytest.raises(ValueError, match="cloud.ply: vertex 3 has a non-finite coordinate"):
        read_ply(str(path))


def test_ckpts_warm_start_through_main(tmp_path, shapenet55_root):
    cfg = write_cfg(tmp_path, TINY_PRETRAIN.format(root=shapenet55_root, epochs=1), name="tiny_pre.yaml")
    run_main(tmp_path, cfg, exp_name="first")
    first = tmp_path / "exp" / "tiny_pre" / "first" / "ckpt-last.pth"
    run_main(tmp_path, cfg, "--ckpts", str(first), exp_name="warm")
    log = "".join(p.read_text() for p in (tmp_path / "exp" / "tiny_pre" / "warm").glob("*.log"))
    assert f"Pre-training with --ckpts: warm start from {first} (weights only, fresh optimizer" in log
    warm = load_checkpoint_file(str(tmp_path / "exp" / "tiny_pre" / "warm" / "ckpt-last.pth"))
    assert "ckpts @ 0 epoch" in log  # the first run's weights were loaded
    assert warm["epoch"] == 0  # a new run (epoch 0), not a resume of the first


def test_segmentation_refuses_a_run_dir_with_checkpoints(tmp_path):
    from segmentation.main import main as seg_main

    run = tmp_path / "log" / "part_seg" / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best_model.pth").write_bytes(b"old model")
    args = ["--root", str(tmp_path / "no_data"), "--log_root", str(tmp_path / "log"), "--log_dir", "old",
            "--device", "cpu", "--num_workers", "0"]
    with pytest.raises(RunDirError, match=f"segmentation run directory {run} already holds checkpoints "
                                          r"\(best_model.pth\): pass --resume to continue that run, --overwrite"):
        seg_main(args)
    with pytest.raises(Exception, match="ShapeNetPart root"):  # past the directory check: the (missing) data is next
        seg_main(args + ["--overwrite"])
    assert (run / "checkpoints" / "best_model.pth").read_bytes() == b"old model"
    assert not (run / ".lock").exists()


ENTRY_POINTS = ["main.py", "main_vis.py", "segmentation/main.py", *sorted(f"tools/{p.name}" for p in (REPO / "tools").glob("*.py"))]


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_every_command_reports_input_errors_in_one_line(script):
    """Each command runs its main() through utils.cli.run_main (or, export_weights.py, catches the
    input errors itself to add a hint), so a bad input never ends in a traceback."""
    text = (REPO / script).read_text()
    assert "run_main(main)" in text or ("except CheckpointError" in text and "except ConfigError" in text), script


@pytest.mark.parametrize("args", [["segmentation/main.py", "--ckpts", "missing.pth", "--log_dir", "bad"],
                                  ["tools/svm.py", "--config", "cfgs/demo/pretrain_demo.yaml", "--ckpts", "missing.pth"]])
def test_missing_checkpoint_is_one_line_with_status_2(tmp_path, args):
    cmd = [sys.executable, str(REPO / args[0]), *[str(tmp_path / a) if a == "missing.pth" else a for a in args[1:]]]
    if args[0].startswith("segmentation"):
        cmd += ["--log_root", str(tmp_path / "log"), "--root", str(tmp_path / "data"), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert ": error: " in last and "missing.pth" in last and "does not exist" in last and "[CheckpointError]" in last
