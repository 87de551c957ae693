"""Your own files (``PointCloudFolder``): files loaded per second on one core, the first time
(read, sample, write the cache) and from the cache (later epochs and runs), side by side.

    python bench/bench_folder.py [--files 48] [--n_points 2048]

Two folders are written to a temporary directory: meshes of about 10k faces (``.off``, the
format of ModelNet40's original files; a capsule of 9,800 triangles, scaled differently per file)
8192-point binary ``.ply`` clouds and the same clouds as ``.xyz`` text. For each: the first scan (``PointCloudFolder`` built on an
empty cache: every file read, meshes sampled on the surface to ``N_POINTS``, clouds reduced to
``N_POINTS``, the cache written), an epoch without the cache (``cache: false``: each item reads
its file again) and an epoch from the cache (what every epoch after the scan does); the speed-up
is cached / uncached. Also the two PLY readers on the same files: ``datasets.io.read_ply`` and
``trimesh.load``. Torch and NumPy run on one thread.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from bench.common import device_label  # noqa: E402


def write_meshes(folder: Path, n: int) -> int:
    import trimesh

    folder.mkdir(parents=True, exist_ok=True)
    base = trimesh.creation.capsule(height=1.0, radius=0.5, count=[70, 70])
    rng = np.random.default_rng(0)
    for i in range(n):
        mesh = base.copy()
        mesh.apply_scale(rng.uniform(0.5, 1.5, size=3))
        mesh.export(str(folder / f"mesh_{i:04d}.off"))
    return len(base.faces)


def write_clouds(folder: Path, n: int, points: int = 8192, text: bool = False) -> None:
    from datasets.io import write_ply

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        xyz = rng.normal(size=(points, 3)).astype(np.float32)
        if text:
            np.savetxt(folder / f"cloud_{i:04d}.xyz", xyz, fmt="%.6f")
        else:
            write_ply(str(folder / f"cloud_{i:04d}.ply"), xyz)


def rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def bench_folder(root: Path, n_points: int) -> dict:
    import datasets.PointCloudFolder as pcf
    from datasets import build_dataset_from_cfg
    from easydict import EasyDict

    base = EasyDict(NAME="PointCloudFolder", DATA_PATH=str(root), N_POINTS=n_points)
    pcf._SCANS.clear()
    start = time.perf_counter()
    ds = build_dataset_from_cfg(base, dict(subset="all", labels=False, npoints=min(1024, n_points)))
    first = rate(len(ds), time.perf_counter() - start)
    pcf._SCANS.clear()
    uncached = build_dataset_from_cfg(base, dict(subset="all", labels=False, npoints=min(1024, n_points), cache=False))
    start = time.perf_counter()
    for i in range(len(uncached)):
        uncached[i]
    no_cache = rate(len(ds), time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    cached = rate(len(ds), time.perf_counter() - start)
    return {"first": first, "no_cache": no_cache, "cached": cached, "files": len(ds)}


def bench_ply_readers(folder: Path) -> dict:
    import trimesh

    from datasets.io import read_ply

    files = sorted(str(p) for p in folder.glob("*.ply"))
    start = time.perf_counter()
    for f in files:
        read_ply(f)
    ours = rate(len(files), time.perf_counter() - start)
    start = time.perf_counter()
    for f in files:
        np.asarray(trimesh.load(f, process=False).vertices)
    theirs = rate(len(files), time.perf_counter() - start)
    return {"read_ply": ours, "trimesh": theirs}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=48, help="files per folder")
    parser.add_argument("--n_points", type=int, default=2048, help="N_POINTS (the folder config's default: 2048)")
    parser.add_argument("--device", default=None, help="ignored (data loading runs on the CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"# {device_label(torch.device('cpu'))}; {args.files} files per folder, N_POINTS {args.n_points}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        faces = write_meshes(Path(tmp) / "meshes", args.files)
        write_clouds(Path(tmp) / "clouds", args.files)
        write_clouds(Path(tmp) / "text", args.files, text=True)
        out["mesh"] = bench_folder(Path(tmp) / "meshes", args.n_points)
        out["ply"] = bench_folder(Path(tmp) / "clouds", args.n_points)
        out["xyz"] = bench_folder(Path(tmp) / "text", args.n_points)
        out["readers"] = bench_ply_readers(Path(tmp) / "clouds")
    print("| files | first read (read + sample + cache), files/s | epoch without cache, files/s | "
          "epoch from the cache, files/s | cache speed-up |")
    print("|---|---|---|---|---|")
    for key, label in (("mesh", f".off meshes, {faces} faces -> {args.n_points} surface points"),
                       ("ply", f"binary .ply, 8192 points -> {args.n_points}"),
                       ("xyz", f"text .xyz, 8192 points -> {args.n_points}")):
        r = out[key]
        print(f"| {label} | {r['first']:.1f} | {r['no_cache']:.1f} | {r['cached']:.1f} | "
              f"{r['cached'] / r['no_cache']:.1f}x |")
    r = out["readers"]
    print(f"\nPLY readers, 8192-point binary files: datasets.io.read_ply {r['read_ply']:.0f} files/s, "
          f"trimesh.load {r['trimesh']:.0f} files/s ({r['read_ply'] / r['trimesh']:.2f}x)")
    return out


if __name__ == "__main__":
    main()
