"""Linear SVM on frozen pre-trained point features (ModelNet40, scikit-learn LinearSVC).

    python tools/svm.py --config cfgs/pretrain.yaml --ckpts experiments/pretrain/NAME/ckpt-last.pth \
        --svm_root data/modelnet40_ply_hdf5_2048
    python tools/svm.py --config cfgs/demo/pretrain_demo.yaml --ckpts experiments/pretrain_demo/demo/ckpt-last.pth \
        --modelnet_root data/demo/ModelNet/modelnet40_normal_resampled

The released protocol (default; ``engine/svm.py``): ``modelnet40_ply_hdf5_2048`` (``--svm_root``,
default ``data/modelnet40_ply_hdf5_2048``), the first 1024 points, LinearSVC C = 1.0, printed as
``[Validation] EPOCH: <checkpoint epoch>  acc = <fraction>``. ``--modelnet_root`` reads the
ModelNet40 ``.dat`` caches instead (FPS to 1024 points; ``--modelnet_classes 10``: the ModelNet10 ones). ``--random_init`` (instead of ``--ckpts``)
gives the baseline of an encoder that was never trained; ``--out F.json`` writes the result.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from datasets import DATASETS  # noqa: E402
from engine import builder  # noqa: E402
from engine.svm import CACHE_DATASET, DEFAULT_C, expand_svm_section, svm_validate  # noqa: E402
from models import MODELS  # noqa: E402
from utils.checkpoint import write_json  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.misc import set_random_seed  # noqa: E402
from utils.overrides import load_config, rebase_entry, resolve_data_root  # noqa: E402
from utils.parser import add_common_args, new_parser  # noqa: E402
from utils.schema import merge_into  # noqa: E402
from utils.settings import build_tool_settings  # noqa: E402


def build_parser():
    parser = new_parser("Linear SVM on frozen pre-trained features (ModelNet40)")
    parser.add_argument("--config", required=True, help="pre-training config (model section; optional svm_validation)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpts", default=None, help="pre-training checkpoint (or a whole-model .safetensors export)")
    weights.add_argument("--random_init", action="store_true",
                         help="no checkpoint: the encoder as initialised (model.init, --seed), the baseline that "
                              "shows what pre-training adds")
    parser.add_argument("--out", default=None,
                        help="also write the result as JSON to this file (acc in %%, C, shape counts, checkpoint) "
                             "(default: none)")
    add_common_args(parser, "device", "num_workers", "seed", "partial_load", "trust_checkpoint", "data_root", "no_progress",
                    "opts")
    parser.add_argument("--svm_batch_size", type=int, default=32, help="shapes per feature-extraction batch")
    parser.add_argument("--C", type=float, default=None,
                        help=f"LinearSVC C (default: svm_validation.C, else {DEFAULT_C}, the released LinearSVC() default)")
    parser.add_argument("--svm_root", default=None,
                        help="the modelnet40_ply_hdf5_2048 folder (ply_data_train*.h5 / ply_data_test*.h5) of the "
                             "released protocol (default: the config's svm_validation, else data/modelnet40_ply_hdf5_2048)")
    parser.add_argument("--modelnet_root", default=None,
                        help="use the ModelNet40 .dat caches of this modelnet40_normal_resampled folder instead of the "
                             "HDF5 files (FPS to 1024 points; e.g. data/demo/ModelNet/modelnet40_normal_resampled) "
                             "(default: none, the HDF5 files)")
    parser.add_argument("--modelnet_classes", type=int, choices=[10, 40], default=None,
                        help="with --modelnet_root: the ModelNet40 or the ModelNet10 caches (NUM_CATEGORY) (default 40)")
    parser.add_argument("--modelnet_npoints", type=int, default=None,
                        help="N_POINTS of the ModelNet40 cache to read (default 8192, as released; 1024 skips the FPS per batch)")
    return parser


def main(argv=None) -> float:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.svm_root is not None and args.modelnet_root is not None:
        parser.error("give either --svm_root (HDF5 files, released) or --modelnet_root (.dat caches), not both")
    if args.modelnet_npoints is not None and args.modelnet_root is None:
        parser.error("--modelnet_npoints needs --modelnet_root")
    if args.modelnet_classes is not None and args.modelnet_root is None:
        parser.error("--modelnet_classes needs --modelnet_root")
    set_random_seed(args.seed)
    config = load_config(args.config, args.opts, args.data_root, MODELS, DATASETS)
    overrides = {}
    if args.C is not None:
        overrides["C"] = args.C
    for split in ("train", "test"):
        entry = {}
        if args.svm_root is not None:
            entry = {"others": {"DATA_PATH": args.svm_root}}
        elif args.modelnet_root is not None:
            others = {"subset": split, "DATA_PATH": args.modelnet_root}
            if args.modelnet_npoints is not None:
                others["N_POINTS"] = args.modelnet_npoints
            if args.modelnet_classes is not None:
                others["NUM_CATEGORY"] = args.modelnet_classes
            entry = {"_base_": CACHE_DATASET, "others": others}
        if entry:
            overrides[split] = entry
    # The section in full (the released protocol's entries where the config has none, the flags'
    # overrides), with the data root on its entries: load_config did this only for a config that had one.
    config.svm_validation = merge_into(config.get("svm_validation") or {}, overrides)
    expand_svm_section(config)
    root, _ = resolve_data_root(args.data_root)
    for split in ("train", "test") if root else ():
        rebase_entry(config.svm_validation[split], root, f"svm_validation.{split}")
    settings = build_tool_settings(args, config, "svm")
    base_model = builder.model_builder(config.model, settings)
    epoch = -1
    if args.ckpts is not None:  # the point model of any pre-training checkpoint, with or without an image branch
        epoch, _ = builder.load_point_model(base_model, args.ckpts, trust=settings.trust_checkpoint,
                                               strict=not args.partial_load)
    acc = svm_validate(base_model.to(settings.device), config, settings, epoch=epoch)
    if args.out is not None:
        C = float((config.get("svm_validation") or {}).get("C", DEFAULT_C))
        write_json(args.out, {"acc": acc, "C": C, "ckpts": args.ckpts, "random_init": args.random_init, "seed": args.seed})
        print(f"[SVM] result written to {args.out}")
    return acc


if __name__ == "__main__":
    run_main(main)
