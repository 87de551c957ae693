"""Point-cloud geometry ops in plain, batched PyTorch.

These replace the CUDA extensions of the released code (``pointnet2_ops`` furthest point
sampling, ``knn_cuda`` and ``chamfer_dist``). They run on any device, need nothing compiled,
and always compute in fp32, also under autocast. Indices are ``torch.long``.

Farthest point sampling has interchangeable backends (see :func:`furthest_point_sample`): the
batched torch loop, a Triton kernel (``extensions.fps_triton``, imported only when used) and the
released ``pointnet2_ops`` extension when installed.
"""
from __future__ import annotations

import functools
from typing import Union

import torch
from torch import Tensor

from utils.settings_table import FPS_BACKEND_ENV, FPS_BACKENDS

__all__ = [
    "FPS_BACKENDS",
    "FPS_BACKEND_ENV",
    "SKIP_NORM2",
    "check_fps_backend",
    "configured_backend",
    "furthest_point_sample",
    "fps",
    "resolve_fps_backend",
    "gather_points",
    "square_distance",
    "knn_query",
    "nearest_neighbor",
    "nearest_neighbors",
]

# FPS_BACKENDS and FPS_BACKEND_ENV (read when a run's settings are built, never by the ops) are
# those of the ``fps_backend`` setting (utils/settings_table.py).

# (query rows x reference points) per chunk when building distance matrices; bounds memory to
# about 4 * _CHUNK_ELEMS bytes per batch element.
_CHUNK_ELEMS = 1 << 22


def _fp32(x: Tensor) -> Tensor:
    return x.float() if x.dtype != torch.float32 else x


def _check_points(name: str, x: Tensor) -> None:
    if x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"{name}: expected a (B, N, 3) tensor of points, got shape {tuple(x.shape)}")


# The released kernel compares the fp32 squared norm against the double 1e-3; float32(1e-3) is
# slightly above 1e-3, so the equivalent fp32 threshold is the float just below it.
SKIP_NORM2 = 0.0009999999310821295
# Running minimum distance before any pick, as in the released kernel.
_FAR = 1e10


def _parse_backend(name: str, source: str) -> str:
    if name not in FPS_BACKENDS:
        raise ValueError(f"{source}: unknown FPS backend {name!r}; expected one of {', '.join(FPS_BACKENDS)}")
    return name


def check_fps_backend(name: str) -> str:
    """``name`` if it is one of :data:`FPS_BACKENDS`, else ValueError."""
    return _parse_backend(name, "fps_backend")


def configured_backend(device: Union[torch.device, str], name: str) -> str:
    """The backend a run configured (config key ``fps_backend``) for tensors on ``device``: ``name``
    on CUDA; ``"auto"`` (the torch loop) elsewhere, the other backends being CUDA-only."""
    return name if torch.device(device).type == "cuda" else "auto"


def _load_triton_fps():
    """The ``extensions.fps_triton`` module, or RuntimeError saying why it cannot be used."""
    try:
        from extensions import fps_triton
    except ImportError as exc:
        raise RuntimeError(
            f"FPS backend 'triton' needs the triton package (>= 3.0), which could not be imported ({exc}); "
            "install triton or use backend 'torch'"
        ) from exc
    return fps_triton


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    """Whether triton imports (asked once per process: the answer cannot change)."""
    try:
        _load_triton_fps()
        return True
    except RuntimeError:
        return False


def _load_pointnet2_ops():
    try:
        from pointnet2_ops import pointnet2_utils
    except ImportError as exc:
        raise RuntimeError(
            "FPS backend 'pointnet2_ops' was asked for but the pointnet2_ops package is not installed "
            f"({exc}); build it from the released code (pointnet2_ops_lib) or use backend 'torch' / 'triton'"
        ) from exc
    return pointnet2_utils


