"""Checkpoint formats: what engine.engine.save_checkpoint writes loads with a plain
``torch.load(path)`` (weights_only=True) and resumes the Python / NumPy / torch random streams
exactly (also from the older format with NumPy arrays); ``tools/export_weights.py`` writes
``.safetensors`` (+ the config as JSON) that every loader reads."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import yaml
from easydict import EasyDict
from torch import nn

from engine import builder
from engine.engine import TrainState, resume, save_checkpoint
from utils.settings import RunSettings
from models.backbone import load_encoder
from models.Inter_MAE import Inter_MAE
from models.PointTransformer import PointTransformer
from tools import export_weights
from utils.checkpoint import CheckpointError, load_checkpoint_file, save_safetensors
from utils.config import ConfigError
from utils.misc import rng_state, set_rng_state
from writers import TINY_TC

# The keys of every job's checkpoint (utils.checkpoint.write_checkpoint, the one writer).
LAYOUT = {"base_model", "optimizer", "epoch", "next_step", "metrics", "best_metrics", "scheduler", "scaler",
          "rng_state", "rng_states", "epoch_rng_states", "config", "class_names", "job", "seed", "format"}


def run_settings(folder) -> RunSettings:
    return RunSettings(job="pretrain", experiment_path=str(folder), tfboard_path=None, log_name="t", config_path="")


def draws() -> list:
    """Numbers from every stream a run uses (gauss after random: Python's gauss keeps a cached value)."""
    return [random.random(), random.gauss(0, 1), random.getrandbits(64), *np.random.randn(3).tolist(),
            float(np.random.rand()), *torch.rand(4).tolist(), int(torch.randint(0, 10**9, (1,)))]


def scramble() -> None:
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def only_plain(node, where="ckpt"):
    """Every leaf is a tensor or a plain Python value."""
    if isinstance(node, dict):
        for k, v in node.items():
            assert isinstance(k, (str, int)), f"{where}: key {k!r}"
            only_plain(v, f"{where}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            only_plain(v, f"{where}[{i}]")
    else:
        assert node is None or isinstance(node, (torch.Tensor, bool, int, float, str)), f"{where}: {type(node)}"


def tiny_training_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    cfg = EasyDict(optimizer={"type": "AdamW", "kwargs": {"lr": 0.01, "weight_decay": 0.05}},
                   scheduler={"type": "CosLR", "kwargs": {"epochs": 4, "initial_epochs": 1}})
    optimizer, scheduler = builder.build_opti_sche(model, cfg)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    scheduler.step(1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    return model, optimizer, scheduler, scaler


def test_checkpoint_loads_with_plain_torch_load_and_resume_restores_rng(tmp_path):
    model, optimizer, scheduler, scaler = tiny_training_state()
    settings = run_settings(tmp_path)
    state = TrainState(model, optimizer, scheduler, scaler, best_metrics={"acc": np.float32(50.0), "epoch": 1},
                       class_names=["a", "b"])
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    draws()  # leaves a cached Python gauss and a cached NumPy gaussian in the states
    path = save_checkpoint(state, "ckpt-last", settings, {"model": {"NAME": "x"}}, epoch=1,
                           best_metrics=state.best_metrics, metrics={"acc": np.float64(50.0), "loss": torch.tensor(0.25)})
    expected = draws()

    ckpt = torch.load(path)  # defaults: weights_only=True
    assert set(ckpt) == LAYOUT
    only_plain(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["metrics"] == {"acc": 50.0, "loss": 0.25}
    assert type(ckpt["metrics"]["acc"]) is float and ckpt["best_metrics"] == {"acc": 50.0, "epoch": 1}
    assert set(ckpt["rng_state"]) >= {"python", "numpy", "torch"} and len(ckpt["rng_states"]) == 1
    assert ckpt["config"] == {"model": {"NAME": "x"}} and ckpt["class_names"] == ["a", "b"] and ckpt["next_step"] == 0

    scramble()
    model2, optimizer2, scheduler2, scaler2 = tiny_training_state()
    for p in model2.parameters():
        nn.init.zeros_(p)
    state2 = resume(TrainState(model2, optimizer2, scheduler2, scaler2), settings)
    assert draws() == expected
    assert state2.start_epoch == 2 and state2.start_step == 0 and state2.best_metrics == {"acc": 50.0, "epoch": 1}
    assert state2.class_names == ["a", "b"]
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert scheduler2.state_dict() == scheduler.state_dict() and scaler2.get_scale() == 1024.0
    assert optimizer2.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_rng_state_round_trip_is_exact_and_old_format_still_reads():
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    draws()
    new = rng_state()
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = draws()
    only_plain(new)
    assert new["python"]["state"].dtype == torch.int64 and new["numpy"]["key"].shape == (624,)
    for state in (new, old):
        scramble()
        set_rng_state(state)
        assert draws() == expected


def test_resume_reads_a_checkpoint_in_the_old_format(tmp_path):
    """Checkpoints written before the change hold tuples and NumPy arrays: read through the allowlist
    of NumPy globals (no --trust_checkpoint needed)."""
    model, optimizer, scheduler, _ = tiny_training_state()
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = draws()
    torch.save({"base_model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0, "metrics": {},
                "best_metrics": {}, "scheduler": scheduler.state_dict(), "scaler": None, "rng_state": old},
               tmp_path / "ckpt-last.pth")
    with pytest.raises(Exception):
        torch.load(tmp_path / "ckpt-last.pth")  # not weights-only loadable ...
    scramble()
    state = resume(TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False)),
                   run_settings(tmp_path))
    assert state.start_epoch == 1
    assert draws() == expected  # ... but still resumes exactly


# --------------------------------------------------------------------------------- safetensors
def tiny_pretrain_model() -> tuple:
    cfg = EasyDict(NAME="Inter_MAE", group_size=8, num_group=8, loss="cdl2",
                   transformer_config=EasyDict(TINY_TC, decoder_embed_dim=16))
    torch.manual_seed(0)
    model = Inter_MAE(cfg)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()
        model.MAE_encoder.patch_tokens(torch.randn(2, 64, 3))
    return model, cfg


def classifier(cfg_model) -> PointTransformer:
    tc = cfg_model.transformer_config
    return PointTransformer(EasyDict(NAME="PointTransformer", trans_dim=tc.trans_dim, depth=tc.depth, drop_path_rate=0.0,
                                     cls_dim=40, num_heads=tc.num_heads, group_size=cfg_model.group_size,
                                     num_group=cfg_model.num_group, encoder_dims=tc.encoder_dims))


@pytest.fixture
def pretrain_run(tmp_path):
    """A pre-training experiment folder: ckpt-last.pth and config.yaml."""
    model, cfg = tiny_pretrain_model()
    run = tmp_path / "experiments" / "tiny" / "run"
    run.mkdir(parents=True)
    config = {"model": json.loads(json.dumps(cfg)), "npoints": 64, "max_epoch": 1}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save({"base_model": model.state_dict(), "epoch": 4, "metrics": {}}, run / "ckpt-last.pth")
    return run, model, cfg, config


def test_export_whole_model_loads_into_a_pretraining_model_and_a_classifier(pretrain_run):
    run, model, cfg, config = pretrain_run
    written = export_weights.main(["--ckpts", str(run / "ckpt-last.pth")])
    out = run / "ckpt-last.safetensors"
    assert written == [str(out), str(run / "ckpt-last.json")]
    assert json.loads((run / "ckpt-last.json").read_text()) == config

    ckpt = load_checkpoint_file(str(out))
    assert set(ckpt) == {"base_model", "config"} and ckpt["config"] == config
    torch.manual_seed(1)
    fresh = Inter_MAE(cfg)
    builder.load_model(fresh, str(out))  # strict
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

    cls = classifier(cfg)
    load_encoder(cls, str(out))
    own = cls.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("MAE_encoder."):
            assert torch.equal(own[key[len("MAE_encoder."):]], value), key


def test_export_encoder_only_with_config_flag(pretrain_run, tmp_path):
    run, model, cfg, config = pretrain_run
    (run / "config.yaml").unlink()
    other = tmp_path / "given.yaml"
    other.write_text(yaml.safe_dump(config))
    out = tmp_path / "out" / "enc.safetensors"
    with pytest.raises(ConfigError, match="--config"):
        export_weights.main(["--ckpts", str(run / "ckpt-last.pth"), "--encoder_only", "--out", str(out)])
    export_weights.main(["--ckpts", str(run / "ckpt-last.pth"), "--encoder_only", "--out", str(out), "--config", str(other)])
    assert json.loads((tmp_path / "out" / "enc.json").read_text()) == config
    state = load_checkpoint_file(str(out))["base_model"]
    encoder = {k[len("MAE_encoder."):]: v for k, v in model.state_dict().items() if k.startswith("MAE_encoder.")}
    assert set(state) == set(encoder)
    cls = classifier(cfg)
    report = load_encoder(cls, str(out))
    assert sorted(report.loaded) == sorted(encoder)
    for key, value in encoder.items():
        assert torch.equal(cls.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="does not fit"):  # an encoder alone is not a whole model
        builder.load_model(Inter_MAE(cfg), str(out))


def test_safetensors_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint_file(str(bad))
    save_safetensors({"a": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="w.json"):
        load_checkpoint_file(str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="not tensors"):
        save_safetensors({"a": 1}, str(tmp_path / "x.safetensors"))
