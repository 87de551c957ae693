"""Command-line arguments: main.py's (released flags, plus --device and --opts), and the flags
several commands share, defined once (:func:`add_common_args`)."""
from __future__ import annotations

import argparse
import atexit
import glob
import os
import socket
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
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an experiment directory that already holds checkpoints")
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
    args.ckpts_warm_start = False
    if args.ckpts is not None and not (args.test or args.finetune_model or args.scratch_model):
        # Pre-training: --ckpts is a warm start, the same as --start_ckpts (weights only, fresh optimizer).
        if args.resume:
            raise ValueError("--resume and --ckpts cannot both be given in pre-training (--ckpts is a warm start)")
        if args.start_ckpts is not None and args.start_ckpts != args.ckpts:
            raise ValueError("pre-training: give --ckpts or --start_ckpts (the same warm start), not both")
        args.start_ckpts = args.ckpts
        args.ckpts_warm_start = True
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


class RunDirError(RuntimeError):
    """An experiment directory cannot be used: it holds another run's checkpoints, or a live run holds it."""


LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def acquire_run_lock(folder: str, logger=None) -> str:
    """Create ``<folder>/.lock`` (O_CREAT | O_EXCL) holding ``pid hostname``; returns its path.

    A lock of a live process, or of another host, is a RunDirError naming the pid; a lock whose pid
    is not alive on this host is stale and is replaced (one log line). Released by
    :func:`release_run_lock` (also registered with ``atexit``).
    """
    from utils.logger import print_log

    path = os.path.join(folder, LOCK_NAME)
    host = socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    words = f.read().split()
                pid, owner = int(words[0]), (words[1] if len(words) > 1 else host)
            except (OSError, ValueError, IndexError):
                pid, owner = -1, host  # unreadable or half-written: treat as stale
            if owner == host and (pid <= 0 or not _pid_alive(pid)):
                print_log(f"Removing the stale lock {path} (pid {pid} on {owner} is not running)", logger=logger)
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                continue
            raise RunDirError(f"experiment directory {folder} is in use by another run (pid {pid} on {owner}, "
                              f"lock file {path}); wait for it to finish, or use another --exp_name") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {host}\n")
        atexit.register(release_run_lock, path)
        return path
    raise RunDirError(f"could not take the lock {path}")


def release_run_lock(path) -> None:
    """Remove the lock at ``path`` if this process holds it."""
    if not path:
        return
    try:
        with open(path) as f:
            words = f.read().split()
        if words and int(words[0]) == os.getpid():
            os.remove(path)
    except (OSError, ValueError):
        pass


def check_no_checkpoints(folder: str, resume: bool, overwrite: bool) -> None:
    """A new run refuses an experiment directory that holds checkpoints, unless --resume or --overwrite."""
    found = sorted(glob.glob(os.path.join(glob.escape(folder), "ckpt-*.pth")))
    if found and not resume and not overwrite:
        raise RunDirError(f"experiment directory {folder} already holds checkpoints ({os.path.basename(found[0])}"
                          f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}): pass --resume to continue "
                          f"that run, --overwrite to start a new run over it, or choose another --exp_name")


def create_experiment_dir(args, logger=None) -> str:
    """Make the experiment and TensorBoard folders, refuse a folder holding another run's checkpoints
    (:func:`check_no_checkpoints`) and take its lock (:func:`acquire_run_lock`). Rank 0 only.
    Returns the lock path (``args.lock_path``)."""
    os.makedirs(args.experiment_path, exist_ok=True)
    os.makedirs(args.tfboard_path, exist_ok=True)
    check_no_checkpoints(args.experiment_path, getattr(args, "resume", False), getattr(args, "overwrite", False))
    args.lock_path = acquire_run_lock(args.experiment_path, logger)
    return args.lock_path
