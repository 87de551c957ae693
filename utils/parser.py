"""Command-line arguments of main.py (released flags, plus --device and --opts)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Inter-MAE: pre-training, fine-tuning and testing")
    parser.add_argument("--config", type=str, required=True, help="yaml config file")
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none", help="job launcher")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    parser.add_argument("--sync_bn", action="store_true", help="synchronised BatchNorm across processes")
    parser.add_argument("--exp_name", type=str, default="default", help="experiment name")
    parser.add_argument("--loss", type=str, default="cd1", help="kept for released scripts; unused")
    parser.add_argument("--start_ckpts", type=str, default=None, help="reload a full model before training")
    parser.add_argument("--ckpts", type=str, default=None, help="checkpoint to fine-tune from or to test")
    parser.add_argument("--partial_load", action="store_true",
                        help="load --start_ckpts / --ckpts non-strictly: report missing and unexpected keys instead of failing")
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
    parser.add_argument("--device", type=str, default=None, help="cuda, cuda:N or cpu (default: CUDA when present)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (same as amp: true in the config)")
    parser.add_argument("--experiment_root", type=str, default="./experiments", help="where experiments go")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config entries, e.g. --opts total_bs=8 model.transformer_config.mask_ratio=0.7")
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
