"""Builders shared by the jobs (the released ``tools/builder.py`` names): data loaders, models,
optimizer and schedule, DDP wrapping, checkpoint save / resume / load."""
from __future__ import annotations

import math
import os
from typing import List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from datasets import DATASETS, build_dataset_from_cfg
from models import MODELS, build_model_from_cfg
from utils.checkpoint import (CheckpointError, atomic_save, load_checkpoint_file, load_state_dict_checked,
                              state_dict_of)
from utils.config import CHOICE_KEYS, ConfigError, origin_of, to_plain
from utils.config import load_config as _load_config
from utils.dist_utils import get_dist_info
from engine.engine import amp_mode, grad_scaler, resolve_amp
from extensions.pointops import resolve_fps_backend, set_fps_backend
from models.layers import get_embed_compute, set_embed_compute
from utils.logger import get_logger, print_log
from utils.misc import resolve_device, rng_state, set_rng_state, warn_if_no_gpu, worker_init_fn


# ---------------------------------------------------------------------------------------- config
def load_config(path: str, opts=(), data_root: Optional[str] = None, logger=None, schedule: bool = False):
    """A command's config (:func:`utils.config.load_config`) with the model and dataset registries,
    so that ``--opts`` can add any key their schemas allow and names the valid ones on a typo."""
    return _load_config(path, opts, data_root, MODELS, DATASETS, logger=logger, schedule=schedule)


# ------------------------------------------------------------------------------------------ data
def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


_capped_logged: set = set()


def worker_count(requested: int, logger=None) -> int:
    """``requested`` data-loading workers capped to :func:`usable_cores` (more only compete for the
    same cores); one log line the first time a request is capped."""
    requested = max(0, int(requested or 0))
    cores = usable_cores()
    if requested <= cores:
        return requested
    if (requested, cores) not in _capped_logged:
        _capped_logged.add((requested, cores))
        print_log(f"num_workers {requested} capped to {cores}: this process may use {cores} CPU core(s)", logger=logger)
    return cores


def dataset_builder(args, config):
    """``config`` is one entry of ``config.dataset`` (``{_base_, others}``) -> (sampler, loader);
    training when ``others.subset`` is ``train``. See :func:`build_loader`."""
    if "_base_" not in config or "others" not in config:
        raise ConfigError("dataset entries need '_base_' and 'others'", origin_of(config))
    dataset = build_dataset_from_cfg(config._base_, config.others)
    return build_loader(dataset, int(config.others.get("bs", 1)), config.others.subset == "train",
                        seed=getattr(args, "seed", 0), num_workers=int(getattr(args, "num_workers", 0)))


def build_loader(dataset, batch_size: int, train: bool, seed: int = 0, num_workers: int = 0):
    """(sampler, loader) over this process's share of ``dataset``, ``batch_size`` per process.

    The sampler is always a DistributedSampler (one replica without torch.distributed), so the
    shuffling order is a function of (seed, epoch): call ``sampler.set_epoch(epoch)`` each epoch.
    Training shuffles and drops the last incomplete batch (unless the set is smaller than one).
    Workers (capped to the usable cores, :func:`worker_count`) prefetch 4 batches each; memory is
    pinned when CUDA is present.
    """
    rank, world_size = get_dist_info()
    num_workers = worker_count(num_workers)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train)
    # Workers are not persistent: a fresh iterator each epoch draws its worker seeds from the
    # (checkpointed) torch RNG, which keeps resumed runs exact.
    workers = dict(prefetch_factor=4) if num_workers > 0 else {}
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        drop_last=train and len(dataset) >= batch_size * world_size, worker_init_fn=worker_init_fn,
                        pin_memory=torch.cuda.is_available(), **workers)
    return sampler, loader


def model_builder(config):
    return build_model_from_cfg(config)


