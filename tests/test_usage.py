"""Everyday use: the data root (``--data_root`` / ``$DATA_ROOT``), one
dataset key name, ``--opts`` that adds schema keys and lists the valid ones on a typo, ``--test``
from the run's saved config, the schedule following ``max_epoch``, the logs (workers capped,
per-category lines to the file only, segmentation epoch numbers, the shape-mismatch table,
progress bars), every command's ``--help`` and wrong flag combinations, and the commands of
docs/usage.md and of the README's table of jobs against the commands' parsers."""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from easydict import EasyDict

import main as main_module
from conftest import REPO
from doc_pages import USAGE_PAGE
from datasets import DATASETS, build_dataset_from_cfg
from engine import builder
from engine.engine import epoch_range
from engine.partseg import PartSegMeter, log_metrics
from engine.svm import resolve_svm_config
from models import MODELS
from models.Inter_MAE import Inter_MAE
from utils import parser as main_parser
from utils.checkpoint import CheckpointError, load_checkpoint_file, load_state_dict_checked
from utils.config import ConfigError, cfg_from_yaml_file
from utils.overrides import apply_opts, load_config, rebase_data_path
from utils.logger import get_logger, library_logger, print_log
from utils.settings import progress_enabled, worker_count
from writers import TINY_FINETUNE, TINY_TC, write_modelnet, write_shapenetpart

MODELNET = "ModelNet/modelnet40_normal_resampled"  # under data/ in cfgs/dataset_configs/ModelNet40.yaml

# A fine-tuning config whose dataset paths are the shipped ones (data/ModelNet/...): only a data root
# makes it find the test's data.
FINETUNE_SHIPPED_PATHS = """
optimizer: {type: AdamW, kwargs: {lr: 0.001, weight_decay: 0.05}}
scheduler: {type: CosLR, kwargs: {epochs: 300, initial_epochs: 1}}
dataset: {
  train: {_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {subset: train, N_POINTS: 96}},
  val: {_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {subset: test, N_POINTS: 96}},
  test: {_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {subset: test, N_POINTS: 96}}}
model: {NAME: PointTransformer, trans_dim: 32, depth: 2, drop_path_rate: 0.1, cls_dim: 40, num_heads: 2,
        group_size: 8, num_group: 8, encoder_dims: 32, patch_embed: inter_mae}
npoints: 64
total_bs: 4
step_per_update: 1
max_epoch: 300
grad_norm_clip: 10
epoch_count: exact
"""


def run_main(*argv: str):
    return main_module.main([*argv, "--num_workers", "0", "--device", "cpu"])


def write_data_root(root: Path) -> Path:
    write_modelnet(root / MODELNET, ids_per_split=(("train", 8), ("test", 6)), n_rows=130, cache_points=96)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_data_root(tmp_path_factory.mktemp("data_root"))


@pytest.fixture
def shipped_paths_cfg(tmp_path) -> Path:
    path = tmp_path / "tiny_shipped.yaml"
    path.write_text(FINETUNE_SHIPPED_PATHS)
    return path


def saved_config(exp: Path) -> dict:
    return yaml.safe_load((exp / "config.yaml").read_text())


# ------------------------------------------------------------------------------- 4. data root
@pytest.mark.parametrize("value,expected", [
    ("data/ModelNet/x", "/d/ModelNet/x"),
    ("./data/ModelNet/x", "/d/ModelNet/x"),
    ("data", "/d"),
    ("/abs/data/x", "/abs/data/x"),        # absolute: as written
    ("other/data/x", "other/data/x"),      # not under data/: as written
    ("dataset/x", "dataset/x"),            # data/ is a whole folder name, not a prefix of one
    (None, None),
])
def test_rebase_data_path(value, expected):
    assert rebase_data_path(value, "/d") == expected


def test_rebasing_twice_changes_nothing():
    once = rebase_data_path("data/ModelNet/x", "data/demo")
    assert once == os.path.join("data/demo", "ModelNet/x")
    assert rebase_data_path(once, "data/demo") == once


