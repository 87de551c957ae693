"""All folds of one few-shot setting through main.py, then mean ± std of the best accuracies.

    python tools/fewshot_all.py --config cfgs/fewshot.yaml --finetune_model --ckpts P.pth \
        --exp_name NAME --way 5 --shot 10 [--folds 0 1 ... 9] [main.py flags ...]

Fold f runs as ``main.py ... --way W --shot S --fold f --exp_name NAME_WwSs_fold{f}`` (the
released per-fold command); its score is the best validation accuracy of the run (the
``best_metrics`` of its ``ckpt-last.pth``), as the released few-shot numbers are reported. The
std is the population standard deviation over folds (numpy's default).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from utils.logger import print_log  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run every fold of a few-shot setting and report mean ± std",
                                     epilog="Any other argument is passed on to main.py unchanged.")
    parser.add_argument("--config", default="cfgs/fewshot.yaml")
    parser.add_argument("--exp_name", default="fewshot")
    parser.add_argument("--way", type=int, required=True, choices=(5, 10))
    parser.add_argument("--shot", type=int, required=True, choices=(10, 20))
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--experiment_root", default="./experiments")
    return parser


def fold_exp_name(exp_name: str, way: int, shot: int, fold: int) -> str:
    return f"{exp_name}_{way}w{shot}s_fold{fold}"


def summarize(accs: Sequence[float]) -> Tuple[float, float]:
    """(mean, population std) of the fold accuracies."""
    arr = np.asarray(accs, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def main(argv=None) -> Tuple[float, float, List[float]]:
    import main as main_module
    from utils.checkpoint import load_checkpoint_file

    args, passthrough = build_parser().parse_known_args(argv)
    stem = os.path.splitext(os.path.basename(args.config))[0]
    accs: List[float] = []
    for fold in args.folds:
        name = fold_exp_name(args.exp_name, args.way, args.shot, fold)
        main_module.main(["--config", args.config, "--exp_name", name, "--experiment_root", args.experiment_root,
                          "--way", str(args.way), "--shot", str(args.shot), "--fold", str(fold), *passthrough])
        ckpt = load_checkpoint_file(os.path.join(args.experiment_root, stem, name, "ckpt-last.pth"))
        acc = float(ckpt["best_metrics"]["acc"])
        accs.append(acc)
        print_log(f"[FEWSHOT] {args.way}-way {args.shot}-shot fold {fold}: best accuracy = {acc:.4f} %")
    mean, std = summarize(accs)
    per_fold = ", ".join(f"{a:.2f}" for a in accs)
    print_log(f"[FEWSHOT] {args.way}-way {args.shot}-shot over {len(accs)} folds: {mean:.2f} ± {std:.2f} % "
              f"(per fold: {per_fold})")
    return mean, std, accs


if __name__ == "__main__":
    main()
