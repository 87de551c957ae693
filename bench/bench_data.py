"""Data-side throughput, side by side: ModelNet cache building and rendered-view decoding.

    python bench/bench_data.py [--device cuda] [--cache_shapes 16] [--views 96]

1. ModelNet cache building, shapes/s (10,000 -> 8,192 points): the released per-shape numpy FPS
   loop (reimplemented below as in Point-BERT / Point-MAE's ModelNetDataset) against the batched
   torch FPS of ``datasets/modelnet_cache.py``.
2. Rendered views (137 x 137 RGBA PNG -> (3, 224, 224) in [0, 1]), views/s on one process:
   ``datasets.views.load_rgba_on_white`` (PIL decode, composite, bilinear resize) against
   ``torchvision.io.decode_png`` with the same composite and resize. The pre-training image
   branch loads one view per sample (``n_imgs: 1``), so this bounds a data-loader worker.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from bench.common import device_label, sync  # noqa: E402
from datasets.views import load_rgba_on_white  # noqa: E402
from extensions.pointops import furthest_point_sample  # noqa: E402
from utils.misc import resolve_device  # noqa: E402


def released_farthest_point_sample(point: np.ndarray, npoint: int) -> np.ndarray:
    """The released per-shape numpy FPS (random start), as in its behaviour."""
    xyz = point[:, :3]
    centroids = np.zeros((npoint,), dtype=np.int64)
    distance = np.ones((point.shape[0],)) * 1e10
    farthest = np.random.randint(0, point.shape[0])
    for i in range(npoint):
        centroids[i] = farthest
        dist = np.sum((xyz - xyz[farthest, :]) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = np.argmax(distance, -1)
    return point[centroids]


def bench_cache(n_numpy: int, n_torch: int, device: torch.device, batch: int = 32, n_in: int = 10000, n_out: int = 8192):
    clouds = np.random.default_rng(0).normal(size=(max(n_numpy, n_torch), n_in, 6)).astype(np.float32)
    start = time.perf_counter()
    for i in range(n_numpy):
        released_farthest_point_sample(clouds[i], n_out)
    numpy_rate = n_numpy / (time.perf_counter() - start)
    data = torch.from_numpy(clouds[:n_torch])
    threads = torch.get_num_threads()
    if device.type == "cpu":  # as datasets/modelnet_cache.py: the FPS loop is fastest on one thread
        torch.set_num_threads(1)
    sync(device)
    start = time.perf_counter()
    for s in range(0, n_torch, batch):
        chunk = data[s:s + batch].to(device)
        idx = furthest_point_sample(chunk[..., :3].contiguous(), n_out, skip_origin=False)
        torch.gather(chunk, 1, idx.unsqueeze(-1).expand(-1, -1, 6)).cpu()
    sync(device)
    torch.set_num_threads(threads)
    return numpy_rate, n_torch / (time.perf_counter() - start)


def decode_png_torchvision(path: str, size: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_png, read_file

    rgba = decode_png(read_file(path), mode=ImageReadMode.RGB_ALPHA).float() / 255.0
    rgb, alpha = rgba[:3], rgba[3:]
    img = rgb * alpha + (1.0 - alpha)
    return F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False)[0].clamp_(0.0, 1.0)


def bench_views(n_views: int, size: int = 224):
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(8):
            rgba = rng.integers(0, 256, size=(137, 137, 4), dtype=np.uint8)
            paths.append(f"{folder}/{i:02d}.png")
            Image.fromarray(rgba, "RGBA").save(paths[-1])
        rates = {}
        for name, load in (("PIL (datasets.views)", load_rgba_on_white), ("torchvision decode_png", decode_png_torchvision)):
            load(paths[0], size)
            start = time.perf_counter()
            for i in range(n_views):
                load(paths[i % len(paths)], size)
            rates[name] = n_views / (time.perf_counter() - start)
        difference = (load_rgba_on_white(paths[0], size) - decode_png_torchvision(paths[0], size)).abs().max().item()
    return rates, difference


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache_shapes_numpy", type=int, default=2)
    parser.add_argument("--cache_shapes", type=int, default=16, help="shapes for the batched torch FPS")
    parser.add_argument("--views", type=int, default=96)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    print(f"data side on {device_label(device)}")
    numpy_rate, torch_rate = bench_cache(args.cache_shapes_numpy, args.cache_shapes, device)
    print(f"\nModelNet cache (10000 -> 8192 FPS): released numpy loop {numpy_rate:.3f} shapes/s | batched torch FPS "
          f"{torch_rate:.3f} shapes/s | {torch_rate / numpy_rate:.1f}x | 12,311 shapes: "
          f"{12311 / numpy_rate / 3600:.2f} h vs {12311 / torch_rate / 60:.1f} min")
    rates, difference = bench_views(args.views)
    base = next(iter(rates.values()))
    print("\nrendered view decode (137 x 137 RGBA PNG -> 3 x 224 x 224), one process:")
    for name, rate in rates.items():
        print(f"  {name:<26} {rate:8.1f} views/s  {rate / base:5.2f}x")
    print(f"  largest pixel difference between the two: {difference:.2e}")


if __name__ == "__main__":
    main()