def test_shipped_dataset_configs_name_their_root_data_path_under_data():
    for path in sorted((REPO / "cfgs" / "dataset_configs").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        assert "ROOT" not in cfg, path.name
        # under data/, or data itself: a folder dataset is the --data_root folder (PointCloudFolder)
        assert str(cfg["DATA_PATH"]).startswith("data/") or cfg["DATA_PATH"] == "data", path.name


def test_data_root_flag_moves_every_dataset_entry_through_main(tmp_path, data_root, shipped_paths_cfg):
    exp_root = tmp_path / "exp"
    run_main("--config", str(shipped_paths_cfg), "--scratch_model", "--exp_name", "flag", "--experiment_root",
             str(exp_root), "--data_root", str(data_root), "--opts", "max_epoch=1")
    exp = exp_root / "tiny_shipped" / "flag"
    saved = saved_config(exp)
    for split in ("train", "val", "test"):
        assert saved["dataset"][split]["_base_"]["DATA_PATH"] == str(data_root / MODELNET)
    assert load_checkpoint_file(str(exp / "ckpt-last.pth"))["epoch"] == 0
    log = next(exp.glob("*.log")).read_text()
    assert f"Data root {data_root} (--data_root): 3 dataset paths" in log


def test_data_root_environment_variable_is_the_fallback(tmp_path, data_root, shipped_paths_cfg, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(data_root))
    exp_root = tmp_path / "exp"
    run_main("--config", str(shipped_paths_cfg), "--scratch_model", "--exp_name", "env", "--experiment_root",
             str(exp_root), "--opts", "max_epoch=1")
    exp = exp_root / "tiny_shipped" / "env"
    assert saved_config(exp)["dataset"]["val"]["_base_"]["DATA_PATH"] == str(data_root / MODELNET)
    assert "($DATA_ROOT)" in next(exp.glob("*.log")).read_text()
    # the flag wins over the variable
    cfg = load_config(str(shipped_paths_cfg), data_root="/elsewhere")
    assert cfg.dataset.train._base_.DATA_PATH == os.path.join("/elsewhere", MODELNET)


def test_data_root_reaches_svm_fewshot_and_segmentation(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    svm = resolve_svm_config(EasyDict(), "/d")  # the released default: data/modelnet40_ply_hdf5_2048
    assert svm.train._base_.DATA_PATH == "/d/modelnet40_ply_hdf5_2048" == svm.test._base_.DATA_PATH
    # through the command, for a config without an svm_validation section: the default data moves too
    from datasets.common import DatasetFormatError
    from tools.svm import main as svm_main
    with pytest.raises(DatasetFormatError, match=re.escape(str(tmp_path / "modelnet40_ply_hdf5_2048"))):
        svm_main(["--config", "cfgs/pretrain.yaml", "--random_init", "--data_root", str(tmp_path), "--device", "cpu",
                  "--num_workers", "0", "--opts", "model.image_branch.enabled=false"])

    from tools.fewshot_all import fold_folder
    assert fold_folder("cfgs/fewshot.yaml", 5, 10, data_root="/d") == "/d/ModelNetFewshot/5way_10shot"

    from segmentation.main import get_args as seg_args
    seg = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    assert seg_args(["--data_root", "/d"]).root == f"/d/{seg}"
    monkeypatch.setenv("DATA_ROOT", "/e")
    assert seg_args([]).root == f"/e/{seg}"
    assert seg_args(["--root", "/r"]).root == "/r"


def write_scanobjectnn(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("training", "test"):
        with h5py.File(root / f"{prefix}_objectdataset.h5", "w") as f:
            f["data"] = rng.normal(size=(3, 2048, 3)).astype(np.float32)
            f["label"] = np.array([0, 4, 14])
    return root


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_scanobjectnn_takes_data_path_and_root_as_a_deprecated_alias(tmp_path, monkeypatch):
    from datasets import ScanObjectNNDataset

    monkeypatch.setattr(ScanObjectNNDataset, "_warned_root", set())  # the line is once per process
    handler = ListHandler()
    get_logger(library_logger("ScanObjectNN")).addHandler(handler)
    try:
        root = write_scanobjectnn(tmp_path / "main_split")
        ds = build_dataset_from_cfg(EasyDict(NAME="ScanObjectNN", DATA_PATH=str(root)), {"subset": "test"})
        assert len(ds) == 3 and ds[1][2][1] == 4
        assert not any("deprecated" in m for m in handler.messages)
        alias = build_dataset_from_cfg(EasyDict(NAME="ScanObjectNN", ROOT=str(root)), {"subset": "train"})
        assert len(alias) == 3
        assert sum("ROOT is deprecated" in m for m in handler.messages) == 1
    finally:
        get_logger(library_logger("ScanObjectNN")).removeHandler(handler)
    with pytest.raises(ConfigError, match="DATA_PATH"):
        build_dataset_from_cfg(EasyDict(NAME="ScanObjectNN"), {"subset": "test"})


# ---------------------------------------------------------------------------------- 4. --opts
def shipped(name: str) -> EasyDict:
    return cfg_from_yaml_file(REPO / "cfgs" / name)


def test_opts_adds_keys_the_schema_allows(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = shipped("finetune_scan_hardest.yaml")
    assert "DATA_PATH" not in cfg.dataset.train.others
    apply_opts(cfg, ["dataset.train.others.DATA_PATH=/x/main_split", "dataset.val.DATA_PATH=/y",
                     "model.label_smoothing=0.1", "optimizer.kwargs.betas=[0.9, 0.99]"], MODELS, DATASETS)
    assert cfg.dataset.train.others.DATA_PATH == "/x/main_split"
    assert cfg.dataset.val.others.DATA_PATH == "/y"  # dataset.<split>.KEY = dataset.<split>.others.KEY
    assert cfg.model.label_smoothing == 0.1 and cfg.optimizer.kwargs.betas == [0.9, 0.99]
    # the others entry wins over the dataset file when the dataset is built
    ds_cfg = load_config(str(REPO / "cfgs/finetune_scan_hardest.yaml"), ["dataset.test.DATA_PATH=/z"], None, MODELS,
                         DATASETS)
    assert ds_cfg.dataset.test.others.DATA_PATH == "/z" and ds_cfg.dataset.test._base_.DATA_PATH.startswith("data/")


@pytest.mark.parametrize("key,closest,listed", [
    ("model.trans_dimm", "trans_dim", ["cls_dim", "encoder_dims", "num_heads"]),
    ("dataset.train.others.DATA_PAHT", "DATA_PATH", ["subset", "npoints"]),
    ("dataset.train.N_POINT", "N_POINTS", ["DATA_PATH", "NUM_CATEGORY"]),
    ("max_epochs", "max_epoch", ["total_bs", "npoints"]),
    ("scheduler.kwargs.epoch", "epochs", ["initial_epochs", "lr_min"]),
])
def test_opts_typo_names_closest_and_valid_keys(monkeypatch, key, closest, listed):
    monkeypatch.chdir(REPO)
    cfg = shipped("finetune_modelnet.yaml")
    with pytest.raises(ConfigError) as err:
        apply_opts(cfg, [f"{key}=1"], MODELS, DATASETS)
    text = str(err.value)
    assert f"'{key if 'N_POINT' not in key else 'dataset.train.others.N_POINT'}'" in text
    assert f"did you mean '{closest}'?" in text and all(k in text for k in listed), text


def test_opts_typo_through_main_lists_the_valid_keys(tmp_path, shipped_paths_cfg):
    with pytest.raises(ConfigError) as err:
        run_main("--config", str(shipped_paths_cfg), "--scratch_model", "--exp_name", "typo", "--experiment_root",
                 str(tmp_path / "exp"), "--opts", "model.num_head=4")
    assert "did you mean 'num_heads'?" in str(err.value) and "group_size" in str(err.value)


def test_opts_into_a_value_is_an_error(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match="is a value"):
        apply_opts(shipped("finetune_modelnet.yaml"), ["max_epoch.x=1"], MODELS, DATASETS)


# ------------------------------------------------------------------ 5. schedule follows max_epoch
def schedule_cfg(tmp_path: Path, kwargs: str, max_epoch: int = 300) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"optimizer: {{type: AdamW, kwargs: {{lr: 0.001}}}}\n"
                    f"scheduler: {{type: CosLR, kwargs: {{{kwargs}}}}}\nmax_epoch: {max_epoch}\n")
    return str(path)


@pytest.mark.parametrize("kwargs,opts,expected,why", [
    ("epochs: 300, initial_epochs: 10", ["max_epoch=2"], 2, "follows max_epoch = 2 from --opts"),
    ("initial_epochs: 10", [], 300, "scheduler.kwargs.epochs is not set"),
    ("initial_epochs: 10", ["max_epoch=5"], 5, "scheduler.kwargs.epochs is not set"),
    ("epochs: 300", ["max_epoch=2", "scheduler.kwargs.epochs=300"], 300, "set by --opts"),
    ("epochs: 100", ["max_epoch=2"], 100, "as set in the config"),
    ("epochs: 300", [], 300, "= max_epoch = 300"),
])
def test_schedule_length(tmp_path, capsys, kwargs, opts, expected, why):
    cfg = load_config(schedule_cfg(tmp_path, kwargs), opts, schedule=True)
    assert cfg.scheduler.kwargs.epochs == expected
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Learning-rate schedule")]
    assert len(line) == 1 and f"cosine over {expected} epochs" in line[0] and why in line[0], line


def test_max_epoch_override_shortens_the_cosine_through_main(tmp_path, data_root, shipped_paths_cfg):
    """The config says max_epoch 300 and epochs 300; --opts max_epoch=2 trains 2 epochs whose second
    runs at cosine(1) of a 2-epoch schedule, lr_min + (lr - lr_min) / 2, not near the peak."""
    exp_root = tmp_path / "exp"
    run_main("--config", str(shipped_paths_cfg), "--scratch_model", "--exp_name", "short", "--experiment_root",
             str(exp_root), "--data_root", str(data_root), "--opts", "max_epoch=2")
    exp = exp_root / "tiny_shipped" / "short"
    ckpt = load_checkpoint_file(str(exp / "ckpt-last.pth"))
    base, lr_min = 0.001, 1e-6
    expected = lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * 1 / 2))
    assert ckpt["epoch"] == 1
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [pytest.approx(expected)] * 2  # 2 decay groups
    assert saved_config(exp)["scheduler"]["kwargs"]["epochs"] == 2
    assert "Learning-rate schedule: cosine over 2 epochs (follows max_epoch = 2 from --opts" in \
        next(exp.glob("*.log")).read_text()


# ------------------------------------------------------------------- 5. --test reads config.yaml
def test_test_without_config_reads_the_runs_saved_config(tmp_path, data_root, shipped_paths_cfg):
    exp_root = tmp_path / "exp"
    run_main("--config", str(shipped_paths_cfg), "--scratch_model", "--exp_name", "ft", "--experiment_root",
             str(exp_root), "--data_root", str(data_root), "--opts", "max_epoch=1")
    run_dir = exp_root / "tiny_shipped" / "ft"
    best = load_checkpoint_file(str(run_dir / "ckpt-best.pth"))
    results = run_main("--test", "--ckpts", str(run_dir / "ckpt-best.pth"), "--exp_name", "ft",
                       "--experiment_root", str(exp_root))
    assert results["acc"] == pytest.approx(best["best_metrics"]["acc"], abs=1e-3)  # test set = validation set
    log = next((exp_root / "tiny_shipped" / "test_ft").glob("*.log")).read_text()
    assert f"--test without --config: using the run's saved config {run_dir / 'config.yaml'}" in log


def test_test_without_config_and_without_saved_config_is_a_clear_error(tmp_path, capsys):
    ckpt = tmp_path / "lonely" / "ckpt-best.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main_parser.get_args(["--test", "--ckpts", str(ckpt)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "no saved config" in err and str(tmp_path / "lonely" / "config.yaml") in err and "--config" in err


# ------------------------------------------------------------------------------------ 7. logs
def test_num_workers_capped_to_usable_cores_with_one_line(capsys):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert worker_count(cores) == cores and worker_count(0) == 0
    assert worker_count(cores + 97) == cores
    assert worker_count(cores + 97) == cores
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "capped" in ln]
    assert lines == [f"num_workers {cores + 97} capped to {cores}: this process may use {cores} CPU core(s)"]
    _, loader = builder.build_loader(list(range(8)), 2, train=False, num_workers=cores + 97)
    assert loader.num_workers == cores


