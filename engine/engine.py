"""The training engine shared by pre-training, fine-tuning and part segmentation.

One :func:`train_one_epoch` and one :func:`evaluate`, in the spirit of facebookresearch/mae's
``engine_pretrain.py`` / ``engine_finetune.py``. A job supplies only what differs:

* a *train step* ``step(model, batch) -> dict of scalar tensors`` with the ``loss`` to
  back-propagate and any other figures to log (e.g. ``loss_rec``, ``acc``);
* an *eval step* ``step(model, batch, meter)`` that adds a batch's outcome to a *meter*
  (:class:`MeanMeter`, :class:`AccuracyMeter`, or a job's own with ``update`` / ``sync`` /
  ``compute``).

Each job's epoch loop (``engine/pretrain.py``, ``finetune.py``, ``partseg.py``) is a few lines:
schedule, :func:`train_one_epoch`, validation when :func:`engine.builder.validation_due` says so,
the checkpoint writes (:func:`engine.builder.save_checkpoint`). AMP (bf16 autocast),
gradient accumulation, clipping, the finite-loss check, progress bars, logging and TensorBoard
live here once. Figures stay on the device and are read (one host sync, one all-reduce under
DDP) every ``log_interval`` steps and at the end of the epoch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from utils.dist_utils import all_reduce_sum, get_dist_info
from utils.logger import PROJECT_LOGGER, print_log

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


def train_one_epoch(model: nn.Module, step: TrainStep, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                    epoch: int, *, accum: int = 1, clip: float = 0.0, amp: Optional[torch.dtype] = None,
                    scaler: Optional[torch.amp.GradScaler] = None, writer=None, log_interval: int = 20,
                    progress: bool = True, stop: Optional["StopRequest"] = None, skip: int = 0,
                    on_skipped: Optional[Callable[[], None]] = None) -> EpochResult:
    """One pass over ``loader``: ``step`` under autocast to ``amp``, ``loss / accum`` back-propagated
    (through ``scaler`` for fp16), an optimizer step (after clipping to ``clip``, when > 0) every
    ``accum`` batches and at the end.

    ``stop``: checked after every optimizer step (on all processes together); when a stop was
    requested the epoch ends there, ``stopped_at`` saying which batch comes next. ``skip``: the
    first ``skip`` batches (trained before a stop) are loaded but not trained, then ``on_skipped()``
    runs (it restores the random state of the stop), so that the rest of the epoch repeats the
    uninterrupted run exactly.

    Raises :class:`NonFiniteLossError` at the first check after a NaN / Inf loss on any process.
    """
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
    """Overall accuracy in percent: ``update(logits (B, classes), labels (B,))``; per true class
    too (:meth:`per_class`)."""

    def __init__(self, device: torch.device):
        self.counts = torch.zeros(2, device=device)  # correct, seen
        self.class_counts: Optional[Tensor] = None  # (2, classes): correct, seen per true class

    def update(self, logits: Tensor, labels: Tensor) -> None:
        hit = logits.argmax(-1).view(-1) == labels.view(-1)
        self.counts += torch.stack([hit.sum().float(), torch.tensor(float(labels.numel()), device=self.counts.device)])
        n = logits.shape[-1]
        if self.class_counts is None:
            self.class_counts = torch.zeros(2, n, device=self.counts.device)
        labels = labels.view(-1).long()
        self.class_counts[0] += torch.bincount(labels[hit], minlength=n)[:n].float()
        self.class_counts[1] += torch.bincount(labels, minlength=n)[:n].float()

    def sync(self) -> None:
        all_reduce_sum(self.counts)
        if self.class_counts is not None:
            all_reduce_sum(self.class_counts)

    def per_class(self) -> list:
        """Accuracy in percent of each true class (None for a class without samples), in class order."""
        if self.class_counts is None:
            return []
        correct, seen = self.class_counts.tolist()
        return [100.0 * c / s if s else None for c, s in zip(correct, seen)]

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

