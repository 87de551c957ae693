"""The training engine shared by pre-training, fine-tuning and part segmentation: the training
loop, its state, the checkpoint writer and resume.

One :func:`train_one_epoch` and one :func:`evaluate`, in the spirit of facebookresearch/mae's
``engine_pretrain.py`` / ``engine_finetune.py``. A job supplies only what differs:

* a *train step* ``step(model, batch) -> dict of scalar tensors`` with the ``loss`` to
  back-propagate and any other figures to log (e.g. ``loss_rec``, ``acc``);
* an *eval step* ``step(model, batch, meter)`` that adds a batch's outcome to a *meter*
  (:class:`MeanMeter`, :class:`AccuracyMeter`, or a job's own with ``update`` / ``sync`` /
  ``compute``).

Each job's epoch loop (``engine/pretrain.py``, ``finetune.py``, ``partseg.py``) is a few lines:
:func:`train_epoch` (schedule, :func:`train_one_epoch`, the stop handling), validation when
:func:`validation_due` says so, the checkpoint writes (:func:`save_checkpoint`, through
:meth:`TrainRun.save`). :func:`resume` continues a run from its ``ckpt-last``; the config changes
a resume may make are :func:`check_resume_changes`'s rule. AMP (bf16 autocast), gradient
accumulation, clipping, the finite-loss check, progress bars, logging and TensorBoard live here
once. Figures stay on the device and are read (one host sync, one all-reduce under DDP) every
``log_interval`` steps and at the end of the epoch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from utils.checkpoint import (CheckpointError, checkpoint_class_names, load_checkpoint_file, load_state_dict_checked,
                              state_dict_of, write_checkpoint)
from utils.dist_utils import all_gather_objects, all_reduce_sum, get_dist_info, run_on_rank0, unwrap_model
from utils.logger import PROJECT_LOGGER, print_log
from utils.misc import derived_seed, rng_state, set_random_seed, set_rng_state
from utils.schema import ConfigError, to_plain
from utils.settings import RunSettings
from utils.text import quoted

if TYPE_CHECKING:
    from engine.preemption import StopRequest

TrainStep = Callable[[nn.Module, object], Dict[str, Tensor]]
EvalStep = Callable[[nn.Module, object, object], None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops before the next checkpoint is written."""


class NonFiniteInputError(NonFiniteLossError):
    """A batch holds NaN or infinite coordinates; the figures computed from it would be garbage."""


def check_finite_points(points: Tensor, batch, index: int, what: str = "test") -> None:
    """Raise :class:`NonFiniteInputError` naming batch ``index`` (and its model ids, when the
    batch carries them) if ``points`` holds NaN or Inf."""
    finite = torch.isfinite(points.reshape(points.shape[0], -1)).all(dim=1)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero().view(-1).tolist()
    ids = ""
    if isinstance(batch, (list, tuple)) and len(batch) > 1 and isinstance(batch[1], (list, tuple)):
        ids = f" (model ids {[batch[1][i] for i in bad[:5]]})"
    raise NonFiniteInputError(f"{what} batch {index}: samples {bad[:10]}{ids} have NaN or infinite coordinates; "
                              f"fix or remove them in the data")