def resolve_fps_backend(device: Union[torch.device, str], backend: str = "auto") -> str:
    """The concrete backend ("torch", "triton" or "pointnet2_ops") that FPS uses on ``device``.

    ``"auto"``: triton on CUDA when triton imports, else torch; on other devices always torch.
    ``"torch"``, ``"triton"`` or ``"pointnet2_ops"`` are that backend (on a CPU device the CUDA-only
    two are an error, except triton under ``TRITON_INTERPRET=1``). Raises RuntimeError when the resolved backend cannot run
    (package missing, or a CUDA-only backend on a CPU device), so a start-up log line fails early.
    """
    device = torch.device(device)
    backend = _parse_backend(backend, "furthest_point_sample")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        return "triton" if _triton_available() else "torch"
    if backend == "triton":
        module = _load_triton_fps()
        if device.type != "cuda" and not module.INTERPRETED:
            raise RuntimeError(
                f"FPS backend 'triton' needs a CUDA tensor, got device {device} "
                "(set TRITON_INTERPRET=1 before triton is imported to run it on CPU, slowly)"
            )
    elif backend == "pointnet2_ops":
        _load_pointnet2_ops()
        if device.type != "cuda":
            raise RuntimeError(f"FPS backend 'pointnet2_ops' needs a CUDA tensor, got device {device}")
    return backend


def _fps_torch(xyz: Tensor, npoint: int, skip_origin: bool) -> Tensor:
    """Batched FPS loop: xyz (B, N, 3) fp32 -> (B, npoint) long."""
    B, N, _ = xyz.shape
    # Coordinates as three contiguous (B, N) planes: the per-step distance update is then three
    # fused element-wise passes instead of a reduction over a length-3 axis (about 4x faster on CPU).
    planes = xyz.permute(2, 0, 1).contiguous()
    x, y, z = planes
    flat = planes.reshape(3, B * N)
    min_dist = torch.full((B, N), _FAR, dtype=torch.float32, device=xyz.device)
    if skip_origin:
        # Skipped points sit at -1 for good: min() with a distance >= 0 keeps them there, so they are
        # never the argmax unless every point is skipped, and then argmax's first-index rule gives 0.
        min_dist.masked_fill_(x.square() + y.square() + z.square() <= SKIP_NORM2, -1.0)
    offsets = torch.arange(B, device=xyz.device) * N
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
    picks = [farthest]
    dist, tmp = torch.empty_like(min_dist), torch.empty_like(min_dist)
    for _ in range(npoint - 1):
        p = flat.index_select(1, farthest + offsets).unsqueeze(-1)  # (3, B, 1)
        torch.sub(x, p[0], out=dist).square_()
        dist.add_(torch.sub(y, p[1], out=tmp).square_())
        dist.add_(torch.sub(z, p[2], out=tmp).square_())
        torch.minimum(min_dist, dist, out=min_dist)
        farthest = min_dist.argmax(-1)
        picks.append(farthest)
    return torch.stack(picks, 1)


def _fps_pointnet2_ops(xyz: Tensor, npoint: int, skip_origin: bool) -> Tensor:
    if not skip_origin:
        raise ValueError("FPS backend 'pointnet2_ops' always applies the skip rule; use skip_origin=True "
                         "or backend 'torch' / 'triton'")
    return _load_pointnet2_ops().furthest_point_sample(xyz, npoint).long()


def _fps_triton(xyz: Tensor, npoint: int, skip_origin: bool) -> Tensor:
    return _load_triton_fps().furthest_point_sample_triton(xyz, npoint, SKIP_NORM2, skip_origin)


_FPS_IMPLS = {"torch": _fps_torch, "triton": _fps_triton, "pointnet2_ops": _fps_pointnet2_ops}


