"""Generate the embedded procedural demo data in the released on-disk formats.

    python tools/make_demo_data.py --root data/demo --seed 0 [--only NAME ...] [--shapes_per_class N] [--force]

The datasets, their layouts under ``--root`` and the ``.complete`` markers are described in
:mod:`demo.generate`. Deterministic given ``--seed``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

import torch  # noqa: E402

from demo.generate import DATASETS, generate  # noqa: E402
from utils.cli import run_main  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Generate the embedded procedural demo datasets in the released formats.")
    ap.add_argument("--root", default="data/demo", help="output folder (default data/demo)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of every generated shape (default 0)")
    ap.add_argument("--only", nargs="+", choices=DATASETS, help="generate only these datasets")
    ap.add_argument("--shapes_per_class", type=int, default=None, help="training shapes per class for every dataset")
    ap.add_argument("--modelnet_rows", type=int, default=1200, help="rows per ModelNet txt file (real data: 10000)")
    ap.add_argument("--cache_points", type=int, nargs="+", default=[1024],
                    help="ModelNet FPS cache sizes, e.g. 1024 8192 (8192 needs --modelnet_rows >= 8192)")
    ap.add_argument("--fewshot_folds", type=int, default=2, help="few-shot folds per (way, shot) (real data: 10)")
    ap.add_argument("--force", action="store_true", help="regenerate datasets that are already complete")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    generate(args.root, args.seed, only=args.only, force=args.force, shapes_per_class=args.shapes_per_class,
             modelnet_rows=args.modelnet_rows, cache_points=args.cache_points, fewshot_folds=args.fewshot_folds)


if __name__ == "__main__":
    run_main(main)
