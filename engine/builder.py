"""Builders shared by the jobs (the released ``tools/builder.py`` names): data loaders, models,
optimizer and schedule, DDP wrapping, and the one checkpoint writer and reader of every job.

Everything here takes the run's :class:`utils.settings.RunSettings` (or plain arguments), never
the command line's ``args``."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from datasets import build_dataset_from_cfg
from engine.engine import grad_scaler
from extensions.pointops import configured_backend, resolve_fps_backend
from models import build_model_from_cfg
from utils.checkpoint import (CheckpointError, checkpoint_class_names, load_checkpoint_file, load_state_dict_checked,
                              load_weights, state_dict_of, write_checkpoint)
from utils.config import ConfigError, origin_of, to_plain
from utils.dist_utils import all_gather_objects, get_dist_info, run_on_rank0
from utils.logger import print_log
from utils.misc import rng_state, set_rng_state, warn_if_no_gpu, worker_init_fn
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


# ------------------------------------------------------------------------------------- jobs
def log_settings(settings: RunSettings, logger=None) -> None:
    """The start-up lines of a job: a warning when no GPU was found, the settings and their sources,
    and the FPS backend the model will use on this device."""
    if settings.device.type == "cpu" and settings.sources.get("device") == "default":
        warn_if_no_gpu(None, settings.device, logger)
    backend = resolve_fps_backend(settings.device, configured_backend(settings.device, settings.fps_backend))
    print_log(f"device: {settings.device}; autocast: {_dtype_name(settings.amp_dtype)}; processes: "
              f"{settings.world_size}; FPS backend: {backend}; patch embedding: {settings.embed_compute}", logger=logger)
    print_log(settings.describe(), logger=logger)


def _dtype_name(dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "off")


@dataclass
class TrainState:
    """What a training run changes and checkpoints: the model (without a DDP wrapper), its
    optimizer, schedule and gradient scaler, the best figures so far, and where the run stands."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    best_metrics: Dict[str, float] = field(default_factory=dict)
    start_epoch: int = 0
    start_step: int = 0  # batches of start_epoch trained before a stop (0: start the epoch afresh)
    rng_at_stop: Optional[dict] = None  # this process's RNG states at the stop (mid-epoch resume)
    class_names: Optional[List[str]] = None
    epoch_log: Dict[str, float] = field(default_factory=dict)  # lr and seconds of the last epoch trained


def build_training(config, settings: RunSettings, logger=None, model: Optional[nn.Module] = None) -> TrainState:
    """A training run's :class:`TrainState`: the model of ``config.model`` (or ``model``) on the
    run's device, AdamW (or the config's optimizer) and the per-epoch schedule."""
    base_model = (model if model is not None else model_builder(config.model, settings)).to(settings.device)
    optimizer, scheduler = build_opti_sche(base_model, config, settings.lr_schedule)
    print_log(f"epochs: {settings.n_epochs} (epoch_count: {settings.epoch_count}, max_epoch {settings.max_epoch}); "
              f"lr_schedule: {settings.lr_schedule}; model.init: {config.model.get('init', 'released')}",
              logger=logger)
    return TrainState(base_model, optimizer, scheduler, grad_scaler(settings.device, settings.amp_dtype))


def train_epoch(model: nn.Module, step, sampler, loader, state: TrainState, settings: RunSettings, config, epoch: int,
                writer=None, stop=None, logger=None, folder: Optional[str] = None) -> Dict[str, float]:
    """One training epoch of a job: the sampler's epoch, the schedule's step,
    :func:`engine.engine.train_one_epoch` (continuing a stopped epoch at its batch), the epoch line.
    Returns the epoch means as ``train_<name>``. On a stop request: ``ckpt-last`` with the position
    inside the epoch (in ``folder``, default the run directory), then :class:`engine.preemption.Preempted`."""
    from engine.engine import log_epoch, train_one_epoch
    from engine.preemption import preempted

    if stop is not None:
        stop.defer()  # a signal from now on ends the run after the step under way, with ckpt-last
    sampler.set_epoch(epoch)
    if state.scheduler is not None:
        state.scheduler.step(epoch)
    epoch_rng, skip = rng_state(), state.start_step if epoch == state.start_epoch else 0
    restore = (lambda: set_rng_state(state.rng_at_stop)) if skip and state.rng_at_stop is not None else None
    start = time.time()
    result = train_one_epoch(model, step, loader, state.optimizer, settings.device, epoch, accum=settings.accum,
                             clip=settings.clip, amp=settings.amp_dtype, scaler=state.scaler, writer=writer,
                             progress=settings.progress and settings.is_main_process, stop=stop, skip=skip,
                             on_skipped=restore)
    if result.stopped_at is not None:
        save_checkpoint(state, "ckpt-last", settings, config, epoch=epoch - 1, next_step=result.stopped_at,
                        epoch_rng=epoch_rng, folder=folder, logger=logger)
        raise preempted(stop, settings, epoch, result.stopped_at, len(loader), logger)
    seconds = time.time() - start
    log_epoch(epoch, settings.n_epochs, result.stats, seconds, state.optimizer, writer, logger)
    state.epoch_log = {"lr": state.optimizer.param_groups[0]["lr"], "epoch_time_s": seconds}
    return {f"train_{k}": v for k, v in result.stats.items() if k != "samples_per_s"}


