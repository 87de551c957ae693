"""Write a folder of procedural labelled objects in the formats of a part-segmentation folder.

    python tools/make_part_folder.py --out data/parts_demo [--per_type 32] [--points 2048] [--seed 0]
        [--types lamp table mug] [--flat] [--split_dirs] [--no_part_names]

Lamps (base, pole, shade), tables (top, leg) and mugs (body, handle) in ``<type>/`` subfolders
(``--flat``: none), files in turn as binary PLY (``label``), ascii PLY (``scalar_Label``),
``x y z label`` text, CSV, ``.npy`` and ``.npz``; ``labels.txt`` names the parts. See
:mod:`demo.part_folder`. Deterministic given ``--seed``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from demo.part_folder import OBJECT_TYPES, make_part_folder  # noqa: E402
from utils.cli import InputError, run_main  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Write a folder of procedural part-labelled objects in mixed formats.")
    ap.add_argument("--out", required=True, help="output folder (must be empty or new)")
    ap.add_argument("--per_type", type=int, default=32, help="objects per type (default 32)")
    ap.add_argument("--points", type=int, default=2048, help="points per object, +-20 %% (default 2048)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--types", nargs="+", choices=sorted(OBJECT_TYPES), default=list(OBJECT_TYPES),
                    help="object types (default: all)")
    ap.add_argument("--flat", action="store_true", help="no category subfolders")
    ap.add_argument("--split_dirs", action="store_true", help="train/ and test/ subfolders (a quarter to test)")
    ap.add_argument("--no_part_names", action="store_true", help="no labels.txt: the parts are named by their ids")
    return ap


def main(argv=None) -> dict:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.per_type < 1 or args.points < 32:
        ap.error("--per_type must be >= 1 and --points >= 32")
    if os.path.isdir(args.out) and os.listdir(args.out):
        raise InputError(f"--out '{args.out}' is not empty; choose a new folder")
    written = make_part_folder(args.out, args.seed, args.per_type, args.points, args.types, categories=not args.flat,
                               split_dirs=args.split_dirs, part_names=not args.no_part_names)
    print(f"{sum(written.values())} files in {args.out}: " + ", ".join(f"{n} {ext}" for ext, n in sorted(written.items())))
    return written


if __name__ == "__main__":
    run_main(main)
