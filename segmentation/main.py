"""ShapeNetPart part segmentation: fine-tune a pre-trained Inter-MAE / Point-MAE encoder (released command).

    python segmentation/main.py --ckpts P.pth --log_dir NAME [--data_root DIR | --root DIR/shapenetcore_partanno_segmentation_benchmark_v0_normal]
    python segmentation/main.py --test --log_dir NAME    # evaluate log/part_seg/NAME/checkpoints/best_model.pth
    python segmentation/main.py --resume --log_dir NAME  # continue NAME from checkpoints/ckpt-last.pth
    torchrun --nproc_per_node N segmentation/main.py --launcher pytorch ...

Outputs: ``segmentation/log/part_seg/<log_dir>/checkpoints/best_model.pth`` (best instance mIoU),
``checkpoints/ckpt-last.pth``, ``config.yaml`` (the flags as a config) and ``logs/`` (``pt.txt``
log and TensorBoard events). The job itself is ``engine/partseg.py``.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from engine.partseg import run  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.overrides import resolve_data_root  # noqa: E402
from utils.parser import add_common_args, new_parser  # noqa: E402
from utils.rundir import run_name_type  # noqa: E402
from utils.settings_table import SETTING  # noqa: E402

DEFAULT_LOG_ROOT = Path(__file__).resolve().parent / "log"


SEG_FOLDER = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1] / "data"  # the checkout's data/ (the released ../data/)


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("Part segmentation on ShapeNetPart: fine-tune a pre-trained encoder, or --test a saved model")
    p.add_argument("--model", type=str, default="pt", choices=["pt"], help="model name (released: pt)")
    p.add_argument("--batch_size", type=int, default=16, help="total batch size (split over torchrun processes)")
    p.add_argument("--epoch", type=int, default=300, help="training epochs")
    p.add_argument("--warmup_epoch", type=int, default=10, help="linear warm-up epochs")
    p.add_argument("--learning_rate", type=float, default=0.0002, help="peak learning rate")
    p.add_argument("--decay_rate", "--weight_decay", dest="weight_decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip (0: off)")
    p.add_argument("--npoint", type=int, default=2048, help="points per shape")
    p.add_argument("--normal", action="store_true", help="use normals as extra input channels")
    p.add_argument("--root", type=str, default=None,
                   help=f"ShapeNetPart folder (default: <data root>/{SEG_FOLDER}, the data root being --data_root, "
                        f"else $DATA_ROOT, else the checkout's data/)")
    add_common_args(p, "data_root")
    p.add_argument("--ckpts", type=str, default=None,
                   help="pre-training checkpoint to fine-tune (training) / segmentation checkpoint (--test) "
                        "(default: none: train from scratch / test log/part_seg/<log_dir>/checkpoints/best_model.pth)")
    p.add_argument("--log_dir", type=run_name_type("--log_dir"), default=None,
                   help="run name under log/part_seg/ (a folder name, not a path) (default: timestamp)")
    p.add_argument("--log_root", type=str, default=str(DEFAULT_LOG_ROOT), help="folder holding part_seg/")
    p.add_argument("--test", action="store_true",
                   help="evaluate a saved segmentation model, write <run>/test_results.json and exit")
    p.add_argument("--vis", type=int, default=0,
                   help="with --test: also draw this many test shapes (truth | prediction, one per category first) "
                        "to <run>/predictions.png")
    p.add_argument("--overwrite", action="store_true",
                   help="train in a --log_dir whose checkpoints/ already holds a model (it is replaced)")
    p.add_argument("--resume", nargs="?", const=True, default=False, choices=["auto"],
                   help="continue the run --log_dir from its checkpoints/ckpt-last.pth with its saved config.yaml "
                        "(the model and training flags are the saved ones; --root may move the data). --resume "
                        "auto: continue when the run has a ckpt-last.pth, else start it (default: a new run)")
    p.add_argument("--init", choices=["released", "trunc_normal"], default="released",
                   help="initialisation: released (PyTorch's default, as the released get_model) or trunc_normal")
    p.add_argument("--lr_schedule", choices=SETTING["lr_schedule"].choices, default=SETTING["lr_schedule"].default,
                   help="exact: epoch e trains at cosine(e); released: the released one-epoch lag")
    p.add_argument("--gpu", type=str, default=None, help="GPU index (same as --device cuda:N) (default: none)")
    add_common_args(p, "device", "amp", "fps_backend", "embed_compute", "bn_recalibration", "seed", "deterministic", "num_workers", "launcher", "local_rank",
                    "no_progress", "trust_checkpoint")
    g = p.add_argument_group("model (defaults: released sizes; must match the pre-training checkpoint)")
    g.add_argument("--patch_embed", choices=["auto", "inter_mae", "point_mae"], default="auto",
                   help="patch embedding; auto = the checkpoint's, or without --ckpts point_mae (the released "
                        "segmentation model's mini-PointNet)")
    g.add_argument("--trans_dim", type=int, default=384, help="encoder width")
    g.add_argument("--depth", type=int, default=12, help="transformer blocks")
    g.add_argument("--num_heads", type=int, default=6, help="attention heads")
    g.add_argument("--drop_path_rate", type=float, default=0.1, help="stochastic depth rate of the last block")
    g.add_argument("--num_group", type=int, default=128, help="patches per shape (G)")
    g.add_argument("--group_size", type=int, default=32, help="points per patch (K)")
    g.add_argument("--return_layers", type=int, nargs=3, default=None,
                   help="blocks feeding the head (default: depth/3-1, 2*depth/3-1, depth-1 = 3 7 11)")
    return p


def get_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.device is not None and args.gpu is not None:
        p.error("give --device or --gpu (the same as --device cuda:N), not both")
    if args.root is not None and args.data_root is not None:
        p.error("give --root (the ShapeNetPart folder) or --data_root (the folder holding it), not both")
    if args.test and args.overwrite:
        p.error("--overwrite is for training; --test only reads the run's checkpoint")
    if args.resume and (args.test or args.overwrite or (args.ckpts and args.resume is True)):
        p.error("--resume continues the run's own ckpt-last.pth: give it without --test, --overwrite or --ckpts "
                "(--resume auto takes --ckpts for a run that has not started yet)")
    if args.resume and args.log_dir is None:
        p.error("--resume needs --log_dir (the run to continue)")
    if args.epoch < 1 or args.batch_size < 1 or args.npoint < 1:
        p.error(f"--epoch ({args.epoch}), --batch_size ({args.batch_size}) and --npoint ({args.npoint}) must be >= 1")
    if args.device is None and args.gpu is not None:
        args.device = f"cuda:{args.gpu}"
    args.root_given = args.root is not None or args.data_root is not None
    if args.root is None:
        data_root, _ = resolve_data_root(args.data_root)
        args.root = str(Path(data_root) / SEG_FOLDER) if data_root else str(DEFAULT_DATA_ROOT / SEG_FOLDER)
    if args.log_dir is None:
        args.log_dir = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M")
    if args.resume == "auto":
        last = Path(args.log_root) / "part_seg" / args.log_dir / "checkpoints" / "ckpt-last.pth"
        args.resume = last.is_file()
    return args


def main(argv=None) -> Dict[str, float]:
    """Train (or ``--test``); returns the best (or the test) metrics."""
    return run(get_args(argv))


if __name__ == "__main__":
    run_main(main)
