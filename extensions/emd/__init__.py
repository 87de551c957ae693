"""Earth mover's distance between equal-size point sets, by exact assignment.

The released code shipped an approximate CUDA EMD. Here the optimal one-to-one matching is found
with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the CPU without
gradient; the loss is then the mean matched distance, differentiable in both inputs. Exact, but
O(N^3) per set: meant for patch-sized sets (K = 32 points), not whole clouds.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from extensions.pointops import gather_points, square_distance

__all__ = ["emd_matching", "earth_mover_distance", "EarthMoverDistance"]


@torch.no_grad()
def emd_matching(xyz1: Tensor, xyz2: Tensor) -> Tensor:
    """Optimal assignment: (B, N, 3), (B, N, 3) -> (B, N) long, xyz1[b, i] <-> xyz2[b, out[b, i]]."""
    if xyz1.shape != xyz2.shape:
        raise ValueError(f"EMD needs point sets of equal size, got {tuple(xyz1.shape)} and {tuple(xyz2.shape)}")
    cost = square_distance(xyz1, xyz2).sqrt().cpu().numpy()
    match = np.stack([linear_sum_assignment(c)[1] for c in cost])
    return torch.from_numpy(match).to(xyz1.device)


def earth_mover_distance(xyz1: Tensor, xyz2: Tensor) -> Tensor:
    """Mean Euclidean distance between optimally matched points, per set: -> (B,)."""
    with torch.autocast(device_type=xyz1.device.type, enabled=False):
        xyz1, xyz2 = xyz1.float(), xyz2.float()
        matched = gather_points(xyz2, emd_matching(xyz1, xyz2))
        return (xyz1 - matched).square().sum(-1).clamp_min(1e-12).sqrt().mean(-1)


class EarthMoverDistance(nn.Module):
    """Batch mean of :func:`earth_mover_distance`. (B,N,3), (B,N,3) -> scalar."""

    def forward(self, xyz1: Tensor, xyz2: Tensor) -> Tensor:
        return earth_mover_distance(xyz1, xyz2).mean()
