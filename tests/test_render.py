"""Point-splat renderer: silhouettes against the camera geometry computed independently in numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datasets.render import default_view_grid, render_views


def _fibonacci_sphere(n: int, r: float) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    th = math.pi * (1 + 5 ** 0.5) * i
    rho = np.sqrt(1 - z * z)
    return (r * np.stack([rho * np.cos(th), rho * np.sin(th), z], 1)).astype(np.float32)


def _project_numpy(p: np.ndarray, az: float, el: float, d: float, fov: float, size: int) -> np.ndarray:
    """Reference pinhole projection (look-at the origin, +y up) -> (N, 2) (col, row) in pixels."""
    a, e = math.radians(az), math.radians(el)
    c = d * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    f = -c / np.linalg.norm(c)
    r = np.cross(f, [0, 1, 0])
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    q = p - c
    x, y, z = q @ r, q @ u, q @ f
    foc = size / 2 / math.tan(math.radians(fov) / 2)
    return np.stack([size / 2 + foc * x / z, size / 2 - foc * y / z], 1)


def test_sphere_silhouette_area_matches_camera():
    R, d, fov, size, rad = 0.5, 3.0, 40.0, 96, 1.0
    pts = _fibonacci_sphere(20000, R)
    img = render_views(torch.from_numpy(pts)[None], torch.from_numpy(pts / R)[None], [30.0], [20.0],
                       image_size=size, distance=d, fov_deg=fov, point_radius_px=rad)
    alpha = img[0, 0, 3].numpy()
    r_img = size / 2 / math.tan(math.radians(fov) / 2) * R / math.sqrt(d * d - R * R)  # silhouette cone
    area = alpha.sum()
    assert math.pi * (r_img - 1) ** 2 <= area <= math.pi * (r_img + rad + 1) ** 2
    rows, cols = np.nonzero(alpha)
    assert abs(rows.mean() + 0.5 - size / 2) < 1 and abs(cols.mean() + 0.5 - size / 2) < 1  # centred disc
    assert alpha[0, 0] == 0 and alpha[size // 2, size // 2] == 1


def test_box_bbox_matches_projected_corners():
    rng = np.random.default_rng(0)
    h = np.array([0.6, 0.3, 0.45])
    faces = []
    for i in range(3):
        for s in (-1, 1):
            f = rng.uniform(-1, 1, size=(1500, 3)) * h
            f[:, i] = s * h[i]
            faces.append(f)
    pts = np.concatenate(faces).astype(np.float32)
    az, el, d, fov, size, rad = 50.0, 25.0, 4.0, 30.0, 128, 1.5
    img = render_views(torch.from_numpy(pts)[None], None, torch.tensor([az]), torch.tensor([el]), image_size=size,
                       distance=d, fov_deg=fov, point_radius_px=rad)
    alpha = img[0, 0, 3].numpy()
    rows, cols = np.nonzero(alpha)
    assert len(rows) > 0
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * h
    uv = _project_numpy(corners, az, el, d, fov, size)
    tol = rad + 1.5
    assert abs(cols.min() - uv[:, 0].min()) <= tol and abs(cols.max() + 1 - uv[:, 0].max()) <= tol
    assert abs(rows.min() - uv[:, 1].min()) <= tol and abs(rows.max() + 1 - uv[:, 1].max()) <= tol


def test_nearest_point_wins_and_shading():
    # Two parallel squares facing the camera (+z); the near one is lit (normal to camera), the far
    # one has normals turned away from the light, so its pixels would be darker.
    g = np.stack(np.meshgrid(np.linspace(-0.3, 0.3, 60), np.linspace(-0.3, 0.3, 60)), -1).reshape(-1, 2)
    near = np.c_[g, np.full(len(g), 0.2)]
    far = np.c_[g, np.full(len(g), -0.2)]
    pts = torch.tensor(np.concatenate([far, near]), dtype=torch.float32)[None]
    nrm = torch.tensor(np.concatenate([np.tile([1.0, 0, 0], (len(g), 1)), np.tile([0, 0, 1.0], (len(g), 1))]),
                       dtype=torch.float32)[None]
    both = render_views(pts, nrm, [0.0], [0.0], image_size=64, distance=3.0, fov_deg=30, point_radius_px=1.5)
    only_near = render_views(pts[:, len(g):], nrm[:, len(g):], [0.0], [0.0], image_size=64, distance=3.0, fov_deg=30,
                             point_radius_px=1.5)
    c = both[0, 0, :, 28:36, 28:36]
    assert torch.equal(c, only_near[0, 0, :, 28:36, 28:36]) and bool((c[3] == 1).all())


def test_output_contract_backgrounds_and_determinism():
    pts = torch.from_numpy(_fibonacci_sphere(1200, 0.8))[None].repeat(2, 1, 1)
    az, el = default_view_grid(24)
    assert az.shape == el.shape == (24,) and len(set(az.tolist())) == 24
    out = render_views(pts, None, az[:3], el[:3], image_size=40)
    assert out.shape == (2, 3, 4, 40, 40) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert set(out[:, :, 3].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out, render_views(pts, None, az[:3], el[:3], image_size=40))
    bg = out[:, :, 3] == 0
    assert bool((out[:, :, :3][bg.unsqueeze(2).expand(-1, -1, 3, -1, -1)] == 0).all())
    white = render_views(pts, None, az[:3], el[:3], image_size=40, background="white")
    assert torch.equal(white[:, :, 3], out[:, :, 3])
    assert bool((white[:, :, :3][bg.unsqueeze(2).expand(-1, -1, 3, -1, -1)] == 1).all())
    with pytest.raises(ValueError, match="background"):
        render_views(pts, None, az[:1], el[:1], background="black")
