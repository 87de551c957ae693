"""Analytic shape library of the procedural demo data (``demo.generate`` writes the datasets).

Shapes are unions of analytic surface *patches* (rectangles, triangles, annuli, frustum sides,
spherical zones, ellipsoids, tori, helix tubes). Each patch knows its area and samples points
uniformly on itself with outward unit normals, so :func:`sample_patches` samples a whole shape
uniformly by area (multinomial split over the patches). Every patch carries a part label, used
for the ShapeNetPart-style objects.

Families (``FAMILIES``) map ``(rng, p)`` to a list of patches: ``p`` in [0, 1] is the family's main
proportion knob (e.g. height / radius), drawn from ``rng`` when ``None``; other parameters are
randomised mildly. Local frame: z up, objects roughly inside the unit sphere.
Everything is deterministic given the ``np.random.Generator``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

Array = np.ndarray
Sampler = Callable[[int, np.random.Generator], Tuple[Array, Array]]

__all__ = [
    "Patch", "sample_patches", "sample_family", "FAMILIES", "PART_OBJECTS", "sample_part_object",
    "rect", "box", "triangle", "annulus", "frustum", "cylinder", "sphere_zone", "ellipsoid", "torus",
    "helix_tube", "move", "rot_to", "random_rotation", "random_rotation_z", "apply_pose", "jitter",
    "z_up_to_y_up",
]


@dataclass
class Patch:
    """A surface piece: ``sampler(n, rng) -> (points (n,3), normals (n,3))`` in local coordinates,
    then the rigid pose ``x -> R x + t``; ``area`` is the local area (rigid moves keep it)."""

    area: float
    sampler: Sampler
    R: Array = field(default_factory=lambda: np.eye(3))
    t: Array = field(default_factory=lambda: np.zeros(3))
    label: int = 0

    def sample(self, n: int, rng: np.random.Generator) -> Tuple[Array, Array]:
        pts, nrm = self.sampler(n, rng)
        return pts @ self.R.T + self.t, nrm @ self.R.T


def move(patches: Sequence[Patch], R: Optional[Array] = None, t: Sequence[float] = (0, 0, 0),
         label: Optional[int] = None) -> List[Patch]:
    """Rigidly move patches (x -> R x + t), optionally relabelling them."""
    R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    return [Patch(p.area, p.sampler, R @ p.R, R @ p.t + t, p.label if label is None else label) for p in patches]


def label(patches: Sequence[Patch], value: int) -> List[Patch]:
    return move(patches, label=value)


def flip(patches: Sequence[Patch]) -> List[Patch]:
    """Same surfaces with normals negated (inner walls)."""
    out = []
    for p in patches:
        def s(n, rng, _f=p.sampler):
            a, b = _f(n, rng)
            return a, -b
        out.append(Patch(p.area, s, p.R, p.t, p.label))
    return out


def rot_to(axis: Sequence[float]) -> Array:
    """(3,3) rotation mapping +z to the unit vector along ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    z = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(z, a), float(z @ a)
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def rot_axis(axis: int, deg: float) -> Array:
    """(3,3) rotation by ``deg`` about coordinate axis 0/1/2."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


# ----------------------------------------------------------------------------- primitives

def rect(center: Sequence[float], u: Sequence[float], v: Sequence[float]) -> List[Patch]:
    """Parallelogram ``center + a u + b v``, a, b in [-1, 1]; normal along u x v."""
    c, u, v = (np.asarray(x, dtype=np.float64) for x in (center, u, v))
    n = np.cross(u, v)
    area = 4 * float(np.linalg.norm(n))
    n = n / max(np.linalg.norm(n), 1e-12)

    def s(k, rng):
        ab = rng.uniform(-1, 1, size=(k, 2))
        return c + ab[:, :1] * u + ab[:, 1:] * v, np.broadcast_to(n, (k, 3)).copy()
    return [Patch(area, s)]


def box(size: Sequence[float], center: Sequence[float] = (0, 0, 0)) -> List[Patch]:
    """Closed axis-aligned box of full extents ``size`` (6 faces)."""
    h = np.asarray(size, dtype=np.float64) / 2
    c = np.asarray(center, dtype=np.float64)
    out = []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        for sgn in (1, -1):
            ej, ek, ei = np.eye(3)[j] * h[j], np.eye(3)[k] * h[k], np.eye(3)[i] * h[i]
            u, v = (ej, ek) if sgn > 0 else (ek, ej)
            out += rect(c + sgn * ei, u, v)
    return out


def triangle(a: Sequence[float], b: Sequence[float], c: Sequence[float], two_sided: bool = False) -> List[Patch]:
    """Triangle abc, normal along (b-a) x (c-a); ``two_sided`` adds the flipped copy (thin fins)."""
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (a, b, c))
    n = np.cross(b - a, c - a)
    area = 0.5 * float(np.linalg.norm(n))
    n = n / max(np.linalg.norm(n), 1e-12)

    def s(k, rng):
        r1, r2 = rng.random((k, 1)), rng.random((k, 1))
        flipm = (r1 + r2) > 1
        r1, r2 = np.where(flipm, 1 - r1, r1), np.where(flipm, 1 - r2, r2)
        return a + r1 * (b - a) + r2 * (c - a), np.broadcast_to(n, (k, 3)).copy()
    out = [Patch(area, s)]
    return out + flip(out) if two_sided else out


def annulus(r_in: float, r_out: float, z: float = 0.0, up: bool = True) -> List[Patch]:
    """Flat ring r_in <= r <= r_out in the plane z, normal +z (``up``) or -z; r_in = 0 is a disc."""
    area = math.pi * (r_out ** 2 - r_in ** 2)
    nz = 1.0 if up else -1.0

    def s(k, rng):
        r = np.sqrt(rng.uniform(r_in ** 2, r_out ** 2, size=k))
        th = rng.uniform(0, 2 * math.pi, size=k)
        pts = np.stack([r * np.cos(th), r * np.sin(th), np.full(k, z)], 1)
        return pts, np.tile([0.0, 0.0, nz], (k, 1))
    return [Patch(area, s)]


def frustum(r0: float, r1: float, h: float, z0: float = 0.0) -> List[Patch]:
    """Side of a truncated cone from (z0, radius r0) to (z0 + h, radius r1), outward normals."""
    slant = math.hypot(h, r1 - r0)
    area = math.pi * (r0 + r1) * slant
    nr, nz = h / slant, (r0 - r1) / slant

    def s(k, rng):
        u = rng.random(k)
        if abs(r1 - r0) < 1e-9:
            t = u
        else:  # density of t proportional to the radius r(t)
            t = (np.sqrt(r0 ** 2 + u * (r1 ** 2 - r0 ** 2)) - r0) / (r1 - r0)
        r = r0 + (r1 - r0) * t
        th = rng.uniform(0, 2 * math.pi, size=k)
        c, sn = np.cos(th), np.sin(th)
        pts = np.stack([r * c, r * sn, z0 + h * t], 1)
        return pts, np.stack([nr * c, nr * sn, np.full(k, nz)], 1)
    return [Patch(area, s)]


def cylinder(r: float, h: float, caps: bool = True, centered: bool = True) -> List[Patch]:
    """Cylinder along z of radius r, height h (centred on the origin or starting at z=0)."""
    z0 = -h / 2 if centered else 0.0
    out = frustum(r, r, h, z0)
    if caps:
        out += annulus(0, r, z0 + h, True) + annulus(0, r, z0, False)
    return out


def sphere_zone(r: float, z_lo: float = -1.0, z_hi: float = 1.0) -> List[Patch]:
    """Zone of the sphere of radius r between heights z_lo*r and z_hi*r (Archimedes: uniform in z)."""
    area = 2 * math.pi * r * r * (z_hi - z_lo)

    def s(k, rng):
        z = rng.uniform(z_lo, z_hi, size=k)
        th = rng.uniform(0, 2 * math.pi, size=k)
        rho = np.sqrt(np.clip(1 - z * z, 0, None))
        n = np.stack([rho * np.cos(th), rho * np.sin(th), z], 1)
        return r * n, n
    return [Patch(area, s)]


def _unit_sphere(k: int, rng: np.random.Generator) -> Array:
    v = rng.normal(size=(k, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rejection_sample(k: int, rng: np.random.Generator, propose: Callable[[int], Array],
                      density: Callable[[Array], Array], bound: float) -> Array:
    """``k`` draws of ``propose(m)`` (m candidates at a time), each kept with probability
    ``density(x) / bound`` (``bound`` >= the density's maximum)."""
    got: List[Array] = []
    m = 0
    while m < k:
        x = propose(2 * (k - m) + 16)
        x = x[rng.random(len(x)) * bound < density(x)]
        got.append(x)
        m += len(x)
    return np.concatenate(got)[:k]


def ellipsoid(a: float, b: float, c: float) -> List[Patch]:
    """Ellipsoid with semi-axes a, b, c: rejection sampling of the sphere map by its area factor."""
    abc = np.array([a, b, c], dtype=np.float64)
    pk = 1.6075
    area = 4 * math.pi * (((a * b) ** pk + (a * c) ** pk + (b * c) ** pk) / 3) ** (1 / pk)  # Thomsen
    inv = 1.0 / abc

    def s(k, rng):
        # area element ~ |M^-T u| (up to det M)
        u = _rejection_sample(k, rng, lambda m: _unit_sphere(m, rng), lambda u: np.linalg.norm(u * inv, axis=1),
                              float(np.max(inv)))
        n = u * inv
        return u * abc, n / np.linalg.norm(n, axis=1, keepdims=True)
    return [Patch(area, s)]


def torus(R: float, r: float, u_range: Tuple[float, float] = (0.0, 2 * math.pi)) -> List[Patch]:
    """Torus around z (tube radius r at distance R), optionally only the arc u in ``u_range``."""
    du = u_range[1] - u_range[0]
    area = du * 2 * math.pi * R * r

    def s(k, rng):
        v = _rejection_sample(k, rng, lambda m: rng.uniform(0, 2 * math.pi, size=m), lambda v: R + r * np.cos(v), R + r)
        u = rng.uniform(*u_range, size=k)
        n = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], 1)
        pts = np.stack([(R + r * np.cos(v)) * np.cos(u), (R + r * np.cos(v)) * np.sin(u), r * np.sin(v)], 1)
        return pts, n
    return [Patch(area, s)]


