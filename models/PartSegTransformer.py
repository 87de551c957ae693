"""Part segmentation model: a :class:`PointEncoder` with the released segmentation head.

Parameter names follow the released ``segmentation/models/pt.py`` (``encoder``, ``pos_embed``,
``blocks.blocks.N``, ``norm``, ``label_conv``, ``propagation_0``, ``convs1-3``, ``bns1-2``), so
the encoder of a pre-training checkpoint loads by removing ``MAE_encoder.``.

Initialisation (``init``): ``released`` (default) keeps PyTorch's default initialisation of every
layer, as the released ``get_model`` (which defines no init); ``trunc_normal`` applies
:func:`models.layers.init_weights` to the whole model (the project's earlier choice).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.ShapeNetPartDataset import NUM_CATEGORIES, NUM_PARTS
from extensions.pointops import gather_points, knn_query

from .backbone import InitMode, PatchEmbedName, PointEncoder, check_init, max_mean_pool
from .build import MODELS, configurable
from .layers import DEFAULT_EMBED_COMPUTE, init_weights


def default_return_layers(depth: int) -> Tuple[int, int, int]:
    """Blocks whose outputs feed the head: the ends of the three thirds ((3, 7, 11) for depth 12)."""
    if depth < 3 or depth % 3:
        raise ValueError(f"the default return layers need a depth divisible by 3, got depth={depth}; pass return_layers")
    return (depth // 3 - 1, 2 * depth // 3 - 1, depth - 1)


class PointNetFeaturePropagation(nn.Module):
    """Inverse-distance interpolation from patch centres to points over the 3 nearest centres,
    concatenated after the per-point features, then Conv1d-BN-ReLU layers.

    ``xyz1`` (B, N, 3) points, ``xyz2`` (B, S, 3) centres, ``points1`` (B, D1, N) or None,
    ``points2`` (B, D2, S) -> (B, mlp[-1], N). Neighbour search and weights in fp32.
    """

    def __init__(self, in_channel: int, mlp: Sequence[int]):
        super().__init__()
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        last = in_channel
        for out in mlp:
            self.mlp_convs.append(nn.Conv1d(last, out, 1))
            self.mlp_bns.append(nn.BatchNorm1d(out))
            last = out

    def interpolate(self, xyz1: Tensor, xyz2: Tensor, points2: Tensor) -> Tensor:
        """(B, N, 3), (B, S, 3), (B, D, S) -> (B, D, N) fp32."""
        feats = points2.transpose(1, 2).float()  # B S D
        if xyz2.shape[1] == 1:
            return feats.expand(-1, xyz1.shape[1], -1).transpose(1, 2)
        with torch.autocast(device_type=xyz1.device.type, enabled=False):
            xyz1, xyz2 = xyz1.float(), xyz2.float()
            k = min(3, xyz2.shape[1])
            idx = knn_query(k, xyz2, xyz1)  # B N k
            dist = (gather_points(xyz2, idx) - xyz1.unsqueeze(2)).square().sum(-1)  # B N k
            weight = 1.0 / (dist + 1e-8)
            weight = weight / weight.sum(dim=-1, keepdim=True)
            out = (gather_points(feats, idx) * weight.unsqueeze(-1)).sum(dim=2)  # B N D
        return out.transpose(1, 2)

    def forward(self, xyz1: Tensor, xyz2: Tensor, points1: Optional[Tensor], points2: Tensor) -> Tensor:
        x = self.interpolate(xyz1, xyz2, points2)
        if points1 is not None:
            x = torch.cat([points1.float(), x], dim=1)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(bn(conv(x)))
        return x


@MODELS.register_module()
@configurable
class PartSegTransformer(PointEncoder):
    """Transformer part segmenter (released ``get_model``).

    ``pts`` (B, N, 3) xyz, or (B, N, 6) xyz + normals when ``normal`` is set; ``category`` (B,)
    long category ids or (B, num_category) one-hot -> part logits (B, num_part, N). ShapeNetPart:
    16 categories, 50 parts (the defaults); a folder of your own labelled files sets both.

    The encoder runs unmasked over ``num_group`` patches without a cls token; the outputs of
    ``return_layers`` (each through the final LayerNorm) are concatenated to 3C per patch, pooled
    (:func:`max_mean_pool`, 6C) with a 64-d label embedding as the global feature, and interpolated to the
    points by the feature-propagation layer.
    """

    # The ``model`` section of a segmentation run (segmentation/main.py maps its model flags onto it and
    # saves it in every checkpoint): every key is a constructor argument, with the released defaults.
    def __init__(self, *, num_part: int = NUM_PARTS, trans_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 drop_path_rate: float = 0.1, num_group: int = 128, group_size: int = 32,
                 patch_embed: PatchEmbedName = "inter_mae", return_layers: Optional[Sequence[int]] = None,
                 normal: bool = False, init: InitMode = "released",
                 fps_backend: str = "auto", embed_compute: str = DEFAULT_EMBED_COMPUTE,
                 num_category: int = NUM_CATEGORIES):
        super().__init__(trans_dim, depth, num_heads, drop_path_rate, trans_dim, num_group, group_size, patch_embed,
                         fps_backend, embed_compute)
        self.init_mode = check_init(init, "init (segmentation)")
        self.depth = depth
        self.num_heads = num_heads
        self.drop_path_rate = drop_path_rate
        self.num_part = num_part
        self.num_category = num_category
        self.normal = normal
        self.return_layers = (tuple(int(i) for i in return_layers) if return_layers is not None
                              else default_return_layers(depth))
        if len(self.return_layers) != 3 or sorted(set(self.return_layers)) != list(self.return_layers) \
                or not all(0 <= i < depth for i in self.return_layers):
            raise ValueError(f"return_layers must be 3 increasing block indices in [0, {depth}), got {self.return_layers}")


        self.label_conv = nn.Sequential(nn.Conv1d(num_category, 64, 1, bias=False), nn.BatchNorm1d(64), nn.LeakyReLU(0.2))
        in_point = 6 if normal else 3
        self.propagation_0 = PointNetFeaturePropagation(3 * trans_dim + in_point, [4 * trans_dim, 1024])
        self.convs1 = nn.Conv1d(1024 + 6 * trans_dim + 64, 512, 1)
        self.dp1 = nn.Dropout(0.5)
        self.convs2 = nn.Conv1d(512, 256, 1)
        self.convs3 = nn.Conv1d(256, num_part, 1)
        self.bns1 = nn.BatchNorm1d(512)
        self.bns2 = nn.BatchNorm1d(256)
        self.relu = nn.ReLU()
        if self.init_mode == "trunc_normal":
            self.apply(init_weights)

    def model_config(self) -> dict:
        """This model's ``model`` section (what :meth:`from_config` rebuilds it from)."""
        return {"NAME": "PartSegTransformer", "num_part": self.num_part, "trans_dim": self.trans_dim,
                "depth": self.depth, "num_heads": self.num_heads, "drop_path_rate": self.drop_path_rate,
                "num_group": self.group_divider.num_group, "group_size": self.group_divider.group_size,
                "patch_embed": self.patch_embed_kind, "return_layers": list(self.return_layers),
                "normal": self.normal, "init": self.init_mode, "num_category": self.num_category}

    def forward(self, pts: Tensor, category: Tensor) -> Tensor:
        B, N, C = pts.shape
        if C != (6 if self.normal else 3):
            raise ValueError(f"expected points (B, N, {6 if self.normal else 3}), got {tuple(pts.shape)}")
        xyz = pts[..., :3].float().contiguous()
        neighborhood, center = self.group_divider(xyz)
        tokens = self.encoder(neighborhood)  # B G C
        feats = torch.cat(self.transform_layers(tokens, self.pos_embed(center), self.return_layers), dim=-1)  # B G 3C
        x = feats.transpose(1, 2)  # B 3C G
        one_hot = category if category.dim() == 2 else F.one_hot(category.long().reshape(B), self.num_category)
        label_feature = self.label_conv(one_hot.float().unsqueeze(-1))  # B 64 1
        global_feature = torch.cat([max_mean_pool(feats).unsqueeze(-1), label_feature.to(x.dtype)],
                                   dim=1).expand(-1, -1, N)  # B 6C+64 N
        f_level_0 = self.propagation_0(xyz, center, pts.transpose(1, 2), x)  # B 1024 N
        x = torch.cat([f_level_0.to(global_feature.dtype), global_feature], dim=1)
        x = self.dp1(self.relu(self.bns1(self.convs1(x))))
        x = self.relu(self.bns2(self.convs2(x)))
        return self.convs3(x)  # B num_part N

