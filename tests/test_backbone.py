"""models/backbone.py: feature poolings, checkpoint kinds, and pre-training checkpoints mapped into
the classifier and the segmenter (DDP ``module.`` prefix, patch-embedding mismatch)."""
from __future__ import annotations

import pytest
import torch
from easydict import EasyDict

from models.backbone import PointEncoder, checkpoint_kind, first_max_pool, max_mean_pool
from models.Inter_MAE import Inter_MAE, Point_MAE
from models.PartSegTransformer import PartSegTransformer
from models.PointTransformer import PointTransformer
from utils.checkpoint import CheckpointError
from writers import TINY_TC


def tiny_classifier(patch_embed: str, depth: int = 2) -> PointTransformer:
    return PointTransformer(EasyDict(NAME="PointTransformer", trans_dim=32, depth=depth, drop_path_rate=0.1, cls_dim=5,
                                     num_heads=2, group_size=8, num_group=8, encoder_dims=32, patch_embed=patch_embed))


def tiny_pretrain(cls=Inter_MAE, **overrides):
    extra = {"decoder_embed_dim": 16} if cls is Inter_MAE else {}
    return cls(EasyDict(NAME=cls.__name__, group_size=8, num_group=8, loss="cdl2",
                        transformer_config=EasyDict(TINY_TC, **extra, **overrides)))


# ------------------------------------------------------------------------------------ poolings
def test_max_mean_pool_is_max_then_mean():
    tokens = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [-1.0, 5.0]],
                           [[0.0, 0.0], [0.0, 6.0], [3.0, 0.0]]])  # (B=2, L=3, C=2)
    expected = torch.tensor([[3.0, 5.0, 1.0, 1.0],
                             [3.0, 6.0, 1.0, 2.0]])
    out = max_mean_pool(tokens)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out, expected)


def test_first_max_pool_is_token0_then_max_of_the_rest():
    tokens = torch.tensor([[[9.0, 9.0], [1.0, -2.0], [3.0, 0.0], [-1.0, 5.0]],
                           [[-7.0, 0.5], [0.0, 0.0], [0.0, 6.0], [3.0, 0.0]]])  # (B=2, 1+L=4, C=2)
    expected = torch.tensor([[9.0, 9.0, 3.0, 5.0],  # token 0 is not part of the max
                             [-7.0, 0.5, 3.0, 6.0]])
    out = first_max_pool(tokens)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------------- checkpoint kind
@pytest.mark.parametrize("keys,kind", [
    (["MAE_encoder.encoder.first_trans.q_conv.weight", "MAE_decoder.blocks.0.norm1.weight", "mask_token"], "pretrain"),
    (["MAE_encoder.norm.weight", "cls_head_finetune.0.weight"], "pretrain"),
    (["encoder.first_conv.0.bias", "blocks.blocks.0.mlp.fc1.weight", "cls_token", "cls_pos",
      "cls_head_finetune.8.bias"], "classifier"),
    (["encoder.first_trans.q_conv.weight", "norm.weight", "label_conv.0.weight", "convs1.weight"], "segmentation"),
    (["encoder.first_conv.0.weight", "pos_embed.0.weight", "blocks.blocks.1.attn.qkv.weight", "norm.bias"], "encoder"),
    (["norm.weight"], "encoder"),
    (["fc.weight", "head.bias"], "unknown"),
    ([], "unknown"),
])
def test_checkpoint_kind_of_hand_built_key_sets(keys, kind):
    assert checkpoint_kind({k: torch.zeros(1) for k in keys}) == kind


# ---------------------------------------------------------------------------- checkpoint mapping
@pytest.mark.parametrize("cls,kind,marker", [(Inter_MAE, "inter_mae", "encoder.first_trans.q_conv.weight"),
                                             (Point_MAE, "point_mae", "encoder.first_conv.0.bias")])
def test_pretrain_checkpoint_maps_into_classifier(tmp_path, cls, kind, marker):
    pre = tiny_pretrain(cls)
    state = {f"module.{k}": v for k, v in pre.state_dict().items()}  # as written by DDP
    torch.save({"base_model": state, "epoch": 3}, tmp_path / "pre.pth")
    model = tiny_classifier(kind)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("cls_head_finetune.")}
    report = model.load_model_from_ckpt(str(tmp_path / "pre.pth"))
    own = model.state_dict()
    enc = {k[len("MAE_encoder."):]: v for k, v in pre.state_dict().items() if k.startswith("MAE_encoder.")}
    assert marker in enc and set(enc) == set(report.loaded)
    for k, v in enc.items():
        assert torch.equal(own[k], v), k
    for k, v in head_before.items():
        assert torch.equal(own[k], v), k
    other = "point_mae" if kind == "inter_mae" else "inter_mae"
    with pytest.raises(CheckpointError, match=f"'{kind}' patch embedding"):
        tiny_classifier(other).load_model_from_ckpt(str(tmp_path / "pre.pth"))


def test_segmenter_and_classifier_from_one_checkpoint_hold_identical_encoders(tmp_path):
    torch.manual_seed(0)
    pre = tiny_pretrain(Inter_MAE, depth=3)  # the segmenter's default head needs a depth divisible by 3
    torch.save({"base_model": pre.state_dict(), "epoch": 0}, tmp_path / "pre.pth")
    torch.manual_seed(1)
    classifier = tiny_classifier("inter_mae", depth=3)
    torch.manual_seed(2)
    segmenter = PartSegTransformer(trans_dim=32, depth=3, num_heads=2, num_group=8, group_size=8, patch_embed="inter_mae")
    assert isinstance(classifier, PointEncoder) and isinstance(segmenter, PointEncoder)
    cls_report = classifier.load_model_from_ckpt(str(tmp_path / "pre.pth"))
    seg_report = segmenter.load_model_from_ckpt(str(tmp_path / "pre.pth"))
    assert sorted(cls_report.loaded) == sorted(seg_report.loaded)
    enc = {k[len("MAE_encoder."):]: v for k, v in pre.state_dict().items() if k.startswith("MAE_encoder.")}
    assert set(enc) == set(cls_report.loaded)
    cls_state, seg_state = classifier.state_dict(), segmenter.state_dict()
    for key in enc:
        assert torch.equal(cls_state[key], seg_state[key]), key
        assert torch.equal(cls_state[key], enc[key]), key