def helix_tube(R: float, r: float, pitch: float, turns: float) -> List[Patch]:
    """Tube of radius r around the helix (R cos t, R sin t, pitch t / 2pi), centred in z.

    Uniform: t uniform (constant speed), angle theta around the tube by rejection on the exact
    area element |c'| (1 - kappa r cos theta) (theta from the principal normal)."""
    b = pitch / (2 * math.pi)
    speed = math.hypot(R, b)
    kappa = R / speed ** 2
    tmax = 2 * math.pi * turns
    area = 2 * math.pi * r * speed * tmax

    def s(k, rng):
        th = _rejection_sample(k, rng, lambda m: rng.uniform(0, 2 * math.pi, size=m),
                               lambda th: 1 - kappa * r * np.cos(th), 1 + kappa * r)
        t = rng.uniform(0, tmax, size=k)
        c = np.stack([R * np.cos(t), R * np.sin(t), b * t - b * tmax / 2], 1)
        T = np.stack([-R * np.sin(t), R * np.cos(t), np.full(k, b)], 1) / speed
        N = np.stack([-np.cos(t), -np.sin(t), np.zeros(k)], 1)
        B = np.cross(T, N)
        n = np.cos(th)[:, None] * N + np.sin(th)[:, None] * B
        return c + r * n, n
    return [Patch(area, s)]


