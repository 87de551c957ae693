"""Point-cloud geometry ops in plain, batched PyTorch.

These replace the CUDA extensions of the released code (``pointnet2_ops`` furthest point
sampling, ``knn_cuda`` and ``chamfer_dist``). They run on any device, need nothing compiled,
and always compute in fp32, also under autocast. Indices are ``torch.long``.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "furthest_point_sample",
    "fps",
    "gather_points",
    "square_distance",
    "knn_query",
    "nearest_neighbor",
]

# (query rows x reference points) per chunk when building distance matrices; bounds memory to
# about 4 * _CHUNK_ELEMS bytes per batch element.
_CHUNK_ELEMS = 1 << 22


def _fp32(x: Tensor) -> Tensor:
    return x.float() if x.dtype != torch.float32 else x


def _check_points(name: str, x: Tensor) -> None:
    if x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"{name}: expected a (B, N, 3) tensor of points, got shape {tuple(x.shape)}")


@torch.no_grad()
def furthest_point_sample(xyz: Tensor, npoint: int) -> Tensor:
    """Farthest point sampling.

    Args:
        xyz: (B, N, 3) points.
        npoint: number of points to pick (<= N).
    Returns:
        (B, npoint) long indices. The first pick is index 0, as in the reference CUDA kernel; each
        later pick is the point farthest from those already picked (ties: lowest index).
    """
    _check_points("furthest_point_sample", xyz)
    B, N, _ = xyz.shape
    if not 0 < npoint <= N:
        raise ValueError(f"furthest_point_sample: npoint must be in [1, {N}], got {npoint}")
    with torch.autocast(device_type=xyz.device.type, enabled=False):
        # Coordinates as three contiguous (B, N) planes: the per-step distance update is then three
        # fused element-wise passes instead of a reduction over a length-3 axis (about 4x faster on CPU).
        x, y, z = _fp32(xyz).permute(2, 0, 1).contiguous()
        idx = torch.empty(B, npoint, dtype=torch.long, device=xyz.device)
        min_dist = torch.full((B, N), float("inf"), device=xyz.device)
        farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
        batch = torch.arange(B, device=xyz.device)
        for i in range(npoint):
            idx[:, i] = farthest
            px, py, pz = x[batch, farthest, None], y[batch, farthest, None], z[batch, farthest, None]
            dist = (x - px).square_().add_((y - py).square_()).add_((z - pz).square_())
            torch.minimum(min_dist, dist, out=min_dist)
            farthest = min_dist.argmax(-1)
    return idx


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """Gather rows: points (B, N, C), idx (B, ...) long -> (B, ..., C)."""
    B = points.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


def fps(xyz: Tensor, npoint: int) -> Tensor:
    """Farthest point sampling returning the points: (B, N, C) -> (B, npoint, C).

    Sampling uses the first three channels; any further channels (normals) are carried along.
    """
    idx = furthest_point_sample(xyz[..., :3].contiguous(), npoint)
    return gather_points(xyz, idx)


def square_distance(query: Tensor, ref: Tensor) -> Tensor:
    """Pairwise squared distances in fp32: query (B, M, 3), ref (B, N, 3) -> (B, M, N)."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        query, ref = _fp32(query), _fp32(ref)
        dist = (
            query.square().sum(-1, keepdim=True)
            - 2.0 * torch.bmm(query, ref.transpose(1, 2))
            + ref.square().sum(-1).unsqueeze(1)
        )
        return dist.clamp_min_(0.0)


def _row_chunks(m: int, n: int):
    step = max(1, _CHUNK_ELEMS // max(n, 1))
    for start in range(0, m, step):
        yield start, min(m, start + step)


@torch.no_grad()
def knn_query(k: int, ref: Tensor, query: Tensor) -> Tensor:
    """k nearest neighbours of each query point among the reference points.

    Args:
        k: neighbours per query (<= N).
        ref: (B, N, 3) reference points.
        query: (B, M, 3) query points (e.g. group centres).
    Returns:
        (B, M, k) long indices into ``ref``, nearest first.
    """
    _check_points("knn_query(ref)", ref)
    _check_points("knn_query(query)", query)
    N = ref.shape[1]
    if not 0 < k <= N:
        raise ValueError(f"knn_query: k must be in [1, {N}], got {k}")
    out = []
    for s, e in _row_chunks(query.shape[1], N):
        dist = square_distance(query[:, s:e], ref)
        out.append(dist.topk(k, dim=-1, largest=False, sorted=True).indices)
    return torch.cat(out, dim=1)


@torch.no_grad()
def nearest_neighbor(query: Tensor, ref: Tensor) -> Tensor:
    """Index of the nearest reference point for each query: (B, M, 3), (B, N, 3) -> (B, M) long."""
    out = []
    for s, e in _row_chunks(query.shape[1], ref.shape[1]):
        out.append(square_distance(query[:, s:e], ref).argmin(-1))
    return torch.cat(out, dim=1)
