"""Builders shared by the jobs (the released ``tools/builder.py`` names): data loaders, models,
optimizer and schedule, a run's :class:`engine.engine.TrainState`, DDP wrapping, and the
checkpoint readers. The training loop, the checkpoint writer and resume are ``engine/engine.py``.

Everything here takes the run's :class:`utils.settings.RunSettings` (or plain arguments), never
the command line's ``args``."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from datasets import build_dataset_from_cfg
from engine.engine import TrainState, grad_scaler
from models import build_model_from_cfg
from utils.checkpoint import load_weights
from utils.config import ConfigError, origin_of
from utils.dist_utils import get_dist_info, unwrap_model
from utils.logger import print_log
from utils.misc import worker_init_fn
from utils.settings import RunSettings, worker_count
from utils.settings_table import CHOICE_KEYS

# ------------------------------------------------------------------------------------------ data
def dataset_builder(entry, *, seed: int = 0, num_workers: int = 0):
    """``entry`` is one entry of ``config.dataset`` (``{_base_, others}``) -> (sampler, loader);
    training when ``others.subset`` is ``train``. See :func:`build_loader`."""
    if "_base_" not in entry or "others" not in entry:
        raise ConfigError("dataset entries need '_base_' and 'others'", origin_of(entry))
    dataset = build_dataset_from_cfg(entry._base_, entry.others)
    return build_loader(dataset, int(entry.others.get("bs", 1)), entry.others.subset == "train", seed=seed,
                        num_workers=num_workers)


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


def model_builder(model_config, settings: Optional[RunSettings] = None):
    """The model of a ``model`` section, with the run's compute switches (``fps_backend``,
    ``embed_compute``) when ``settings`` are given (else the models' defaults)."""
    return build_model_from_cfg(model_config, **(settings.model_switches() if settings is not None else {}))


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


LR_SCHEDULES = CHOICE_KEYS["lr_schedule"]


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


def build_opti_sche(base_model: nn.Module, config, lr_schedule: Optional[str] = None):
    """Optimizer and per-epoch schedule from ``config.optimizer`` / ``config.scheduler``, stepped
    as ``lr_schedule`` says (default: the config's, else ``exact``; see :func:`apply_lr_schedule`)."""
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
    elif sche.type == "CosLR":  # the length follows max_epoch unless set (utils.overrides.resolve_schedule_length)
        kwargs = dict(sche.get("kwargs") or {})
        if "epochs" not in kwargs:
            if "max_epoch" not in config:
                raise ConfigError("scheduler.kwargs.epochs is not set and there is no max_epoch to follow",
                                  origin_of(sche))
            kwargs["epochs"] = int(config.max_epoch)
        scheduler = CosineEpochScheduler(optimizer, **kwargs)
    else:
        raise ConfigError(f"scheduler.type '{sche.type}' is not one of CosLR, none", origin_of(sche))
    return optimizer, apply_lr_schedule(scheduler, lr_schedule or config.get("lr_schedule") or LR_SCHEDULES[0])


def wrap_distributed(model: nn.Module, settings: RunSettings, logger=None, find_unused_parameters: bool = False) -> nn.Module:
    """Under ``--launcher pytorch``: optional SyncBatchNorm (``--sync_bn``), then DDP on the run's
    device (CUDA: its GPU; CPU: gloo). Without torch.distributed the model is returned as it is."""
    if not settings.distributed:
        return model
    if settings.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        print_log("Using synchronized BatchNorm", logger=logger)
    device = settings.device
    model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                find_unused_parameters=find_unused_parameters)
    print_log("Using Distributed Data parallel", logger=logger)
    return model


# ------------------------------------------------------------------------------------ training
def build_training(config, settings: RunSettings, logger=None, model: Optional[nn.Module] = None) -> TrainState:
    """A training run's :class:`TrainState`: the model of ``config.model`` (or ``model``) on the
    run's device, AdamW (or the config's optimizer) and the per-epoch schedule."""
    base_model = (model if model is not None else model_builder(config.model, settings)).to(settings.device)
    optimizer, scheduler = build_opti_sche(base_model, config, settings.lr_schedule)
    print_log(f"epochs: {settings.n_epochs} (epoch_count: {settings.epoch_count}, max_epoch {settings.max_epoch}); "
              f"lr_schedule: {settings.lr_schedule}; model.init: {config.model.get('init', 'released')}",
              logger=logger)
    return TrainState(base_model, optimizer, scheduler, grad_scaler(settings.device, settings.amp_dtype))


# -------------------------------------------------------------------------------- checkpoints
def load_model(base_model, ckpt_path: str, logger=None, strict: bool = True, trust: bool = False):
    """Load a whole model (e.g. for --test) from a checkpoint or a ``.safetensors`` export; strict by
    default (:func:`utils.checkpoint.load_weights`). Returns (epoch, metrics) (-1 and {} for a
    ``.safetensors`` file)."""
    report = load_weights(base_model, ckpt_path, strict=strict, trust=trust)
    epoch = report.checkpoint.get("epoch", -1)
    metrics = report.checkpoint.get("metrics", {})
    print_log(f"ckpts @ {epoch} epoch (performance = {metrics}); {report.summary()}", logger=logger)
    return epoch, metrics


def load_point_model(base_model: nn.Module, ckpt_path: str, logger=None, trust: bool = False, strict: bool = True):
    """Load the point side of a pre-training checkpoint (encoder, decoder, heads) into ``base_model``,
    strictly (unless ``strict`` is false), whether or not either has an image branch (Point-MAE layouts, or a run with
    ``image_branch.enabled: false``): :func:`utils.checkpoint.load_weights` with the model's remap
    (:func:`models.Inter_MAE.point_side_filter_fn`). The image-branch tensors are not used: one log
    line says which were left out. Returns (epoch, metrics)."""
    report = load_weights(base_model, ckpt_path, strict=strict, remap="auto", trust=trust)
    own_image = len(report.new)
    print_log(f"[{type(unwrap_model(base_model)).__name__}] point model from {ckpt_path}: {report.summary()}; "
              f"not used: {report.note} of the checkpoint" + (f", the model's image branch ({own_image} tensors) "
                                                             f"stays as initialised" if own_image else ""), logger=logger)
    return report.checkpoint.get("epoch", -1), report.checkpoint.get("metrics", {})