def check_finite_figures(figures: Dict[str, float], epoch: int) -> None:
    """Raise :class:`NonFiniteLossError` if a validation figure is NaN or infinite."""
    bad = {}
    for key, value in (figures or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(number):
            bad[key] = number
    if bad:
        raise NonFiniteLossError(f"validation at epoch {epoch} gave non-finite figures {bad}; stopping before they "
                                 f"are logged or saved (the last checkpoint is kept)")


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast to ``dtype`` on ``device`` (None: off). Geometry ops cast themselves back to fp32."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: Optional[torch.dtype]) -> torch.amp.GradScaler:
    """Loss scaling for fp16; a disabled scaler (a no-op) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


def batch_size_of(batch) -> int:
    """Leading size of the first tensor in a (nested) batch."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        size = batch_size_of(item)
        if size:
            return size
    return 0


@dataclass
class EpochResult:
    """What :func:`train_one_epoch` did: the epoch means of the step's figures (over the batches it
    trained, all processes) plus ``samples_per_s``, and ``stopped_at``: the index of the first batch
    it did not train when a stop was requested (None: it ran to the end)."""

    stats: Dict[str, float]
    stopped_at: Optional[int] = None


@dataclass
class EpochContext:
    """What :func:`train_one_epoch` needs besides the model, the loader and the step.

    ``accum``: batches per optimizer step; ``clip``: gradient-norm clip (0: off); ``amp``: autocast
    dtype (None: off); ``scaler``: fp16 loss scaling (default: a disabled one); ``writer``:
    TensorBoard ``Loss/Batch/*`` every ``log_interval`` steps; ``stop``: checked after every
    optimizer step (on all processes together); ``skip``: the first ``skip`` batches (trained
    before a stop) are loaded but not trained, then ``on_skipped()`` runs (it restores the random
    state of the stop)."""

    optimizer: torch.optim.Optimizer
    device: torch.device
    epoch: int = 0
    accum: int = 1
    clip: float = 0.0
    amp: Optional[torch.dtype] = None
    scaler: Optional[torch.amp.GradScaler] = None
    writer: Any = None
    log_interval: int = 20
    progress: bool = True
    stop: Optional["StopRequest"] = None
    skip: int = 0
    on_skipped: Optional[Callable[[], None]] = None


def train_one_epoch(model: nn.Module, loader, step: TrainStep, ctx: EpochContext) -> EpochResult:
    """One pass over ``loader``: ``step`` under autocast to ``ctx.amp``, ``loss / ctx.accum``
    back-propagated (through ``ctx.scaler`` for fp16), an optimizer step (after clipping to
    ``ctx.clip``, when > 0) every ``ctx.accum`` batches and at the end.

    When ``ctx.stop`` was requested the epoch ends after the optimizer step under way,
    ``stopped_at`` saying which batch comes next. With ``ctx.skip`` the rest of a stopped epoch
    repeats the uninterrupted run exactly.

    Raises :class:`NonFiniteLossError` at the first check after a NaN / Inf loss on any process.
    """
    optimizer, device, epoch, accum, clip, amp = ctx.optimizer, ctx.device, ctx.epoch, ctx.accum, ctx.clip, ctx.amp
    writer, log_interval, stop, skip, on_skipped = ctx.writer, ctx.log_interval, ctx.stop, ctx.skip, ctx.on_skipped
    progress, scaler = ctx.progress, ctx.scaler
    model.train()
    scaler = scaler or grad_scaler(device, None)
    rank, world_size = get_dist_info()
    n_batches = len(loader)
    names, sums, logged = None, None, None
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    samples, start, trained, since_log, stopped_at = 0, time.perf_counter(), 0, 0, None
    pbar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress or rank != 0, dynamic_ncols=True, leave=False,
                initial=0)
    optimizer.zero_grad(set_to_none=True)
    for idx, batch in enumerate(pbar):
        if idx < skip:  # loaded (the loaders' random streams advance as they did), not trained
            if idx + 1 == skip and on_skipped is not None:
                on_skipped()
            continue
        with autocast(device, amp):
            out = step(model, batch)
        loss = out["loss"]
        scaler.scale(loss / accum).backward()
        stepped = (idx + 1) % accum == 0 or idx + 1 == n_batches
        if stepped:
            if clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

        values = torch.stack([v.detach().float().reshape(()) for v in out.values()])
        if names is None:
            names, sums = list(out), torch.zeros_like(values)
            logged = torch.zeros_like(values)
        sums += values
        trained += 1
        since_log += 1
        # full_like fills on the device: torch.tensor(idx, device=...) would copy from the host every step.
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), torch.full_like(first_bad, idx), first_bad)
        samples += batch_size_of(batch) * world_size
        stopping = stepped and idx + 1 < n_batches and stop is not None and stop.agreed(device)
        if (idx + 1) % log_interval == 0 or idx + 1 == n_batches or stopping:
            interval, since_log = since_log, 0
            totals = all_reduce_sum(torch.cat([sums, (first_bad >= 0).float().reshape(1)])) / world_size
            if totals[-1] > 0:
                local = f" (iteration {int(first_bad)} on this process)" if int(first_bad) >= 0 else ""
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}{local}; stopping. The last checkpoint is untouched.")
            recent = (totals[:-1] - logged) / interval
            logged = totals[:-1].clone()
            lr = optimizer.param_groups[0]["lr"]
            means = dict(zip(names, recent.tolist()))
            if writer is not None:
                global_step = epoch * n_batches + idx
                for key, value in means.items():
                    writer.add_scalar(f"Loss/Batch/{key}", value, global_step)
                writer.add_scalar("Loss/Batch/LR", lr, global_step)
            pbar.set_postfix({**{k: f"{v:.4g}" for k, v in means.items()}, "lr": f"{lr:.2e}",
                              "samples/s": f"{samples / (time.perf_counter() - start):.1f}"})
        if stopping:
            stopped_at = idx + 1
            break
    pbar.close()
    if names is None:
        return EpochResult({"samples_per_s": 0.0}, stopped_at)
    stats = dict(zip(names, (logged / max(trained, 1)).tolist()))
    stats["samples_per_s"] = samples / max(time.perf_counter() - start, 1e-9)
    return EpochResult(stats, stopped_at)


