"""Command-line arguments: main.py's (released flags, plus --device and --opts), and the flags
several commands share, defined once (:func:`add_common_args`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

# name -> (flags, add_argument keywords)
COMMON_ARGS = {
    "launcher": (("--launcher",), dict(choices=["none", "pytorch"], default="none",
                                       help="job launcher: none, or pytorch under torchrun")),
    "local_rank": (("--local_rank", "--local-rank"), dict(type=int, default=int(os.environ.get("LOCAL_RANK", 0)),
                                                          help="set by torchrun")),
    "num_workers": (("--num_workers",), dict(type=int, default=4, help="data-loading worker processes")),
    "seed": (("--seed",), dict(type=int, default=0, help="random seed")),
    "deterministic": (("--deterministic",), dict(action="store_true", help="deterministic kernels (slower)")),
    "device": (("--device",), dict(type=str, default=None, help="cuda, cuda:N or cpu (default: CUDA when present)")),
    "fps_backend": (("--fps_backend",), dict(choices=["auto", "torch", "triton", "pointnet2_ops"], default=None,
                                             help="farthest point sampling on CUDA: auto (triton when it imports, "
                                                  "else torch), torch, triton, pointnet2_ops (default: the config's "
                                                  "fps_backend, else $INTERMAE_FPS_BACKEND, else auto)")),
    "amp": (("--amp",), dict(nargs="?", const="bf16", default=None, choices=["off", "bf16", "fp16"],
                             help="mixed precision: bf16 autocast (--amp alone), fp16 autocast with loss scaling "
                                  "(CUDA), or off (default: the config's amp, else off)")),
    "partial_load": (("--partial_load",), dict(action="store_true", help="load checkpoints non-strictly: report "
                                                                            "missing and unexpected keys instead of failing")),
    "opts": (("--opts",), dict(nargs="*", default=[], metavar="KEY=VALUE",
                               help="override config entries, e.g. --opts total_bs=8 model.transformer_config.mask_ratio=0.7")),
}


def add_common_args(parser: argparse.ArgumentParser, *names: str, **defaults) -> argparse.ArgumentParser:
    """Add the :data:`COMMON_ARGS` ``names`` to ``parser``; ``defaults`` override their defaults."""
    for name in names:
        flags, kwargs = COMMON_ARGS[name]
        parser.add_argument(*flags, **{**kwargs, **({"default": defaults[name]} if name in defaults else {})})
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Inter-MAE: pre-training, fine-tuning and testing")
    parser.add_argument("--config", type=str, required=True, help="yaml config file")
    add_common_args(parser, "launcher", "local_rank", "num_workers", "seed", "deterministic")
    parser.add_argument("--sync_bn", action="store_true", help="synchronised BatchNorm across processes")
    parser.add_argument("--exp_name", type=str, default="default", help="experiment name")
    parser.add_argument("--loss", type=str, default="cd1", help="kept for released scripts; unused")
    parser.add_argument("--start_ckpts", type=str, default=None, help="reload a full model before training")
    parser.add_argument("--ckpts", type=str, default=None, help="checkpoint to fine-tune from or to test")
    add_common_args(parser, "partial_load")
    parser.add_argument("--val_freq", type=int, default=1, help="validate every this many epochs")
    parser.add_argument("--vote", action="store_true", help="voting evaluation (with --test)")
    parser.add_argument("--resume", action="store_true", help="continue the experiment from its ckpt-last.pth")
    parser.add_argument("--test", action="store_true", help="evaluate --ckpts")
    parser.add_argument("--finetune_model", action="store_true", help="fine-tune a pre-trained model")
    parser.add_argument("--scratch_model", action="store_true", help="train from an initialised model")
    parser.add_argument("--mode", choices=["easy", "median", "hard", None], default=None, help="kept for released scripts")
    parser.add_argument("--way", type=int, default=-1)
    parser.add_argument("--shot", type=int, default=-1)
    parser.add_argument("--fold", type=int, default=-1)
    add_common_args(parser, "device", "amp", "fps_backend")
    parser.add_argument("--experiment_root", type=str, default="./experiments", help="where experiments go")
    add_common_args(parser, "opts")
    return parser


def get_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.test and args.resume:
        raise ValueError("--test and --resume cannot both be true")
    if args.resume and args.start_ckpts is not None:
        raise ValueError("--resume and --start_ckpts cannot both be given")
    if args.test and args.ckpts is None:
        raise ValueError("--test needs --ckpts")
    if args.finetune_model and args.ckpts is None:
        raise ValueError("--finetune_model needs --ckpts (the pre-trained model)")
    if args.finetune_model and args.scratch_model:
        raise ValueError("--finetune_model and --scratch_model cannot both be given")
    if "LOCAL_RANK" in os.environ:
        args.local_rank = int(os.environ["LOCAL_RANK"])
    if args.test:
        args.exp_name = "test_" + args.exp_name
    if args.mode is not None:
        args.exp_name = args.exp_name + "_" + args.mode
    stem = Path(args.config).stem
    if args.resume and stem == "config":  # --config pointing at a saved experiment config
        stem = Path(args.config).parent.parent.name
    args.experiment_path = os.path.join(args.experiment_root, stem, args.exp_name)
    args.tfboard_path = os.path.join(args.experiment_root, stem, "TFBoard", args.exp_name)
    args.log_name = stem
    return args


def create_experiment_dir(args) -> None:
    os.makedirs(args.experiment_path, exist_ok=True)
    os.makedirs(args.tfboard_path, exist_ok=True)
