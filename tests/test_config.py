"""Config loading (utils/config.py): _base_ merging, --opts, unknown / missing keys, dataset key
errors, missing dataset roots, and ``validate_config`` against the model and dataset schemas."""
from __future__ import annotations

from pathlib import Path

import pytest
from easydict import EasyDict

from conftest import REPO
from datasets import DATASETS, build_dataset_from_cfg
from datasets.common import DatasetFormatError
from models import MODELS
from utils.config import ConfigError, cfg_from_yaml_file
from utils.overrides import apply_opts
from utils.validate import check_top_level, validate_config
from writers import TINY_FINETUNE, write_tiny_pretrain_config

SHIPPED_CONFIGS = sorted((REPO / "cfgs").glob("*.yaml")) + sorted((REPO / "cfgs" / "demo").glob("*.yaml"))
JOB_REQUIRED = {
    "pretrain": ("model", "dataset", "optimizer", "max_epoch", "total_bs"),
    "finetune": ("model", "dataset", "optimizer", "max_epoch", "total_bs", "npoints"),
    "test": ("model", "dataset", "npoints"),
}


def test_base_merging_and_opts(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("NAME: ShapeNet\nDATA_PATH: data/x\nPC_PATH: data/y\nN_POINTS: 8192\n")
    main = tmp_path / "main.yaml"
    main.write_text(f"dataset: {{train: {{_base_: {base}, others: {{subset: train, npoints: 1024}}}}}}\n"
                    "model: {NAME: Inter_MAE, loss: cdl2}\ntotal_bs: 32\n")
    cfg = cfg_from_yaml_file(main)
    assert cfg.dataset.train._base_.N_POINTS == 8192
    assert cfg.dataset.train.others.npoints == 1024
    apply_opts(cfg, ["total_bs=8", "dataset.train.others.npoints=512", "model.loss=cdl1"])
    assert (cfg.total_bs, cfg.dataset.train.others.npoints, cfg.model.loss) == (8, 512, "cdl1")
    with pytest.raises(ConfigError, match="'model.losss'"):
        apply_opts(cfg, ["model.losss=cdl1"])


def test_unknown_and_missing_keys_name_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {NAME: Inter_MAE}\ntotal_bs: 4\nmax_epohc: 3\n")
    cfg = cfg_from_yaml_file(path)
    with pytest.raises(ConfigError) as err:
        check_top_level(cfg)
    assert "max_epohc" in str(err.value) and str(path) in str(err.value)
    del cfg["max_epohc"]
    with pytest.raises(ConfigError, match="missing top-level key 'dataset'"):
        check_top_level(cfg, required=("model", "dataset"))


def test_missing_base_file_is_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: {train: {_base_: cfgs/dataset_configs/nope.yaml, others: {}}}\n")
    with pytest.raises(ConfigError, match="nope.yaml"):
        cfg_from_yaml_file(path)


def test_dataset_key_errors_name_the_dataset_file(tmp_path):
    base = tmp_path / "ds.yaml"
    base.write_text("NAME: ShapeNet\nDATA_PATH: d\nPC_PATH: p\nN_POINTS: 8192\nN_PIONTS: 3\n")
    main = tmp_path / "m.yaml"
    main.write_text(f"dataset: {{train: {{_base_: {base}, others: {{subset: train, npoints: 1024}}}}}}\n")
    cfg = cfg_from_yaml_file(main)
    with pytest.raises(ConfigError) as err:
        build_dataset_from_cfg(cfg.dataset.train._base_, cfg.dataset.train.others)
    assert "N_PIONTS" in str(err.value) and str(base) in str(err.value)


def test_missing_dataset_root_names_path_and_layout(tmp_path):
    base = EasyDict(NAME="ShapeNet", DATA_PATH=str(tmp_path / "none"), PC_PATH=str(tmp_path / "pc"), N_POINTS=8192)
    with pytest.raises(DatasetFormatError) as err:
        build_dataset_from_cfg(base, {"subset": "train", "npoints": 1024})
    assert str(tmp_path / "none") in str(err.value) and "<synset>-<model>.npy" in str(err.value)


# ------------------------------------------------------------------------------ validate_config
def pretrain_config(tmp_path: Path) -> EasyDict:
    return cfg_from_yaml_file(write_tiny_pretrain_config(tmp_path / "tiny_pre.yaml", tmp_path / "data", epochs=1))


def finetune_config(tmp_path: Path) -> EasyDict:
    path = tmp_path / "tiny_ft.yaml"
    path.write_text(TINY_FINETUNE.format(root=tmp_path / "mn", epochs=1))
    return cfg_from_yaml_file(path)


def rename(node, old: str, new: str) -> None:
    node[new] = node.pop(old)


def test_validate_accepts_the_tiny_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    validate_config(pretrain_config(tmp_path), "pretrain", MODELS, DATASETS)
    validate_config(finetune_config(tmp_path), "finetune", MODELS, DATASETS)
    validate_config(finetune_config(tmp_path), "test", MODELS, DATASETS)


@pytest.mark.parametrize("where,old,typo", [
    ("model", "group_size", "group_szie"),
    ("model.transformer_config", "mask_ratio", "mask_raito"),
    ("dataset.train.others", "npoints", "npionts"),
    ("dataset.val.others", "subset", "subest"),
    ("optimizer", "kwargs", "kwrags"),
    ("scheduler.kwargs", "initial_epochs", "initial_epoch"),
])
def test_validate_rejects_a_typo_naming_the_key(tmp_path, monkeypatch, where, old, typo):
    monkeypatch.chdir(REPO)
    cfg = pretrain_config(tmp_path)
    node = cfg
    for part in where.split("."):
        node = node[part]
    rename(node, old, typo)
    with pytest.raises(ConfigError, match=typo):
        validate_config(cfg, "pretrain", MODELS, DATASETS)


def test_validate_rejects_a_typo_in_the_classifier_model(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = finetune_config(tmp_path)
    rename(cfg.model, "cls_dim", "cls_dims")
    with pytest.raises(ConfigError, match="cls_dims"):
        validate_config(cfg, "finetune", MODELS, DATASETS)


@pytest.mark.parametrize("job,key", [(job, key) for job, keys in JOB_REQUIRED.items() for key in keys])
def test_validate_rejects_a_missing_required_key_per_job(tmp_path, monkeypatch, job, key):
    monkeypatch.chdir(REPO)
    cfg = pretrain_config(tmp_path) if job == "pretrain" else finetune_config(tmp_path)
    del cfg[key]
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate_config(cfg, job, MODELS, DATASETS)


def test_validate_does_not_require_keys_a_job_does_not_use(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = finetune_config(tmp_path)
    for key in ("optimizer", "scheduler", "max_epoch", "total_bs"):
        del cfg[key]
    validate_config(cfg, "test", MODELS, DATASETS)
    cfg = pretrain_config(tmp_path)
    del cfg["npoints"]
    validate_config(cfg, "pretrain", MODELS, DATASETS)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_validate_accepts_every_shipped_config(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = cfg_from_yaml_file(path)
    job = "finetune" if cfg.model.NAME in ("PointTransformer", "PartSegTransformer") else "pretrain"
    validate_config(cfg, job, MODELS, DATASETS)


def test_shipped_configs_are_found():
    names = {str(p.relative_to(REPO)) for p in SHIPPED_CONFIGS}
    assert {"cfgs/pretrain.yaml", "cfgs/finetune_modelnet.yaml", "cfgs/demo/pretrain_demo.yaml",
            "cfgs/demo/finetune_demo.yaml"} <= names
