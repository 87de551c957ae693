"""Timings of the geometry ops (FPS, kNN grouping, Chamfer) on the current device.

    python bench/bench_ops.py [--device cuda] [--batch 32] [--repeats 5] [--sizes 1024 2048 8192]

For B=32 and each N, the (N, G) pairs of the released recipes (1024/64, 2048/128, 8192/512) and
K=32: FPS of G centres, kNN of the K nearest points per centre, and Chamfer L2 forward+backward
between (B*G, K, 3) predicted and true patches. Times are medians in milliseconds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from extensions.chamfer_dist import ChamferDistanceL2  # noqa: E402
from extensions.pointops import furthest_point_sample, knn_query  # noqa: E402
from bench.common import timed  # noqa: E402
from utils.misc import resolve_device  # noqa: E402

GROUPS = {1024: 64, 2048: 128, 8192: 512}



def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 8192])
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    chamfer = ChamferDistanceL2()
    print(f"device {device}, B={args.batch}, K={args.k}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'N':>6} {'G':>5} {'FPS ms':>10} {'kNN ms':>10} {'Chamfer fwd+bwd ms':>20}")
    for n in args.sizes:
        g = GROUPS.get(n, max(1, n // 16))
        pts = torch.rand(args.batch, n, 3, device=device)
        centers = pts[:, :g].contiguous()
        pred = torch.rand(args.batch * g, args.k, 3, device=device, requires_grad=True)
        target = torch.rand(args.batch * g, args.k, 3, device=device)

        def chamfer_step():
            chamfer(pred, target).backward()

        t_fps = timed(lambda: furthest_point_sample(pts, g), device, args.repeats)
        t_knn = timed(lambda: knn_query(args.k, pts, centers), device, args.repeats)
        t_cd = timed(chamfer_step, device, args.repeats)
        print(f"{n:>6} {g:>5} {t_fps:>10.2f} {t_knn:>10.2f} {t_cd:>20.2f}")


if __name__ == "__main__":
    main()
