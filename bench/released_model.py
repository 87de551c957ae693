"""The released Inter-MAE pre-training model (point branch), as released, for side-by-side benchmarks.

This is the model code of the release (``ywu0912/TeamCode``, branch ``liujia99``, directory
``Inter-MAE/``) with only its compiled CUDA operations replaced by plain-torch equivalents, so that
it runs on any device and ``bench/bench_train.py`` can time it next to the project's model in the
same process. Everything else is the released code, restructured only where noted.

Where each piece comes from:

* :class:`TransPooling`, :class:`Encoder`, :class:`Group`, :class:`TransformerEncoder`,
  :class:`TransformerDecoder`, :class:`MaskTransformer`, :class:`Inter_MAE`: released
  ``models/Inter_MAE.py`` (same classes, same parameter names, same operations: channels-first
  ``Conv1d`` + ``BatchNorm1d`` patch embedding, ``x_q @ x_k`` TransPooling with its
  ``einsum('bnn,bnc->bnc')``, numpy random masks, the decoder positional embedding applied to the
  visible and masked centres separately, the projection head evaluated every step).
  Left out: the image branch (``imgs``; the released code builds a fresh ViT every step, see
  ``models/image_encoder.py``), ``vis=True``, the block mask and the fine-tuning model. Added: an
  optional ``mask`` argument to :meth:`Inter_MAE.forward` (released: always drawn inside
  ``MaskTransformer``) so that tests can feed both models the same mask. (TransPooling's
  renormalisation adds 1e-8 as released; the project adds 1e-9; next to a row sum of 1 both vanish
  in fp32.)
* :class:`Attention`, :class:`Mlp`, :class:`Block`, :class:`DropPath`: ``timm==0.4.5``
  (``timm/models/vision_transformer.py``, ``timm/models/layers/drop.py``), the version the released
  ``requirements.txt`` pins and ``models/Inter_MAE.py`` imports ``Attention, Mlp, Block`` from:
  attention as ``softmax(q @ k^T * scale) @ v``, drop path as ``floor(keep + rand)``.

Replaced (the CUDA extensions, which need a GPU and a compiler):

* ``pointnet2_ops.pointnet2_utils.furthest_point_sample`` + ``gather_operation`` (released
  ``utils/misc.fps``) -> :func:`furthest_point_sample`, the plain torch loop of the release's own
  ``segmentation/models/pointnet2_utils.farthest_point_sample`` (``sum((xyz - centroid) ** 2, -1)``,
  running minimum, ``max``; ``torch.minimum`` in place of its masked assignment, the same values
  without a data-dependent indexing per step) with the CUDA kernel's semantics: first pick index 0
  (not random), points with squared norm <= 1e-3 never picked after the first pick.
* ``knn_cuda.KNN(k, transpose_mode=True)`` (released ``Group``) -> :func:`knn`: ``torch.cdist`` and
  ``topk(k, largest=False)``: the k nearest reference points of each query, nearest first, with their
  distances, as KNN_CUDA returns them.
* ``extensions/chamfer_dist`` (``chamfer.cu``: brute-force squared distances, nearest neighbour in
  both directions; backward through the matched pairs) -> :func:`chamfer_l2`: the brute-force
  (B, N, M) squared differences and ``min`` in both directions, autograd through the minima (which
  is the released backward: the gradient flows through the matched pairs only).

The parameter names equal the project's ``models.Inter_MAE.Inter_MAE`` (point branch), so
``Inter_MAE(config).load_state_dict(ours.state_dict())`` works (``tests/test_bench_reference.py``
checks that both give the same loss for the same weights, input and mask).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

__all__ = ["furthest_point_sample", "knn", "chamfer_l2", "Inter_MAE", "from_project_model"]


# --------------------------------------------------------------- replaced CUDA ops (plain torch)
@torch.no_grad()
def furthest_point_sample(xyz, npoint):
    """pointnet2_ops' furthest_point_sample as a plain torch loop: (B, N, 3) -> (B, npoint) long."""
    device = xyz.device
    B, N, _ = xyz.shape
    centroids = torch.zeros(B, npoint, dtype=torch.long, device=device)
    distance = torch.ones(B, N, device=device) * 1e10
    # The CUDA kernel skips points with x^2 + y^2 + z^2 <= 1e-3 (never updated, never picked).
    distance[torch.sum(xyz ** 2, -1) <= 1e-3] = -1.0
    farthest = torch.zeros(B, dtype=torch.long, device=device)
    batch_indices = torch.arange(B, dtype=torch.long, device=device)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch_indices, farthest, :].view(B, 1, 3)
        dist = torch.sum((xyz - centroid) ** 2, -1)
        distance = torch.minimum(distance, dist)
        farthest = torch.max(distance, -1)[1]
    return centroids


