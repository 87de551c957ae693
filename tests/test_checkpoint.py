"""Checkpoints (utils/checkpoint.py): atomic writing, unreadable / missing files, prefix stripping
and strict loading that lists the offending keys."""
import pytest
import torch
from torch import nn

from utils import checkpoint as ckpt_mod
from utils.checkpoint import CheckpointError, atomic_save, clean_state_dict, load_checkpoint_file, load_state_dict_checked


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
