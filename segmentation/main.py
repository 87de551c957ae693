"""ShapeNetPart part segmentation: fine-tune a pre-trained Inter-MAE / Point-MAE encoder (released command).

    cd segmentation && python main.py --ckpts P.pth --root path/to/shapenetcore_partanno_segmentation_benchmark_v0_normal \
        --learning_rate 0.0002 --epoch 300
    cd segmentation && python main.py --test --log_dir NAME --root ...     # evaluate log/part_seg/NAME/checkpoints/best_model.pth
    torchrun --nproc_per_node N segmentation/main.py --launcher pytorch ...

Outputs: ``segmentation/log/part_seg/<log_dir>/checkpoints/best_model.pth`` (best instance mIoU)
and ``logs/`` (``pt.txt`` log and TensorBoard events). The job itself is ``engine/partseg.py``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from engine.partseg import run  # noqa: E402
from utils.parser import add_common_args  # noqa: E402

DEFAULT_LOG_ROOT = Path(__file__).resolve().parent / "log"


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("part segmentation", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=str, default="pt", choices=["pt"], help="model name (released: pt)")
    p.add_argument("--batch_size", type=int, default=16, help="total batch size (split over torchrun processes)")
    p.add_argument("--epoch", type=int, default=300, help="training epochs")
    p.add_argument("--warmup_epoch", type=int, default=10, help="linear warm-up epochs")
    p.add_argument("--learning_rate", type=float, default=0.0002, help="peak learning rate")
    p.add_argument("--decay_rate", "--weight_decay", dest="weight_decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip (0: off)")
    p.add_argument("--npoint", type=int, default=2048, help="points per shape")
    p.add_argument("--normal", action="store_true", help="use normals as extra input channels")
    p.add_argument("--root", type=str, default="../data/shapenetcore_partanno_segmentation_benchmark_v0_normal/",
                   help="ShapeNetPart folder")
    p.add_argument("--ckpts", type=str, default=None, help="pre-training checkpoint (training) / segmentation checkpoint (--test)")
    p.add_argument("--log_dir", type=str, default=None, help="run name under log/part_seg/ (default: timestamp)")
    p.add_argument("--log_root", type=str, default=str(DEFAULT_LOG_ROOT), help="folder holding part_seg/")
    p.add_argument("--test", action="store_true", help="evaluate a saved segmentation model and exit")
    p.add_argument("--overwrite", action="store_true",
                   help="train in a --log_dir whose checkpoints/ already holds a model (it is replaced)")
    p.add_argument("--init", choices=["released", "trunc_normal"], default="released",
                   help="initialisation: released (PyTorch's default, as the released get_model) or trunc_normal")
    p.add_argument("--lr_schedule", choices=["exact", "released"], default="exact",
                   help="exact: epoch e trains at cosine(e); released: the released one-epoch lag")
    p.add_argument("--gpu", type=str, default=None, help="GPU index (same as --device cuda:N)")
    add_common_args(p, "device", "amp", "fps_backend", "seed", "deterministic", "num_workers", "launcher", "local_rank")
    g = p.add_argument_group("model (defaults: released sizes; must match the pre-training checkpoint)")
    g.add_argument("--patch_embed", choices=["auto", "inter_mae", "point_mae"], default="auto",
                   help="patch embedding; auto = the checkpoint's (inter_mae without one)")
    g.add_argument("--trans_dim", type=int, default=384)
    g.add_argument("--depth", type=int, default=12)
    g.add_argument("--num_heads", type=int, default=6)
    g.add_argument("--drop_path_rate", type=float, default=0.1)
    g.add_argument("--num_group", type=int, default=128)
    g.add_argument("--group_size", type=int, default=32)
    g.add_argument("--return_layers", type=int, nargs=3, default=None,
                   help="blocks feeding the head (default: depth/3-1, 2*depth/3-1, depth-1 = 3 7 11)")
    args = p.parse_args(argv)
    if args.device is None and args.gpu is not None:
        args.device = f"cuda:{args.gpu}"
    return args


def main(argv=None) -> Dict[str, float]:
    """Train (or ``--test``); returns the best (or the test) metrics."""
    return run(get_args(argv))


if __name__ == "__main__":
    main()