def fps(data, number):
    """Released ``utils/misc.fps``: the sampled points (B, number, 3)."""
    fps_idx = furthest_point_sample(data, number)
    return torch.gather(data, 1, fps_idx.unsqueeze(-1).expand(-1, -1, data.shape[-1]))


@torch.no_grad()
def knn(ref, query, k):
    """KNN_CUDA's ``KNN(k, transpose_mode=True)(ref, query)``: distances and indices (B, M, k), nearest first."""
    return torch.cdist(query, ref).topk(k, dim=-1, largest=False, sorted=True)


def chamfer_l2(xyz1, xyz2):
    """Released ``ChamferDistanceL2``: mean(dist1) + mean(dist2), brute-force squared distances."""
    d = torch.sum((xyz1.unsqueeze(2) - xyz2.unsqueeze(1)) ** 2, -1)  # B N M
    dist1 = d.min(dim=2)[0]
    dist2 = d.min(dim=1)[0]
    return torch.mean(dist1) + torch.mean(dist2)


# ---------------------------------------------------------------------- timm 0.4.5 transformer
def drop_path(x, drop_prob: float = 0., training: bool = False):
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    random_tensor.floor_()
    return x.div(keep_prob) * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob=None):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(x)
        x = self.drop(x)
        return x


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0., proj_drop=0.):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4., qkv_bias=False, qk_scale=None, drop=0., attn_drop=0.,
                 drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                              proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        mlp_hidden_dim = int(dim * mlp_ratio)
        self.mlp = Mlp(in_features=dim, hidden_features=mlp_hidden_dim, act_layer=act_layer, drop=drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


def trunc_normal_(tensor, std=1.):
    nn.init.trunc_normal_(tensor, std=std, a=-2., b=2.)


# ------------------------------------------------------------------ released models/Inter_MAE.py
class TransPooling(nn.Module):
    def __init__(self, channels):
        super(TransPooling, self).__init__()
        self.q_conv = nn.Conv1d(channels, channels, 1, bias=False)
        self.k_conv = nn.Conv1d(channels, channels, 1, bias=False)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, pts_feat):
        # B*N, C, K
        x_q = self.q_conv(pts_feat).permute(0, 2, 1)
        x_k = self.k_conv(pts_feat)
        attn = self.softmax(x_q @ x_k)
        attn = attn / (1e-8 + attn.sum(dim=-1, keepdim=True))
        x_attn = torch.einsum('bnn,bnc->bnc', attn, pts_feat.permute(0, 2, 1)).permute(0, 2, 1)
        return x_attn


class Encoder(nn.Module):  # Embedding module
    def __init__(self, encoder_channel):
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1, bias=False),
            nn.BatchNorm1d(128),
            nn.ReLU(inplace=True),
            nn.Conv1d(128, 256, 1, bias=False)
        )
        self.first_trans = TransPooling(256)
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1, bias=False),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Conv1d(512, self.encoder_channel, 1, bias=False)
        )

    def forward(self, point_groups):
        bs, g, k, _ = point_groups.shape
        point_groups = point_groups.reshape(bs * g, k, 3)
        feature = self.first_conv(point_groups.transpose(2, 1))  # bs*g 256 k
        feature_first = self.first_trans(feature)  # bs*g 256 k
        feature_first_mean = feature_first.mean(dim=-1, keepdim=False)  # bs*g 256
        feature_first_max = feature_first.max(dim=-1, keepdim=False)[0]  # bs*g 256
        feature_first = torch.cat([feature_first_mean.reshape(bs, g, 256), feature_first_max.reshape(bs, g, 256)], dim=-1)
        feature_second = self.second_conv(feature_first.transpose(2, 1))  # bs self.encoder_channel g
        return feature_second.permute(0, 2, 1)


class Group(nn.Module):  # FPS + KNN
    def __init__(self, num_group, group_size):
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, xyz):
        batch_size, num_points, _ = xyz.shape
        # fps the centers out
        center = fps(xyz, self.num_group)  # B G 3
        # knn to get the neighborhood
        _, idx = knn(xyz, center, self.group_size)  # B G M
        assert idx.size(1) == self.num_group
        assert idx.size(2) == self.group_size
        idx_base = torch.arange(0, batch_size, device=xyz.device).view(-1, 1, 1) * num_points
        idx = idx + idx_base
        idx = idx.view(-1)
        neighborhood = xyz.view(batch_size * num_points, -1)[idx, :]
        neighborhood = neighborhood.view(batch_size, self.num_group, self.group_size, 3).contiguous()
        # normalize
        neighborhood = neighborhood - center.unsqueeze(2)
        return neighborhood, center


