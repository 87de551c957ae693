"""Building blocks shared by pre-training, classification and segmentation models.

Parameter names follow the released code exactly (``tests/reference/`` lists them), so released
checkpoints load without renaming.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from extensions.pointops import check_fps_backend, configured_backend, fps, gather_points, knn_query
from utils.settings_table import DEFAULT_EMBED_COMPUTE, EMBED_COMPUTE_ENV, EMBED_COMPUTE_MODES  # noqa: F401


class Group(nn.Module):
    """Split a cloud into patches: FPS centres, then the K nearest points of each centre.

    Input ``xyz`` (B, N, 3). Output ``neighborhood`` (B, G, K, 3) relative to the centres and
    ``center`` (B, G, 3). Computed in fp32. ``fps_backend``: the FPS backend on CUDA (see
    :func:`extensions.pointops.configured_backend`; ``auto``: triton when it imports, else torch).
    """

    def __init__(self, num_group: int, group_size: int, fps_backend: str = "auto"):
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size
        self.fps_backend = check_fps_backend(fps_backend)

    def forward(self, xyz: Tensor) -> Tuple[Tensor, Tensor]:
        xyz = xyz.float()
        center = fps(xyz, self.num_group, backend=configured_backend(xyz.device, self.fps_backend))  # B G 3
        idx = knn_query(self.group_size, xyz, center)  # B G K
        neighborhood = gather_points(xyz, idx) - center.unsqueeze(2)  # B G K 3
        return neighborhood, center


class _ThinLinear(torch.autograd.Function):
    """``F.linear`` for inputs with a few features (the xyz of a patch embedding's first layer), whose
    weight gradient is computed as ``(x^T g)^T`` instead of autograd's ``g^T x``: the same sums
    (the same values here), but for a (BGK x 3) input MKL runs that orientation about 4x faster."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_x = (g @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = (x.reshape(-1, x.shape[-1]).t() @ g).t() if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class PointwiseConv(nn.Conv1d):
    """A 1x1 ``Conv1d`` as released (``weight`` (out, in, 1), ``bias``), computed channels-last as a
    matmul: (..., in) -> (..., out). Checkpoints load unchanged; on CPU the matmul is faster than
    oneDNN's 1x1 convolution."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.squeeze(-1)
        if (self.in_channels <= 4 and x.dtype == torch.float32 and weight.dtype == torch.float32
                and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)):
            return _ThinLinear.apply(x, weight, self.bias)
        return F.linear(x, weight, self.bias)


def pointwise_mlp(mlp: nn.Sequential, x: Tensor) -> Tensor:
    """A released ``Conv1d-BatchNorm1d-ReLU-Conv1d`` block applied channels-last: (..., C_in) ->
    (..., C_out). BatchNorm sees every leading position as a sample, which is what it sees in the
    released (N, C, L) layout, so statistics and running averages are the same."""
    conv1, bn, act, conv2 = mlp
    h = conv1(x)
    # The (in-place) activation acts on the BatchNorm output itself, not on a view of it: an in-place op
    # on a view costs two full copies in backward (CopySlices / AsStrided).
    h = act(bn(h.reshape(-1, h.shape[-1]))).reshape(h.shape)
    return conv2(h)


# ------------------------------------------------------------------ patch-embedding arithmetic
# How the patch embeddings compute (same parameters, same checkpoints, same function):
#   exact  the released order of operations: q and k each from the 256-wide features, amax pooling.
#          Bit for bit what the project computed before; tests/test_golden.py pins it.
#   fast   (default) Inter-MAE's K x K attention energy q k^T = h (W2^T Wq^T Wk W2) h^T from the 128-wide
#          hidden features h (one 128 x 128 product instead of two 256 x 256 ones, about a third
#          of the embedding's matmul work), and max pooling with a scatter backward (the released
#          ``max(...)[0]``, not ``amax``). Equal to ``exact`` up to fp32 rounding (outputs ~1e-6
#          relative) except that a gradient at tied maxima goes to one point (as released), not
#          split between them. On CPU (one thread, batch 32) the embedding runs about 2.3x and the
#          pre-training step about 1.3x faster than with ``exact`` (bench/bench_train.py).
# The modes, the default and the environment variable (read when a run's settings are built, never
# by models) are those of the ``embed_compute`` setting (utils/settings_table.py).


def check_embed_compute(mode: str) -> str:
    """``mode`` if it is one of :data:`EMBED_COMPUTE_MODES`, else ValueError."""
    if mode not in EMBED_COMPUTE_MODES:
        raise ValueError(f"embed_compute must be one of {EMBED_COMPUTE_MODES}, got {mode!r}")
    return mode


def _max_pool(x: Tensor, dim: int, fast: bool, keepdim: bool = False) -> Tensor:
    """amax (exact: ties share the gradient) or max values (fast: scatter backward, as released)."""
    return x.max(dim=dim, keepdim=keepdim).values if fast else x.amax(dim=dim, keepdim=keepdim)


class _WeightedMeanMax(torch.autograd.Function):
    """``cat([mean_k w_k x_k, max_k w_k x_k], -1)``: weights w (BG, K), features x (BG, K, C) ->
    (BG, 2C), as autograd computes it forward, with a backward that writes one dense (BG, K, C)
    gradient instead of about six: the mean's part as an outer product, the max's part (one point
    per channel, as ``max(...)[0]``) scattered into it, the weights' gradient as a batched
    matrix-vector product plus a scatter."""

    @staticmethod
    def forward(ctx, w: Tensor, x: Tensor) -> Tensor:
        y = w.unsqueeze(-1) * x
        top, idx = y.max(dim=1)  # BG C
        ctx.save_for_backward(w, x, idx)
        return torch.cat([y.mean(dim=1), top], dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, x, idx = ctx.saved_tensors
        K, C = x.shape[1], x.shape[2]
        wf, xf = w.to(grad.dtype), x.to(grad.dtype)
        g_mean = grad[:, :C] / K  # BG C
        g_max = grad[:, C:].unsqueeze(1)  # BG 1 C
        grad_x = wf.unsqueeze(-1) * g_mean.unsqueeze(1)  # BG K C
        grad_x.scatter_add_(1, idx.unsqueeze(1), torch.gather(wf, 1, idx).unsqueeze(1) * g_max)
        grad_w = torch.bmm(xf, g_mean.unsqueeze(-1)).squeeze(-1)  # BG K
        grad_w.scatter_add_(1, idx, (torch.gather(xf, 1, idx.unsqueeze(1)) * g_max).squeeze(1))
        return grad_w.to(w.dtype), grad_x.to(x.dtype)


def diagonal_attention(energy: Tensor) -> Tensor:
    """TransPooling's per-point weight: the diagonal of the row-softmaxed, renormalised (BG, K, K)
    ``energy``, (BG, K). Only the diagonal is renormalised: the same divisions, bit for bit."""
    attention = torch.softmax(energy, dim=-1)
    return attention.diagonal(dim1=1, dim2=2) / (1e-9 + attention.sum(dim=-1))


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
        energy = torch.bmm(self.q_conv(x), self.k_conv(x).transpose(1, 2))  # BG K K
        return diagonal_attention(energy).unsqueeze(-1) * x  # = einsum("bnn,bnc->bnc", attention, x)


class InterMAEPatchEmbed(nn.Module):
    """Inter-MAE patch embedding (bias-free convs, TransPooling, mean+max pooling).

    ``point_groups`` (B, G, K, 3) -> tokens (B, G, C). ``compute`` chooses the arithmetic, see
    :data:`EMBED_COMPUTE_MODES` (same parameters either way).
    """

    def __init__(self, encoder_channel: int, compute: str = DEFAULT_EMBED_COMPUTE):
        super().__init__()
        self.encoder_channel = encoder_channel
        self.compute = check_embed_compute(compute)
        self.first_conv = nn.Sequential(PointwiseConv(3, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        PointwiseConv(128, 256, bias=False))
        self.first_trans = TransPooling(256)
        self.second_conv = nn.Sequential(PointwiseConv(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         PointwiseConv(512, encoder_channel, bias=False))

    def _fast_pooled(self, points: Tensor) -> Tensor:
        """first_conv, first_trans (energy from the hidden features) and the mean+max pooling:
        (BG, K, 3) -> (BG, 512)."""
        conv1, bn, act, conv2 = self.first_conv
        h = conv1(points)
        h = act(bn(h.reshape(-1, h.shape[-1]))).reshape(h.shape)  # BG K 128
        w2 = conv2.weight.squeeze(-1)  # 256 x 128
        with torch.autocast(device_type=h.device.type, enabled=False):  # the 128 x 128 product in fp32
            q2, k2 = self.first_trans.q_conv.weight.squeeze(-1) @ w2, self.first_trans.k_conv.weight.squeeze(-1) @ w2
            d = q2.t() @ k2  # W2^T Wq^T Wk W2: energy = h d h^T = (h W2^T Wq^T)(h W2^T Wk^T)^T = q k^T
        energy = torch.bmm(F.linear(h, d.t().to(h.dtype)), h.transpose(1, 2))  # BG K K
        return _WeightedMeanMax.apply(diagonal_attention(energy), conv2(h))  # BG 512

    def forward(self, point_groups: Tensor) -> Tensor:
        B, G, K, _ = point_groups.shape
        fast = self.compute == "fast"
        points = point_groups.reshape(B * G, K, 3)
        if fast:
            feature = self._fast_pooled(points)
        else:
            feature = self.first_trans(pointwise_mlp(self.first_conv, points))  # BG K 256
            feature = torch.cat([feature.mean(dim=1), feature.amax(dim=1)], dim=-1)  # BG 512
        return pointwise_mlp(self.second_conv, feature.reshape(B, G, 512))  # B G C; BN statistics over B*G


class PointMAEPatchEmbed(nn.Module):
    """Point-MAE's mini-PointNet patch embedding (convs with bias).

    ``point_groups`` (B, G, K, 3) -> tokens (B, G, C). ``compute``: as :class:`InterMAEPatchEmbed`
    (here only the max pooling differs).
    """

    def __init__(self, encoder_channel: int, compute: str = DEFAULT_EMBED_COMPUTE):
        super().__init__()
        self.encoder_channel = encoder_channel
        self.compute = check_embed_compute(compute)
        self.first_conv = nn.Sequential(PointwiseConv(3, 128), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        PointwiseConv(128, 256))
        self.second_conv = nn.Sequential(PointwiseConv(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         PointwiseConv(512, encoder_channel))

    def forward(self, point_groups: Tensor) -> Tensor:
        B, G, K, _ = point_groups.shape
        fast = self.compute == "fast"
        feature = pointwise_mlp(self.first_conv, point_groups.reshape(B * G, K, 3))  # BG K 256
        feature_global = _max_pool(feature, 1, fast, keepdim=True)  # BG 1 256
        feature = torch.cat([feature_global.expand(-1, K, -1), feature], dim=-1)  # BG K 512
        feature = pointwise_mlp(self.second_conv, feature)  # BG K C
        return _max_pool(feature, 1, fast).reshape(B, G, self.encoder_channel)


PATCH_EMBEDS = {"inter_mae": InterMAEPatchEmbed, "point_mae": PointMAEPatchEmbed}


def build_patch_embed(kind: str, encoder_channel: int, compute: str = DEFAULT_EMBED_COMPUTE) -> nn.Module:
    if kind not in PATCH_EMBEDS:
        raise ValueError(f"patch_embed must be one of {sorted(PATCH_EMBEDS)}, got '{kind}'")
    return PATCH_EMBEDS[kind](encoder_channel, compute)


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
    return [r.item() for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]


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