# ------------------------------------------------------------------------------- optimization
def add_weight_decay(model: nn.Module, weight_decay: float = 1e-5, skip_list=()) -> List[dict]:
    """Two parameter groups: no decay for 1-D parameters, biases and names containing 'token'."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or "token" in name or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def cosine_lr(epoch: int, base_lr: float, epochs: int, warmup_epochs: int, lr_min: float = 1e-6,
              warmup_lr_init: float = 1e-6) -> float:
    """Learning rate of an epoch: linear warm-up from ``warmup_lr_init`` over ``warmup_epochs``,
    then cosine from ``base_lr`` to ``lr_min`` over ``epochs`` (timm's CosineLRScheduler with
    t_in_epochs, as the released CosLR builds it)."""
    if epoch < warmup_epochs:
        return warmup_lr_init + epoch * (base_lr - warmup_lr_init) / warmup_epochs
    if epoch >= epochs:
        return lr_min
    return lr_min + 0.5 * (base_lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs))


class CosineEpochScheduler:
    """Sets each group's lr to ``cosine_lr(epoch, group's base lr, ...)`` in ``step(epoch)``."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, initial_epochs: int = 0,
                 lr_min: float = 1e-6, warmup_lr_init: float = 1e-6):
        self.optimizer = optimizer
        self.epochs = epochs
        self.initial_epochs = initial_epochs
        self.lr_min = lr_min
        self.warmup_lr_init = warmup_lr_init
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.last_epoch = -1

    def lr_at(self, epoch: int, base_lr: float) -> float:
        return cosine_lr(epoch, base_lr, self.epochs, self.initial_epochs, self.lr_min, self.warmup_lr_init)

    def step(self, epoch: int) -> None:
        self.last_epoch = epoch
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(epoch, group["initial_lr"])

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


EPOCH_COUNTS = CHOICE_KEYS["epoch_count"]
LR_SCHEDULES = CHOICE_KEYS["lr_schedule"]


def _choice(config, key: str, choices, default: str) -> str:
    value = config.get(key, default) if config is not None else default
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {list(choices)}", origin_of(config))
    return value


def epochs_to_run(config) -> int:
    """Number of epochs a run of ``config`` trains from epoch 0: ``max_epoch + 1`` with
    ``epoch_count: released`` (default; the released ``range(start_epoch, max_epoch + 1)``),
    ``max_epoch`` with ``epoch_count: exact``."""
    released = _choice(config, "epoch_count", EPOCH_COUNTS, "released") == "released"
    return int(config.max_epoch) + (1 if released else 0)


class LaggedScheduler:
    """The released stepping of a per-epoch schedule (``scheduler.step(epoch)`` after each epoch,
    timm's scheduler starting at its epoch-0 value): epoch ``e`` trains at the wrapped schedule's
    learning rate of epoch ``max(e - 1, 0)``. Saved and resumed through the wrapped scheduler."""

    def __init__(self, inner):
        self.inner = inner

    def step(self, epoch: int) -> None:
        self.inner.step(max(int(epoch) - 1, 0))

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def apply_lr_schedule(scheduler, mode: str):
    """``scheduler`` for ``lr_schedule`` ``mode``: unchanged (``exact``) or lagged (``released``)."""
    if mode not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule: '{mode}' is not one of {list(LR_SCHEDULES)}")
    return LaggedScheduler(scheduler) if mode == "released" and scheduler is not None else scheduler


def schedule_for(config, scheduler):
    """The job's scheduler for the config's ``lr_schedule`` (default ``exact``)."""
    return apply_lr_schedule(scheduler, _choice(config, "lr_schedule", LR_SCHEDULES, "exact"))


def build_opti_sche(base_model: nn.Module, config):
    """Optimizer and per-epoch schedule from ``config.optimizer`` / ``config.scheduler`` (with the
    config's ``lr_schedule``, see :func:`schedule_for`)."""
    opti = config.optimizer
    kwargs = dict(opti.kwargs)
    if opti.type == "AdamW":
        groups = add_weight_decay(base_model, weight_decay=kwargs.pop("weight_decay", 0.05))
        optimizer = torch.optim.AdamW(groups, **kwargs)
    elif opti.type == "Adam":
        optimizer = torch.optim.Adam(base_model.parameters(), **kwargs)
    elif opti.type == "SGD":
        optimizer = torch.optim.SGD(base_model.parameters(), nesterov=True, **kwargs)
    else:
        raise ConfigError(f"optimizer.type '{opti.type}' is not one of AdamW, Adam, SGD", origin_of(opti))

    sche = config.get("scheduler")
    if sche is None or sche.type in ("none", None):
        scheduler = None
    elif sche.type == "CosLR":  # the length follows max_epoch unless set (utils.config.resolve_schedule_length)
        kwargs = dict(sche.get("kwargs") or {})
        if "epochs" not in kwargs:
            if "max_epoch" not in config:
                raise ConfigError("scheduler.kwargs.epochs is not set and there is no max_epoch to follow",
                                  origin_of(sche))
            kwargs["epochs"] = int(config.max_epoch)
        scheduler = CosineEpochScheduler(optimizer, **kwargs)
    else:
        raise ConfigError(f"scheduler.type '{sche.type}' is not one of CosLR, none", origin_of(sche))
    return optimizer, schedule_for(config, scheduler)