class TransformerEncoder(nn.Module):
    def __init__(self, embed_dim=768, depth=4, num_heads=12, mlp_ratio=4., qkv_bias=False, qk_scale=None,
                 drop_rate=0., attn_drop_rate=0., drop_path_rate=0.):
        super().__init__()
        self.blocks = nn.ModuleList([
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                  drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=drop_path_rate[i] if isinstance(drop_path_rate, list) else drop_path_rate)
            for i in range(depth)])

    def forward(self, x, pos):
        for _, block in enumerate(self.blocks):
            x = block(x + pos)
        return x


class TransformerDecoder(nn.Module):
    def __init__(self, embed_dim=256, depth=4, num_heads=6, mlp_ratio=4., qkv_bias=False, qk_scale=None,
                 drop_rate=0., attn_drop_rate=0., drop_path_rate=0.1, norm_layer=nn.LayerNorm):
        super().__init__()
        self.blocks = nn.ModuleList([
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                  drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=drop_path_rate[i] if isinstance(drop_path_rate, list) else drop_path_rate)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = nn.Identity()
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x, pos, return_token_num):
        for _, block in enumerate(self.blocks):
            x = block(x + pos)
        x = self.head(self.norm(x))  # only return the mask tokens predict pixel
        return x, x[:, -return_token_num:]


class MaskTransformer(nn.Module):
    def __init__(self, config, **kwargs):
        super().__init__()
        self.config = config
        self.mask_ratio = config.transformer_config.mask_ratio
        self.embed_dim = config.transformer_config.embed_dim
        self.depth = config.transformer_config.depth
        self.drop_path_rate = config.transformer_config.drop_path_rate
        self.num_heads = config.transformer_config.num_heads
        self.encoder_dims = config.transformer_config.encoder_dims
        self.encoder = Encoder(encoder_channel=self.encoder_dims)
        self.mask_type = config.transformer_config.mask_type
        if self.mask_type != "rand":
            raise NotImplementedError("the released-model stand-in implements mask_type 'rand' only")
        self.pos_embed = nn.Sequential(
            nn.Linear(3, 128),
            nn.GELU(),
            nn.Linear(128, self.embed_dim),
        )
        dpr = [x.item() for x in torch.linspace(0, self.drop_path_rate, self.depth)]
        self.blocks = TransformerEncoder(
            embed_dim=self.embed_dim,
            depth=self.depth,
            drop_path_rate=dpr,
            num_heads=self.num_heads,
        )
        self.norm = nn.LayerNorm(self.embed_dim)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)
        elif isinstance(m, nn.Conv1d):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def _mask_center_rand(self, center, noaug=False):
        B, G, _ = center.shape
        if noaug or self.mask_ratio == 0:
            return torch.zeros(center.shape[:2]).bool()
        self.num_mask = int(self.mask_ratio * G)
        overall_mask = np.zeros([B, G])
        for i in range(B):
            mask = np.hstack([
                np.zeros(G - self.num_mask),
                np.ones(self.num_mask),
            ])
            np.random.shuffle(mask)
            overall_mask[i, :] = mask
        overall_mask = torch.from_numpy(overall_mask).to(torch.bool)
        return overall_mask.to(center.device)  # B G

    def forward(self, neighborhood, center, noaug=False, mask=None):
        if mask is None:  # (stand-in: ``mask`` lets tests feed a given mask)
            bool_masked_pos = self._mask_center_rand(center, noaug=noaug)  # B G
        else:
            bool_masked_pos = mask.to(device=center.device, dtype=torch.bool)
        group_input_tokens = self.encoder(neighborhood)  # B G C
        batch_size, seq_len, C = group_input_tokens.size()
        x_vis = group_input_tokens[~bool_masked_pos].reshape(batch_size, -1, C)
        masked_center = center[~bool_masked_pos].reshape(batch_size, -1, 3)
        pos = self.pos_embed(masked_center)
        x_vis = self.blocks(x_vis, pos)
        x_vis = self.norm(x_vis)
        return x_vis, bool_masked_pos


