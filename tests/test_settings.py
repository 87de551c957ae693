"""Settings resolved once: where each setting comes from, that library code reads no
``args``, model switches as constructor arguments, one place for each list of choices, the
registered segmentation model, mismatch hints naming the right key, and the frozen-feature tools
loading any pre-training checkpoint."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from easydict import EasyDict

from conftest import REPO
from engine import builder
from models import MODELS
from models.Inter_MAE import Inter_MAE
from utils.checkpoint import CheckpointError, load_state_dict_checked
from utils.config import ConfigError
from utils.parser import build_parser
from utils.settings_table import CHOICE_KEYS, SETTINGS
from utils import settings
from utils.settings import RunSettings, build_run_settings
from writers import TINY_TC

LIBRARY = ("engine", "models", "datasets", "utils", "extensions")


def settings_of(argv, config, job="pretrain"):
    args = build_parser().parse_args(["--config", "x.yaml", *argv])
    args.config_from_run = False
    return build_run_settings(args, EasyDict(config), job)


def test_each_setting_comes_from_flag_then_config_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("INTERMAE_FPS_BACKEND", raising=False)
    s = settings_of(["--device", "cpu"], {"max_epoch": 3})
    assert (s.fps_backend, s.sources["fps_backend"]) == ("auto", "default")
    assert (s.n_epochs, s.epoch_count, s.lr_schedule) == (4, "released", "exact")  # released count: 0..max_epoch
    assert (s.ckpt_period, s.ckpt_from) == (10, 250)  # the released ckpt-epoch rule in pre-training
    monkeypatch.setenv("INTERMAE_FPS_BACKEND", "torch")
    assert settings_of(["--device", "cpu"], {}).sources["fps_backend"] == "$INTERMAE_FPS_BACKEND"
    s = settings_of(["--device", "cpu"], {"fps_backend": "triton", "amp": True, "epoch_count": "exact", "max_epoch": 3})
    assert (s.fps_backend, s.sources["fps_backend"], s.amp, s.n_epochs) == ("triton", "config fps_backend", "bf16", 3)
    s = settings_of(["--device", "cpu", "--fps_backend", "pointnet2_ops", "--amp", "off"], {"fps_backend": "triton"})
    assert (s.fps_backend, s.sources["fps_backend"], s.amp) == ("pointnet2_ops", "--fps_backend", "off")
    assert s.model_switches() == {"fps_backend": "pointnet2_ops", "embed_compute": "fast"}
    with pytest.raises(ConfigError, match="'fps_backend' = 'cuda'"):
        settings_of(["--device", "cpu"], {"fps_backend": "cuda"})
    with pytest.raises(Exception):  # frozen
        s.seed = 3
    assert "fps_backend: pointnet2_ops (--fps_backend)" in s.describe()


def _calls_getattr_args(path: Path) -> list:
    tree = ast.parse(path.read_text())
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "getattr" and node.args
            and isinstance(node.args[0], ast.Name) and node.args[0].id == "args"]


def test_library_code_reads_no_args_except_the_settings_builder():
    found = {}
    for package in LIBRARY:
        for path in (REPO / package).rglob("*.py"):
            if path.name != "settings.py" and _calls_getattr_args(path):
                found[str(path.relative_to(REPO))] = _calls_getattr_args(path)
    assert found == {}


def test_no_process_wide_model_switches_remain():
    from extensions import pointops
    from models import layers

    for name in ("set_fps_backend", "get_fps_backend", "_configured_backend"):
        assert not hasattr(pointops, name), name
    for name in ("set_embed_compute", "get_embed_compute", "_embed_compute"):
        assert not hasattr(layers, name), name


def test_each_list_of_choices_is_defined_once():
    from extensions.pointops import FPS_BACKENDS
    from models.layers import EMBED_COMPUTE_MODES

    parser = build_parser()
    flags = {a.dest: a.choices for a in parser._actions if a.choices is not None}
    for key in ("fps_backend", "embed_compute", "amp"):
        assert tuple(flags[key]) is CHOICE_KEYS[key] or tuple(flags[key]) == tuple(CHOICE_KEYS[key]), key
    assert CHOICE_KEYS["fps_backend"] is FPS_BACKENDS
    assert set(CHOICE_KEYS["embed_compute"]) == set(EMBED_COMPUTE_MODES)


def test_config_checks_and_flags_follow_the_settings_table(monkeypatch):
    """Each setting's row decides what its config key, flag and environment variable accept: a
    word outside its choices is refused from all three, a number below its range from the config."""
    from utils.validate import check_values

    parser = build_parser()
    offered = {a.dest: tuple(a.choices) for a in parser._actions if a.choices is not None}
    for row in SETTINGS:
        if row.key and row.choices:
            with pytest.raises(ConfigError, match=f"'{row.key}' = 'bogus': expected one of"):
                check_values(EasyDict({row.key: "bogus"}), "test")
            if row.flag:
                assert offered[row.name] == row.choices, row.name
        if row.env and row.choices:
            monkeypatch.setenv(row.env, "bogus")
            with pytest.raises(ConfigError, match=f"\\${row.env} = 'bogus'"):
                settings_of(["--device", "cpu"], {})
            monkeypatch.delenv(row.env)
        if row.key and row.number:
            below = row.number.low - (0 if row.number.low_open else 1)
            with pytest.raises(ConfigError, match=f"'{row.key}' = {below}: expected an? "):
                check_values(EasyDict({row.key: below}), "test")
            check_values(EasyDict({row.key: row.number.low + 1}), "test")


def test_schema_module_loads_no_yaml_and_models_import_only_it():
    code = ("import sys, models, datasets; print('yaml' in sys.modules, 'utils.config' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "False"  # models and datasets never import utils/config.py


def test_partseg_model_is_registered_and_built_from_its_section():
    section = EasyDict(NAME="PartSegTransformer", trans_dim=32, depth=3, num_heads=2, num_group=8, group_size=8,
                       patch_embed="point_mae", normal=True)
    model = builder.model_builder(section, RunSettings(job="partseg", experiment_path="", tfboard_path=None,
                                                      log_name="t", config_path="", embed_compute="exact"))
    assert type(model).__name__ == "PartSegTransformer" and model.encoder.compute == "exact" and model.normal
    rebuilt = MODELS.build(EasyDict(model.model_config()))
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def _pretrain(group_size=8, image_branch=None):
    cfg = EasyDict(NAME="Inter_MAE", group_size=group_size, num_group=8, loss="cdl2",
                   transformer_config=EasyDict(TINY_TC, decoder_embed_dim=16))
    if image_branch is not None:
        cfg.image_branch = image_branch
    torch.manual_seed(0)
    return Inter_MAE(cfg)


def test_a_changed_group_size_is_named_not_trans_dim(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_state_dict_checked(_pretrain(group_size=4), _pretrain(group_size=8).state_dict())
    text = str(err.value)
    assert "model.group_size" in text and "probably model.group_size 8" in text
    assert "trans_dim" not in text


TINY_BRANCH = EasyDict(model="vit_tiny_patch16_224", model_kwargs=EasyDict(img_size=32, depth=1, embed_dim=48, num_heads=2))


def test_frozen_feature_tools_load_a_checkpoint_without_an_image_branch(tmp_path):
    """A Point-MAE-layout pre-training checkpoint (no image branch) loads into a model with one,
    and a checkpoint with one into a model without: the point side strictly, the rest reported."""
    plain = _pretrain()
    torch.save({"base_model": plain.state_dict()}, tmp_path / "plain.pth")
    with_branch = _pretrain(image_branch=TINY_BRANCH)
    with pytest.raises(CheckpointError) as err:
        builder.load_model(with_branch, str(tmp_path / "plain.pth"))  # the whole-model load refuses it
    hint = [line for line in str(err.value).splitlines() if "image_branch.encoder.blocks" in line and "blocks," in line]
    assert hint and "model.image_branch.model" in hint[0] and "transformer_config.depth" not in hint[0]
    builder.load_point_model(with_branch, str(tmp_path / "plain.pth"))
    for key, value in plain.state_dict().items():
        assert torch.equal(with_branch.state_dict()[key], value), key
    torch.save({"base_model": with_branch.state_dict()}, tmp_path / "branch.pth")
    fresh = _pretrain()
    builder.load_point_model(fresh, str(tmp_path / "branch.pth"))
    assert torch.equal(fresh.MAE_encoder.norm.weight, with_branch.MAE_encoder.norm.weight)


def test_amp_mode_and_refusals(monkeypatch, capsys):
    assert [settings.amp_mode(c, v) for c, v in ((None, None), (None, True), (None, False), ("fp16", True),
                                                  (None, "bf16"), ("off", "fp16"))] == \
        ["off", "bf16", "off", "fp16", "bf16", "off"]
    with pytest.raises(ValueError, match="'fp32'"):
        settings.amp_mode(None, "fp32")
    assert settings.resolve_amp("off", torch.device("cpu")) is None
    assert settings.resolve_amp("fp16", torch.device("cpu")) is None and "needs a CUDA device" in capsys.readouterr().out
    monkeypatch.setattr(settings, "cpu_has_native_bf16", lambda: False)
    assert settings.resolve_amp("bf16", torch.device("cpu")) is None and "no native bf16" in capsys.readouterr().out
    monkeypatch.setattr(settings, "cpu_has_native_bf16", lambda: True)
    assert settings.resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16
