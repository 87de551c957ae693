"""utils.checkpoint.load_weights, the one weight loader, with each model's remap
(``checkpoint_filter_fn``): released / DDP layouts, Point-MAE layouts and ``.safetensors`` exports
into each model; and the models' typed constructors (schema from the signature, from_config)."""
from __future__ import annotations

import inspect
import os

import pytest
import torch
from easydict import EasyDict

from models import MODELS
from models.build import SWITCHES, build_model_from_cfg
from models.Inter_MAE import Inter_MAE, Point_MAE
from models.PartSegTransformer import PartSegTransformer
from models.PointTransformer import PointTransformer
from utils.config import cfg_from_yaml_file
from utils.checkpoint import CheckpointError, load_weights, save_safetensors
from utils.schema import ConfigError
from writers import TINY_TC

REFERENCE = os.path.join(os.path.dirname(__file__), "reference")
CLASSIFIER = dict(trans_dim=32, depth=2, drop_path_rate=0.1, num_heads=2, group_size=8, num_group=8, encoder_dims=32)


def tiny_pretrain(cls=Inter_MAE):
    torch.manual_seed(1)
    extra = {"decoder_embed_dim": 16} if cls is Inter_MAE else {}
    return cls(group_size=8, num_group=8, loss="cdl2", transformer_config=dict(TINY_TC, **extra))


def listing(name: str) -> dict:
    """``{key: shape}`` of a reference state-dict listing (``key (d1, d2, ...)`` per line)."""
    out = {}
    with open(os.path.join(REFERENCE, name)) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                key, shape = line.split(" ", 1)
                out[key] = tuple(int(d) for d in shape.strip("()\n ").split(",") if d.strip())
    return out


def test_released_pretraining_layout_maps_onto_the_released_classifier_layout():
    """The remap of the classifier takes every ``MAE_encoder.*`` entry of the released pre-training
    listing, prefix removed, and leaves exactly the classifier's own entries new."""
    pre, fin = listing("intermae_pretrain_state_dict.txt"), listing("intermae_finetune_state_dict.txt")
    with torch.device("meta"):
        model = PointTransformer(trans_dim=384, depth=12, drop_path_rate=0.1, num_heads=6, group_size=32,
                                 num_group=128, encoder_dims=384, cls_dim=15)
        state = {k: torch.empty(s) for k, s in pre.items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == fin  # the model's own layout
    out = PointTransformer.checkpoint_filter_fn(state, model)
    expected = {k[len("MAE_encoder."):]: s for k, s in pre.items() if k.startswith("MAE_encoder.")}
    assert {k: tuple(v.shape) for k, v in out.state_dict.items()} == expected
    assert {k for k in fin if k.startswith(out.new)} == set(fin) - set(expected)
    assert {k.split(".")[0] for k in set(fin) - set(expected)} == {"cls_token", "cls_pos", "cls_head_finetune"}


def test_ddp_pretraining_checkpoint_loads_its_encoder_into_the_classifier(tmp_path):
    pre = tiny_pretrain()
    path = tmp_path / "pre.pth"
    torch.save({"base_model": {f"module.{k}": v for k, v in pre.state_dict().items()}, "epoch": 7}, path)
    model = PointTransformer(**CLASSIFIER, cls_dim=3)
    head_before = model.cls_head_finetune[0].weight.clone()
    report = load_weights(model, str(path), remap="auto")
    for key, value in pre.MAE_encoder.state_dict().items():
        if key.startswith(("encoder.", "pos_embed.", "blocks.", "norm.")):
            assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.cls_head_finetune[0].weight, head_before)  # the head stays as initialised
    assert report.checkpoint["epoch"] == 7 and report.note == "pretrain"
    assert report.unused == len(pre.state_dict()) - len(report.loaded)
    with pytest.raises(CheckpointError, match="does not fit PointTransformer"):  # a whole-model load refuses it
        load_weights(PointTransformer(**CLASSIFIER, cls_dim=3), str(path))


def test_point_mae_layout_loads_into_the_segmenter_and_names_a_patch_embedding_mismatch(tmp_path):
    pre = tiny_pretrain(Point_MAE)
    path = tmp_path / "pointmae.pth"
    torch.save({"base_model": pre.state_dict()}, path)
    seg = PartSegTransformer(trans_dim=32, depth=3, num_heads=2, num_group=8, group_size=8, patch_embed="point_mae")
    with pytest.raises(CheckpointError, match="depth"):  # 2 blocks in the checkpoint, 3 in the model
        load_weights(seg, str(path), remap="auto")
    pre3 = Point_MAE(group_size=8, num_group=8, loss="cdl2", transformer_config=dict(TINY_TC, depth=3))
    torch.save({"base_model": pre3.state_dict()}, path)
    report = load_weights(seg, str(path), remap="auto")
    assert torch.equal(seg.encoder.first_conv[0].weight, pre3.MAE_encoder.encoder.first_conv[0].weight)
    assert "label_conv" in {k.split(".")[0] for k in report.new}
    with pytest.raises(CheckpointError, match=r"pointmae\.pth' uses the 'point_mae' patch embedding"):
        load_weights(PartSegTransformer(trans_dim=32, depth=3, num_heads=2, num_group=8, group_size=8),
                     str(path), remap="auto")


