"""Entry point (released commands): pre-training, fine-tuning, few-shot and testing.

    python main.py --config cfgs/pretrain.yaml --exp_name NAME
    python main.py --config cfgs/finetune_modelnet.yaml --finetune_model --ckpts P.pth --exp_name NAME
    torchrun --nproc_per_node N main.py --launcher pytorch --config ...
"""
from __future__ import annotations

import os
import sys
import time

import torch
from tensorboardX import SummaryWriter

from utils import dist_utils, parser
from utils.config import get_config, log_config_to_file
from utils.logger import get_root_logger, print_log
from utils.misc import set_random_seed


def main(argv=None):
    args = parser.get_args(argv)
    args.use_gpu = torch.cuda.is_available()
    if args.launcher == "none":
        args.distributed = False
    else:
        args.distributed = True
        dist_utils.init_dist(args.launcher)
    rank, world_size = dist_utils.get_dist_info()
    args.world_size = world_size
    if rank == 0:
        parser.create_experiment_dir(args)
    dist_utils.barrier()

    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    log_file = os.path.join(args.experiment_path, f"{timestamp}.log")
    logger = get_root_logger(log_file=log_file, name=args.log_name)
    train_writer = val_writer = None
    if rank == 0 and not args.test:
        train_writer = SummaryWriter(os.path.join(args.tfboard_path, "train"))
        val_writer = SummaryWriter(os.path.join(args.tfboard_path, "test"))

    config = get_config(args, logger=logger)
    if args.distributed:
        if config.total_bs % world_size != 0:
            raise ValueError(f"total_bs={config.total_bs} is not divisible by the {world_size} processes")
        per_rank = config.total_bs // world_size
    else:
        per_rank = config.total_bs
    for split, bs in (("train", per_rank), ("extra_train", per_rank * 2), ("val", per_rank * 2), ("test", per_rank)):
        if config.dataset.get(split) is not None:
            config.dataset[split].others.bs = bs

    print_log(f"Command: {' '.join(sys.argv)}", logger=logger)
    for key, val in vars(args).items():
        print_log(f"args.{key} : {val}", logger=logger)
    log_config_to_file(config, "config", logger=logger)
    print_log(f"Distributed training: {args.distributed} (world size {world_size})", logger=logger)

    set_random_seed(args.seed + rank, deterministic=args.deterministic)
    if args.shot != -1:
        config.dataset.train.others.shot = args.shot
        config.dataset.train.others.way = args.way
        config.dataset.train.others.fold = args.fold
        config.dataset.val.others.shot = args.shot
        config.dataset.val.others.way = args.way
        config.dataset.val.others.fold = args.fold

    try:
        if args.test:
            from tools import test_run_net

            test_run_net(args, config)
        elif args.finetune_model or args.scratch_model:
            from tools import finetune_run_net

            finetune_run_net(args, config, train_writer, val_writer)
        else:
            from tools import pretrain_run_net

            pretrain_run_net(args, config, train_writer, val_writer)
    finally:
        if args.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
