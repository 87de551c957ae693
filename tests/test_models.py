"""Model structure against the released state-dict listings, shapes, masking and gradients."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from easydict import EasyDict

from models import build_model_from_cfg
from models.Inter_MAE import block_mask, random_mask
from models.layers import InterMAEPatchEmbed, PointMAEPatchEmbed, TransPooling
from utils.config import ConfigError, cfg_from_yaml_file

# The released state-dict listings (models/Inter_MAE.py, models/Point_MAE.py of the release).
REFERENCE = Path(__file__).resolve().parent / "reference"
REPO = Path(__file__).resolve().parents[1]


def read_listing(name: str) -> dict:
    path = REFERENCE / name
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split(" ", 1)
        out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def layout(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def pretrain_model_cfg(**overrides):
    cfg = cfg_from_yaml_file(REPO / "cfgs" / "pretrain.yaml").model
    cfg.update(overrides)
    return cfg


def test_inter_mae_matches_released_listing():
    model = build_model_from_cfg(pretrain_model_cfg())
    own = layout(model)
    # the image branch is a registered sub-module here (the release rebuilt it every step)
    branch = {k for k in own if k.startswith("image_branch.")}
    assert any(k.startswith("image_branch.encoder.") for k in branch)
    assert any(k.startswith("image_branch.inv_head.") for k in branch)
    point_side = {k: v for k, v in own.items() if k not in branch}
    assert point_side == read_listing("intermae_pretrain_state_dict.txt")
    assert sum(v.numel() for k, v in model.state_dict().items() if k not in branch) == 25_467_363
    point_only = build_model_from_cfg(pretrain_model_cfg(image_branch={"enabled": False}))
    assert layout(point_only) == read_listing("intermae_pretrain_state_dict.txt")


def test_point_mae_matches_released_listing():
    cfg = EasyDict(NAME="Point_MAE", group_size=32, num_group=64, loss="cdl2", transformer_config=dict(
        mask_ratio=0.6, mask_type="rand", trans_dim=384, encoder_dims=384, depth=12, drop_path_rate=0.1,
        num_heads=6, decoder_depth=4, decoder_num_heads=6))
    model = build_model_from_cfg(cfg)
    assert layout(model) == read_listing("pointmae_pretrain_state_dict.txt")


def test_classifier_matches_released_listing():
    cfg = EasyDict(NAME="PointTransformer", trans_dim=384, depth=12, drop_path_rate=0.1, cls_dim=15, num_heads=6,
                   group_size=32, num_group=128, encoder_dims=384)
    model = build_model_from_cfg(cfg)
    assert layout(model) == read_listing("intermae_finetune_state_dict.txt")
    logits = model.eval()(torch.rand(2, 2048, 3))
    assert logits.shape == (2, 15)


def tiny_cfg(**tc):
    base = dict(mask_ratio=0.6, mask_type="rand", trans_dim=32, encoder_dims=32, depth=2, drop_path_rate=0.0,
                num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    base.update(tc)
    return EasyDict(NAME="Inter_MAE", group_size=8, num_group=20, loss="cdl2", transformer_config=base)


def test_masking_counts_and_shapes():
    torch.manual_seed(0)
    model = build_model_from_cfg(tiny_cfg())
    out = model.encode_decode(torch.rand(3, 200, 3))
    assert out["mask"].shape == (3, 20)
    assert (out["mask"].sum(1) == int(0.6 * 20)).all()
    assert out["neighborhood"].shape == (3, 20, 8, 3)
    assert out["rebuild"].shape == out["target"].shape == (3, 12, 8, 3)
    assert out["decoded"].shape == (3, 20, 16)
    # the released 0.6 of 64 patches: 38 masked, 26 visible
    assert random_mask(torch.rand(2, 64, 3), 0.6).sum(1).tolist() == [38, 38]


def test_block_mask_is_the_nearest_centres():
    torch.manual_seed(1)
    center = torch.rand(2, 30, 3)
    mask = block_mask(center, 0.5)
    for b in range(2):
        masked = center[b][mask[b]]
        # the masked set is a ball: every masked centre is nearer to the seed than every visible one
        seed_candidates = [i for i in range(30) if mask[b, i]]
        d = torch.cdist(center[b], center[b])
        ok = any(d[s][mask[b]].max() <= d[s][~mask[b]].min() for s in seed_candidates)
        assert ok and masked.shape[0] == 15


def test_explicit_mask_is_used():
    model = build_model_from_cfg(tiny_cfg()).eval()
    pts = torch.rand(2, 200, 3)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[:, :5] = True
    out = model.encode_decode(pts, mask=mask)
    assert torch.equal(out["mask"], mask)
    assert out["rebuild"].shape[1] == 5
    bad = mask.clone()
    bad[0, 6] = True
    with pytest.raises(ValueError, match="same number"):
        model.encode_decode(pts, mask=bad)


def test_transpooling_is_the_released_diagonal_weighting():
    torch.manual_seed(2)
    layer = TransPooling(8)
    x = torch.randn(3, 8, 5)  # BG C K
    out = layer(x.transpose(1, 2)).detach().numpy()  # the layer works channels-last: (BG, K, C)
    q = np.einsum("oc,bck->bko", layer.q_conv.weight[:, :, 0].detach().numpy(), x.numpy())
    k = np.einsum("oc,bck->bok", layer.k_conv.weight[:, :, 0].detach().numpy(), x.numpy())
    for b in range(3):
        energy = q[b] @ k[b]
        att = np.exp(energy - energy.max(1, keepdims=True))
        att /= att.sum(1, keepdims=True)
        for i in range(5):
            np.testing.assert_allclose(out[b, i], att[i, i] * x.numpy()[b, :, i], rtol=1e-4, atol=1e-6)


def conv_reference(embed, point_groups):
    """The released channels-first computation of a patch embedding, with nn.functional.conv1d /
    batch_norm on (N, C, L) tensors and the same parameters (fresh running statistics)."""
    def block(seq, x, stats):
        conv1, bn, _, conv2 = seq
        x = F.conv1d(x, conv1.weight, conv1.bias)
        x = F.relu(F.batch_norm(x, stats[0], stats[1], bn.weight, bn.bias, training=True, momentum=bn.momentum, eps=bn.eps))
        return F.conv1d(x, conv2.weight, conv2.bias)

    B, G, K, _ = point_groups.shape
    stats = [[torch.zeros(c), torch.ones(c)] for c in (128, 512)]
    x = block(embed.first_conv, point_groups.reshape(B * G, K, 3).transpose(1, 2), stats[0])  # BG 256 K
    if isinstance(embed, InterMAEPatchEmbed):
        q = F.conv1d(x, embed.first_trans.q_conv.weight).transpose(1, 2)
        att = torch.softmax(torch.bmm(q, F.conv1d(x, embed.first_trans.k_conv.weight)), dim=-1)
        att = att / (1e-9 + att.sum(dim=-1, keepdim=True))
        x = torch.einsum("bnn,bnc->bnc", att, x.transpose(1, 2))  # BG K 256
        x = torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=-1).reshape(B, G, 512).transpose(1, 2)
        return block(embed.second_conv, x, stats[1]).transpose(1, 2), stats
    x = torch.cat([x.amax(dim=2, keepdim=True).expand(-1, -1, K), x], dim=1)
    return block(embed.second_conv, x, stats[1]).amax(dim=2).reshape(B, G, -1), stats


@pytest.mark.parametrize("embed_cls", [InterMAEPatchEmbed, PointMAEPatchEmbed])
def test_patch_embed_matmuls_equal_the_released_convolutions(embed_cls):
    torch.manual_seed(3)
    embed = embed_cls(64).train()
    for module in embed.modules():  # non-trivial BatchNorm affine parameters
        if isinstance(module, torch.nn.BatchNorm1d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.5, 0.5)
    groups = torch.randn(2, 6, 16, 3)
    expected, stats = conv_reference(embed, groups)
    got = embed(groups)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    bns = [m for m in embed.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    for bn, (mean, var) in zip(bns, stats):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert embed.first_conv[0].weight.shape == (128, 3, 1)


def test_patch_embed_output_shape():
    emb = InterMAEPatchEmbed(48)
    assert emb(torch.rand(2, 10, 16, 3)).shape == (2, 10, 48)


@pytest.mark.parametrize("name", ["Inter_MAE", "Point_MAE"])
def test_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(3)
    cfg = tiny_cfg()
    if name == "Point_MAE":
        cfg.NAME = "Point_MAE"
        del cfg.transformer_config["decoder_embed_dim"]
    model = build_model_from_cfg(cfg)
    model(torch.rand(4, 200, 3))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    # pro_head only serves the contrastive loss, which needs images
    if name == "Inter_MAE":
        assert all(n.startswith("pro_head.") for n in missing), missing
    else:
        assert missing == []


def test_model_config_errors_name_the_key():
    cfg = tiny_cfg()
    cfg.transformer_config["mask_ratoi"] = 0.5
    with pytest.raises(ConfigError, match="mask_ratoi"):
        build_model_from_cfg(cfg)
    cfg = tiny_cfg()
    del cfg["loss"]
    with pytest.raises(ConfigError, match="model \\(Inter_MAE\\)\\.loss"):
        build_model_from_cfg(cfg)


def test_bf16_autocast_forward_keeps_fp32_loss():
    model = build_model_from_cfg(tiny_cfg())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 200, 3))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
