"""Feature health: how many directions a set of frozen features spans.

A masked autoencoder can lower its reconstruction loss while its encoder's pooled features shrink
onto a few directions (a collapse); a linear probe on such features loses accuracy as pre-training
goes on. Two figures show it while a run trains, without labels:

* the **effective rank** of the centred features (Roy & Vetterli, EUSIPCO 2007): ``exp`` of the
  Shannon entropy of the singular values normalised to sum to 1; between 1 (one direction) and
  ``min(n, D)`` (all singular values equal);
* the **first-direction share**: the fraction of the total variance along the first principal
  direction (``s_1^2 / sum s_i^2``).

``engine/pretrain.py`` logs both for the validation set after every validation (``[Feature
health]`` line, TensorBoard ``Metric/feature_rank`` and ``Metric/feature_first_share``) and warns
when they signal a collapse (:func:`collapse_warning`); ``tools/svm.py`` logs them for the SVM's
features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

# A run is flagged when its features' effective rank has fallen below this fraction of the first
# value it logged, or when one direction holds more than this share of their variance.
COLLAPSE_RANK_FRACTION = 0.5
COLLAPSE_FIRST_SHARE = 0.9


@dataclass(frozen=True)
class FeatureHealth:
    """Figures of an (n, D) feature matrix: ``effective_rank``, ``first_share`` (of the variance),
    ``mean_std`` (the mean over the D dimensions of their standard deviation), ``n`` and ``dim``."""

    effective_rank: float
    first_share: float
    mean_std: float
    n: int
    dim: int

    def as_dict(self) -> dict:
        return {"feature_rank": self.effective_rank, "feature_first_share": self.first_share,
                "feature_std": self.mean_std}

    def line(self) -> str:
        return (f"effective rank {self.effective_rank:.2f} (of at most {min(self.n, self.dim)}), first direction "
                f"{100 * self.first_share:.1f} % of the variance, mean std {self.mean_std:.4g} "
                f"({self.n} shapes, {self.dim} dimensions)")


def singular_values(features: Union[np.ndarray, Tensor]) -> np.ndarray:
    """Singular values (float64, descending) of the column-centred (n, D) ``features``."""
    x = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be an (n, D) matrix, got shape {x.shape}")
    return np.linalg.svd(x - x.mean(axis=0, keepdims=True), compute_uv=False)


def effective_rank(s: np.ndarray) -> float:
    """``exp(-sum p_i log p_i)`` with ``p = s / sum(s)`` over the nonzero singular values ``s``;
    0 when every value is 0 (features that do not vary at all)."""
    s = np.asarray(s, np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def feature_health(features: Union[np.ndarray, Tensor]) -> FeatureHealth:
    """:class:`FeatureHealth` of an (n, D) feature matrix (rows: shapes)."""
    s = singular_values(features)
    x = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
    var = s ** 2
    share = float(var[0] / var.sum()) if var.size and var.sum() > 0 else 0.0
    std = float(x.std(axis=0).mean()) if x.shape[0] else 0.0
    return FeatureHealth(effective_rank(s), share, std, int(x.shape[0]), int(x.shape[1]))


def collapse_warning(health: FeatureHealth, first_rank: Optional[float]) -> Optional[str]:
    """A warning sentence when ``health`` signals a collapse (the effective rank under
    :data:`COLLAPSE_RANK_FRACTION` of ``first_rank``, the run's first logged value, or one direction
    over :data:`COLLAPSE_FIRST_SHARE` of the variance); None otherwise."""
    reasons = []
    if first_rank is not None and first_rank > 0 and health.effective_rank < COLLAPSE_RANK_FRACTION * first_rank:
        reasons.append(f"the effective rank fell from {first_rank:.2f} to {health.effective_rank:.2f}")
    if health.first_share > COLLAPSE_FIRST_SHARE:
        reasons.append(f"one direction holds {100 * health.first_share:.1f} % of the variance")
    if not reasons:
        return None
    return ("the encoder's pooled features are collapsing (" + "; ".join(reasons) + "): a linear probe or "
            "fine-tuning from this checkpoint may do worse than from scratch (README 'Your own data')")


@torch.no_grad()
def pooled_features(encoder, points: Tensor) -> Tensor:
    """The frozen-feature protocols' feature of each cloud: ``max_mean_pool`` of the unmasked
    ``patch_tokens`` of a :class:`models.backbone.PointEncoder`. points (B, N, 3) -> (B, 2C)."""
    from models.backbone import max_mean_pool

    return max_mean_pool(encoder.patch_tokens(points))
