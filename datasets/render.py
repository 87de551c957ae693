"""Batched point-splat renderer in plain PyTorch (any device, fp32).

Used to write the ShapeNetRendering-style PNGs of the demo data and to project point clouds to
images on the fly for the image branch. Conventions: world up is +y (ShapeNet), the camera sits
at ``distance`` from the origin at (azimuth, elevation) and looks at the origin; azimuth turns
about +y starting from +z, elevation lifts towards +y. Image row 0 is the top.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["render_views", "default_view_grid", "camera_frames", "project_points", "estimate_normals",
           "DEFAULT_FOV_DEG", "DEFAULT_DISTANCE"]

DEFAULT_FOV_DEG = 25.0  # ShapeNet R2N2 renderings use a 25 degree field of view
DEFAULT_DISTANCE = 5.0  # fits the unit sphere in a 25 degree view (needs > 1 / sin(12.5 deg) = 4.62)
LIGHT_DIR_CAM = (-0.4, 0.5, -0.77)  # towards the light, camera frame (x right, y up, z forward)
BASE_RGB = (0.72, 0.74, 0.80)


def default_view_grid(n_views: int = 24) -> Tuple[Tensor, Tensor]:
    """Fixed ShapeNet-like views: azimuths evenly spaced over 360 deg, elevations alternating 20 / 30 deg.

    Returns:
        (azimuths (n_views,), elevations (n_views,)) float32 tensors in degrees.
    """
    az = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    el = torch.where(torch.arange(n_views) % 2 == 0, torch.tensor(20.0), torch.tensor(30.0))
    return az, el


def camera_frames(azimuths: Tensor, elevations: Tensor, distance: float) -> Tuple[Tensor, Tensor]:
    """Camera centres (V,3) and world->camera rotations (V,3,3) (rows: right, up, forward)."""
    az, el = torch.deg2rad(azimuths.float()), torch.deg2rad(elevations.float())
    centre = distance * torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
    fwd = -centre / centre.norm(dim=-1, keepdim=True)
    up_w = torch.tensor([0.0, 1.0, 0.0], device=centre.device).expand_as(fwd)
    right = torch.linalg.cross(fwd, up_w)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    up = torch.linalg.cross(right, fwd)
    return centre, torch.stack([right, up, fwd], 1)


def project_points(points: Tensor, azimuths: Tensor, elevations: Tensor, image_size: int, distance: float,
                   fov_deg: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Perspective projection of (B,N,3) points into V views.

    Returns:
        cols (B,V,N) and rows (B,V,N) float pixel coordinates (pixel centres at k + 0.5), and
        depths (B,V,N) along the viewing axis.
    """
    centre, rot = camera_frames(azimuths.to(points.device), elevations.to(points.device), distance)
    cam = torch.einsum("vij,bvnj->bvni", rot, points.unsqueeze(1) - centre[None, :, None, :])
    focal = (image_size / 2) / math.tan(math.radians(fov_deg) / 2)
    z = cam[..., 2]
    zs = z.clamp_min(1e-6)
    cols = image_size / 2 + focal * cam[..., 0] / zs
    rows = image_size / 2 - focal * cam[..., 1] / zs
    return cols, rows, z


def estimate_normals(points: Tensor, k: int = 16) -> Tensor:
    """Unoriented normals (B,N,3) of (B,N,3) points: smallest principal axis of the k nearest points."""
    out = []
    for pts in points:  # per cloud and in row chunks, to bound the distance matrix
        k_eff = min(k, pts.shape[0])
        idx = torch.cat([torch.cdist(q, pts).topk(k_eff, largest=False).indices for q in pts.split(2048)])
        nb = pts[idx]
        nb = nb - nb.mean(1, keepdim=True)
        cov = nb.transpose(1, 2) @ nb
        out.append(torch.linalg.eigh(cov).eigenvectors[..., 0])
    return torch.stack(out)