def test_safetensors_export_loads_whole_and_the_point_side_drops_an_image_branch(tmp_path):
    pre = tiny_pretrain()
    state = dict(pre.state_dict())
    state["image_branch.inv_head.0.weight"] = torch.zeros(4, 4)  # a branch the model does not have
    path = str(tmp_path / "model.safetensors")
    save_safetensors(state, path)
    fresh = Inter_MAE(group_size=8, num_group=8, loss="cdl2", transformer_config=dict(TINY_TC, decoder_embed_dim=16))
    with pytest.raises(CheckpointError, match="1 unexpected keys: image_branch.inv_head.0.weight"):
        load_weights(fresh, path)
    pro_before = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("pro_head.")}
    report = load_weights(fresh, path, remap="auto")  # the point side: pro_head and the branch left out
    assert report.note == f"{1 + len(pro_before)} image-branch tensors" and report.checkpoint_tensors == len(state)
    assert set(report.new) == set(pro_before)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, pro_before[key] if key in pro_before else pre.state_dict()[key]), key


def test_load_weights_takes_a_state_dict_and_names_it_in_errors():
    model = torch.nn.Linear(2, 3)
    with pytest.raises(CheckpointError, match="'given weights' does not fit Linear"):
        load_weights(model, {"weight": torch.zeros(3, 2)}, name="given weights")
    load_weights(model, {"weight": torch.ones(3, 2), "bias": torch.ones(3)})
    assert torch.equal(model.weight, torch.ones(3, 2))


# ------------------------------------------------------------------------------ constructors
# The model sections as they were declared by hand before the schemas came from the signatures.
HAND_SCHEMAS = {
    "PointTransformer": (("NAME", "trans_dim", "depth", "drop_path_rate", "num_heads", "group_size", "num_group",
                          "encoder_dims"), ("cls_dim", "patch_embed", "label_smoothing", "init")),
    "Point_MAE": (("NAME", "group_size", "num_group", "loss"), ("patch_embed", "init")),
    "Inter_MAE": (("NAME", "group_size", "num_group", "loss"), ("patch_embed", "init")),
    "PartSegTransformer": (("NAME",), ("trans_dim", "depth", "num_heads", "drop_path_rate", "num_group", "group_size",
                                       "patch_embed", "return_layers", "normal", "init", "num_part", "num_category")),
}


@pytest.mark.parametrize("name", sorted(HAND_SCHEMAS))
def test_derived_schema_is_the_signature_and_the_hand_written_one(name):
    cls = MODELS.get(name)
    schema = cls.config_schema
    required, optional = HAND_SCHEMAS[name]
    assert set(schema.required) == set(required) and set(schema.optional) == set(optional)
    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.name not in SWITCHES}
    assert set(schema.keys()) - {"NAME"} == set(params)
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in params)
    no_default = {k for k, p in params.items() if p.default is inspect.Parameter.empty}
    assert no_default - set(schema.sections) == set(required) - {"NAME"}  # sections: checked when present


def test_transformer_config_schema_of_the_pretraining_models():
    keys = {"mask_ratio", "mask_type", "trans_dim", "encoder_dims", "depth", "drop_path_rate", "num_heads",
            "decoder_depth", "decoder_num_heads"}
    point_mae = Point_MAE.config_schema.sections["transformer_config"]
    inter_mae = Inter_MAE.config_schema.sections["transformer_config"]
    assert set(point_mae.required) == keys and not point_mae.optional
    assert set(inter_mae.required) == keys and set(inter_mae.optional) == {"embed_dim", "decoder_embed_dim"}
    assert "image_branch" in Inter_MAE.config_schema.sections and "image_branch" not in Point_MAE.config_schema.sections


def test_from_config_names_an_unknown_key_and_a_value_outside_the_choices():
    cfg = EasyDict(NAME="PointTransformer", cls_dim=3, **CLASSIFIER)
    assert isinstance(PointTransformer.from_config(cfg), PointTransformer)
    with pytest.raises(ConfigError, match=r"unknown key 'model \(PointTransformer\)\.cls_dims'.*did you mean 'cls_dim'"):
        PointTransformer.from_config(EasyDict(cfg, cls_dims=3))
    with pytest.raises(ConfigError, match=r"model\.init: 'xavier' is not one of \['released', 'trunc_normal'\]"):
        PointTransformer.from_config(EasyDict(cfg, init="xavier"))
    pre = EasyDict(NAME="Point_MAE", group_size=8, num_group=8, loss="cdl2", transformer_config=dict(TINY_TC))
    with pytest.raises(ConfigError, match=r"model\.transformer_config\.mask_type: 'grid' is not one of"):
        MODELS.get("Point_MAE").from_config(EasyDict(pre, transformer_config=dict(TINY_TC, mask_type="grid")))
    with pytest.raises(ConfigError, match="model.loss: 'l1' is not one of"):
        Point_MAE.from_config(EasyDict(pre, loss="l1"))


def test_config_section_and_keywords_build_the_same_model():
    cfg = EasyDict(NAME="PointTransformer", cls_dim=3, **CLASSIFIER)
    torch.manual_seed(0)
    a = PointTransformer(cfg)  # the released call: the config section as the one argument
    torch.manual_seed(0)
    b = PointTransformer(cls_dim=3, **CLASSIFIER)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_a_check_inside_a_constructor_names_the_config_file(tmp_path):
    path = tmp_path / "no_classes.yaml"
    path.write_text("model:\n  NAME: PointTransformer\n  trans_dim: 32\n  depth: 2\n  drop_path_rate: 0.1\n"
                    "  num_heads: 2\n  group_size: 8\n  num_group: 16\n  encoder_dims: 32\n")
    with pytest.raises(ConfigError, match=r"model\.cls_dim is not set.*\(in .*no_classes\.yaml\)"):
        build_model_from_cfg(cfg_from_yaml_file(str(path)).model)