class Inter_MAE(nn.Module):
    """Released ``Inter_MAE`` (point branch). ``forward(pts)`` -> ``(loss_pc, loss_fea)`` as released
    (``loss_fea`` is 0 without images)."""

    def __init__(self, config):
        super().__init__()
        if config.loss != "cdl2":
            raise NotImplementedError("the released-model stand-in implements loss 'cdl2' only")
        self.config = config
        self.embed_dim = config.transformer_config.embed_dim
        self.decoder_embed_dim = config.transformer_config.decoder_embed_dim
        self.MAE_encoder = MaskTransformer(config)
        self.group_size = config.group_size
        self.num_group = config.num_group
        self.drop_path_rate = config.transformer_config.drop_path_rate
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.decoder_pos_embed = nn.Sequential(
            nn.Linear(3, 128),
            nn.GELU(),
            nn.Linear(128, self.decoder_embed_dim)
        )
        self.decoder_embed = nn.Linear(self.embed_dim, self.decoder_embed_dim, bias=True)
        self.decoder_depth = config.transformer_config.decoder_depth
        self.decoder_num_heads = config.transformer_config.decoder_num_heads
        dpr = [x.item() for x in torch.linspace(0, self.drop_path_rate, self.decoder_depth)]
        self.MAE_decoder = TransformerDecoder(
            embed_dim=self.decoder_embed_dim,
            depth=self.decoder_depth,
            drop_path_rate=dpr,
            num_heads=self.decoder_num_heads,
        )
        self.group_divider = Group(num_group=self.num_group, group_size=self.group_size)
        self.pro_head = nn.Sequential(
            nn.Linear(self.decoder_embed_dim * 2, 256, bias=False),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 256, bias=False)
        )
        self.pre_head = nn.Sequential(
            nn.Conv1d(self.decoder_embed_dim, 3 * self.group_size, 1)
        )
        trunc_normal_(self.mask_token, std=.02)
        self.loss_low = chamfer_l2

    def forward(self, pts, imgs=None, mask=None, **kwargs):
        if imgs is not None:
            raise NotImplementedError("the released-model stand-in has the point branch only")
        neighborhood, center = self.group_divider(pts)
        pc_vis, mask = self.MAE_encoder(neighborhood, center, mask=mask)
        B, V, C = pc_vis.shape
        pos_emd_vis = self.decoder_pos_embed(center[~mask]).reshape(B, -1, self.decoder_embed_dim)
        pos_emd_mask = self.decoder_pos_embed(center[mask]).reshape(B, -1, self.decoder_embed_dim)
        _, N, _ = pos_emd_mask.shape
        mask_token = self.mask_token.expand(B, N, -1)
        pc_full = torch.cat([pc_vis, mask_token], dim=1)
        pos_full = torch.cat([pos_emd_vis, pos_emd_mask], dim=1)
        pc_full = self.decoder_embed(pc_full)
        pc, pc_rec = self.MAE_decoder(pc_full, pos_full, N)
        B, VM, C = pc.shape
        pc = torch.cat([pc[:, 0], pc[:, 1:].max(1)[0]], dim=-1)
        pc_fea = self.pro_head(pc)  # B 256  # noqa: F841 (computed every step, as released)
        loss_fea = 0
        B, M, C = pc_rec.shape
        rebuild_points = self.pre_head(pc_rec.transpose(1, 2)).transpose(1, 2).reshape(B * M, -1, 3)  # B*M S 3
        gt_points = neighborhood[mask].reshape(B * M, -1, 3)
        loss_pc = self.loss_low(rebuild_points, gt_points)
        return loss_pc, loss_fea


def from_project_model(model: nn.Module, config) -> Inter_MAE:
    """A stand-in with the weights (and BatchNorm statistics) of the project's ``Inter_MAE`` ``model``
    (point branch; image-branch tensors are left out)."""
    ref = Inter_MAE(config).to(next(model.parameters()).device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("image_branch.")}
    ref.load_state_dict(state, strict=True)
    return ref


def make_train_step(device: torch.device):
    """The released runner's step for ``engine.train_one_epoch``: augmented points -> loss dict
    (``loss = loss_pc + loss_fea``), the same augmentation as the project's pre-training step."""
    from datasets.data_transforms import PointcloudScaleAndTranslate

    augment = PointcloudScaleAndTranslate()

    def step(model: nn.Module, batch):
        points = batch[2].to(device, non_blocking=True)
        loss_pc, loss_fea = model(augment(points))
        return {"loss": loss_pc + loss_fea, "loss_rec": loss_pc}

    return step



def with_project_geometry(model: Inter_MAE) -> Inter_MAE:
    """``model`` with the project's geometry ops in place of the stand-ins (benchmarks: the model
    code alone): ``models.layers.Group`` (FPS, kNN, gather) and ``ChamferDistanceL2``."""
    from extensions.chamfer_dist import ChamferDistanceL2
    from models.layers import Group as ProjectGroup

    model.group_divider = ProjectGroup(model.num_group, model.group_size)
    model.loss_low = ChamferDistanceL2()
    return model