@torch.no_grad()
def evaluate(model: nn.Module, step: EvalStep, loader, device: torch.device, meter, *, amp: Optional[torch.dtype] = None,
             seed: Optional[int] = None, progress: bool = False, desc: str = "test"):
    """``step(model, batch, meter)`` over ``loader`` in eval mode; returns the meter, synchronised
    across processes. With ``seed`` the random draws (e.g. masks) are the same every call and
    the training RNG streams are left untouched."""
    model.eval()
    rng = contextlib.nullcontext()
    if seed is not None:
        rng = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        for batch in tqdm(loader, desc=desc, disable=not progress or get_dist_info()[0] != 0, dynamic_ncols=True,
                          leave=False):
            with autocast(device, amp):
                step(model, batch, meter)
    meter.sync()
    return meter


class MeanMeter:
    """Sample-weighted means of named figures: ``update(name=(batch mean tensor, n), ...)``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: Dict[str, Tensor] = {}
        self.count = torch.zeros((), device=device)

    def update(self, n: int, **values: Tensor) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, torch.zeros((), device=self.device)) + value.detach().float() * n
        self.count += n

    def sync(self) -> None:
        keys = sorted(self.sums)
        totals = all_reduce_sum(torch.stack([self.sums[k] for k in keys] + [self.count]))
        self.sums, self.count = dict(zip(keys, totals[:-1])), totals[-1]

    def compute(self) -> Dict[str, float]:
        return {k: (v / self.count.clamp(min=1)).item() for k, v in self.sums.items()}


class AccuracyMeter:
    """Overall accuracy in percent: ``update(logits (B, classes), labels (B,))``."""

    def __init__(self, device: torch.device):
        self.counts = torch.zeros(2, device=device)  # correct, seen

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.counts += torch.stack([(logits.argmax(-1).view(-1) == labels.view(-1)).sum().float(),
                                    torch.tensor(float(labels.numel()), device=self.counts.device)])

    def sync(self) -> None:
        all_reduce_sum(self.counts)

    def compute(self) -> Dict[str, float]:
        correct, seen = self.counts.tolist()
        return {"acc": correct / max(seen, 1.0) * 100.0}


def log_scalars(writer, prefix: str, values: Dict[str, float], epoch: int) -> None:
    """``writer.add_scalar(prefix/key, value, epoch)`` for each entry (nothing without a writer)."""
    if writer is not None:
        for key, value in values.items():
            writer.add_scalar(f"{prefix}/{key}", value, epoch)


def log_epoch(epoch: int, n_epochs: int, stats: Dict[str, float], seconds: float, optimizer, writer=None,
              logger=None) -> None:
    """The released ``[Training] EPOCH`` line of an epoch's means, and their TensorBoard scalars."""
    print_log(f"[Training] EPOCH: {epoch} ({epoch + 1}/{n_epochs}) EpochTime = {seconds:.1f} s "
              + " ".join(f"{k} = {v:.5g}" for k, v in stats.items())
              + f" lr = {optimizer.param_groups[0]['lr']:.6f}", logger=logger)
    log_scalars(writer, "Loss/Epoch", stats, epoch)


def log_validation(epoch: int, figures: Dict[str, float], writer=None, logger=None) -> None:
    """Stop on non-finite validation figures; else one ``[Validation] EPOCH`` line and the scalars."""
    check_finite_figures(figures, epoch)
    if figures:
        print_log(f"[Validation] EPOCH: {epoch} " + " ".join(f"{k} = {v:.6g}" for k, v in figures.items()),
                  logger=logger)
    log_scalars(writer, "Metric", figures, epoch)


METRICS_FILE = "metrics.jsonl"  # one JSON object per epoch in the run directory (mae's log.txt)


def append_metrics_line(folder: str, record: Mapping[str, Any]) -> str:
    """Add ``record`` (a flat dict with an integer ``epoch``) as one JSON line to
    ``<folder>/metrics.jsonl``: appended, flushed and fsynced. Lines of that epoch or later (a run
    resumed from an earlier checkpoint, or a new run in the folder) and a line a kill cut short are
    dropped first (the file is then rewritten atomically), so the file holds one line per epoch, in
    order. Non-finite numbers are written as null. Returns the path."""
    from utils.checkpoint import atomic_write

    path = os.path.join(folder, METRICS_FILE)
    epoch = int(record["epoch"])
    plain = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    line = json.dumps(plain, allow_nan=False) + "\n"
    kept, clean = [], True
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for old in f:
                try:
                    keep = old.endswith("\n") and int(json.loads(old)["epoch"]) < epoch
                except (ValueError, KeyError, TypeError):
                    keep = False
                kept += [old] if keep else []
                clean = clean and keep
    if clean:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    else:
        atomic_write(path, lambda f: f.write("".join(kept + [line]).encode("utf-8")))
    return path


