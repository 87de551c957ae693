"""Linear SVM on frozen pre-trained point features (ModelNet40, scikit-learn LinearSVC).

    python tools/svm.py --config cfgs/pretrain.yaml --ckpts experiments/pretrain/NAME/ckpt-last.pth
    python tools/svm.py --config cfgs/demo/pretrain_demo.yaml --ckpts experiments/pretrain_demo/demo/ckpt-last.pth \
        --modelnet_root data/demo/ModelNet/modelnet40_normal_resampled

The protocol is in ``engine/svm.py``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from engine import builder  # noqa: E402
from engine.svm import DEFAULT_C, svm_validate  # noqa: E402
from utils.config import apply_opts, cfg_from_yaml_file, merge_into  # noqa: E402
from utils.misc import resolve_device, set_random_seed  # noqa: E402
from utils.parser import add_common_args  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Linear SVM on frozen pre-trained features (ModelNet40)")
    parser.add_argument("--config", required=True, help="pre-training config (model section; optional svm_validation)")
    parser.add_argument("--ckpts", required=True, help="pre-training checkpoint")
    add_common_args(parser, "device", "num_workers", "seed", "partial_load", "opts")
    parser.add_argument("--svm_batch_size", type=int, default=32)
    parser.add_argument("--C", type=float, default=None, help=f"LinearSVC C (default: svm_validation.C or {DEFAULT_C})")
    parser.add_argument("--modelnet_root", default=None,
                        help="DATA_PATH of the SVM's ModelNet40 train/test sets (e.g. data/demo/ModelNet/modelnet40_normal_resampled)")
    parser.add_argument("--modelnet_npoints", type=int, default=None,
                        help="N_POINTS of the ModelNet40 cache to read (default 8192, as released; 1024 skips the FPS per batch)")
    return parser


def main(argv=None) -> float:
    args = build_parser().parse_args(argv)
    args.progress = True
    set_random_seed(args.seed)
    config = cfg_from_yaml_file(args.config)
    apply_opts(config, args.opts)
    overrides = {}
    if args.C is not None:
        overrides["C"] = args.C
    for split in ("train", "test"):
        others = {}
        if args.modelnet_root is not None:
            others["DATA_PATH"] = args.modelnet_root
        if args.modelnet_npoints is not None:
            others["N_POINTS"] = args.modelnet_npoints
        if others:
            overrides[split] = {"others": others}
    if overrides:
        config.svm_validation = merge_into(config.get("svm_validation") or {}, overrides)
    device = resolve_device(args.device)
    base_model = builder.model_builder(config.model)
    builder.load_model(base_model, args.ckpts, strict=not args.partial_load)
    return svm_validate(base_model.to(device), config, args, device)


if __name__ == "__main__":
    main()