def test_file_only_lines_reach_the_file_not_the_console(tmp_path, capfd):
    log_file = tmp_path / "run.log"
    logger = get_logger("usage_file_only", log_file=str(log_file))
    print_log("for both", logger=logger)
    print_log("for the file", logger=logger, file_only=True)
    meter = PartSegMeter()
    meter.update(np.array([[4, 5, 5], [47, 48, 49]]), np.array([[4, 5, 4], [47, 48, 49]]), np.array([1, 15]))
    metrics = log_metrics("[Test] EPOCH: 0 (1/1)", meter, logger)
    console = capfd.readouterr().err
    text = log_file.read_text()
    assert "for both" in console and "for both" in text
    assert "for the file" not in console and "for the file" in text
    assert "eval mIoU of Bag" in text and "eval mIoU of Table" in text and "eval mIoU of" not in console
    assert f"instance avg mIoU: {metrics['instance_avg_iou']:.5f} (per-category mIoU in the log file)" in console


def test_library_lines_reach_the_current_run_log_only(tmp_path, capfd):
    from utils.logger import attach_log_file, start_run_logger

    for run in ("first", "second"):
        logger = start_run_logger(f"usage_{run}")
        print_log(f"{run}: before the log file", logger=library_logger("SomeDataset"))
        attach_log_file(logger, str(tmp_path / f"{run}.log"))
        print_log(f"{run}: after it", logger=library_logger("SomeDataset"))
    console = capfd.readouterr().err
    for run, other in (("first", "second"), ("second", "first")):
        text = (tmp_path / f"{run}.log").read_text()
        assert f"{run}: before the log file" in text and f"{run}: after it" in text and other not in text
        assert f"intermae.SomeDataset - INFO - {run}: after it" in console


