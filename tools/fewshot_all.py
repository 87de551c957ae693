"""All folds of one few-shot setting through main.py, then mean ± std of the best accuracies.

    python tools/fewshot_all.py --config cfgs/fewshot.yaml --finetune_model --ckpts P.pth \
        --exp_name NAME --way 5 --shot 10 [--folds 0 1 ... 9] [main.py flags ...]

Folds: those given with ``--folds``, else every ``<fold>.pkl`` found in
``DATA_PATH/{way}way_{shot}shot/`` of the config's training set (``DATA_PATH`` of
``cfgs/dataset_configs/ModelNet40FewShot.yaml`` or the config's ``others``; the released data has
folds 0-9, the embedded demo data 0-1). Fold f runs as ``main.py ... --way W --shot S --fold f
--exp_name NAME_WwSs_fold{f}`` (the released per-fold command); its score is the best validation
accuracy of the run (the ``best_metrics`` of its ``ckpt-last.pth``), as the released few-shot
numbers are reported. The std is the population standard deviation over folds (numpy's default).

A fold that fails (unreadable fold file, error during training, ...) is logged with its error and
the other folds still run; the summary (mean ± std over the folds that finished, and the failures)
is printed and written to ``<experiment_root>/<config stem>/<exp_name>_<W>w<S>s_summary.json``,
and the command then exits with status 1 if any fold failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from utils.cli import run_main  # noqa: E402
from utils.logger import print_log  # noqa: E402
from utils.parser import add_common_args, new_parser  # noqa: E402
from utils.rundir import run_name_type  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("Run every fold of a few-shot setting through main.py and report mean ± std",
                        epilog="Any other argument (e.g. --finetune_model --ckpts P.pth, --data_root DIR, --opts ...) "
                               "is passed on to main.py unchanged; see python main.py --help.")
    parser.add_argument("--config", default="cfgs/fewshot.yaml", help="few-shot fine-tuning config")
    parser.add_argument("--exp_name", default="fewshot", type=run_name_type("--exp_name"),
                        help="experiment name; fold f runs as <exp_name>_<way>w<shot>s_fold<f>")
    parser.add_argument("--way", type=int, required=True, choices=(5, 10), help="classes per episode")
    parser.add_argument("--shot", type=int, required=True, choices=(10, 20), help="training shapes per class")
    parser.add_argument("--folds", type=int, nargs="+", default=None,
                        help="folds to run (default: every <fold>.pkl in DATA_PATH/{way}way_{shot}shot/)")
    parser.add_argument("--experiment_root", default="./experiments", help="where experiments go")
    add_common_args(parser, "trust_checkpoint")  # passed on to main.py (for --ckpts)
    return parser


def fold_exp_name(exp_name: str, way: int, shot: int, fold: int) -> str:
    return f"{exp_name}_{way}w{shot}s_fold{fold}"


def summary_path(experiment_root: str, config: str, exp_name: str, way: int, shot: int) -> str:
    stem = os.path.splitext(os.path.basename(config))[0]
    return os.path.join(experiment_root, stem, f"{exp_name}_{way}w{shot}s_summary.json")


def summarize(accs: Sequence[float]) -> Tuple[float, float]:
    """(mean, population std) of the fold accuracies."""
    arr = np.asarray(accs, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def _data_flags_of(passthrough: Sequence[str]) -> Tuple[List[str], Optional[str]]:
    """The ``--opts`` entries and the ``--data_root`` among main.py's flags (they may move DATA_PATH)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--opts", nargs="*", default=[])
    parser.add_argument("--data_root", default=None)
    known = parser.parse_known_args(list(passthrough))[0]
    return known.opts, known.data_root


def fold_folder(config_path: str, way: int, shot: int, opts: Sequence[str] = (), data_root: Optional[str] = None) -> str:
    """``DATA_PATH/{way}way_{shot}shot`` of the config's training set (after ``--opts`` and the data
    root: ``data_root``, else ``$DATA_ROOT``)."""
    from datasets import DATASETS
    from models import MODELS
    from utils.config import ConfigError, origin_of
    from utils.overrides import load_config
    from utils.schema import merge_into

    config = load_config(config_path, opts, data_root, MODELS, DATASETS)
    entry = (config.get("dataset") or {}).get("train")
    if not entry or "_base_" not in entry:
        raise ConfigError("dataset.train with a '_base_' is needed to find the few-shot folds; or give --folds",
                          config_path)
    merged = merge_into(entry._base_, entry.get("others") or {})
    if "DATA_PATH" not in merged:
        raise ConfigError("dataset.train has no DATA_PATH (expected the few-shot root, e.g. data/ModelNetFewshot); "
                          "or give --folds", origin_of(entry._base_) or config_path)
    return os.path.join(str(merged.DATA_PATH), f"{way}way_{shot}shot")


