"""Farthest point sampling backends side by side on the current device.

    python bench/bench_fps.py [--device cuda] [--batch 32] [--repeats 5] [--cases 8192:1200 2048:2048]

For each N:npoint case, B clouds of uniform random points: milliseconds per call (median) of every
backend that can run here (torch; triton on CUDA; pointnet2_ops when importable on CUDA), its
speed-up over torch (torch ms / its ms), and whether its indices equal the torch backend's. Without CUDA the batch
defaults to 8 and the repeats to 3, so a CPU run takes about a minute at most.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from extensions.pointops import furthest_point_sample, resolve_fps_backend  # noqa: E402
from bench.common import timed  # noqa: E402
from utils.misc import resolve_device  # noqa: E402



def available_backends(device: torch.device) -> List[str]:
    names = ["torch"]
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is not None:
            names.append("triton")
        if importlib.util.find_spec("pointnet2_ops") is not None:
            names.append("pointnet2_ops")
    return names


def parse_case(text: str) -> Tuple[int, int]:
    n, m = (int(v) for v in text.split(":"))
    return n, m


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CUDA, 8 otherwise")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 on CUDA, 3 otherwise")
    parser.add_argument("--cases", type=parse_case, nargs="+", default=[(8192, 1200), (2048, 2048)],
                        metavar="N:NPOINT")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 8)
    repeats = args.repeats or (5 if device.type == "cuda" else 3)
    backends = available_backends(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), B={batch}, repeats {repeats}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, auto -> {resolve_fps_backend(device)}")
    print(f"{'N':>6} {'npoint':>7} {'backend':>14} {'ms':>10} {'speed-up':>8} {'= torch':>8}")
    gen = torch.Generator().manual_seed(args.seed)
    for n, npoint in args.cases:
        pts = torch.rand(batch, n, 3, generator=gen).to(device)
        reference = furthest_point_sample(pts, npoint, backend="torch")
        t_torch = None
        for backend in backends:
            ms = timed(lambda: furthest_point_sample(pts, npoint, backend=backend), device, repeats)
            t_torch = ms if backend == "torch" else t_torch
            same = torch.equal(furthest_point_sample(pts, npoint, backend=backend), reference)
            print(f"{n:>6} {npoint:>7} {backend:>14} {ms:>10.2f} {t_torch / ms:>8.2f} {'yes' if same else 'NO':>8}")


if __name__ == "__main__":
    main()