def _disc_offsets(radius: float, device) -> Tuple[Tensor, Tensor]:
    r = int(math.floor(radius))
    d = torch.arange(-r, r + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    keep = (dx * dx + dy * dy) <= radius * radius + 1e-6
    return dx[keep], dy[keep]


@torch.no_grad()
def render_views(points: Tensor, normals: Optional[Tensor], azimuths: Union[Tensor, Sequence[float]],
                 elevations: Union[Tensor, Sequence[float]], image_size: int = 137,
                 distance: float = DEFAULT_DISTANCE, fov_deg: float = DEFAULT_FOV_DEG, point_radius_px: float = 1.5,
                 background: str = "transparent") -> Tensor:
    """Render point clouds from several views with z-buffered disc splats and Lambertian shading.

    Args:
        points: (B,N,3) points (e.g. unit-sphere normalised).
        normals: (B,N,3) normals or None (then estimated from 16 nearest neighbours).
        azimuths, elevations: (V,) view angles in degrees.
        image_size: H = W in pixels.
        distance: camera distance from the origin; fov_deg: full vertical field of view.
        point_radius_px: each point covers the pixels whose centres lie within this radius
            of the pixel holding the point.
        background: 'transparent' (RGB 0) or 'white' (RGB 1); alpha is 0 there in both cases.
    Returns:
        (B,V,4,H,W) float32 RGBA in [0,1]; alpha 1 on covered pixels, 0 elsewhere. The nearest
        point (smallest depth, then the lowest point index) wins each pixel.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"render_views: expected points of shape (B,N,3), got {tuple(points.shape)}")
    if background not in ("transparent", "white"):
        raise ValueError(f"render_views: background must be 'transparent' or 'white', got '{background}'")
    device = points.device
    points = points.float()
    az = torch.as_tensor(azimuths, dtype=torch.float32, device=device).reshape(-1)
    el = torch.as_tensor(elevations, dtype=torch.float32, device=device).reshape(-1)
    B, N, _ = points.shape
    V, H = az.shape[0], image_size
    normals = estimate_normals(points) if normals is None else normals.float()

    cols, rows, depth = project_points(points, az, el, H, distance, fov_deg)
    _, rot = camera_frames(az, el, distance)
    n_cam = torch.einsum("vij,bnj->bvni", rot, normals)
    n_cam = n_cam / n_cam.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    n_cam = torch.where(n_cam[..., 2:3] > 0, -n_cam, n_cam)  # two-sided: face the camera (-z)
    light = torch.tensor(LIGHT_DIR_CAM, device=device)
    light = light / light.norm()
    shade = 0.3 + 0.7 * (n_cam @ light).clamp_min(0)  # B,V,N

    dx, dy = _disc_offsets(point_radius_px, device)
    pc = cols.floor().long().unsqueeze(-1) + dx  # B,V,N,K
    pr = rows.floor().long().unsqueeze(-1) + dy
    valid = (pc >= 0) & (pc < H) & (pr >= 0) & (pr < H) & (depth > 1e-4).unsqueeze(-1)
    bv = torch.arange(B * V, device=device).reshape(B, V, 1, 1)
    flat = (bv * H + pr.clamp(0, H - 1)) * H + pc.clamp(0, H - 1)
    d = depth.unsqueeze(-1).expand_as(flat)
    pid = torch.arange(N, device=device).reshape(1, 1, N, 1).expand_as(flat)
    flat, d, pid = flat[valid], d[valid], pid[valid]

    zbuf = torch.full((B * V * H * H,), float("inf"), device=device)
    zbuf.scatter_reduce_(0, flat, d, reduce="amin")
    win = d == zbuf[flat]
    owner = torch.full((B * V * H * H,), N, dtype=torch.long, device=device)
    owner.scatter_reduce_(0, flat[win], pid[win], reduce="amin")
    covered = owner < N
    shade_flat = torch.cat([shade.reshape(B * V, N), torch.zeros(B * V, 1, device=device)], 1)
    pix_bv = torch.arange(B * V * H * H, device=device) // (H * H)
    intensity = shade_flat[pix_bv, owner]

    base = torch.tensor(BASE_RGB, device=device).view(3, 1)
    bg = 1.0 if background == "white" else 0.0
    rgb = torch.where(covered, (base * intensity).clamp(0, 1), torch.full_like(intensity, bg))
    img = torch.cat([rgb, covered.float().unsqueeze(0)], 0)  # 4, B*V*H*W
    return img.reshape(4, B, V, H, H).permute(1, 2, 0, 3, 4).contiguous()