def test_segmentation_test_lines_numbered_as_training(tmp_path):
    from segmentation.main import main as seg_main

    root = write_shapenetpart(tmp_path / "part", {"Bag": (3, 1, 2), "Table": (3, 1, 2)})
    seg_main(["--root", str(root), "--log_root", str(tmp_path / "log"), "--log_dir", "num", "--npoint", "64",
              "--device", "cpu", "--num_workers", "0", "--batch_size", "4", "--epoch", "2", "--warmup_epoch", "0",
              "--trans_dim", "32", "--depth", "3", "--num_heads", "2", "--num_group", "8", "--group_size", "8"])
    log = (tmp_path / "log" / "part_seg" / "num" / "logs" / "pt.txt").read_text()
    trained = re.findall(r"\[Training\] EPOCH: (\d+) \((\d+)/(\d+)\)", log)
    tested = re.findall(r"\[Test\] EPOCH: (\d+) \((\d+)/(\d+)\) accuracy", log)
    assert trained == tested == [("0", "1", "2"), ("1", "2", "2")]
    assert "eval mIoU of Bag" in log  # the per-category lines are in the file


def tiny_pretrain(width: int, depth: int = 2) -> Inter_MAE:
    tc = EasyDict(TINY_TC, trans_dim=width, encoder_dims=width, depth=depth, decoder_embed_dim=16)
    return Inter_MAE(EasyDict(NAME="Inter_MAE", group_size=8, num_group=8, loss="cdl2", transformer_config=tc))


