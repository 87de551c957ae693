"""Feature-health figures (engine/feature_health.py) against hand computation and numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.feature_health import collapse_warning, effective_rank, feature_health


def _with_singular_values(values, n: int = 40, dim: int = 12, seed: int = 0) -> np.ndarray:
    """An (n, dim) matrix with zero column means whose singular values are ``values`` (then zeros):
    U diag(s) V^T with U orthonormal columns orthogonal to the ones vector."""
    rng = np.random.default_rng(seed)
    k = len(values)
    a = rng.normal(size=(n, k))
    a -= a.mean(axis=0)  # columns orthogonal to ones, so centring leaves the matrix unchanged
    u, _ = np.linalg.qr(a)
    v, _ = np.linalg.qr(rng.normal(size=(dim, k)))
    return u @ np.diag(values) @ v.T


def test_effective_rank_of_equal_and_single_directions():
    # k equal singular values: p_i = 1/k, entropy log k, effective rank exactly k.
    for k in (1, 3, 7):
        h = feature_health(_with_singular_values([2.5] * k))
        assert h.effective_rank == pytest.approx(k, rel=1e-9)
        assert h.first_share == pytest.approx(1.0 / k, rel=1e-9)
    # a constant offset per column (the mean) changes nothing: the figures are of centred features
    x = _with_singular_values([3.0, 1.0]) + np.arange(12.0)
    h = feature_health(x)
    p = np.array([3.0, 1.0]) / 4.0
    assert h.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert h.first_share == pytest.approx(9.0 / 10.0, rel=1e-9)


def test_against_numpy_on_random_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 8)) @ rng.normal(size=(8, 8)) + 5.0
    centred = x - x.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    p = s / s.sum()
    eig = np.sort(np.linalg.eigvalsh(np.cov(centred, rowvar=False)))[::-1]  # PCA variances
    h = feature_health(torch.from_numpy(x).float())
    assert h.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert h.first_share == pytest.approx(eig[0] / eig.sum(), rel=1e-5)
    assert h.mean_std == pytest.approx(x.std(axis=0).mean(), rel=1e-5)
    assert (h.n, h.dim) == (50, 8)


def test_constant_features_and_collapse_warning():
    assert effective_rank(np.zeros(4)) == 0.0
    flat = feature_health(np.ones((10, 6)))
    assert flat.effective_rank == 0.0 and flat.first_share == 0.0 and flat.mean_std == 0.0
    healthy = feature_health(_with_singular_values([1.0] * 6))
    assert collapse_warning(healthy, first_rank=6.0) is None
    one_way = feature_health(_with_singular_values([10.0, 1.0, 1.0]))  # 100 / 102 of the variance
    message = collapse_warning(one_way, first_rank=None)
    assert message is not None and "98.0 %" in message
    shrunk = feature_health(_with_singular_values([1.0] * 2))
    assert "fell from 6.00 to 2.00" in collapse_warning(shrunk, first_rank=6.0)
    with pytest.raises(ValueError, match="matrix"):
        feature_health(np.zeros(5))
