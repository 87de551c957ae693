"""Config loading and errors; checkpoint writing, reading and strict loading."""
import pytest
import torch
from torch import nn

from datasets import build_dataset_from_cfg
from datasets.common import DatasetFormatError
from utils import checkpoint as ckpt_mod
from utils.checkpoint import CheckpointError, atomic_save, clean_state_dict, load_checkpoint_file, load_state_dict_checked
from utils.config import ConfigError, apply_opts, cfg_from_yaml_file, check_top_level


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
    from easydict import EasyDict

    base = EasyDict(NAME="ShapeNet", DATA_PATH=str(tmp_path / "none"), PC_PATH=str(tmp_path / "pc"), N_POINTS=8192)
    with pytest.raises(DatasetFormatError) as err:
        build_dataset_from_cfg(base, {"subset": "train", "npoints": 1024})
    assert str(tmp_path / "none") in str(err.value) and "<synset>-<model>.npy" in str(err.value)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt-last.pth"
    atomic_save({"epoch": 1}, str(path))

    def failing_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_save)
    with pytest.raises(OSError):
        atomic_save({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert load_checkpoint_file(str(path))["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-last.pth"]


def test_unreadable_and_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint_file(str(bad))


def test_prefixes_are_stripped_and_strict_load_lists_keys():
    sd = {"module.base_model.a.weight": torch.zeros(2), "module.b": torch.zeros(1)}
    assert list(clean_state_dict(sd)) == ["a.weight", "b"]
    model = nn.Sequential(nn.Linear(2, 2))
    good = {f"module.{k}": v for k, v in model.state_dict().items()}
    report = load_state_dict_checked(model, clean_state_dict(good))
    assert report.ok and sorted(report.loaded) == ["0.bias", "0.weight"]
    with pytest.raises(CheckpointError) as err:
        load_state_dict_checked(model, {"0.weight": torch.zeros(2, 2), "extra": torch.zeros(1)}, source="x.pth")
    assert "0.bias" in str(err.value) and "extra" in str(err.value) and "x.pth" in str(err.value)
    partial = load_state_dict_checked(model, {"0.weight": torch.ones(2, 2)}, strict=False)
    assert partial.missing == ["0.bias"] and torch.equal(model[0].weight, torch.ones(2, 2))
