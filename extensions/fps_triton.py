"""Farthest point sampling as one Triton kernel launch per batch (one program per cloud).

Imported lazily by :mod:`extensions.pointops` (backend ``"triton"``); importing this module imports
``triton``. The semantics are those of :func:`extensions.pointops.furthest_point_sample`: first pick
index 0, the released kernel's skip rule for points near the origin, running minimum distance
initialised to 1e10, fp32 arithmetic in the same operation order as the torch backend, ties broken
towards the lowest index. With ``TRITON_INTERPRET=1`` set before this module is imported, the
kernels run on CPU tensors through Triton's interpreter (slow; meant for tests).

Size limits: clouds of up to ``MAX_BLOCK`` points keep coordinates and running distances in
registers (one block of ``next_power_of_2(N)`` lanes). Larger clouds use a chunked kernel that keeps
the running distances in a (B, N) fp32 scratch tensor in global memory and sweeps the cloud in
chunks of ``CHUNK`` points at every pick (correct for any N with 3 * N < 2**31, but each pick then
re-reads the cloud and the scratch from L2/DRAM). ``MAX_BLOCK``/``CHUNK``/warp counts are picked
for register pressure, not tuned by measurement.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

if int(triton.__version__.split(".")[0]) < 3:
    raise ImportError(f"the Triton FPS kernel needs triton >= 3.0, found {triton.__version__}")

__all__ = ["furthest_point_sample_triton", "INTERPRETED", "MAX_BLOCK", "CHUNK"]

MAX_BLOCK = 8192
CHUNK = 4096


def _interpreter_on() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# True when this module was imported under TRITON_INTERPRET=1 (kernels then accept CPU tensors).
INTERPRETED: bool = _interpreter_on()


@triton.jit
def _fps_block_kernel(xyz_ptr, out_ptr, N, npoint, skip_norm2,
                      SKIP_ORIGIN: tl.constexpr, BLOCK: tl.constexpr):
    """xyz (B, N, 3) fp32 contiguous -> out (B, npoint) int64; the whole cloud in one block."""
    b = tl.program_id(0).to(tl.int64)
    cloud = xyz_ptr + b * N * 3
    out = out_ptr + b * npoint
    offs = tl.arange(0, BLOCK)
    valid = offs < N
    x = tl.load(cloud + offs * 3 + 0, mask=valid, other=0.0)
    y = tl.load(cloud + offs * 3 + 1, mask=valid, other=0.0)
    z = tl.load(cloud + offs * 3 + 2, mask=valid, other=0.0)
    # Padding lanes sit at -inf and skipped points at -1: min() with a distance >= 0 keeps both,
    # so neither is ever the argmax unless every real point is skipped (then lane 0 wins the tie).
    min_dist = tl.where(valid, 1e10, float("-inf"))
    if SKIP_ORIGIN:
        mag = x * x + y * y + z * z
        min_dist = tl.where(valid & (mag <= skip_norm2), -1.0, min_dist)
    old = tl.zeros((), dtype=tl.int32)
    tl.store(out, old.to(tl.int64))
    for j in range(1, npoint):
        px = tl.load(cloud + old * 3 + 0)
        py = tl.load(cloud + old * 3 + 1)
        pz = tl.load(cloud + old * 3 + 2)
        dx = x - px
        dy = y - py
        dz = z - pz
        min_dist = tl.minimum(min_dist, dx * dx + dy * dy + dz * dz)
        old = tl.argmax(min_dist, axis=0, tie_break_left=True).to(tl.int32)
        tl.store(out + j, old.to(tl.int64))


@triton.jit
def _fps_chunked_kernel(xyz_ptr, dist_ptr, out_ptr, N, npoint, skip_norm2,
                        SKIP_ORIGIN: tl.constexpr, CHUNK: tl.constexpr):
    """Same contract as ``_fps_block_kernel`` for any N; dist (B, N) fp32 is scratch."""
    b = tl.program_id(0).to(tl.int64)
    cloud = xyz_ptr + b * N * 3
    dist = dist_ptr + b * N
    out = out_ptr + b * npoint
    offs = tl.arange(0, CHUNK)
    for start in range(0, N, CHUNK):
        o = start + offs
        valid = o < N
        init = tl.full((CHUNK,), 1e10, dtype=tl.float32)
        if SKIP_ORIGIN:
            x = tl.load(cloud + o * 3 + 0, mask=valid, other=0.0)
            y = tl.load(cloud + o * 3 + 1, mask=valid, other=0.0)
            z = tl.load(cloud + o * 3 + 2, mask=valid, other=0.0)
            init = tl.where(x * x + y * y + z * z <= skip_norm2, -1.0, init)
        tl.store(dist + o, init, mask=valid)
    tl.debug_barrier()
    old = tl.zeros((), dtype=tl.int32)
    tl.store(out, old.to(tl.int64))
    for j in range(1, npoint):
        px = tl.load(cloud + old * 3 + 0)
        py = tl.load(cloud + old * 3 + 1)
        pz = tl.load(cloud + old * 3 + 2)
        # As in the released kernel: nothing beats -1 when every point is skipped, so the pick is 0.
        best = tl.full((), -1.0, dtype=tl.float32)
        best_i = tl.zeros((), dtype=tl.int32)
        for start in range(0, N, CHUNK):
            o = start + offs
            valid = o < N
            x = tl.load(cloud + o * 3 + 0, mask=valid, other=0.0)
            y = tl.load(cloud + o * 3 + 1, mask=valid, other=0.0)
            z = tl.load(cloud + o * 3 + 2, mask=valid, other=0.0)
            md = tl.load(dist + o, mask=valid, other=float("-inf"))
            dx = x - px
            dy = y - py
            dz = z - pz
            md = tl.minimum(md, dx * dx + dy * dy + dz * dz)
            tl.store(dist + o, md, mask=valid)
            c_best, c_i = tl.max(md, axis=0, return_indices=True, return_indices_tie_break_left=True)
            # Strict '>' across chunks visited in index order keeps the lowest index on ties.
            take = c_best > best
            best_i = tl.where(take, start + c_i.to(tl.int32), best_i)
            best = tl.where(take, c_best, best)
        old = best_i
        tl.store(out + j, old.to(tl.int64))


def _num_warps(block: int) -> int:
    return max(4, min(16, block // 512))


def furthest_point_sample_triton(xyz: Tensor, npoint: int, skip_norm2: float, skip_origin: bool = True,
                                 *, max_block: int = MAX_BLOCK, chunk: int = CHUNK) -> Tensor:
    """Farthest point sampling with one kernel launch.

    Args:
        xyz: (B, N, 3) points, already validated; computed as contiguous fp32.
        npoint: picks per cloud, 1 <= npoint <= N.
        skip_norm2: fp32 threshold of the skip rule (points with x^2+y^2+z^2 <= it are skipped).
        skip_origin: apply the skip rule.
        max_block: largest cloud handled by the in-register kernel (a power of two); larger clouds
            use the chunked kernel with ``chunk`` (a power of two) points per sweep step.
    Returns:
        (B, npoint) int64 indices.
    """
    xyz = xyz.float().contiguous()
    B, N, _ = xyz.shape
    out = torch.empty(B, npoint, dtype=torch.long, device=xyz.device)
    if B == 0:
        return out
    block = triton.next_power_of_2(N)
    on_device = torch.cuda.device(xyz.device) if xyz.is_cuda else contextlib.nullcontext()
    # No FMA contraction, so distances round exactly as the torch backend's separate ops do and the
    # two backends pick identical indices.
    with on_device:
        if block <= max_block:
            _fps_block_kernel[(B,)](xyz, out, N, npoint, skip_norm2, SKIP_ORIGIN=skip_origin, BLOCK=block,
                                    num_warps=_num_warps(block), enable_fp_fusion=False)
        else:
            scratch = torch.empty(B, N, dtype=torch.float32, device=xyz.device)
            _fps_chunked_kernel[(B,)](xyz, scratch, out, N, npoint, skip_norm2, SKIP_ORIGIN=skip_origin,
                                      CHUNK=chunk, num_warps=_num_warps(chunk), enable_fp_fusion=False)
    return out