def folds_on_disk(folder: str) -> List[int]:
    """The fold numbers of the ``<fold>.pkl`` files in ``folder``, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"few-shot folder '{folder}' does not exist (expected <DATA_PATH>/<way>way_<shot>shot/"
                                f"<fold>.pkl; see docs/data.md), or give --folds")
    folds = sorted(int(m.group(1)) for m in (re.fullmatch(r"(\d+)\.pkl", f) for f in os.listdir(folder)) if m)
    if not folds:
        raise FileNotFoundError(f"few-shot folder '{folder}' holds no <fold>.pkl files, or give --folds")
    return folds


def _write_summary(path: str, summary: dict) -> None:
    from utils.checkpoint import atomic_write

    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def run_folds(argv=None) -> dict:
    """Run the folds; return (and write) the summary dict. Never raises for a failing fold."""
    import main as main_module
    from utils.checkpoint import load_checkpoint_file

    args, passthrough = build_parser().parse_known_args(argv)
    stem = os.path.splitext(os.path.basename(args.config))[0]
    if args.folds is not None:
        folds, origin = list(args.folds), "--folds"
    else:
        folder = fold_folder(args.config, args.way, args.shot, *_data_flags_of(passthrough))
        folds, origin = folds_on_disk(folder), folder
    print_log(f"[FEWSHOT] {args.way}-way {args.shot}-shot: folds {folds} (from {origin})")
    accs: Dict[int, float] = {}
    failed: Dict[int, str] = {}
    for fold in folds:
        name = fold_exp_name(args.exp_name, args.way, args.shot, fold)
        try:
            main_module.main(["--config", args.config, "--exp_name", name, "--experiment_root", args.experiment_root,
                              "--way", str(args.way), "--shot", str(args.shot), "--fold", str(fold),
                              *(["--trust_checkpoint"] if args.trust_checkpoint else []), *passthrough])
            ckpt = load_checkpoint_file(os.path.join(args.experiment_root, stem, name, "ckpt-last.pth"))
            acc = float(ckpt["best_metrics"]["acc"])
        except (Exception, SystemExit) as e:  # one failing fold must not stop the others
            failed[fold] = f"{type(e).__name__}: {e}"
            print_log(f"[FEWSHOT] {args.way}-way {args.shot}-shot fold {fold} FAILED: {failed[fold]}\n"
                      f"{traceback.format_exc()}")
            continue
        accs[fold] = acc
        print_log(f"[FEWSHOT] {args.way}-way {args.shot}-shot fold {fold}: best accuracy = {acc:.4f} %")
    mean, std = summarize(list(accs.values())) if accs else (None, None)
    summary = {"config": args.config, "exp_name": args.exp_name, "way": args.way, "shot": args.shot, "folds": folds,
               "accuracy": {str(f): a for f, a in accs.items()}, "mean": mean, "std": std,
               "completed": len(accs), "failed": {str(f): msg for f, msg in failed.items()}}
    path = summary_path(args.experiment_root, args.config, args.exp_name, args.way, args.shot)
    _write_summary(path, summary)
    per_fold = ", ".join(f"{f}: {a:.2f}" for f, a in accs.items())
    result = (f"{mean:.2f} ± {std:.2f} % over {len(accs)} folds (per fold: {per_fold})" if accs
              else "no fold finished")
    failures = "".join(f"\n  fold {f} failed: {msg}" for f, msg in failed.items())
    print_log(f"[FEWSHOT] {args.way}-way {args.shot}-shot: {result}{failures}\n[FEWSHOT] summary: {path}")
    summary["path"] = path
    return summary


def main(argv=None) -> Tuple[Optional[float], Optional[float], List[float]]:
    """Run the folds; returns (mean, std, accuracies of the finished folds). Exits with status 1
    (``SystemExit``) after the summary when a fold failed."""
    summary = run_folds(argv)
    if summary["failed"]:
        raise SystemExit(f"fewshot_all.py: {len(summary['failed'])} of {len(summary['folds'])} folds failed "
                         f"({', '.join(summary['failed'])}); summary in {summary['path']}")
    return summary["mean"], summary["std"], list(summary["accuracy"].values())


if __name__ == "__main__":
    run_main(main)