def finetune_cfg(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_ft.yaml"
    path.write_text(TINY_FINETUNE.format(root=tmp_path / "mn", epochs=1))
    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 4), ("test", 4)), n_rows=130, cache_points=96)
    return path


def test_width_mismatch_is_one_table_with_the_config_key(tmp_path):
    torch.save({"base_model": tiny_pretrain(48).state_dict()}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError) as err:  # the config's model is 32 wide
        run_main("--config", str(finetune_cfg(tmp_path)), "--finetune_model", "--ckpts", str(tmp_path / "wide.pth"),
                 "--exp_name", "mm", "--experiment_root", str(tmp_path / "exp"))
    text = str(err.value)
    lines = text.splitlines()
    assert len(lines) < 25 and "tensor(" not in text and "Parameter" not in text
    header = next(ln for ln in lines if "config key to change" in ln)
    assert header.split() == ["key", "checkpoint", "model", "config", "key", "to", "change"]
    row = next(ln for ln in lines if ln.split()[:1] == ["norm.weight"])
    assert row.split() == ["norm.weight", "(48,)", "(32,)", "model.trans_dim"]
    row = next(ln for ln in lines if ln.strip().startswith("blocks.blocks.*.attn.qkv.weight"))
    assert "(x2)" in row and "(144, 48)" in row and "(96, 32)" in row and row.endswith("model.trans_dim")
    assert any(ln.split()[0] == "encoder.second_conv.3.weight" and ln.endswith("model.encoder_dims") for ln in lines)
    assert "model.trans_dim 48" in text and "model.encoder_dims 48" in text
    assert "new (as expected): cls_head_finetune" in text  # the new head is not reported as missing


def test_depth_mismatch_names_the_depth_key(tmp_path):
    torch.save({"base_model": tiny_pretrain(32, depth=4).state_dict()}, tmp_path / "deep.pth")
    classifier = builder.model_builder(cfg_from_yaml_file(finetune_cfg(tmp_path)).model)  # depth 2
    with pytest.raises(CheckpointError) as err:
        classifier.load_model_from_ckpt(str(tmp_path / "deep.pth"))
    assert "the checkpoint has 4 blocks, the model 2 (set model.depth)" in str(err.value)


def test_segmentation_mismatch_names_the_flag():
    from models.PartSegTransformer import PartSegTransformer

    small = PartSegTransformer(trans_dim=32, depth=3, num_heads=2, num_group=8, group_size=8)
    wide = PartSegTransformer(trans_dim=48, depth=3, num_heads=2, num_group=8, group_size=8)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_checked(small, wide.state_dict(), source="seg.pth")
    assert any(ln.split()[:4] == ["norm.weight", "(48,)", "(32,)", "--trans_dim"] for ln in str(err.value).splitlines())


