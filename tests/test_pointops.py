"""Point ops against brute-force NumPy references."""
import itertools

import numpy as np
import pytest
import torch

from extensions.chamfer_dist import ChamferDistanceL1, ChamferDistanceL2, ChamferDistanceL2_split, chamfer_distance
from extensions.emd import earth_mover_distance
from extensions import pointops
from extensions.pointops import fps, furthest_point_sample, knn_query, nearest_neighbor, nearest_neighbors, square_distance


def numpy_fps(points: np.ndarray, npoint: int) -> np.ndarray:
    """The textbook loop, starting at index 0."""
    n = points.shape[0]
    chosen = [0]
    dist = np.full(n, np.inf)
    for _ in range(npoint - 1):
        dist = np.minimum(dist, ((points - points[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(dist.argmax()))
    return np.array(chosen)


def test_fps_matches_bruteforce():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(3, 500, 3)).astype(np.float32)
    idx = furthest_point_sample(torch.from_numpy(pts), 64).numpy()
    for b in range(3):
        np.testing.assert_array_equal(idx[b], numpy_fps(pts[b].astype(np.float64), 64))
    sampled = fps(torch.from_numpy(pts), 64)
    np.testing.assert_allclose(sampled[1].numpy(), pts[1][idx[1]])


def test_fps_carries_extra_channels_and_rejects_bad_input():
    pts = torch.rand(2, 100, 6)
    out = fps(pts, 10)
    idx = furthest_point_sample(pts[..., :3].contiguous(), 10)
    assert out.shape == (2, 10, 6)
    assert torch.equal(out[0], pts[0, idx[0]])
    with pytest.raises(ValueError, match="npoint"):
        furthest_point_sample(torch.rand(1, 5, 3), 6)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        furthest_point_sample(torch.rand(5, 3), 2)


def test_knn_matches_bruteforce():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2, 300, 3)).astype(np.float32)
    query = rng.normal(size=(2, 20, 3)).astype(np.float32)
    idx = knn_query(8, torch.from_numpy(ref), torch.from_numpy(query)).numpy()
    for b in range(2):
        d = ((query[b][:, None, :].astype(np.float64) - ref[b][None].astype(np.float64)) ** 2).sum(-1)
        expected = np.argsort(d, axis=1)[:, :8]
        np.testing.assert_array_equal(idx[b], expected)


def test_square_distance_matches_float64():
    rng = np.random.default_rng(4)
    q = rng.normal(size=(2, 17, 3)).astype(np.float32)
    r = rng.normal(size=(2, 29, 3)).astype(np.float32)
    d = square_distance(torch.from_numpy(q), torch.from_numpy(r)).numpy()
    expected = ((q[:, :, None].astype(np.float64) - r[:, None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-5)
    assert (d >= 0).all()


@pytest.mark.parametrize("chunk_elems", [None, 7 * 70])
def test_nearest_neighbors_reads_one_matrix_both_ways(monkeypatch, chunk_elems):
    if chunk_elems is not None:  # several row chunks: the column minima are merged across chunks
        monkeypatch.setattr(pointops, "_CHUNK_ELEMS", chunk_elems)
    g = torch.Generator().manual_seed(5)
    a = torch.rand(3, 100, 3, generator=g)
    b = torch.rand(3, 70, 3, generator=g)
    a[:, 60] = a[:, 3]  # duplicate rows in different chunks: the nearest row to b is the lowest index
    b[:, 10] = a[:, 3] + 1e-4
    idx1, idx2 = nearest_neighbors(a, b)
    assert torch.equal(idx1, nearest_neighbor(a, b))
    assert torch.equal(idx2, nearest_neighbor(b, a))
    assert (idx2[:, 10] == 3).all()


def numpy_chamfer(x, y):
    d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return d.min(1), d.min(0)


def test_chamfer_values_and_reductions():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 40, 3))
    y = rng.normal(size=(2, 30, 3))
    tx, ty = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    d1, d2 = chamfer_distance(tx, ty)
    ref = [numpy_chamfer(x[b], y[b]) for b in range(2)]
    np.testing.assert_allclose(d1.numpy(), np.stack([r[0] for r in ref]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d2.numpy(), np.stack([r[1] for r in ref]), rtol=1e-5, atol=1e-6)
    all1, all2 = np.stack([r[0] for r in ref]), np.stack([r[1] for r in ref])
    assert ChamferDistanceL2()(tx, ty).item() == pytest.approx(all1.mean() + all2.mean(), rel=1e-5)
    a, b = ChamferDistanceL2_split()(tx, ty)
    assert (a.item(), b.item()) == pytest.approx((all1.mean(), all2.mean()), rel=1e-5)
    assert ChamferDistanceL1()(tx, ty).item() == pytest.approx((np.sqrt(all1).mean() + np.sqrt(all2).mean()) / 2, rel=1e-5)


def test_chamfer_gradient_matches_analytic():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 10, 3))
    y = rng.normal(size=(1, 12, 3))
    tx = torch.tensor(x, requires_grad=True)
    ChamferDistanceL2()(tx, torch.tensor(y)).backward()
    # d/dx_i of mean_i min_j |x_i - y_j|^2 + mean_j min_i |y_j - x_i|^2
    d = ((x[0][:, None] - y[0][None]) ** 2).sum(-1)
    grad = np.zeros_like(x[0])
    nn1 = d.argmin(1)
    for i in range(10):
        grad[i] += 2 * (x[0][i] - y[0][nn1[i]]) / 10
    nn2 = d.argmin(0)
    for j in range(12):
        grad[nn2[j]] += 2 * (x[0][nn2[j]] - y[0][j]) / 12
    np.testing.assert_allclose(tx.grad[0].numpy(), grad, rtol=1e-6, atol=1e-8)


def test_ops_stay_fp32_under_autocast():
    x, y = torch.rand(2, 64, 3), torch.rand(2, 64, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d1, _ = chamfer_distance(x.bfloat16(), y.bfloat16())
        idx = knn_query(4, x, y)
    assert d1.dtype == torch.float32
    assert idx.dtype == torch.long


def test_emd_matches_permutation_search():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 5, 3))
    y = rng.normal(size=(1, 5, 3))
    best = min(np.mean(np.linalg.norm(x[0] - y[0][list(p)], axis=1)) for p in itertools.permutations(range(5)))
    got = earth_mover_distance(torch.tensor(x), torch.tensor(y))
    assert got.item() == pytest.approx(best, rel=1e-5)