def wrap_distributed(model: nn.Module, args, device: torch.device, logger=None,
                     find_unused_parameters: bool = False) -> nn.Module:
    """Under ``--launcher pytorch``: optional SyncBatchNorm (``--sync_bn``), then DDP on ``device``
    (CUDA: its GPU; CPU: gloo). Without torch.distributed the model is returned as it is."""
    if not getattr(args, "distributed", False):
        return model
    if getattr(args, "sync_bn", False):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        print_log("Using synchronized BatchNorm", logger=logger)
    model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                find_unused_parameters=find_unused_parameters)
    print_log("Using Distributed Data parallel", logger=logger)
    return model


# ------------------------------------------------------------------------------------- jobs
def runtime(args, logger, config_amp=None, config_fps_backend=None, config_embed_compute=None):
    """(device, autocast dtype or None) of a job: ``--device`` resolved once (a warning when none
    is given and no GPU is visible), ``--amp`` / ``--fps_backend`` / ``--embed_compute`` over the
    config's values; one log line."""
    device = resolve_device(getattr(args, "device", None), args.local_rank)
    warn_if_no_gpu(getattr(args, "device", None), device, logger)
    set_fps_backend(getattr(args, "fps_backend", None) or config_fps_backend)
    set_embed_compute(getattr(args, "embed_compute", None) or config_embed_compute)
    amp = resolve_amp(amp_mode(getattr(args, "amp", None), config_amp), device, logger)
    print_log(f"device: {device}; autocast: {amp or 'off'}; processes: {get_dist_info()[1]}; "
              f"FPS backend: {resolve_fps_backend(device)}; patch embedding: {get_embed_compute()}", logger=logger)
    return device, amp


def job_context(args, config):
    """(logger, device, autocast dtype or None) of a ``main.py`` job, see :func:`runtime`."""
    logger = get_logger(args.log_name)
    return (logger, *runtime(args, logger, config.get("amp"), config.get("fps_backend"), config.get("embed_compute")))


def build_training(config, device: torch.device, amp, logger=None):
    """(model on ``device``, optimizer, schedule, grad scaler, epochs to run) of a training job."""
    base_model = model_builder(config.model).to(device)
    optimizer, scheduler = build_opti_sche(base_model, config)
    n_epochs = epochs_to_run(config)
    print_log(f"epochs: {n_epochs} (epoch_count: {config.get('epoch_count', 'released')}, max_epoch {config.max_epoch}); "
              f"lr_schedule: {config.get('lr_schedule', 'exact')}; model.init: {config.model.get('init', 'released')}",
              logger=logger)
    return base_model, optimizer, scheduler, grad_scaler(device, amp), n_epochs