@torch.no_grad()
def furthest_point_sample(xyz: Tensor, npoint: int, *, backend: str = "auto", skip_origin: bool = True) -> Tensor:
    """Farthest point sampling with the semantics of the released CUDA kernel.

    The first pick is index 0. Each later pick is the point with the largest running minimum squared
    distance (initialised to 1e10) to the points already picked. With ``skip_origin`` (default, as the
    released ``pointnet2_ops`` kernel does) a point with x^2+y^2+z^2 <= 1e-3 is never picked after
    the first pick and its distance is never updated; when every point is skipped the pick is index
    0. ``skip_origin=False`` gives plain FPS. Ties go to the lowest index in the torch and triton
    backends, which therefore agree exactly; the CUDA kernel's tie order follows its thread reduction.
    All arithmetic is fp32, also under autocast.

    Args:
        xyz: (B, N, 3) points.
        npoint: number of points to pick, 1 <= npoint <= N.
        backend: "auto" (triton on CUDA when triton imports, else torch), "torch", "triton" or
            "pointnet2_ops". Models take it from the run's config (``fps_backend``) at construction.
        skip_origin: apply the released kernel's skip rule for points near the origin.
    Returns:
        (B, npoint) long indices.
    """
    _check_points("furthest_point_sample", xyz)
    N = xyz.shape[1]
    if not 0 < npoint <= N:
        raise ValueError(f"furthest_point_sample: npoint must be in [1, {N}], got {npoint}")
    name = resolve_fps_backend(xyz.device, backend)
    with torch.autocast(device_type=xyz.device.type, enabled=False):
        return _FPS_IMPLS[name](_fp32(xyz).contiguous(), npoint, skip_origin)


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """Gather rows: points (B, N, C), idx (B, ...) long -> (B, ..., C)."""
    B = points.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


def fps(xyz: Tensor, npoint: int, *, backend: str = "auto", skip_origin: bool = True) -> Tensor:
    """Farthest point sampling returning the points: (B, N, C) -> (B, npoint, C), C >= 3.

    Sampling uses the first three channels; any further channels (normals) are carried along.
    ``backend`` and ``skip_origin`` are those of :func:`furthest_point_sample`.
    """
    if xyz.dim() != 3 or xyz.shape[-1] < 3:
        raise ValueError(f"fps: expected a (B, N, C>=3) tensor of points, got shape {tuple(xyz.shape)}")
    idx = furthest_point_sample(xyz[..., :3].contiguous(), npoint, backend=backend, skip_origin=skip_origin)
    return gather_points(xyz, idx)


def square_distance(query: Tensor, ref: Tensor) -> Tensor:
    """Pairwise squared distances in fp32: query (B, M, 3), ref (B, N, 3) -> (B, M, N)."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        query, ref = _fp32(query), _fp32(ref)
        # |q|^2 - 2 q.r + |r|^2, accumulated in place in the bmm output (one (B, M, N) buffer instead of
        # four); (-2 q.r + |q|^2) + |r|^2 rounds exactly as (|q|^2 - 2 q.r) + |r|^2.
        dist = torch.bmm(query, ref.transpose(1, 2)).mul_(-2.0)
        dist.add_(query.square().sum(-1, keepdim=True)).add_(ref.square().sum(-1).unsqueeze(1))
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
    return torch.cat(out, dim=1) if len(out) > 1 else out[0]


@torch.no_grad()
def nearest_neighbor(query: Tensor, ref: Tensor) -> Tensor:
    """Index of the nearest reference point for each query: (B, M, 3), (B, N, 3) -> (B, M) long."""
    out = []
    for s, e in _row_chunks(query.shape[1], ref.shape[1]):
        out.append(square_distance(query[:, s:e], ref).argmin(-1))
    return torch.cat(out, dim=1) if len(out) > 1 else out[0]


@torch.no_grad()
def nearest_neighbors(xyz1: Tensor, xyz2: Tensor) -> "tuple[Tensor, Tensor]":
    """Nearest neighbours in both directions from one distance matrix (Chamfer).

    xyz1 (B, N, 3), xyz2 (B, M, 3) -> (idx1 (B, N) into ``xyz2``, idx2 (B, M) into ``xyz1``) long: the
    same indices as ``nearest_neighbor(xyz1, xyz2)`` and ``nearest_neighbor(xyz2, xyz1)`` up to
    rounding ties, about half the work (one matrix, read along both axes; ties to the lowest index).
    """
    N, M = xyz1.shape[1], xyz2.shape[1]
    idx1, best, idx2 = [], None, None
    for s, e in _row_chunks(N, M):
        dist = square_distance(xyz1[:, s:e], xyz2)  # B n M
        idx1.append(dist.argmin(-1))
        values, rows = dist.min(dim=1)  # B M
        rows = rows + s
        if best is None:
            best, idx2 = values, rows
        else:  # strictly closer rows of later chunks win, so ties keep the lowest index
            closer = values < best
            best = torch.where(closer, values, best)
            idx2 = torch.where(closer, rows, idx2)
    return torch.cat(idx1, dim=1), idx2
