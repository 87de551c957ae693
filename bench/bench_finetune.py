"""Fine-tuning throughput and ModelNet cache building, side by side, on the current device.

    python bench/bench_finetune.py [--device cuda] [--batch 32] [--steps 5] [--cache_shapes 64]

1. Fine-tuning samples/s of the released ModelNet40 (1024 points of an 8192-point cache, 64 x 32
   groups) and ScanObjectNN (2048 points, 128 x 32) recipes: full model (384 wide, depth 12),
   one optimizer step per batch including the released augmentation (FPS, random subset,
   scale-and-translate), forward, backward, grad clip and AdamW.
2. ModelNet cache building shapes/s: the released per-shape numpy FPS loop (reimplemented below
   exactly as in Point-BERT / Point-MAE's ModelNetDataset) against the batched torch FPS, both
   10,000 -> 8,192 points on random clouds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
import time

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from datasets.data_transforms import PointcloudScaleAndTranslate  # noqa: E402
from extensions.pointops import furthest_point_sample  # noqa: E402
from engine import builder  # noqa: E402
from engine.finetune import fps_then_subset  # noqa: E402
from utils.config import cfg_from_yaml_file  # noqa: E402
from utils.misc import resolve_device  # noqa: E402


def released_farthest_point_sample(point: np.ndarray, npoint: int) -> np.ndarray:
    """The released per-shape numpy FPS (random start), verbatim in behaviour."""
    N, D = point.shape
    xyz = point[:, :3]
    centroids = np.zeros((npoint,))
    distance = np.ones((N,)) * 1e10
    farthest = np.random.randint(0, N)
    for i in range(npoint):
        centroids[i] = farthest
        centroid = xyz[farthest, :]
        dist = np.sum((xyz - centroid) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = np.argmax(distance, -1)
    point = point[centroids.astype(np.int32)]
    return point


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_finetune(config_path: str, n_raw: int, batch: int, steps: int, device: torch.device) -> float:
    config = cfg_from_yaml_file(config_path)
    model = builder.model_builder(config.model).to(device).train()
    optimizer, _ = builder.build_opti_sche(model, config)
    augment = PointcloudScaleAndTranslate()
    npoints = int(config.npoints)
    points = torch.randn(batch, n_raw, 3, device=device)
    labels = torch.randint(0, config.model.cls_dim, (batch,), device=device)

    def step():
        pts = augment(fps_then_subset(points, npoints))
        loss, _ = model.get_loss_acc(model(pts), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def bench_cache(n_shapes_numpy: int, n_shapes_torch: int, device: torch.device, n_in: int = 10000,
                n_out: int = 8192, torch_batch: int = 32):
    rng = np.random.default_rng(0)
    clouds = rng.normal(size=(max(n_shapes_numpy, n_shapes_torch), n_in, 6)).astype(np.float32)
    start = time.perf_counter()
    for i in range(n_shapes_numpy):
        released_farthest_point_sample(clouds[i], n_out)
    numpy_rate = n_shapes_numpy / (time.perf_counter() - start)

    data = torch.from_numpy(clouds[:n_shapes_torch])
    sync(device)
    start = time.perf_counter()
    for s in range(0, n_shapes_torch, torch_batch):
        chunk = data[s:s + torch_batch].to(device)
        idx = furthest_point_sample(chunk[..., :3].contiguous(), n_out)
        torch.gather(chunk, 1, idx.unsqueeze(-1).expand(-1, -1, 6)).cpu()
    sync(device)
    torch_rate = n_shapes_torch / (time.perf_counter() - start)
    return numpy_rate, torch_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cache_shapes_numpy", type=int, default=2)
    parser.add_argument("--cache_shapes", type=int, default=64, help="shapes for the batched torch FPS")
    parser.add_argument("--cache_batch", type=int, default=32)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    np.random.seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; batch {args.batch}, {args.steps} timed steps")
    for label, cfg, n_raw in (("ModelNet40 (cfgs/finetune_modelnet.yaml, 8192 -> FPS 1200 -> 1024)", "cfgs/finetune_modelnet.yaml", 8192),
                              ("ScanObjectNN (cfgs/finetune_scan_hardest.yaml, 2048 points)", "cfgs/finetune_scan_hardest.yaml", 2048)):
        rate = bench_finetune(cfg, n_raw, args.batch, args.steps, device)
        print(f"fine-tuning {label}: {rate:.1f} samples/s")
    numpy_rate, torch_rate = bench_cache(args.cache_shapes_numpy, args.cache_shapes, device, torch_batch=args.cache_batch)
    print(f"ModelNet cache (10000 -> 8192 FPS): released numpy loop {numpy_rate:.3f} shapes/s | "
          f"batched torch FPS (batch {args.cache_batch}) {torch_rate:.3f} shapes/s | speed-up {torch_rate / numpy_rate:.1f}x | "
          f"full 12,311 shapes: {12311 / numpy_rate / 3600:.2f} h vs {12311 / torch_rate / 60:.1f} min")


if __name__ == "__main__":
    main()