def write_epoch_metrics(state: TrainState, settings: RunSettings, epoch: int, metrics: Mapping[str, float],
                        logger=None) -> None:
    """The epoch's line of the run's ``metrics.jsonl`` (:func:`engine.engine.append_metrics_line`,
    rank 0): ``epoch``, the training means (``train_<name>``), the validation figures of that epoch
    when it validated, ``lr``, ``epoch_time_s`` (training) and ``wall_time`` (Unix seconds). Call it
    once the epoch's validation is done, before its ``ckpt-last`` is written. A failed write is one
    warning line: the run goes on (the checkpoint write that follows stops every process together
    when the disk is full)."""
    from engine.engine import append_metrics_line

    if not settings.is_main_process:
        return
    try:
        append_metrics_line(settings.experiment_path, {"epoch": epoch, **metrics, **state.epoch_log,
                                                       "wall_time": time.time()})
    except OSError as e:
        print_log(f"WARNING: epoch {epoch} not written to metrics.jsonl in {settings.experiment_path}: "
                  f"{str(e).splitlines()[0]}", logger=logger)


def validation_due(epoch: int, settings: RunSettings) -> bool:
    """Whether to validate after training epoch ``epoch`` (0-based); the one rule of every job.

    ``epoch_count: released`` (the released fine-tuning runner): after epochs ``val_freq, 2 val_freq,
    ...`` (``epoch % val_freq == 0 and epoch != 0``). ``exact``: after every ``val_freq``-th epoch
    and the last one."""
    freq = max(int(settings.val_freq), 1)
    if settings.epoch_count == "released":
        return epoch % freq == 0 and epoch != 0
    return (epoch + 1) % freq == 0 or epoch + 1 == settings.n_epochs


def refresh_batchnorm(model: nn.Module, loader, forward, settings: RunSettings, epoch: int, logger=None,
                      saving: bool = False) -> bool:
    """Before the BatchNorm running statistics are used or kept, i.e. when validation is due after
    ``epoch``, after the last epoch, or when ``saving`` (a checkpoint copy): recompute them over
    ``loader`` (the training set, each batch run as ``forward(model, batch)``) as
    ``settings.bn_recalibration`` says (:func:`engine.batchnorm.recalibrate_if_needed`). Returns
    whether they were recomputed. Collective under torch.distributed."""
    from engine.batchnorm import recalibrate_if_needed

    if not (saving or validation_due(epoch, settings) or epoch + 1 == settings.n_epochs):
        return False
    return recalibrate_if_needed(unwrap_model(model), loader, forward, settings.bn_recalibration, seed=settings.seed,
                                 amp=settings.amp_dtype, device=settings.device, logger=logger)


def epoch_copy_due(epoch: int, settings: RunSettings) -> bool:
    """Whether to keep ``ckpt-epoch-<epoch>`` (0-based, as released: ``epoch % 10 == 0 and epoch >=
    250`` with the pre-training defaults ``ckpt_period: 10``, ``ckpt_from: 250``)."""
    return settings.ckpt_period > 0 and epoch >= settings.ckpt_from and epoch % settings.ckpt_period == 0


# -------------------------------------------------------------------------------- checkpoints
def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(state: TrainState, name: str, settings: RunSettings, config=None, *, epoch: int,
                    metrics: Optional[Mapping] = None, next_step: int = 0, epoch_rng: Optional[dict] = None,
                    folder: Optional[str] = None, logger=None) -> Optional[str]:
    """Write ``<folder>/<name>.pth`` (``folder``: the run's experiment directory) with
    :func:`utils.checkpoint.write_checkpoint`, the one writer of every job. Collective under
    torch.distributed: every process gives its RNG states, rank 0 writes, and a failed write
    raises the same CheckpointWriteError on every process.

    ``epoch``: the last epoch trained to its end (-1: none); ``next_step``: batches of the epoch after
    it already trained (a stop mid-epoch), 0 otherwise; then ``epoch_rng`` is this process's
    :func:`utils.misc.rng_state` at the start of that epoch. Returns the path (None off rank 0)."""
    states = all_gather_objects(rng_state())
    epoch_states = all_gather_objects(epoch_rng) if next_step else None
    path = os.path.join(folder or settings.experiment_path, name + ".pth")

    def write() -> str:
        write_checkpoint(path, model=unwrap_model(state.model), optimizer=state.optimizer, scheduler=state.scheduler,
                         scaler=state.scaler, epoch=epoch, next_step=next_step, metrics=metrics,
                         best_metrics=state.best_metrics, rng_states=states, epoch_rng_states=epoch_states,
                         config=to_plain(config) if config is not None else None, class_names=state.class_names,
                         job=settings.job, seed=settings.seed)
        print_log(f"Save checkpoint at {path}", logger=logger)
        return path

    return run_on_rank0(write)