def epoch_range(start: int, stop: int, progress: bool = True, logger=None) -> Iterator[int]:
    """``range(start, stop)`` with, when ``progress`` (rank 0), a bar over the epochs below each
    epoch's bar; log lines are written above the bars."""
    show = progress and get_dist_info()[0] == 0
    bar = tqdm(total=stop, initial=start, desc="epochs", unit="epoch", disable=not show, dynamic_ncols=True)
    # the run's lines and the library loggers' (e.g. a dataset built for SVM validation) above the bars
    redirect = logging_redirect_tqdm(loggers=[logger, logging.getLogger(PROJECT_LOGGER)]) \
        if show and isinstance(logger, logging.Logger) else contextlib.nullcontext()
    try:
        with redirect:
            for epoch in range(start, stop):
                yield epoch
                bar.update(1)
    finally:
        bar.close()



# ------------------------------------------------------------------- the run's state and epochs
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


@dataclass
class TrainRun:
    """What a job's epochs share: its settings and config, its :class:`TrainState`, the stop request,
    the TensorBoard writer of the training figures, the log, and the folder its checkpoints go to
    (None: the run's experiment directory)."""

    settings: RunSettings
    config: Any
    state: TrainState
    stop: Optional["StopRequest"] = None
    writer: Any = None
    logger: Any = None
    folder: Optional[str] = None

    def save(self, name: str, epoch: int, metrics: Optional[Mapping] = None,
             best_metrics: Optional[Mapping] = None) -> Optional[str]:
        """:func:`save_checkpoint` of this run (``best_metrics``: default the state's)."""
        best = self.state.best_metrics if best_metrics is None else best_metrics
        return save_checkpoint(self.state, name, self.settings, self.config, epoch=epoch, metrics=metrics,
                               best_metrics=best, folder=self.folder, logger=self.logger)


def train_epoch(run: TrainRun, model: nn.Module, step: TrainStep, loader, epoch: int) -> Dict[str, float]:
    """One training epoch of a job: the sampler's epoch, the schedule's step, :func:`train_one_epoch`
    (continuing a stopped epoch at its batch), the epoch line. Returns the epoch means as
    ``train_<name>``. On a stop request: ``ckpt-last`` with the position inside the epoch (in
    ``run.folder``), then :class:`engine.preemption.Preempted`."""
    from engine.preemption import preempted

    state, settings = run.state, run.settings
    if run.stop is not None:
        run.stop.defer()  # a signal from now on ends the run after the step under way, with ckpt-last
    loader.sampler.set_epoch(epoch)
    if state.scheduler is not None:
        state.scheduler.step(epoch)
    epoch_rng, skip = rng_state(), state.start_step if epoch == state.start_epoch else 0
    restore = (lambda: set_rng_state(state.rng_at_stop)) if skip and state.rng_at_stop is not None else None
    start = time.time()
    ctx = EpochContext(state.optimizer, settings.device, epoch, accum=settings.accum, clip=settings.clip,
                       amp=settings.amp_dtype, scaler=state.scaler, writer=run.writer,
                       progress=settings.progress and settings.is_main_process, stop=run.stop, skip=skip,
                       on_skipped=restore)
    result = train_one_epoch(model, loader, step, ctx)
    if result.stopped_at is not None:
        save_checkpoint(state, "ckpt-last", settings, run.config, epoch=epoch - 1, best_metrics=state.best_metrics,
                        next_step=result.stopped_at, epoch_rng=epoch_rng, folder=run.folder, logger=run.logger)
        raise preempted(run.stop, settings, epoch, result.stopped_at, len(loader), run.logger)
    seconds = time.time() - start
    log_epoch(epoch, settings.n_epochs, result.stats, seconds, state.optimizer, run.writer, run.logger)
    state.epoch_log = {"lr": state.optimizer.param_groups[0]["lr"], "epoch_time_s": seconds}
    return {f"train_{k}": v for k, v in result.stats.items() if k != "samples_per_s"}