def test_epoch_loops_show_an_epochs_bar_when_asked(capsys):
    assert list(epoch_range(0, 3, progress=True)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "epochs" in err and "3/3" in err
    assert list(epoch_range(1, 2, progress=False)) == [1]
    assert "epochs" not in capsys.readouterr().err


def test_progress_bars_follow_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress_enabled(False)
    assert not progress_enabled(True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress_enabled(False)


def test_config_goes_to_the_run_dir_with_one_console_line(tmp_path, data_root, shipped_paths_cfg, capfd):
    exp_root = tmp_path / "exp"
    run_main("--config", str(shipped_paths_cfg), "--scratch_model", "--exp_name", "quiet", "--experiment_root",
             str(exp_root), "--data_root", str(data_root), "--opts", "max_epoch=1")
    console = capfd.readouterr()
    text = console.out + console.err
    path = exp_root / "tiny_shipped" / "quiet" / "config.yaml"
    assert path.is_file() and text.count(f"Config written to {path}") == 1
    assert "weight_decay" not in text and "initial_epochs" not in text  # no config dump on the console


# ----------------------------------------------------------------------------------- 8. --help
COMMANDS = ["main.py", "main_vis.py", "segmentation/main.py"] + sorted(
    str(p.relative_to(REPO)) for p in (REPO / "tools").glob("*.py"))
NOT_OURS = {"tools/make_demo_data.py"}  # kept by the demo generator's owner; checked for rc 0 only


def help_entries(text: str) -> dict:
    """``{flags: help text}`` of the options listed by argparse's ``--help``."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m:
            current = m.group(1).strip()
            entries[current] = m.group(2) or ""
        elif current and re.match(r"^\s{10,}\S", line):
            entries[current] += " " + line.strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    return entries


# One subprocess runs every command's --help as its __main__ (one torch import instead of one per command).
HELP_DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for script in sys.argv[1:]:
    stdout, stderr = io.StringIO(), io.StringIO()
    sys.argv = [script, "--help"]
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code or 0
    out[script] = {"returncode": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps():
    from types import SimpleNamespace

    proc = subprocess.run([sys.executable, "-c", HELP_DRIVER, *COMMANDS], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {k: SimpleNamespace(**v) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("script", COMMANDS)
def test_every_flag_has_a_help_sentence_and_a_default(helps, script):
    proc = helps[script]
    assert proc.returncode == 0, proc.stderr[-2000:]
    if script in NOT_OURS:
        return
    entries = help_entries(proc.stdout)
    usage = " ".join(proc.stdout.split("\n\n")[0].split())
    assert entries, proc.stdout
    for flags, text in entries.items():
        if flags.startswith("-h"):
            continue
        flag = flags.split()[0].rstrip(",")
        assert len(text.split()) >= 2, f"{script} {flag}: no help sentence"
        takes_value = bool(re.match(r"--\S+ [A-Z\[{]", flags))
        if takes_value and f"[{flag}" in usage:  # an optional flag with a value: its default is given
            assert "default" in text, f"{script} {flag}: the help does not give the default: {text}"


def test_main_vis_lists_only_its_own_flags(helps):
    entries = help_entries(helps["main_vis.py"].stdout)
    flags = {f.split()[0].rstrip(",") for f in entries}
    for foreign in ("--finetune_model", "--scratch_model", "--vote", "--resume", "--val_freq", "--sync_bn", "--launcher",
                    "--way", "--shot", "--fold", "--amp", "--fps_backend", "--start_ckpts", "--loss", "--mode", "--test"):
        assert foreign not in flags
    assert {"--config", "--ckpts", "--num_samples", "--mask_ratio", "--out_dir", "--data_root"} <= flags
    import main_vis  # the released command line (with --test) still parses
    assert main_vis.get_vis_args(["--test", "--ckpts", "p.pth", "--config", "c.yaml"]).ckpts == "p.pth"


MAIN_COMBINATIONS = [
    (["--config", "c.yaml", "--finetune_model", "--scratch_model", "--ckpts", "p.pth"], "cannot be combined"),
    (["--config", "c.yaml", "--test"], "--test needs --ckpts"),
    (["--config", "c.yaml", "--finetune_model"], "--finetune_model needs --ckpts"),
    (["--config", "c.yaml", "--resume", "--start_ckpts", "p.pth"], "--resume and --start_ckpts"),
    (["--config", "c.yaml", "--test", "--resume", "--ckpts", "p.pth"], "--test and --resume"),
    (["--config", "c.yaml", "--vote"], "--vote is for classifiers"),
    (["--config", "c.yaml", "--scratch_model", "--shot", "10"], "--way and --shot go together"),
    (["--config", "c.yaml", "--scratch_model", "--fold", "1"], "--fold needs --way and --shot"),
    (["--config", "c.yaml", "--way", "5", "--shot", "10"], "few-shot fine-tuning or testing"),
    (["--config", "c.yaml", "--scratch_model", "--ckpts", "p.pth"], "--ckpts would be ignored"),
    (["--exp_name", "x"], "--config is required"),
]


@pytest.mark.parametrize("argv,reason", MAIN_COMBINATIONS, ids=[r for _, r in MAIN_COMBINATIONS])
def test_wrong_main_combinations_exit_2_with_the_reason(capsys, argv, reason):
    with pytest.raises(SystemExit) as exit_info:
        main_parser.get_args(argv)
    assert exit_info.value.code == 2 and reason in capsys.readouterr().err


@pytest.mark.parametrize("module,argv,reason", [
    ("segmentation.main", ["--root", "/r", "--data_root", "/d"], "not both"),
    ("segmentation.main", ["--device", "cpu", "--gpu", "0"], "not both"),
    ("segmentation.main", ["--test", "--overwrite"], "--overwrite is for training"),
    ("tools.svm", ["--config", "c.yaml", "--ckpts", "p.pth", "--svm_root", "a", "--modelnet_root", "b"], "not both"),
    ("tools.svm", ["--config", "c.yaml", "--ckpts", "p.pth", "--modelnet_npoints", "8"], "needs --modelnet_root"),
    ("tools.svm", ["--config", "c.yaml", "--ckpts", "p.pth", "--modelnet_classes", "10"], "needs --modelnet_root"),
    ("main_vis", ["--config", "c.yaml", "--ckpts", "p.pth", "--num_samples", "0"], "--num_samples must be >= 1"),
    ("tools.extract_features", ["--ckpts", "p.pth", "--input", "x", "--out", "f.csv"], "must end in .npy or .h5"),
    ("tools.plot_curves", ["logs", "--smooth", "1.5"], "--smooth must be in [0, 1)"),
])
def test_wrong_combinations_of_other_commands_exit_2(capsys, module, argv, reason):
    mod = importlib.import_module(module)
    entry = getattr(mod, "get_args", None) or getattr(mod, "get_vis_args", None) or mod.main
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    assert exit_info.value.code == 2 and reason in capsys.readouterr().err


def test_wrong_combination_exit_status_through_the_command_line():
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "--config", "cfgs/pretrain.yaml", "--vote"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--vote is for classifiers" in proc.stderr


# ---------------------------------------------------------------------------- 9. Usage page
def usage_commands() -> list:
    """The ``python ...`` commands of the code blocks of docs/usage.md (continuation lines joined),
    with the section (``## `` heading) they appear in."""
    usage = USAGE_PAGE.read_text(encoding="utf-8")
    commands, section = [], None
    for part in re.split(r"^(## .*)$", usage, flags=re.M):
        if part.startswith("## "):
            section = part[3:]
            continue
        for block in re.split(r"^```.*$", part, flags=re.M)[1::2]:
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("python ") and ".py" in line.split()[1]:
                    commands.append((section, line))
    return commands


def readme_job_commands() -> list:
    """The ``python ...`` commands of the README's table of jobs, with the job they run."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    jobs = text.split("\n## Jobs\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for row in re.findall(r"^\|(.*)\|$", jobs, flags=re.M):
        cells = [c.strip() for c in row.split("|")]
        for command in re.findall(r"`(python [^`]+)`", cells[1] if len(cells) > 1 else ""):
            commands.append((f"README: {cells[0]}", command))
    return commands


def parser_of(script: str):
    if script == "main.py":
        return main_parser.build_parser()
    if script == "main_vis.py":
        import main_vis
        return main_vis.build_vis_parser()
    module = importlib.import_module(script[:-3].replace("/", "."))
    return module.build_parser()


TASKS = ["Pre-train", "Fine-tune", "Few-shot", "Linear SVM", "Part segmentation", "Visualise", "View TensorBoard",
         "Extract features"]


def test_usage_page_has_a_command_for_every_task():
    usage = USAGE_PAGE.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.*)$", usage, flags=re.M)
    for task in TASKS:
        assert any(h.startswith(task) for h in headings), task
    sections = {s for s, _ in usage_commands()}
    for task in TASKS:
        if task != "View TensorBoard":
            assert any(s.startswith(task) for s in sections), f"no command under {task}"
    assert "tensorboard --logdir experiments/" in usage and "[vis]" in usage
    assert "--data_root" in usage
    for variant in ("finetune_scan_objbg", "finetune_scan_objonly", "finetune_scan_hardest", "finetune_modelnet.yaml",
                    "finetune_modelnet_8k", "--vote"):
        assert variant in usage


def test_readme_table_of_jobs_has_a_command_for_every_task():
    jobs = readme_job_commands()
    assert len(jobs) >= 12
    for script in ("main.py", "tools/fewshot_all.py", "tools/svm.py", "segmentation/main.py", "main_vis.py",
                   "tools/tsne.py", "tools/plot_curves.py", "tools/extract_features.py", "tools/predict.py"):
        assert any(command.split()[1] == script for _, command in jobs), script


@pytest.mark.parametrize("section,command", usage_commands() + readme_job_commands(), ids=lambda x: str(x)[:60])
def test_documented_commands_parse(section, command, monkeypatch, tmp_path):
    """Each command names an existing script and existing config files, and its command's parser
    takes it as written (for main.py, flag combinations included)."""
    monkeypatch.chdir(REPO)
    argv = shlex.split(command)[1:]
    script, argv = argv[0], argv[1:]
    assert (REPO / script).is_file(), script
    for word in argv:
        if word.startswith("cfgs/"):
            assert (REPO / word).is_file(), word
    if script == "tools/fewshot_all.py":  # its own flags, the rest goes to main.py
        args, rest = parser_of(script).parse_known_args(argv)
        main_parser.check_combinations(main_parser.build_parser(), main_parser.build_parser().parse_args(
            ["--config", args.config, "--way", str(args.way), "--shot", str(args.shot), *rest]))
        return
    if script == "main.py" and "--test" in argv and "--config" not in argv:
        # the run directory of --ckpts holds the config.yaml the earlier command wrote
        ckpts = argv[argv.index("--ckpts") + 1]
        run_dir = tmp_path / Path(ckpts).parent
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text("{}\n")
        argv[argv.index("--ckpts") + 1] = str(tmp_path / ckpts)
    if script == "main.py":
        main_parser.get_args(argv)
    elif script == "segmentation/main.py":
        importlib.import_module("segmentation.main").get_args(argv)
    else:
        parser_of(script).parse_args(argv)


def test_embed_compute_flag_and_config_key(tmp_path, monkeypatch):
    """--embed_compute over the config's embed_compute over $INTERMAE_EMBED_COMPUTE, resolved once
    into the run's settings (with where it came from); a bad config value is a ConfigError naming
    the key, the value and the file."""
    from easydict import EasyDict

    from models.layers import EMBED_COMPUTE_ENV
    from utils.config import ConfigError
    from utils.validate import check_values
    from utils.parser import build_parser as get_args_parser
    from utils.settings import build_run_settings

    def settings(argv, config):
        args = get_args_parser().parse_args(["--config", "x.yaml", "--device", "cpu", *argv])
        args.config_from_run = False
        return build_run_settings(args, EasyDict(config), "pretrain")

    monkeypatch.setenv(EMBED_COMPUTE_ENV, "fast")
    s = settings([], {"embed_compute": "exact"})
    assert (s.embed_compute, s.sources["embed_compute"]) == ("exact", "config embed_compute")
    s = settings(["--embed_compute", "fast"], {"embed_compute": "exact"})
    assert (s.embed_compute, s.sources["embed_compute"]) == ("fast", "--embed_compute")
    monkeypatch.setenv(EMBED_COMPUTE_ENV, "exact")
    s = settings([], {})
    assert (s.embed_compute, s.sources["embed_compute"]) == ("exact", f"${EMBED_COMPUTE_ENV}")
    assert s.model_switches()["embed_compute"] == "exact"
    monkeypatch.setenv(EMBED_COMPUTE_ENV, "quick")
    with pytest.raises(ConfigError, match=f"\\${EMBED_COMPUTE_ENV} = 'quick'"):
        settings([], {})
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--config", "x.yaml", "--embed_compute", "quick"])
    config = EasyDict(embed_compute="quick")
    with pytest.raises(ConfigError, match="embed_compute.*quick"):
        check_values(config, "pretrain")
