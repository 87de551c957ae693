"""Farthest point sampling backends against a NumPy port of the released CUDA kernel."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import REPO
from extensions import pointops
from extensions.pointops import check_fps_backend, configured_backend, fps, furthest_point_sample, resolve_fps_backend

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_POINTNET2_OPS = importlib.util.find_spec("pointnet2_ops") is not None


def reference_fps(points: np.ndarray, npoint: int, skip_origin: bool = True) -> np.ndarray:
    """The released kernel run by one thread: points (N, 3) float32 -> (npoint,) int64.

    fp32 distances summed in the kernel's order, the skip rule compared in double as the kernel's
    ``mag <= 1e-3`` does, strict '>' so ties go to the lowest index, and 0 when nothing is a candidate.
    """
    x, y, z = (points[:, c].astype(np.float32) for c in range(3))
    mag = x * x + y * y + z * z
    skip = (mag.astype(np.float64) <= 1e-3) if skip_origin else np.zeros(len(x), bool)
    temp = np.full(len(x), 1e10, np.float32)
    old, out = 0, [0]
    for _ in range(npoint - 1):
        dx, dy, dz = x - x[old], y - y[old], z - z[old]
        d = dx * dx + dy * dy + dz * dz
        temp = np.where(skip, temp, np.minimum(d, temp))
        best, besti = -1.0, 0
        for k, value in enumerate(temp.tolist()):
            if not skip[k] and value > best:
                best, besti = value, k
        old = besti
        out.append(old)
    return np.array(out, dtype=np.int64)


def clouds_with_skipped_points(seed: int) -> np.ndarray:
    """(3, 200, 3) float32: normal clouds, several points inside the 1e-3 ball (index 0 too in cloud 1)."""
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(3, 200, 3)).astype(np.float32)
    pts[0, [3, 17, 50, 51, 199]] *= np.float32(0.005)
    pts[1, :12] *= np.float32(0.005)
    pts[2, ::7] *= np.float32(0.005)
    return pts


def all_skipped_but_first() -> np.ndarray:
    """(1, 40, 3): index 0 far out, all others inside the ball (one exactly at the origin)."""
    rng = np.random.default_rng(7)
    pts = (rng.normal(size=(1, 40, 3)) * 0.005).astype(np.float32)
    pts[0, 0] = [1.0, 2.0, 3.0]
    pts[0, 5] = 0.0
    return pts


def all_skipped() -> np.ndarray:
    """(1, 40, 3): every point inside the ball, index 0 too; every pick is then index 0."""
    return (np.random.default_rng(8).normal(size=(1, 40, 3)) * 0.005).astype(np.float32)


def duplicated_clouds() -> np.ndarray:
    """(2, 96, 3): points 32..63 and 64..95 repeat 0..31, so every pick is a three-way tie."""
    base = np.random.default_rng(9).normal(size=(2, 32, 3)).astype(np.float32)
    return np.concatenate([base, base, base], axis=1)


# On a line; index 3 at the origin and index 5 at |p|^2 = 1e-4 are skipped. From x=1 the farthest
# is x=10 (2), then x=5 (4), then x=2 (1); afterwards every candidate is at distance 0, so the
# lowest index, 0, repeats. Without the rule 1 and 3 tie at distance 1 after three picks: 1 first.
LINE = np.array([[[1, 0, 0], [2, 0, 0], [10, 0, 0], [0, 0, 0], [5, 0, 0], [0.01, 0, 0]]], np.float32)
LINE_SKIP = [0, 2, 4, 1, 0, 0]
LINE_PLAIN = [0, 2, 4, 1, 3, 5]
# On the ball's edge: index 1 has fp32 |p|^2 == float32(1e-3), which is above the double 1e-3 the
# released kernel compares with, so it is a candidate; index 2 has the float just below and is skipped.
EDGE = np.array([[[-1, 0, 0], [0.030000001, 0.01, 0], [0.031622775, 0, 0], [0.5, 0, 0]]], np.float32)
EDGE_SKIP = [0, 3, 1, 0]
EDGE_PLAIN = [0, 3, 1, 2]


def assert_matches_reference(pts: np.ndarray, npoint: int, skip_origin: bool = True, backend: str = "torch"):
    idx = furthest_point_sample(torch.from_numpy(pts), npoint, backend=backend, skip_origin=skip_origin)
    assert idx.dtype == torch.long and idx.shape == (pts.shape[0], npoint)
    for b in range(pts.shape[0]):
        np.testing.assert_array_equal(idx[b].numpy(), reference_fps(pts[b], npoint, skip_origin), err_msg=f"cloud {b}")


@pytest.mark.parametrize("npoint", [1, 2, 64, 200])
def test_torch_matches_reference_with_skipped_points(npoint):
    pts = clouds_with_skipped_points(0)
    assert_matches_reference(pts, npoint)
    skipped = set(np.flatnonzero((pts[0] ** 2).sum(1) <= 1e-3).tolist())
    picked = furthest_point_sample(torch.from_numpy(pts), npoint)[0, 1:].tolist()
    assert skipped == {3, 17, 50, 51, 199} and not skipped & set(picked)


def test_torch_matches_reference_on_plain_random_clouds():
    rng = np.random.default_rng(1)
    assert_matches_reference(rng.uniform(-1, 1, size=(2, 500, 3)).astype(np.float32), 128)
    assert_matches_reference(rng.normal(size=(2, 300, 3)).astype(np.float32), 300)


def test_all_points_but_first_skipped_gives_zeros():
    for pts in (all_skipped_but_first(), all_skipped()):
        assert ((pts[0, 1:] ** 2).sum(-1) < 1e-3).all()
        assert furthest_point_sample(torch.from_numpy(pts), 40).tolist() == [[0] * 40]
        assert_matches_reference(pts, 40)


def test_duplicates_tie_to_lowest_index():
    pts = duplicated_clouds()
    assert_matches_reference(pts, 96)
    assert_matches_reference(pts, 96, skip_origin=False)
    idx = furthest_point_sample(torch.from_numpy(pts), 40)
    assert (idx[:, :32] < 32).all() and (idx[:, 32:40] < 64).all()


def test_skip_rule_off_is_plain_fps():
    pts = clouds_with_skipped_points(2)
    assert_matches_reference(pts, 120, skip_origin=False)
    with_rule = furthest_point_sample(torch.from_numpy(pts), 120)
    without = furthest_point_sample(torch.from_numpy(pts), 120, skip_origin=False)
    assert not torch.equal(with_rule, without)
    idx = furthest_point_sample(torch.from_numpy(all_skipped_but_first()), 5, skip_origin=False)
    assert len(set(idx[0].tolist())) == 5


def test_hand_made_line_and_tie_rule():
    pts = torch.from_numpy(LINE)
    assert furthest_point_sample(pts, 6)[0].tolist() == LINE_SKIP
    assert furthest_point_sample(pts, 6, skip_origin=False)[0].tolist() == LINE_PLAIN
    assert reference_fps(LINE[0], 6).tolist() == LINE_SKIP
    assert reference_fps(LINE[0], 6, skip_origin=False).tolist() == LINE_PLAIN


def test_hand_made_ball_edge():
    pts = torch.from_numpy(EDGE)
    mag = [float(x * x + y * y + z * z) for x, y, z in EDGE[0]]
    assert mag[1] == float(np.float32(1e-3)) > 1e-3 and mag[2] < 1e-3
    assert furthest_point_sample(pts, 4)[0].tolist() == EDGE_SKIP
    assert furthest_point_sample(pts, 4, skip_origin=False)[0].tolist() == EDGE_PLAIN
    assert reference_fps(EDGE[0], 4).tolist() == EDGE_SKIP


def test_fps_passes_backend_and_rule_through():
    pts = torch.from_numpy(np.concatenate([clouds_with_skipped_points(3), np.ones((3, 200, 3), np.float32)], -1))
    for skip_origin in (True, False):
        idx = furthest_point_sample(pts[..., :3].contiguous(), 50, skip_origin=skip_origin)
        out = fps(pts, 50, backend="torch", skip_origin=skip_origin)
        assert out.shape == (3, 50, 6)
        assert torch.equal(out, pts[torch.arange(3)[:, None], idx])
    with pytest.raises(ValueError, match="unknown FPS backend"):
        fps(pts, 5, backend="cuda")
    with pytest.raises(ValueError, match=r"C>=3"):
        fps(pts[..., :2], 5)


def test_fp32_under_autocast_and_half_input():
    pts = torch.from_numpy(clouds_with_skipped_points(4)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        idx = furthest_point_sample(pts, 30)
    assert idx.dtype == torch.long
    np.testing.assert_array_equal(idx[1].numpy(), reference_fps(pts[1].float().numpy(), 30))


def test_clear_errors():
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        furthest_point_sample(torch.rand(2, 10, 2), 3)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        furthest_point_sample(torch.rand(10, 3), 3)
    with pytest.raises(ValueError, match="npoint must be in"):
        furthest_point_sample(torch.rand(1, 5, 3), 6)
    with pytest.raises(ValueError, match="npoint must be in"):
        furthest_point_sample(torch.rand(1, 5, 3), 0)
    with pytest.raises(ValueError, match="unknown FPS backend 'fast'"):
        furthest_point_sample(torch.rand(1, 5, 3), 2, backend="fast")
    with pytest.raises(ValueError, match="unknown FPS backend"):
        check_fps_backend("cuda")


@pytest.mark.skipif(HAS_POINTNET2_OPS, reason="pointnet2_ops is installed here")
def test_pointnet2_ops_missing_is_a_clear_error():
    with pytest.raises(RuntimeError, match="pointnet2_ops package is not installed"):
        furthest_point_sample(torch.rand(1, 5, 3), 2, backend="pointnet2_ops")
    with pytest.raises(RuntimeError, match="pointnet2_ops package is not installed"):
        resolve_fps_backend("cuda", configured_backend("cuda", "pointnet2_ops"))
    # a model configured for pointnet2_ops keeps the torch loop on CPU tensors
    assert resolve_fps_backend("cpu", configured_backend("cpu", "pointnet2_ops")) == "torch"


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")
def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    from extensions import fps_triton

    if fps_triton.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1 in this process")
    with pytest.raises(RuntimeError, match="needs a CUDA tensor"):
        furthest_point_sample(torch.rand(1, 5, 3), 2, backend="triton")


def test_triton_missing_is_a_clear_error(monkeypatch):
    import extensions

    monkeypatch.delattr(extensions, "fps_triton", raising=False)
    monkeypatch.setitem(sys.modules, "extensions.fps_triton", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="needs the triton package"):
        furthest_point_sample(torch.rand(1, 5, 3), 2, backend="triton")


def test_backend_selection(monkeypatch):
    """No process-wide setting: ``auto`` is the device rule, a name is that backend, and the
    environment variable is never read by the ops (it only supplies a run's config default)."""
    monkeypatch.setenv(pointops.FPS_BACKEND_ENV, "bogus")
    assert resolve_fps_backend(torch.device("cpu")) == "torch"
    assert resolve_fps_backend("cuda") == ("triton" if HAS_TRITON else "torch")
    assert resolve_fps_backend("cuda", "torch") == "torch"
    assert resolve_fps_backend("cpu", "torch") == "torch"
    assert configured_backend("cuda", "torch") == "torch" and configured_backend("cpu", "torch") == "auto"


def test_two_models_with_different_switches_compute_as_configured(monkeypatch):
    """Two encoders built side by side with other compute switches each use their own: the FPS
    backend and the embedding arithmetic are constructor arguments, read from the module itself."""
    from models.backbone import PointEncoder

    calls = []
    original = pointops.furthest_point_sample

    def spy(xyz, npoint, *, backend="auto", skip_origin=True):
        calls.append(backend)
        return original(xyz, npoint, backend="torch", skip_origin=skip_origin)

    monkeypatch.setattr(pointops, "furthest_point_sample", spy)
    torch.manual_seed(0)
    exact = PointEncoder(32, 1, 2, 0.0, 32, 8, 8, fps_backend="triton", embed_compute="exact")
    torch.manual_seed(0)
    fast = PointEncoder(32, 1, 2, 0.0, 32, 8, 8, fps_backend="torch", embed_compute="fast")
    assert (exact.encoder.compute, fast.encoder.compute) == ("exact", "fast")
    assert (exact.group_divider.fps_backend, fast.group_divider.fps_backend) == ("triton", "torch")
    pts = torch.rand(2, 64, 3)
    a, b = exact.eval().patch_tokens(pts), fast.eval().patch_tokens(pts)
    assert calls == ["auto", "auto"]  # on CPU tensors the configured (CUDA-only) backend gives way to the torch loop
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # the same function, another order of operations


def test_importing_pointops_does_not_import_triton():
    code = "import sys, extensions.pointops; print('extensions.fps_triton' in sys.modules, 'triton' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


TRITON_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    sys.path.insert(0, sys.argv[1])
    from extensions import fps_triton
    from extensions.pointops import SKIP_NORM2, furthest_point_sample
    sys.path.insert(0, sys.argv[1] + "/tests")
    from test_fps_backends import (EDGE, EDGE_SKIP, LINE, LINE_PLAIN, LINE_SKIP, all_skipped, all_skipped_but_first,
                                   clouds_with_skipped_points, duplicated_clouds)

    assert fps_triton.INTERPRETED
    rng = np.random.default_rng(5)
    cases = [
        (clouds_with_skipped_points(0)[:, :64], 64, True),
        (clouds_with_skipped_points(1), 100, True),
        (rng.uniform(-1, 1, size=(2, 300, 3)).astype(np.float32), 80, True),
        (clouds_with_skipped_points(2)[:2, :150], 150, False),
        (all_skipped_but_first(), 40, True),
        (all_skipped(), 40, True),
        (duplicated_clouds(), 96, True),
        (duplicated_clouds(), 70, False),
    ]
    for pts, npoint, skip in cases:
        t = torch.from_numpy(pts)
        got = furthest_point_sample(t, npoint, backend="triton", skip_origin=skip)
        want = furthest_point_sample(t, npoint, backend="torch", skip_origin=skip)
        assert got.dtype == torch.long and torch.equal(got, want), (pts.shape, npoint, skip, got, want)
    # The chunked kernel for clouds beyond one block, forced with a small block limit.
    for pts, npoint, skip in [(clouds_with_skipped_points(3)[:2, :150], 40, True),
                              (all_skipped_but_first(), 10, True), (all_skipped(), 10, True),
                              (duplicated_clouds(), 70, True), (LINE, 6, False)]:
        t = torch.from_numpy(pts)
        got = fps_triton.furthest_point_sample_triton(t, npoint, SKIP_NORM2, skip, max_block=32, chunk=32)
        assert torch.equal(got, furthest_point_sample(t, npoint, backend="torch", skip_origin=skip)), (pts.shape, got)
    line = torch.from_numpy(LINE)
    assert furthest_point_sample(line, 6, backend="triton")[0].tolist() == LINE_SKIP
    assert furthest_point_sample(line, 6, backend="triton", skip_origin=False)[0].tolist() == LINE_PLAIN
    assert furthest_point_sample(torch.from_numpy(EDGE), 4, backend="triton")[0].tolist() == EDGE_SKIP
    print("TRITON_OK")
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable, so the Triton backend cannot be tested")
def test_triton_matches_torch_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", TRITON_SCRIPT, str(REPO)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "TRITON_OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