def write_epoch_metrics(state: TrainState, settings: RunSettings, epoch: int, metrics: Mapping[str, float],
                        logger=None) -> None:
    """The epoch's line of the run's ``metrics.jsonl`` (:func:`append_metrics_line`, rank 0):
    ``epoch``, the training means (``train_<name>``), the validation figures of that epoch when it
    validated, ``lr``, ``epoch_time_s`` (training) and ``wall_time`` (Unix seconds). Call it once
    the epoch's validation is done, before its ``ckpt-last`` is written. A failed write is one
    warning line: the run goes on (the checkpoint write that follows stops every process together
    when the disk is full)."""
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


def epoch_copy_due(epoch: int, settings: RunSettings) -> bool:
    """Whether to keep ``ckpt-epoch-<epoch>`` (0-based, as released: ``epoch % 10 == 0 and epoch >=
    250`` with the pre-training defaults ``ckpt_period: 10``, ``ckpt_from: 250``)."""
    return settings.ckpt_period > 0 and epoch >= settings.ckpt_from and epoch % settings.ckpt_period == 0


# ---------------------------------------------------------------------- checkpoints and resume
def save_checkpoint(state: TrainState, name: str, settings: RunSettings, config=None, *, epoch: int,
                    best_metrics: Mapping, metrics: Optional[Mapping] = None, next_step: int = 0,
                    epoch_rng: Optional[dict] = None, folder: Optional[str] = None, logger=None) -> Optional[str]:
    """Write ``<folder>/<name>.pth`` (``folder``: the run's experiment directory) with
    :func:`utils.checkpoint.write_checkpoint`, the one writer of every job. Collective under
    torch.distributed: every process gives its RNG states, rank 0 writes, and a failed write
    raises the same CheckpointWriteError on every process.

    ``epoch``: the last epoch trained to its end (-1: none); ``best_metrics``: the best figures the
    file records (``ckpt-best_vote`` keeps the voting ones); ``next_step``: batches of the epoch after
    it already trained (a stop mid-epoch), 0 otherwise; then ``epoch_rng`` is this process's
    :func:`utils.misc.rng_state` at the start of that epoch. Returns the path (None off rank 0)."""
    states = all_gather_objects(rng_state())
    epoch_states = all_gather_objects(epoch_rng) if next_step else None
    path = os.path.join(folder or settings.experiment_path, name + ".pth")

    def write() -> str:
        write_checkpoint(path, model=unwrap_model(state.model), optimizer=state.optimizer, scheduler=state.scheduler,
                         scaler=state.scaler, epoch=epoch, next_step=next_step, metrics=metrics,
                         best_metrics=best_metrics, rng_states=states, epoch_rng_states=epoch_states,
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
        # Only the position: the length and floor are this run's config (utils.config.resolve_schedule_length).
        state.scheduler.last_epoch = ckpt["scheduler"].get("last_epoch", -1)
    if ckpt.get("scaler") is not None:
        state.scaler.load_state_dict(ckpt["scaler"])
    state.start_epoch = int(ckpt["epoch"]) + 1
    state.start_step = int(ckpt.get("next_step", 0) or 0)
    state.best_metrics = dict(ckpt.get("best_metrics") or {})
    state.class_names = checkpoint_class_names(ckpt, path) or state.class_names
    if state.start_step:
        # RNG states at the start of the interrupted epoch now (the loaders draw their seeds from
        # them again), those of the stop once its batches are skipped (train_one_epoch).
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


# Keys of the model section that may change when a run is resumed: they change what the next steps
# do, not the shape of any parameter or optimizer state. Any other model key is refused.
RESUMABLE_MODEL_KEYS = ("transformer_config.mask_ratio", "transformer_config.mask_type",
                        "transformer_config.drop_path_rate", "drop_path_rate", "label_smoothing", "loss", "init",
                        "image_branch.weight", "image_branch.temperature", "image_branch.trainable")


def config_changes(old: Any, new: Any, prefix: str = "") -> list:
    """``[(dotted key, old value, new value), ...]`` where two configs differ (missing: None)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += config_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    old, new = to_plain(old), to_plain(new)
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def check_resume_changes(changes: list, source: str) -> None:
    """Refuse a resumed run's changes that cannot apply mid-run: the model's shape (any ``model.``
    key but :data:`RESUMABLE_MODEL_KEYS`) and ``optimizer.type``, naming the key."""
    for key, old, new in changes:
        fixed = (key.startswith("model.") and key[len("model."):] not in RESUMABLE_MODEL_KEYS) or key == "optimizer.type"
        if fixed:
            raise ConfigError(f"--resume cannot change '{key}' ({quoted(old)} -> {quoted(new)}): the checkpoint's weights and "
                              f"optimizer state were made for {quoted(old)}; start a new run (another --exp_name, or "
                              f"--ckpts / --start_ckpts for its weights) to change it", source)
