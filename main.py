"""Entry point (released commands): pre-training, fine-tuning, few-shot and testing.

    python main.py --config cfgs/pretrain.yaml --exp_name NAME [--data_root DIR]
    python main.py --config cfgs/finetune_modelnet.yaml --finetune_model --ckpts P.pth --exp_name NAME
    python main.py --test --ckpts experiments/finetune_modelnet/NAME/ckpt-best.pth   # the run's saved config.yaml
    torchrun --nproc_per_node N main.py --launcher pytorch --config ...

The jobs live in ``engine/`` (``pretrain.py``, ``finetune.py``), on the shared ``engine/engine.py``.
"""
from __future__ import annotations

import os
import sys
import time

import torch
from tensorboardX import SummaryWriter

from datasets import DATASETS
from engine import builder, finetune, pretrain
from models import MODELS
from utils import dist_utils, parser
from utils.cli import run_main
from utils.config import get_config, validate_config
from utils.logger import get_root_logger, print_log
from utils.misc import set_random_seed


def job_of(args) -> str:
    """``test``, ``finetune`` or ``pretrain``: what the flags ask for."""
    if args.test:
        return "test"
    return "finetune" if args.finetune_model or args.scratch_model else "pretrain"


def main(argv=None):
    args = parser.get_args(argv)
    args.distributed = args.launcher != "none"
    if args.distributed:
        dist_utils.init_dist(args.launcher)
    rank, world_size = dist_utils.get_dist_info()
    args.world_size = world_size
    args.lock_path = None
    try:
        # Rank 0 makes the directory and takes its lock; a refusal (another run's checkpoints, a live
        # lock) is raised on every process, so none waits in a collective for a rank 0 that stopped.
        dist_utils.run_on_rank0(lambda: parser.create_experiment_dir(args))
    except Exception:
        if dist_utils.is_dist():
            torch.distributed.destroy_process_group()
        raise
    try:
        return _run(args, rank, world_size)
    finally:
        parser.release_run_lock(args.lock_path)


def _run(args, rank: int, world_size: int):
    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    logger = get_root_logger(log_file=os.path.join(args.experiment_path, f"{timestamp}.log"), name=args.log_name)
    train_writer = val_writer = None
    if rank == 0 and not args.test:
        train_writer = SummaryWriter(os.path.join(args.tfboard_path, "train"))
        val_writer = SummaryWriter(os.path.join(args.tfboard_path, "test"))

    job = job_of(args)
    config = get_config(args, logger=logger, models=MODELS, datasets=DATASETS)
    args.num_workers = builder.worker_count(args.num_workers, logger)
    if args.shot != -1:
        for split in ("train", "val"):
            config.dataset[split].others.update(shot=args.shot, way=args.way, fold=args.fold)
    validate_config(config, job, MODELS, DATASETS, world_size=world_size)
    per_rank = config.total_bs // world_size
    for split, bs in (("train", per_rank), ("extra_train", per_rank * 2), ("val", per_rank * 2), ("test", per_rank)):
        if config.dataset.get(split) is not None:
            config.dataset[split].others.bs = bs

    print_log(f"Command: {' '.join(sys.argv)}", logger=logger)
    print_log(f"Arguments: {vars(args)}", logger=logger)
    if getattr(args, "ckpts_warm_start", False):
        print_log(f"Pre-training with --ckpts: warm start from {args.ckpts} (weights only, fresh optimizer; "
                  f"the same as --start_ckpts)", logger=logger)
    print_log(f"Distributed training: {args.distributed} (world size {world_size})", logger=logger)
    set_random_seed(args.seed + rank, deterministic=args.deterministic)

    try:
        if job == "test":
            return finetune.test_net(args, config)
        if job == "finetune":
            return finetune.run_net(args, config, train_writer, val_writer)
        return pretrain.run_net(args, config, train_writer, val_writer)
    finally:
        for writer in (train_writer, val_writer):
            if writer is not None:
                writer.close()
        if args.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
