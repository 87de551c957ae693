"""Building blocks shared by pre-training, classification and segmentation models.

Parameter names follow the released code exactly (``tests/reference/`` lists them), so released
checkpoints load without renaming.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from extensions.pointops import fps, gather_points, knn_query


class Group(nn.Module):
    """Split a cloud into patches: FPS centres, then the K nearest points of each centre.

    Input ``xyz`` (B, N, 3). Output ``neighborhood`` (B, G, K, 3) relative to the centres and
    ``center`` (B, G, 3). Computed in fp32.
    """

    def __init__(self, num_group: int, group_size: int):
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, xyz: Tensor) -> Tuple[Tensor, Tensor]:
        xyz = xyz.float()
        center = fps(xyz, self.num_group)  # B G 3
        idx = knn_query(self.group_size, xyz, center)  # B G K
        neighborhood = gather_points(xyz, idx) - center.unsqueeze(2)  # B G K 3
        return neighborhood, center


class PointwiseConv(nn.Conv1d):
    """A 1x1 ``Conv1d`` as released (``weight`` (out, in, 1), ``bias``), computed channels-last as a
    matmul: (..., in) -> (..., out). Checkpoints load unchanged; on CPU the matmul is faster than
    oneDNN's 1x1 convolution."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.squeeze(-1), self.bias)


def pointwise_mlp(mlp: nn.Sequential, x: Tensor) -> Tensor:
    """A released ``Conv1d-BatchNorm1d-ReLU-Conv1d`` block applied channels-last: (..., C_in) ->
    (..., C_out). BatchNorm sees every leading position as a sample, which is what it sees in the
    released (N, C, L) layout, so statistics and running averages are the same."""
    conv1, bn, act, conv2 = mlp
    h = conv1(x)
    h = act(bn(h.reshape(-1, h.shape[-1])).reshape(h.shape))
    return conv2(h)


class TransPooling(nn.Module):
    """Inter-MAE's ``first_trans``: per-point weights from a K x K attention map.

    Input (BG, K, C) -> output (BG, K, C).

    Kept exactly as released, because checkpoints depend on it: the attention map is softmaxed
    over its last axis, renormalised over that same axis (a no-op up to 1e-9), and applied with
    ``einsum('bnn,bnc->bnc')``, which multiplies each point's features by its *own* diagonal
    weight A[i, i] rather than forming a weighted sum over points.
    """

    def __init__(self, channels: int = 256):
        super().__init__()
        self.q_conv = PointwiseConv(channels, channels, bias=False)
        self.k_conv = PointwiseConv(channels, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        attention = torch.softmax(torch.bmm(self.q_conv(x), self.k_conv(x).transpose(1, 2)), dim=-1)  # BG K K
        attention = attention / (1e-9 + attention.sum(dim=-1, keepdim=True))
        return attention.diagonal(dim1=1, dim2=2).unsqueeze(-1) * x  # = einsum("bnn,bnc->bnc", attention, x)


class InterMAEPatchEmbed(nn.Module):
    """Inter-MAE patch embedding (bias-free convs, TransPooling, mean+max pooling).

    ``point_groups`` (B, G, K, 3) -> tokens (B, G, C).
    """

    def __init__(self, encoder_channel: int):
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(PointwiseConv(3, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        PointwiseConv(128, 256, bias=False))
        self.first_trans = TransPooling(256)
        self.second_conv = nn.Sequential(PointwiseConv(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         PointwiseConv(512, encoder_channel, bias=False))

    def forward(self, point_groups: Tensor) -> Tensor:
        B, G, K, _ = point_groups.shape
        feature = self.first_trans(pointwise_mlp(self.first_conv, point_groups.reshape(B * G, K, 3)))  # BG K 256
        feature = torch.cat([feature.mean(dim=1), feature.amax(dim=1)], dim=-1)  # BG 512
        return pointwise_mlp(self.second_conv, feature.reshape(B, G, 512))  # B G C; BN statistics over B*G


class PointMAEPatchEmbed(nn.Module):
    """Point-MAE's mini-PointNet patch embedding (convs with bias).

    ``point_groups`` (B, G, K, 3) -> tokens (B, G, C).
    """

    def __init__(self, encoder_channel: int):
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(PointwiseConv(3, 128), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        PointwiseConv(128, 256))
        self.second_conv = nn.Sequential(PointwiseConv(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         PointwiseConv(512, encoder_channel))

    def forward(self, point_groups: Tensor) -> Tensor:
        B, G, K, _ = point_groups.shape
        feature = pointwise_mlp(self.first_conv, point_groups.reshape(B * G, K, 3))  # BG K 256
        feature_global = feature.amax(dim=1, keepdim=True)  # BG 1 256
        feature = torch.cat([feature_global.expand(-1, K, -1), feature], dim=-1)  # BG K 512
        feature = pointwise_mlp(self.second_conv, feature)  # BG K C
        return feature.amax(dim=1).reshape(B, G, self.encoder_channel)


PATCH_EMBEDS = {"inter_mae": InterMAEPatchEmbed, "point_mae": PointMAEPatchEmbed}


def build_patch_embed(kind: str, encoder_channel: int) -> nn.Module:
    if kind not in PATCH_EMBEDS:
        raise ValueError(f"patch_embed must be one of {sorted(PATCH_EMBEDS)}, got '{kind}'")
    return PATCH_EMBEDS[kind](encoder_channel)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``. (B, L, C) -> (B, L, C)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, L, C)))


class Block(nn.Module):
    """Pre-norm transformer block. (B, L, C) -> (B, L, C)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _drop_path_rates(drop_path_rate, depth: int):
    if isinstance(drop_path_rate, (list, tuple)):
        if len(drop_path_rate) != depth:
            raise ValueError(f"drop_path_rate list has {len(drop_path_rate)} entries for depth {depth}")
        return list(drop_path_rate)
    return [r.item() for r in torch.linspace(0, drop_path_rate, depth)]


class TransformerEncoder(nn.Module):
    """Blocks with the positional embedding added before each. x, pos (B, L, C) -> (B, L, C)."""

    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate=0.0):
        super().__init__()
        rates = _drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i]) for i in range(depth)
        ])

    def forward(self, x: Tensor, pos: Tensor, return_layers: Tuple[int, ...] = ()):
        """With ``return_layers``, also returns the outputs of those block indices (segmentation)."""
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos)
            if i in return_layers:
                outputs.append(x)
        return (x, outputs) if return_layers else x


class TransformerDecoder(nn.Module):
    """Decoder blocks + final LayerNorm. x, pos (B, L, C) -> normalised (B, L, C), whole sequence."""

    def __init__(self, embed_dim: int = 256, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate=0.1):
        super().__init__()
        rates = _drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i]) for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Identity()
        self.apply(init_weights)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return self.head(self.norm(x))


def init_weights(m: nn.Module) -> None:
    """Released initialisation: trunc-normal linear and conv weights, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)
    elif isinstance(m, nn.Conv1d):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)


def pos_embedding(out_dim: int) -> nn.Sequential:
    """Linear(3,128)-GELU-Linear(128,out_dim) of patch centres (B, G, 3) -> (B, G, out_dim)."""
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, out_dim))