def restore_rng_states(ckpt: Mapping, path: str, start_epoch: int, seed: int = 0, logger=None,
                       key: str = "rng_states") -> str:
    """Put this process's RNG states from checkpoint ``ckpt`` back; returns what was done (for a log line).

    Rank r takes ``ckpt[key][r]`` when the checkpoint was written by as many processes as run now
    (a checkpoint written before per-rank states holds ``rng_state`` alone, which counts as one).
    Otherwise one warning line, and every process is seeded from (``seed``, its rank,
    ``start_epoch``) instead: the run continues, but not bit-exactly."""
    from utils.misc import derived_seed, set_random_seed

    rank, world_size = get_dist_info()
    states = ckpt.get(key)
    if states is None and key == "rng_states" and ckpt.get("rng_state") is not None:
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


# The hyper-parameters of an optimizer's groups that come from the config: on --resume the
# config's values win over the checkpoint's (a changed lr or weight decay applies from the next step).
GROUP_HYPERPARAMETERS = ("initial_lr", "weight_decay", "betas", "eps", "momentum", "dampening", "nesterov")


def resume(state: TrainState, settings: RunSettings, path: Optional[str] = None, logger=None) -> TrainState:
    """Continue a run from its ``ckpt-last.pth`` (or ``path``): weights (strict), optimizer state,
    the schedule's position, grad scaler, best figures and this process's RNG states; a run stopped
    mid-epoch continues at the batch after the stop (``start_step``).

    The schedule's length and the optimizer's hyper-parameters are the config's (so ``--resume
    --opts max_epoch=N`` continues a cosine over N epochs from the restored position, and a changed
    lr or weight decay applies from the next step). The data order needs no state of its own: the
    samplers shuffle by (seed, epoch)."""
    path = path or os.path.join(settings.experiment_path, "ckpt-last.pth")
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    ckpt = load_checkpoint_file(path, trust=settings.trust_checkpoint)
    load_state_dict_checked(unwrap_model(state.model), state_dict_of(ckpt, path), strict=True, source=path)
    configured = [{k: g[k] for k in GROUP_HYPERPARAMETERS if k in g} for g in state.optimizer.param_groups]
    try:
        state.optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"--resume: the optimizer state in {path} does not fit this run's optimizer "
                              f"(optimizer.type or the model changed?): {e}") from None
    for group, values in zip(state.optimizer.param_groups, configured):
        group.update(values)
    if state.scheduler is not None and ckpt.get("scheduler") is not None:
        # Only the position: the length and floor are this run's config (utils.overrides.resolve_schedule_length).
        state.scheduler.last_epoch = ckpt["scheduler"].get("last_epoch", -1)
    if ckpt.get("scaler") is not None:
        state.scaler.load_state_dict(ckpt["scaler"])
    state.start_epoch = int(ckpt["epoch"]) + 1
    state.start_step = int(ckpt.get("next_step", 0) or 0)
    state.best_metrics = dict(ckpt.get("best_metrics") or {})
    state.class_names = checkpoint_class_names(ckpt, path) or state.class_names
    if state.start_step:
        # RNG states at the start of the interrupted epoch now (the loaders draw their seeds from
        # them again), those of the stop once its batches are skipped (engine.train_one_epoch).
        restored = restore_rng_states(ckpt, path, state.start_epoch, settings.seed, logger, key="epoch_rng_states")
        rank = get_dist_info()[0]
        stops = ckpt.get("rng_states")
        state.rng_at_stop = stops[rank] if stops is not None and len(stops) == settings.world_size else None
        where = f"in epoch {state.start_epoch} at batch {state.start_step} (stopped there)"
    else:
        restored = restore_rng_states(ckpt, path, state.start_epoch, settings.seed, logger)
        where = f"after epoch {ckpt['epoch']}"
    print_log(f"[RESUME INFO] resumed from {path} {where} (best_metrics = {state.best_metrics}): weights, optimizer, "
              f"schedule position and {restored}", logger=logger)
    return state


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