def sample_patches(patches: Sequence[Patch], n: int, rng: np.random.Generator) -> Tuple[Array, Array, Array]:
    """Sample ``n`` points uniformly (by area) on a union of patches, in random order.

    Returns:
        points (n, 3) float32, unit normals (n, 3) float32, part labels (n,) int64.
    """
    areas = np.array([p.area for p in patches], dtype=np.float64)
    counts = rng.multinomial(n, areas / areas.sum())
    pts, nrm, lab = [], [], []
    for p, k in zip(patches, counts):
        if k == 0:
            continue
        a, b = p.sample(int(k), rng)
        pts.append(a)
        nrm.append(b)
        lab.append(np.full(int(k), p.label, dtype=np.int64))
    order = rng.permutation(n)
    P, N, L = np.concatenate(pts)[order], np.concatenate(nrm)[order], np.concatenate(lab)[order]
    N = N / np.linalg.norm(N, axis=1, keepdims=True)
    return P.astype(np.float32), N.astype(np.float32), L


# ----------------------------------------------------------------------------- pose helpers

def random_rotation(rng: np.random.Generator) -> Array:
    """Uniformly random (3,3) rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_rotation_z(rng: np.random.Generator) -> Array:
    """Random rotation about the z (up) axis."""
    return rot_axis(2, float(rng.uniform(0, 360)))


def apply_pose(points: Array, normals: Optional[Array], R: Array, scale: float = 1.0,
               t: Sequence[float] = (0, 0, 0)) -> Tuple[Array, Optional[Array]]:
    """x -> scale * R x + t for (N,3) points; normals rotated only. Returns float32 arrays."""
    p = (scale * (np.asarray(points, np.float64) @ R.T) + np.asarray(t)).astype(np.float32)
    n = None if normals is None else (np.asarray(normals, np.float64) @ R.T).astype(np.float32)
    return p, n


def jitter(points: Array, rng: np.random.Generator, sigma: float = 0.005, clip: float = 0.02) -> Array:
    """Add clipped Gaussian noise (per coordinate) to (N,3) points."""
    return (points + np.clip(rng.normal(scale=sigma, size=points.shape), -clip, clip)).astype(np.float32)


def z_up_to_y_up(points: Array) -> Array:
    """(x, y, z) -> (x, z, -y): the library's z-up frame to ShapeNet's y-up frame (a rotation)."""
    return np.stack([points[:, 0], points[:, 2], -points[:, 1]], 1).astype(points.dtype)


# ----------------------------------------------------------------------------- families

def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _legs(xy: Sequence[Tuple[float, float]], w: float, h: float, z_top: float, lab: int = 0, round_legs=False):
    out = []
    for x, y in xy:
        if round_legs:
            out += move(cylinder(w / 2, h, caps=False), t=(x, y, z_top - h / 2), label=lab)
        else:
            out += move(box((w, w, h)), t=(x, y, z_top - h / 2), label=lab)
    return out


def fam_sphere(rng, p):
    return sphere_zone(_u(rng, 0.8, 1.0))


def fam_ellipsoid(rng, p):
    return ellipsoid(1.0, _u(rng, 0.55, 0.75), 0.15 + 0.85 * p)


def fam_box(rng, p):
    return box((1.0, _u(rng, 0.6, 0.9), 0.15 + 1.85 * p))


def fam_cylinder(rng, p):
    return cylinder(0.5, 0.3 + 2.7 * p)


def fam_cone(rng, p):
    h = 0.5 + 2.0 * p
    return frustum(0.6, 0.0, h, -h / 2) + annulus(0, 0.6, -h / 2, False)


def fam_torus(rng, p):
    return torus(1.0, 0.12 + 0.45 * p)


def _capsule(r: float, L: float) -> List[Patch]:
    """Open cylinder of radius r and length L along z (centred) closed by two hemispheres."""
    return cylinder(r, L, caps=False) + move(sphere_zone(r, 0, 1), t=(0, 0, L / 2)) + move(sphere_zone(r, -1, 0), t=(0, 0, -L / 2))


def fam_capsule(rng, p):
    return _capsule(0.4, 0.3 + 2.2 * p)


def fam_pyramid(rng, p):
    h, a = 0.4 + 1.6 * p, 0.6
    apex = (0, 0, h / 2)
    c = [(a, a, -h / 2), (-a, a, -h / 2), (-a, -a, -h / 2), (a, -a, -h / 2)]
    out = []
    for i in range(4):
        out += triangle(c[i], c[(i + 1) % 4], apex)
    return out + rect((0, 0, -h / 2), (0, a, 0), (a, 0, 0))


def fam_plate(rng, p):
    t = 0.03 + 0.15 * p
    return cylinder(1.0, t)


def fam_ring(rng, p):
    ro, h = 1.0, _u(rng, 0.3, 0.6)
    ri = ro * (0.45 + 0.45 * p)
    return (frustum(ro, ro, h, -h / 2) + flip(frustum(ri, ri, h, -h / 2))
            + annulus(ri, ro, h / 2, True) + annulus(ri, ro, -h / 2, False))


def fam_helix(rng, p):
    return helix_tube(0.6, 0.09, 0.45, 1.5 + 4 * p)


def fam_table(rng, p, parts=False):
    """Top (0), legs (1), optional shelf/drawer (2)."""
    lx, ly, hl, t = 1.0, _u(rng, 0.55, 0.8), 0.3 + 1.0 * p, 0.06
    out = label(box((2 * lx, 2 * ly, t), (0, 0, hl + t / 2)), 0)
    w = 0.08
    corners = [(sx * (lx - w), sy * (ly - w)) for sx in (1, -1) for sy in (1, -1)]
    out += _legs(corners, w, hl, hl, 1, round_legs=bool(rng.random() < 0.5))
    if not parts or rng.random() < 0.6:
        if rng.random() < 0.5 or not parts:
            out += label(box((2 * lx - 2 * w, 2 * ly - 2 * w, 0.04), (0, 0, hl * 0.3)), 2)  # shelf
        else:
            out += label(box((0.8 * lx, 0.8 * ly, 0.15), (0, 0, hl - 0.08)), 2)  # drawer
    return out


def fam_lshape(rng, p):
    a = 0.3 + 0.7 * p
    t = _u(rng, 0.25, 0.35)
    return box((2.0, t, t), (0, 0, 0)) + box((t, t, 2 * a), (1.0 - t / 2, 0, a + t / 2))


def fam_chair(rng, p, parts=False):
    """Back (0), seat (1), legs (2), arms (3, optional)."""
    s, hl, t = 0.5, 0.45, 0.06
    hb = 0.3 + 0.9 * p
    out = label(box((2 * s, t, hb), (0, -s + t / 2, hl + t + hb / 2)), 0)
    out += label(box((2 * s, 2 * s, t), (0, 0, hl + t / 2)), 1)
    w = 0.06
    out += _legs([(sx * (s - w), sy * (s - w)) for sx in (1, -1) for sy in (1, -1)], w, hl, hl, 2)
    if parts and rng.random() < 0.5:
        for sx in (1, -1):
            out += label(box((w, 2 * s, w), (sx * (s - w / 2), 0, hl + 0.3)), 3)
            out += label(box((w, w, 0.25), (sx * (s - w / 2), s - w, hl + 0.17)), 3)
    return out


def fam_bottle(rng, p):
    rb, hb = 0.45, 1.2
    hn = 0.2 + 0.8 * p
    return (cylinder(rb, hb, caps=False, centered=False) + annulus(0, rb, 0, False)
            + frustum(rb, 0.15, 0.35, hb) + frustum(0.15, 0.15, hn, hb + 0.35) + annulus(0, 0.15, hb + 0.35 + hn, True))


def fam_cup(rng, p, handle=False, parts=False):
    """Body (0: outer, inner, bottom, rim), handle (1)."""
    r, h = 0.5, 0.4 + 1.2 * p
    ri = r - 0.05
    body = (frustum(r, r, h) + flip(frustum(ri, ri, h - 0.05, 0.05)) + annulus(0, r, 0, False)
            + annulus(0, ri, 0.05, True) + annulus(ri, r, h, True))
    out = label(body, 0)
    if handle:
        hr = min(0.3, h / 3)
        out += move(torus(hr, 0.05, (-math.pi / 2, math.pi / 2)), R=rot_axis(0, 90), t=(r - 0.02, 0, h / 2), label=1)
    return out


def fam_mug(rng, p):
    return fam_cup(rng, p, handle=True)


def fam_bowl(rng, p):
    r, d = 1.0, 0.3 + 0.7 * p  # depth as a fraction of the radius
    return (sphere_zone(r, -d, 0) + flip(sphere_zone(0.94 * r, -d * 0.98, 0))
            + annulus(0.94 * r, r, 0, True))


def fam_stairs(rng, p):
    k = 3 + int(round(4 * p))
    d, hgt = 2.0 / k, 1.2 / k
    out = []
    for i in range(k):
        out += box((1.0, d, hgt * (i + 1)), (0, -1 + d * (i + 0.5), hgt * (i + 1) / 2))
    return out


def fam_shelf(rng, p):
    w, d, h, t = 1.0, 0.35, 1.0 + 1.0 * p, 0.05
    out = box((t, d, h), (-w / 2, 0, h / 2)) + box((t, d, h), (w / 2, 0, h / 2)) + box((w, t, h), (0, -d / 2, h / 2))
    n = 2 + int(round(3 * p))
    for i in range(n + 1):
        out += box((w, d, t), (0, 0, i * (h - t) / n + t / 2))
    return out


def fam_tent(rng, p):
    w, L, h = 1.0, _u(rng, 1.2, 1.8), 0.4 + 1.2 * p
    A, B = np.array([-w, -L / 2, 0]), np.array([w, -L / 2, 0])
    Ap = np.array([0, -L / 2, h])
    out = triangle(A, B, Ap) + triangle(B + [0, L, 0], A + [0, L, 0], Ap + [0, L, 0])
    out += rect((-w / 2, 0, h / 2), (0, L / 2, 0), (-w / 2, 0, h / 2))
    out += rect((w / 2, 0, h / 2), (w / 2, 0, -h / 2), (0, L / 2, 0))
    return out


def fam_airplane(rng, p, parts=False):
    """Fuselage (0), wings (1), tail (2), engines (3, optional)."""
    out = move(label(_capsule(0.13, 2.0), 0), R=rot_axis(1, 90))  # fuselage along x
    span = 0.7 + 0.6 * p
    out += label(triangle((0.35, 0, 0), (-0.2, span, 0), (-0.35, 0, 0), two_sided=True)
                 + triangle((0.35, 0, 0), (-0.35, 0, 0), (-0.2, -span, 0), two_sided=True), 1)
    out += label(triangle((-0.75, 0, 0.05), (-1.05, 0, 0.45), (-1.0, 0, 0.05), two_sided=True)
                 + triangle((-0.8, 0, 0), (-1.05, 0.35, 0), (-1.0, 0, 0), two_sided=True)
                 + triangle((-0.8, 0, 0), (-1.0, 0, 0), (-1.05, -0.35, 0), two_sided=True), 2)
    if not parts or rng.random() < 0.7:
        for sy in (1, -1):
            out += move(cylinder(0.07, 0.35), R=rot_axis(1, 90), t=(0.0, sy * span * 0.45, -0.09), label=3)
    return out


def fam_lamp(rng, p, parts=False):
    """Base (0), shade (1), canopy (2), pole/tube (3)."""
    hp = 0.6 + 1.0 * p
    out = label(cylinder(0.35, 0.06, centered=False), 0)
    out += label(frustum(0.45, 0.2, 0.35, hp - 0.1), 1)
    if not parts or rng.random() < 0.6:
        out += move(sphere_zone(0.1), t=(0, 0, hp + 0.25), label=2)
    out += label(cylinder(0.03, hp, caps=False, centered=False), 3)
    return out


def fam_vase(rng, p):
    r0, r1, r2 = 0.3, 0.5 + 0.3 * p, 0.2
    return (annulus(0, r0, 0, False) + frustum(r0, r1, 0.6) + frustum(r1, r2, 0.7, 0.6)
            + frustum(r2, r2 * 1.4, 0.25, 1.3))


def fam_car(rng, p, parts=False):
    """Body (0), roof/cabin (1), wheels (2), lights (3)."""
    L, W, H = 2.0, 0.9, 0.35
    out = label(box((L, W, H), (0, 0, 0.15 + H / 2)), 0)
    cl = 0.8 + 0.5 * p
    out += label(box((cl, 0.8 * W, 0.3), (-0.1, 0, 0.15 + H + 0.15)), 1)
    for sx in (1, -1):
        for sy in (1, -1):
            out += move(cylinder(0.17, 0.12), R=rot_axis(0, 90), t=(sx * 0.6, sy * W / 2, 0.17), label=2)
    if not parts or rng.random() < 0.8:
        for sy in (1, -1):
            out += move(sphere_zone(0.07), t=(L / 2, sy * 0.3, 0.35), label=3)
    return out


def fam_person(rng, p):
    out = move(cylinder(0.22, 0.7), t=(0, 0, 1.0)) + move(sphere_zone(0.15), t=(0, 0, 1.55))
    for sx in (1, -1):
        out += move(cylinder(0.08, 0.7), t=(sx * 0.12, 0, 0.35))
        ang = 20 + 70 * p
        out += move(cylinder(0.06, 0.6), R=rot_axis(1, sx * ang), t=(sx * (0.3 + 0.2 * p), 0, 1.1))
    return out


def fam_monitor(rng, p):
    w = 1.0 + 0.6 * p
    return box((w, 0.06, 0.7), (0, 0, 0.75)) + box((0.08, 0.08, 0.4), (0, 0.05, 0.2)) + box((0.5, 0.3, 0.04), (0, 0.05, 0.02))


def fam_guitar(rng, p, parts=False):
    """Head (0), neck (1), body (2)."""
    nl = 0.8 + 0.6 * p
    out = label(move(cylinder(0.45, 0.12), t=(0, 0, 0)) + move(cylinder(0.35, 0.12), t=(0.55, 0, 0)), 2)
    out += label(box((nl, 0.1, 0.06), (0.8 + nl / 2, 0, 0.03)), 1)
    out += label(box((0.25, 0.16, 0.05), (0.8 + nl + 0.125, 0, 0.03)), 0)
    return move(out, R=rot_axis(0, 90))


def fam_bed(rng, p):
    L, W = 2.0, 1.4
    hh = 0.3 + 0.7 * p
    return (box((L, W, 0.4), (0, 0, 0.2)) + box((0.08, W, 0.4 + hh), (-L / 2, 0, (0.4 + hh) / 2))
            + move(ellipsoid(0.15, 0.35, 0.07), t=(-L / 2 + 0.3, 0.3, 0.45))
            + move(ellipsoid(0.15, 0.35, 0.07), t=(-L / 2 + 0.3, -0.3, 0.45)))


def fam_sofa(rng, p):
    L, D = 2.0, 0.8
    ha = 0.2 + 0.4 * p
    return (box((L, D, 0.4), (0, 0, 0.2)) + box((L, 0.2, 0.5), (0, -D / 2 + 0.1, 0.65))
            + box((0.2, D, ha), (L / 2 - 0.1, 0, 0.4 + ha / 2)) + box((0.2, D, ha), (-L / 2 + 0.1, 0, 0.4 + ha / 2)))


def fam_toilet(rng, p):
    return (move(ellipsoid(0.35, 0.25, 0.12 + 0.1 * p), t=(0.1, 0, 0.45)) + cylinder(0.15, 0.35, centered=False)
            + box((0.2, 0.5, 0.5), (-0.35, 0, 0.7)))


def fam_door(rng, p):
    w = 0.6 + 0.5 * p
    return box((w, 0.06, 2.0), (0, 0, 1.0)) + move(sphere_zone(0.05), t=(w / 2 - 0.1, 0.08, 1.0))


def fam_keyboard(rng, p):
    out = box((2.0, 0.6 + 0.3 * p, 0.05), (0, 0, 0.025))
    for i in range(8):
        for j in range(3):
            out += box((0.15, 0.12, 0.04), (-0.85 + i * 0.24, -0.18 + j * 0.18, 0.07))
    return out


def fam_laptop(rng, p, parts=False):
    """Screen (0), keyboard base (1)."""
    ang = 70 + 60 * p
    base = label(box((1.2, 0.8, 0.04), (0, 0, 0.02)), 1)
    scr = label(box((1.2, 0.8, 0.03), (0, 0.4, 0.015)), 0)
    scr = move(scr, R=rot_axis(0, 180 - ang))
    scr = move(scr, t=(0, -0.4, 0.04))
    return base + scr


def fam_curtain(rng, p):
    k, w, h = 8, 0.25, 2.0
    depth = 0.05 + 0.2 * p
    out = []
    for i in range(k):
        x0 = -1 + i * w
        y0, y1 = (0, depth) if i % 2 == 0 else (depth, 0)
        out += rect((x0 + w / 2, (y0 + y1) / 2, h / 2), (w / 2, (y1 - y0) / 2, 0), (0, 0, h / 2))
    return out + flip(out)


def fam_flower_pot(rng, p):
    return (frustum(0.3, 0.45, 0.6) + annulus(0, 0.3, 0, False) + move(cylinder(0.03, 0.4, caps=False), t=(0, 0, 0.8))
            + move(ellipsoid(0.5, 0.5, 0.25 + 0.35 * p), t=(0, 0, 1.2)))


def fam_bench(rng, p):
    L = 1.5 + 1.0 * p
    out = box((L, 0.5, 0.06), (0, 0, 0.5))
    return out + _legs([(sx * (L / 2 - 0.1), sy * 0.2) for sx in (1, -1) for sy in (1, -1)], 0.06, 0.47, 0.47)


def fam_radio(rng, p):
    w = 1.0 + 0.8 * p
    return (box((w, 0.4, 0.6), (0, 0, 0.3)) + move(cylinder(0.1, 0.06), R=rot_axis(0, 90), t=(w / 4, -0.23, 0.3))
            + move(cylinder(0.02, 0.8, caps=False), R=rot_axis(1, 30), t=(-w / 3, 0, 0.9)))


def fam_range_hood(rng, p):
    return frustum(0.9, 0.25, 0.4 + 0.4 * p) + move(box((0.4, 0.4, 0.8)), t=(0, 0, 0.8 + 0.4 * p + 0.4 - 0.4)) + annulus(0, 0.9, 0, False)


def fam_sink(rng, p):
    w, d, h = 1.0, 0.7, 0.3 + 0.4 * p
    t = 0.06
    out = box((w, t, h), (0, d / 2, h / 2)) + box((w, t, h), (0, -d / 2, h / 2))
    out += box((t, d, h), (w / 2, 0, h / 2)) + box((t, d, h), (-w / 2, 0, h / 2)) + box((w, d, t), (0, 0, t / 2))
    return out + move(cylinder(0.03, 0.3, caps=False), t=(0, d / 2, h + 0.15))


def fam_stool(rng, p):
    hl = 0.4 + 0.6 * p
    out = cylinder(0.4, 0.06, centered=False)
    out = move(out, t=(0, 0, hl))
    for k in range(3):
        a = 2 * math.pi * k / 3
        out += move(cylinder(0.03, hl, caps=False, centered=False), t=(0.3 * math.cos(a), 0.3 * math.sin(a), 0))
    return out


def fam_frame(rng, p):
    """Wire-frame box: its 12 edges as thin bars (glass_box)."""
    s = np.array([1.0, 1.0, 0.5 + 1.0 * p])
    t = 0.05
    out = []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        for a in (1, -1):
            for b in (1, -1):
                c = np.zeros(3)
                c[j], c[k] = a * s[j] / 2, b * s[k] / 2
                size = np.full(3, t)
                size[i] = s[i]
                out += box(size, c)
    return out


def fam_arch(rng, p):
    """Inverted U (mantel / fireplace frame)."""
    w, h = 1.8, 0.6 + 0.8 * p
    return box((0.3, 0.3, h), (-w / 2, 0, h / 2)) + box((0.3, 0.3, h), (w / 2, 0, h / 2)) + box((w + 0.5, 0.4, 0.15), (0, 0, h + 0.075))


def fam_bag(rng, p, parts=False):
    """Body (0), handle (1)."""
    w, d, h = 1.0, 0.35, 0.5 + 0.6 * p
    out = label(box((w, d, h), (0, 0, h / 2)), 0)
    out += move(torus(0.3, 0.03, (0, math.pi)), R=rot_axis(0, 90), t=(0, 0, h), label=1)
    return out


def fam_piano(rng, p):
    return (box((1.6, 0.6, 1.0 + 0.4 * p), (0, 0, 0.5 + 0.2 * p)) + box((1.6, 0.35, 0.06), (0, -0.45, 0.7))
            + _legs([(0.7, -0.55), (-0.7, -0.55)], 0.06, 0.7, 0.7))


FAMILIES: Dict[str, Callable[[np.random.Generator, float], List[Patch]]] = {
    "sphere": fam_sphere, "ellipsoid": fam_ellipsoid, "box": fam_box, "cylinder": fam_cylinder,
    "cone": fam_cone, "torus": fam_torus, "capsule": fam_capsule, "pyramid": fam_pyramid,
    "plate": fam_plate, "ring": fam_ring, "helix": fam_helix, "table": fam_table, "lshape": fam_lshape,
    "chair": fam_chair, "bottle": fam_bottle, "cup": fam_cup, "mug": fam_mug, "bowl": fam_bowl,
    "stairs": fam_stairs, "shelf": fam_shelf, "tent": fam_tent, "airplane": fam_airplane, "lamp": fam_lamp,
    "vase": fam_vase, "car": fam_car, "person": fam_person, "monitor": fam_monitor, "guitar": fam_guitar,
    "bed": fam_bed, "sofa": fam_sofa, "toilet": fam_toilet, "door": fam_door, "keyboard": fam_keyboard,
    "laptop": fam_laptop, "curtain": fam_curtain, "flower_pot": fam_flower_pot, "bench": fam_bench,
    "radio": fam_radio, "range_hood": fam_range_hood, "sink": fam_sink, "stool": fam_stool,
    "frame": fam_frame, "arch": fam_arch, "bag": fam_bag, "piano": fam_piano,
}


def sample_family(name: str, n: int, rng: np.random.Generator, p: Optional[float] = None,
                  p_range: Tuple[float, float] = (0.0, 1.0)) -> Tuple[Array, Array]:
    """Sample one random shape of family ``name``.

    Args:
        n: number of surface points.
        p: proportion knob in [0, 1]; drawn uniformly from ``p_range`` when None.
    Returns:
        points (n, 3) float32 (local frame, z up), unit normals (n, 3) float32.
    """
    if name not in FAMILIES:
        raise KeyError(f"unknown shape family '{name}'; known: {sorted(FAMILIES)}")
    if p is None:
        p = float(rng.uniform(*p_range))
    pts, nrm, _ = sample_patches(FAMILIES[name](rng, p), n, rng)
    return pts, nrm


# ----------------------------------------------------------------------------- ShapeNetPart objects

def _skateboard(rng, p, parts=True):
    """Deck (0), wheels (1), trucks (2)."""
    L = 1.6 + 0.4 * p
    out = label(box((L, 0.45, 0.04), (0, 0, 0.2)) + move(box((0.2, 0.45, 0.04)), R=rot_axis(1, -20), t=(L / 2 + 0.08, 0, 0.23))
                + move(box((0.2, 0.45, 0.04)), R=rot_axis(1, 20), t=(-L / 2 - 0.08, 0, 0.23)), 0)
    for sx in (1, -1):
        out += label(box((0.1, 0.3, 0.08), (sx * L * 0.35, 0, 0.14)), 2)
        for sy in (1, -1):
            out += move(cylinder(0.06, 0.06), R=rot_axis(0, 90), t=(sx * L * 0.35, sy * 0.18, 0.06), label=1)
    return out


def _cap(rng, p, parts=True):
    """Crown (0), brim/peak (1)."""
    out = label(sphere_zone(0.5, 0, 1) + annulus(0, 0.5, 0, False), 0)
    L = 0.3 + 0.3 * p
    brim = [Patch(q.area, q.sampler, q.R, q.t, 1) for q in rect((0.5 + L / 2 - 0.1, 0, 0.0), (L / 2, 0, 0.02), (0, 0.35, 0))]
    return out + brim + flip(brim)


def _earphone(rng, p, parts=True):
    """Ear cups (0), headband (1), cord / mic (2)."""
    R = 0.6
    out = move(torus(R, 0.04, (0, math.pi)), R=rot_axis(0, 90), label=1)
    for sx in (1, -1):
        out += move(cylinder(0.22, 0.12), R=rot_axis(1, 90), t=(sx * R, 0, -0.1), label=0)
    if rng.random() < 0.7:
        out += move(cylinder(0.02, 0.6 + 0.4 * p, caps=False), t=(-R, 0, -0.5 - 0.2 * p), label=2)
    return out


def _knife(rng, p, parts=True):
    """Blade (0), handle (1)."""
    L = 0.8 + 0.6 * p
    out = label(triangle((0, -0.1, 0), (0, 0.1, 0), (L, 0.1, 0), two_sided=True)
                + triangle((0, -0.1, 0), (L, 0.1, 0), (L * 0.9, -0.02, 0), two_sided=True), 0)
    out += label(box((0.5, 0.12, 0.07), (-0.25, 0, 0)), 1)
    return out


def _motorbike(rng, p, parts=True):
    """Gas tank (0), seat (1), wheels (2), handle (3), light (4), frame/body (5)."""
    out = []
    for sx in (1, -1):
        out += move(torus(0.32, 0.08), R=rot_axis(0, 90), t=(sx * 0.75, 0, 0.4), label=2)
    out += label(box((1.1, 0.15, 0.12), (0, 0, 0.55)) + box((0.08, 0.08, 0.5), (0.6, 0, 0.65)), 5)
    out += move(ellipsoid(0.25, 0.15, 0.12), t=(0.25, 0, 0.75), label=0)
    out += label(box((0.45 + 0.2 * p, 0.25, 0.06), (-0.3, 0, 0.7)), 1)
    out += move(cylinder(0.025, 0.6), R=rot_axis(0, 90), t=(0.6, 0, 0.92), label=3)
    out += move(sphere_zone(0.08), t=(0.75, 0, 0.8), label=4)
    return out


def _mug(rng, p, parts=True):
    """Body (0), handle (1) -- the handle is always present."""
    return fam_cup(rng, p, handle=True, parts=True)


def _pistol(rng, p, parts=True):
    """Barrel/slide (0), grip (1), trigger + guard (2)."""
    L = 0.8 + 0.4 * p
    out = label(box((L, 0.12, 0.2), (L / 2 - 0.15, 0, 0.5)), 0)
    out += move(box((0.2, 0.11, 0.5)), R=rot_axis(1, -15), t=(0, 0, 0.22), label=1)
    out += move(torus(0.08, 0.015, (0, math.pi)), R=rot_axis(0, -90), t=(0.2, 0, 0.4), label=2)
    return out


def _rocket(rng, p, parts=True):
    """Body (0), fins (1), nose (2)."""
    L, r = 1.2 + 0.8 * p, 0.15
    out = label(cylinder(r, L, caps=False, centered=False) + annulus(0, r, 0, False), 0)
    out += label(frustum(r, 0.0, 0.35, L), 2)
    for k in range(3):
        a = 2 * math.pi * k / 3
        d = np.array([math.cos(a), math.sin(a), 0])
        out += label(triangle(r * d, r * d + [0, 0, 0.4], (r + 0.25) * d - [0, 0, 0.1], two_sided=True), 1)
    return out


PART_OBJECTS: Dict[str, Tuple[Callable, int]] = {
    # category -> (builder(rng, p, parts=True) -> labelled patches, number of parts)
    "Airplane": (fam_airplane, 4), "Bag": (fam_bag, 2), "Cap": (_cap, 2), "Car": (fam_car, 4),
    "Chair": (fam_chair, 4), "Earphone": (_earphone, 3), "Guitar": (fam_guitar, 3), "Knife": (_knife, 2),
    "Lamp": (fam_lamp, 4), "Laptop": (fam_laptop, 2), "Motorbike": (_motorbike, 6), "Mug": (_mug, 2),
    "Pistol": (_pistol, 3), "Rocket": (_rocket, 3), "Skateboard": (_skateboard, 3), "Table": (fam_table, 3),
}


def sample_part_object(category: str, n: int, rng: np.random.Generator) -> Tuple[Array, Array, Array]:
    """One part-labelled object of a ShapeNetPart category (names as in ``synsetoffset2category.txt``).

    Returns:
        points (n, 3) float32, unit normals (n, 3) float32, local part ids (n,) int64 in
        0..num_parts-1 (add the category's first global id for ShapeNetPart's 0..49).
    """
    if category not in PART_OBJECTS:
        raise KeyError(f"unknown ShapeNetPart category '{category}'; known: {sorted(PART_OBJECTS)}")
    fn, _ = PART_OBJECTS[category]
    return sample_patches(fn(rng, float(rng.random()), parts=True), n, rng)


# ----------------------------------------------------------------------------- surface textures
# Displacements along the normal that depend on the position on the surface only, so that a
# patch's texture tells what the masked patches of the same shape look like: the local geometry
# that masked reconstruction has to learn, and that the shape's outline (the patch centres) does
# not give away. Amplitudes and wavelengths are in units of the unit-sphere-normalised shape and
# are resolved by 1024 points (spacing about 0.1).
def _ripple(axis: int, wavelength: float, amplitude: float):
    return lambda p, rng: amplitude * np.sin(2 * np.pi * p[:, axis] / wavelength)


def _bumps(sign: float, wavelength: float = 0.45, amplitude: float = 0.07):
    def h(p, rng):
        k = 2 * np.pi / wavelength
        return sign * amplitude * np.clip(np.sin(k * p[:, 0]) * np.sin(k * p[:, 1]) * np.sin(k * p[:, 2]) * 2.5, 0, 1)
    return h


def _grooves(wavelength: float = 0.35, amplitude: float = 0.06):
    def h(p, rng):
        t = (p[:, 0] + p[:, 1]) / wavelength
        return amplitude * (np.abs(t - np.floor(t) - 0.5) * 4 - 1)
    return h


def _rough(sigma: float = 0.025):
    return lambda p, rng: rng.normal(0.0, sigma, size=len(p))


def _spikes(count: int = 24, width: float = 0.09, amplitude: float = 0.18):
    def h(p, rng):
        centres = p[rng.choice(len(p), size=min(count, len(p)), replace=False)]
        d2 = ((p[:, None, :] - centres[None]) ** 2).sum(-1).min(axis=1)
        return amplitude * np.exp(-d2 / (2 * width ** 2))
    return h


def _terraces(step: float = 0.18):
    def h(p, rng):
        z = p[:, 2]
        return (np.round(z / step) * step - z) * 0.8
    return h


TEXTURES: Dict[str, Callable[[Array, np.random.Generator], Array]] = {
    "smooth": lambda p, rng: np.zeros(len(p)),
    "ripples_x": _ripple(0, 0.35, 0.05),
    "ripples_z": _ripple(2, 0.35, 0.05),
    "waves": _ripple(1, 0.9, 0.09),
    "bumps": _bumps(1.0),
    "dimples": _bumps(-1.0),
    "grooves": _grooves(),
    "rough": _rough(),
    "spikes": _spikes(),
    "terraces": _terraces(),
}


def apply_texture(points: Array, normals: Array, texture: str, rng: np.random.Generator) -> Array:
    """Points (n, 3) on a unit-sphere-normalised surface, moved along their unit normals (n, 3)
    by the height field of ``texture`` (one of :data:`TEXTURES`)."""
    if texture not in TEXTURES:
        raise KeyError(f"unknown texture '{texture}'; known: {sorted(TEXTURES)}")
    height = TEXTURES[texture](points.astype(np.float64), rng)
    return (points + normals * height[:, None]).astype(np.float32)
