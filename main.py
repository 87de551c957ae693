"""Entry point (released commands): pre-training, fine-tuning, few-shot and testing; part
segmentation of a folder of your own labelled files (a config with ``model.NAME: PartSegTransformer``).

    python main.py --config cfgs/pretrain.yaml --exp_name NAME [--data_root DIR]
    python main.py --config cfgs/finetune_modelnet.yaml --finetune_model --ckpts P.pth --exp_name NAME
    python main.py --config cfgs/partseg_folder.yaml --finetune_model --ckpts P.pth --exp_name NAME --data_root DIR
    python main.py --test --ckpts experiments/finetune_modelnet/NAME/ckpt-best.pth   # the run's saved config.yaml
    torchrun --nproc_per_node N main.py --launcher pytorch --config ... [--resume auto]

Order of a run (the skeleton every command shares: ``engine.command.run_command``): flags ->
config (loaded, ``--opts``, data root, validated) -> settings (utils/settings.py) -> data checks
(``datasets.build.prepare_data``: a folder dataset reads every file) -> run directory and its lock
-> log file and config.yaml -> the job (``engine/pretrain.py``, ``engine/finetune.py``,
``engine/partseg_folder.py``). Nothing is
written before the config and the data passed.
"""
from __future__ import annotations

import os
import time

from tensorboardX import SummaryWriter

from datasets import DATASETS
from datasets.build import bind_run_dir, prepare_data
from engine import finetune, partseg_folder, pretrain
from engine.command import RunStart, run_command
from engine.engine import check_resume_changes, config_changes
from engine.svm import expand_svm_section
from models import MODELS
from utils import dist_utils, parser
from utils.cli import InputError, run_main
from utils.config import RUN_CONFIG
from utils.logger import print_log
from utils.overrides import load_config
from utils.rundir import check_no_checkpoints, open_run_dir
from utils.settings import build_run_settings, experiment_paths, resume_mode
from utils.validate import validate_config


def job_of(args) -> str:
    """``test``, ``finetune`` or ``pretrain``: what the flags ask for."""
    if args.test:
        return "test"
    return "finetune" if args.finetune_model or args.scratch_model else "pretrain"


def main(argv=None):
    args = parser.get_args(argv)
    args.resume = resolve_resume(args) == "yes"
    job = job_of(args)
    return run_command(args.launcher, experiment_paths(args)[2], lambda logger: prepare(args, job, logger),
                       lambda settings, config, stop, logger: run_job(args, settings, config, stop, logger))


def required_data(config, job: str) -> tuple:
    """The dataset entries ``job`` cannot run without (pre-training skips a validation set it cannot read)."""
    if job == "test":
        return ("dataset.test",) if config.dataset.get("test") is not None else ("dataset.val",)
    return ("dataset.train",) if job == "pretrain" else ("dataset.train", "dataset.val")


def resolve_resume(args) -> str:
    """``--resume auto``: continue when the run directory holds a ckpt-last.pth and its config.yaml,
    else start the run (``yes`` / ``no``)."""
    mode = resume_mode(args.resume)
    if mode == "auto":
        folder = experiment_paths(args)[0]
        found = all(os.path.isfile(os.path.join(folder, name)) for name in ("ckpt-last.pth", RUN_CONFIG))
        mode = "yes" if found else "no"
    return mode


def read_config(args, job: str, logger):
    """The run's config, validated, and the changes a resume makes to the saved one (``[]``)."""
    changes = []
    if args.resume:
        saved = os.path.join(experiment_paths(args)[0], RUN_CONFIG)
        if not os.path.exists(saved):
            raise InputError(f"--resume: no saved config at {saved}; is --exp_name right?")
        print_log(f"Resume: loading config from {saved}", logger=logger)
        before = load_config(saved, (), args.data_root, MODELS, DATASETS, expand=expand_svm_section)
        config = load_config(saved, args.opts, args.data_root, MODELS, DATASETS, logger=logger, schedule=True,
                             expand=expand_svm_section)
        changes = config_changes(before, config)
        check_resume_changes(changes, f"--opts of --resume ({saved})")
        args.config = saved
    else:
        if args.config_from_run:
            print_log(f"--test without --config: using the run's saved config {args.config}", logger=logger)
        config = load_config(args.config, args.opts, args.data_root, MODELS, DATASETS, logger=logger,
                             schedule=job != "test", expand=expand_svm_section)
    if args.shot != -1:
        for split in ("train", "val"):
            config.dataset[split].others.update(shot=args.shot, way=args.way, fold=args.fold)
    validate_config(config, job, MODELS, DATASETS, world_size=dist_utils.get_dist_info()[1])
    return config, changes


def prepare(args, job: str, logger) -> RunStart:
    """Config, settings and data checks of a ``main.py`` run, and how its directory is opened."""
    config, changes = read_config(args, job, logger)
    settings = build_run_settings(args, config, job, logger)
    if changes:
        print_log(f"--resume with {len(changes)} changed key(s): "
                  + "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes), logger=logger)
    per_rank = config.total_bs // settings.world_size if "total_bs" in config else 1
    for split, bs in (("train", per_rank), ("extra_train", per_rank * 2), ("val", per_rank * 2), ("test", per_rank)):
        if config.dataset.get(split) is not None:
            config.dataset[split].others.bs = bs
    prepare_data(config, required_data(config, job), logger)  # data read (and refused) before anything is written

    def open_dir() -> str:
        check_no_checkpoints(settings.experiment_path, args.resume, args.overwrite)
        return open_run_dir(settings.experiment_path, (settings.tfboard_path,), logger=logger)

    return RunStart(settings, config, open_dir,
                    log_file=os.path.join(settings.experiment_path, time.strftime("%Y%m%d_%H%M%S") + ".log"),
                    save_config=not args.resume or bool(changes), keep_previous=bool(changes),
                    before_save=lambda: bind_run_dir(config, settings.experiment_path))


def run_job(args, settings, config, stop, logger):
    """The job of a ``main.py`` run: ``--test``, fine-tuning or pre-training, with its TensorBoard writers."""
    if args.ckpts_warm_start and not args.resume:  # (--resume auto continuing a run takes no warm start)
        print_log(f"Pre-training with --ckpts: warm start from {args.ckpts} (weights only, fresh optimizer; "
                  f"the same as --start_ckpts)", logger=logger)
    print_log(f"Distributed training: {settings.distributed} (world size {settings.world_size})", logger=logger)
    segmentation = partseg_folder.is_partseg_config(config)  # a folder of labelled files (cfgs/partseg_folder.yaml)
    if settings.job == "test":
        return (partseg_folder.test_net if segmentation else finetune.test_net)(settings, config, logger)
    writers = (None, None)
    if settings.is_main_process:
        writers = (SummaryWriter(os.path.join(settings.tfboard_path, "train")),
                   SummaryWriter(os.path.join(settings.tfboard_path, "test")))
    try:
        run = (partseg_folder.run_net if segmentation else finetune.run_net) if settings.job == "finetune" \
            else pretrain.run_net
        return run(settings, config, writers, stop, logger)
    finally:
        for writer in writers:
            if writer is not None:
                writer.close()


if __name__ == "__main__":
    run_main(main)