# -------------------------------------------------------------------------------- checkpoints
def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(base_model, optimizer, epoch, metrics, best_metrics, prefix, args, logger=None,
                    scheduler=None, scaler=None, extra: Optional[dict] = None) -> Optional[str]:
    """Write ``<experiment_path>/<prefix>.pth`` atomically; rank 0 writes, but under
    torch.distributed every process must call it (it gathers every process's RNG states).

    The dict holds ``base_model`` (no ``module.`` prefix), ``optimizer``, ``epoch``, ``metrics``,
    ``best_metrics`` (plain numbers), and for exact resumption ``scheduler``, ``scaler`` and
    ``rng_state`` (:func:`utils.misc.rng_state` of rank 0); a run of N > 1 processes adds
    ``rng_states``, the N processes' states as a list indexed by rank (see :func:`resume`). Only
    tensors and plain Python values, so ``torch.load(path)`` reads it with the default
    ``weights_only=True``.
    """
    from utils.checkpoint import plain_numbers
    from utils.dist_utils import all_gather_objects

    states = all_gather_objects(rng_state())
    if get_dist_info()[0] != 0:
        return None
    path = os.path.join(args.experiment_path, prefix + ".pth")
    ckpt = {
        "base_model": unwrap_model(base_model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "metrics": plain_numbers(to_plain(metrics)) if metrics is not None else {},
        "best_metrics": plain_numbers(to_plain(best_metrics)) if best_metrics is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng_state": states[0],
    }
    if len(states) > 1:
        ckpt["rng_states"] = states
    if extra:
        ckpt.update(extra)
    atomic_save(ckpt, path)
    print_log(f"Save checkpoint at {path}", logger=logger)
    return path


def restore_rng_states(ckpt: dict, path: str, start_epoch: int, seed: int = 0, logger=None) -> str:
    """Put this process's RNG states from checkpoint ``ckpt`` back; returns what was done (for a log line).

    Rank r takes ``rng_states[r]`` when the checkpoint was written by as many processes as run now
    (a 1-process checkpoint, or one written before per-rank states, holds ``rng_state`` alone,
    which counts as one). Otherwise one warning line, and every process is seeded from
    (``seed``, its rank, ``start_epoch``) instead: the run continues, but not bit-exactly.
    """
    from utils.misc import derived_seed, set_random_seed

    rank, world_size = get_dist_info()
    states = ckpt.get("rng_states")
    if states is None and ckpt.get("rng_state") is not None:
        states = [ckpt["rng_state"]]
    if states is not None and len(states) == world_size:
        set_rng_state(states[rank])
        return f"RNG states ({world_size} process{'es' if world_size > 1 else ''})"
    set_random_seed(derived_seed(seed, rank, start_epoch))
    held = ("no RNG states" if states is None else
            f"the RNG states of {len(states)} process(es) but this run has {world_size}")
    print_log(f"WARNING: --resume: {path} holds {held}; the random "
              f"streams are seeded afresh from (--seed {seed}, rank, epoch {start_epoch}), so the run goes on "
              f"but does not repeat the uninterrupted one bit for bit", logger=logger)
    return "fresh RNG seeds"


def resume(base_model, optimizer, args, logger=None, scheduler=None, scaler=None):
    """Continue the experiment from its ``ckpt-last.pth``: weights (strict), optimizer, schedule,
    grad scaler and this process's RNG states (:func:`restore_rng_states`). Returns (start_epoch,
    best_metrics). The data order needs no state of its own: the samplers shuffle by (seed,
    epoch) and the loaders draw their worker seeds from the restored torch RNG."""
    path = os.path.join(args.experiment_path, "ckpt-last.pth")
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    ckpt = load_checkpoint_file(path)
    load_state_dict_checked(unwrap_model(base_model), state_dict_of(ckpt, path), strict=True, source=path)
    optimizer.load_state_dict(ckpt["optimizer"])
    for target, key in ((scheduler, "scheduler"), (scaler, "scaler")):
        if target is not None and ckpt.get(key) is not None:
            target.load_state_dict(ckpt[key])
    start_epoch = ckpt["epoch"] + 1
    restored = restore_rng_states(ckpt, path, start_epoch, getattr(args, "seed", 0), logger)
    best_metrics = ckpt.get("best_metrics", {})
    print_log(f"[RESUME INFO] resumed from {path} after epoch {ckpt['epoch']} (best_metrics = {best_metrics}): "
              f"weights, optimizer, schedule and {restored}", logger=logger)
    return start_epoch, best_metrics


def load_model(base_model, ckpt_path: str, logger=None, strict: bool = True):
    """Load a whole model (e.g. for --test) from a checkpoint or a ``.safetensors`` export; strict by
    default. Returns (epoch, metrics) (-1 and {} for a ``.safetensors`` file)."""
    ckpt = load_checkpoint_file(ckpt_path)
    report = load_state_dict_checked(unwrap_model(base_model), state_dict_of(ckpt, ckpt_path), strict=strict, source=ckpt_path)
    epoch = ckpt.get("epoch", -1)
    metrics = ckpt.get("metrics", {})
    print_log(f"ckpts @ {epoch} epoch (performance = {metrics}); {report.summary()}", logger=logger)
    return epoch, metrics
