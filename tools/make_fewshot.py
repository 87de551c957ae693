"""Few-shot ModelNet40 splits in the released layout: ``{way}way_{shot}shot/{fold}.pkl``.

Each pickle is a dict ``{'train': [...], 'test': [...]}`` of tuples
``(points float32 (N, 6), label in 0..way-1, original ModelNet40 class index)``.

    python tools/make_fewshot.py --cache_root data/ModelNet/modelnet40_normal_resampled \
        --out data/ModelNetFewshot --seed 0 [--ways 5 10] [--shots 10 20] [--folds 10] [--npoints 8192]

reads (or builds) the ModelNet40 train/test caches ``modelnet40_{train,test}_{npoints}pts_fps.dat``:
by default the 8192-point caches, as the released ``datasets/generate_few_shot_data.py`` (fine-tuning
then reduces each cloud to ``npoints`` with FPS). Each fold holds ``shot`` training and 20 test shapes
per class; the few-shot test set of ``cfgs/fewshot.yaml`` (``--test``) is the full ModelNet40 test
split, as released. The splits are drawn by ``datasets.ModelNetDatasetFewShot.make_fewshot_splits``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from datasets.ModelNetDatasetFewShot import make_fewshot_splits  # noqa: E402
from datasets.modelnet_cache import load_modelnet_cache  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.parser import new_parser  # noqa: E402


def build_parser():
    ap = new_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--cache_root", required=True, help="modelnet40_normal_resampled folder")
    ap.add_argument("--out", required=True, help="output ModelNetFewshot folder")
    ap.add_argument("--seed", type=int, default=0,
                    help="random seed of the splits (default 0: repeatable files); -1: unseeded, as released")
    ap.add_argument("--ways", type=int, nargs="+", default=[5, 10], help="ways to write")
    ap.add_argument("--shots", type=int, nargs="+", default=[10, 20], help="shots to write")
    ap.add_argument("--folds", type=int, default=10, help="folds per way and shot")
    ap.add_argument("--npoints", type=int, default=8192,
                    help="points of the ModelNet40 caches to read (default 8192, as released)")
    ap.add_argument("--n_test_per_class", type=int, default=20, help="test shapes per class in each fold")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    trp, trl = load_modelnet_cache(args.cache_root, "train", args.npoints)
    tep, tel = load_modelnet_cache(args.cache_root, "test", args.npoints)
    paths = make_fewshot_splits(trp, trl, tep, tel, args.out, args.ways, args.shots, args.folds, args.seed,
                                args.n_test_per_class)
    logging.getLogger("make_fewshot").info("few-shot: wrote %d files under %s", len(paths), args.out)


if __name__ == "__main__":
    run_main(main)
