"""Batched point-cloud augmentations in PyTorch, applied on the device (released names)."""
from __future__ import annotations

import torch
from torch import Tensor


class PointcloudScaleAndTranslate:
    """Per-sample anisotropic scale U(scale_low, scale_high) and translation U(-t, t).

    (B, N, 3+) -> same; only xyz is changed. Uses the torch RNG of the input's device.
    """

    def __init__(self, scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0, translate_range: float = 0.2):
        self.scale_low = scale_low
        self.scale_high = scale_high
        self.translate_range = translate_range

    def __call__(self, pc: Tensor) -> Tensor:
        B = pc.shape[0]
        scale = torch.empty(B, 1, 3, device=pc.device).uniform_(self.scale_low, self.scale_high)
        shift = torch.empty(B, 1, 3, device=pc.device).uniform_(-self.translate_range, self.translate_range)
        xyz = pc[..., :3] * scale + shift
        return torch.cat([xyz, pc[..., 3:]], dim=-1) if pc.shape[-1] > 3 else xyz
