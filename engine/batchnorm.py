"""BatchNorm running statistics that match the weights (the PreciseBN idea).

In train mode a BatchNorm layer normalises with the statistics of the batch and moves its running
statistics towards them, ``running = (1 - m) running + m batch`` (momentum ``m`` = 0.1, PyTorch's
default). Eval mode (validation, ``--test``, voting, predictions, SVM and t-SNE features)
normalises with the running statistics. After ``n`` updates the initial ones (mean 0, variance 1)
still weigh ``(1 - m)^n`` in them, and the variance a layer sees can be tiny: the pre-training
encoder's trunc-normal(0.02) pointwise convolutions give its patch embedding's first BatchNorm
inputs of variance ~2e-5. After 48 updates ``0.9^48 = 0.0064`` of the initial unit variance is
still there, 300 times the variance the layer sees: in eval mode every input is squashed to about
the same feature (chance accuracy while the training accuracy is 90 %).

The rule (:func:`stale_batchnorms`): a layer's running variance cannot be trusted while the share of
the initial unit variance in it, ``(1 - m)^n / mean(running_var)``, exceeds
:data:`INITIAL_SHARE_LIMIT` (1 %; the normalised outputs are then off by up to ~0.5 %). ``n`` is
``num_batches_tracked``: the training updates the layer has seen, also those of the checkpoint it
was loaded from. For a layer whose inputs have variance ``v`` the rule holds until
``0.9^n < 0.01 v``: ``n`` >= 146 for ``v`` = 2.3e-5, ``n`` >= 66 for ``v`` = 0.1. Layers that
never saw a batch in training (unused by the model's forward) are left out.

:func:`recalibrate` recomputes the statistics with ``torch.optim.swa_utils.update_bn`` (a
cumulative average over at most :data:`RECALIBRATION_BATCHES` batches, train mode) over the
training set as evaluation sees it (no random augmentation), seeded and with every RNG state put
back afterwards, so that training continues exactly as without it (running statistics are not
used in train mode). ``bn_recalibration`` (config key / ``--bn_recalibration``): ``auto`` (default)
recalibrates when the rule says so, ``on`` every time, ``off`` never.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, List, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

from utils.dist_utils import all_reduce_sum, get_dist_info, unwrap_model
from utils.logger import print_log
from utils.misc import rng_state, set_random_seed, set_rng_state

# Largest share of the initial unit variance in a running variance that ``auto`` accepts.
INITIAL_SHARE_LIMIT = 0.01
# Batches a recalibration averages over at most (fvcore's PreciseBN default: 200 iterations).
RECALIBRATION_BATCHES = 200

BatchForward = Callable[[nn.Module, Any], Any]


def initial_share(momentum: Optional[float], updates: int, running_var_mean: float) -> float:
    """Share of the initial unit variance in a running variance of mean ``running_var_mean`` after
    ``updates`` updates at ``momentum``: ``(1 - momentum)^updates / running_var_mean``. A cumulative
    average (momentum None) keeps nothing of it after one update."""
    if updates <= 0:
        residual = 1.0
    else:
        residual = 0.0 if momentum is None else (1.0 - float(momentum)) ** int(updates)
    return residual / max(running_var_mean, 1e-30)


@dataclass(frozen=True)
class StaleLayer:
    """A BatchNorm layer whose running variance the rule does not trust."""

    name: str
    updates: int
    share: float

    def __str__(self) -> str:
        return f"{self.name or 'the model'} ({self.updates} updates, initial share {self.share:.3g})"


def batchnorm_layers(model: nn.Module) -> List[tuple]:
    """(name, layer) of every BatchNorm layer of ``model`` that keeps running statistics."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_var is not None]


def stale_batchnorms(model: nn.Module, limit: float = INITIAL_SHARE_LIMIT) -> List[StaleLayer]:
    """The layers of ``model`` that saw at least one training batch and whose :func:`initial_share`
    exceeds ``limit``."""
    stale = []
    for name, layer in batchnorm_layers(model):
        updates = int(layer.num_batches_tracked) if layer.num_batches_tracked is not None else 0
        if updates == 0:
            continue
        share = initial_share(layer.momentum, updates, float(layer.running_var.float().mean()))
        if share > limit:
            stale.append(StaleLayer(name, updates, share))
    return stale


class _BatchForward(nn.Module):
    """``update_bn`` calls ``model(input)``; this module runs ``forward(model, batch)`` instead, so a
    job's batch (tuples, dicts, several model inputs) reaches the model as in its own steps."""

    def __init__(self, model: nn.Module, forward: BatchForward):
        super().__init__()
        self.model = model
        self.batch_forward = forward

    def forward(self, batch):
        return self.batch_forward(self.model, batch)


def _as_update_bn_items(batches: Iterable, limit: int, seen: List[int]) -> Iterator[list]:
    # update_bn passes the first element of a list to the model: wrap each batch in a 1-list.
    for batch in islice(batches, limit):
        seen[0] += 1
        yield [batch]


def _average_across_processes(layers: List[nn.Module], reached: List[bool]) -> None:
    """Mean of the recomputed statistics over the processes that reached each layer (each process
    recalibrated on its share of the data, as many batches each: the same cumulative average as one
    process over all batches). Every process ends with the same statistics."""
    _, world_size = get_dist_info()
    if world_size == 1 or not layers:
        return
    parts = []
    for m, hit in zip(layers, reached):
        stats = torch.cat([m.running_mean.float().view(-1), m.running_var.float().view(-1)])
        parts.append(stats if hit else torch.zeros_like(stats))
    device = layers[0].running_var.device
    counts = all_reduce_sum(torch.tensor([float(hit) for hit in reached], device=device))
    sums = all_reduce_sum(torch.cat(parts))
    offset = 0
    for m, count in zip(layers, counts.tolist()):
        c = m.running_mean.numel()
        if count > 0:
            m.running_mean.copy_((sums[offset:offset + c] / count).view_as(m.running_mean))
            m.running_var.copy_((sums[offset + c:offset + 2 * c] / count).view_as(m.running_var))
        offset += 2 * c


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable, forward: BatchForward, *, seed: int = 0,
                max_batches: int = RECALIBRATION_BATCHES, amp: Optional[torch.dtype] = None,
                device: Optional[torch.device] = None) -> int:
    """Recompute the running statistics of ``model``'s BatchNorm layers with its current weights:
    ``torch.optim.swa_utils.update_bn`` over the first ``max_batches`` of ``batches``, each run as
    ``forward(model, batch)`` (train mode, under autocast to ``amp``). Returns the batches used.

    Every RNG stream is seeded with ``seed`` for it and put back afterwards (dropout, masks and the
    loader's worker seeds draw from them), so the result depends only on the weights and the data,
    and training continues as if nothing had run. ``num_batches_tracked`` keeps the count of
    training updates (the rule's ``n``); a layer the forward does not reach keeps its statistics.
    Under torch.distributed every process must call it with as many batches; the statistics are
    averaged over the processes."""
    from engine.engine import autocast

    layers = [m for _, m in batchnorm_layers(model)]
    if not layers:
        return 0
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers}
    device = device or next(iter(saved)).running_var.device
    seen, state = [0], rng_state()
    try:
        set_random_seed(seed)
        with autocast(device, amp):
            update_bn(_as_update_bn_items(batches, max_batches, seen), _BatchForward(model, forward))
    finally:
        set_rng_state(state)
    reached = []
    for m, (mean, var, updates) in saved.items():
        reached.append(int(m.num_batches_tracked) > 0)
        if not reached[-1]:  # not reached by the forward (or no batch at all)
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        m.num_batches_tracked.copy_(updates)
    _average_across_processes(layers, reached)
    return seen[0]


def recalibrate_if_needed(model: nn.Module, batches: Iterable, forward: BatchForward, mode: str, *, seed: int = 0,
                          amp: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
                          logger=None) -> bool:
    """:func:`recalibrate` as ``mode`` says: ``on`` always, ``off`` never, ``auto`` when
    :func:`stale_batchnorms` names a layer (on any process). One log line when it runs."""
    if mode == "off" or not batchnorm_layers(model):
        return False
    stale = stale_batchnorms(model)
    if mode == "auto":
        device = device or batchnorm_layers(model)[0][1].running_var.device
        if float(all_reduce_sum(torch.tensor(float(bool(stale)), device=device))) == 0.0:
            return False
    used = recalibrate(model, batches, forward, seed=seed, amp=amp, device=device)
    if stale:
        why = (f"{len(stale)} layer(s) whose running variance still holds more than {INITIAL_SHARE_LIMIT:.0%} of the "
               f"initial unit variance, e.g. {stale[0]}")
    else:
        why = "every time" if mode == "on" else "a layer of another process"
    print_log(f"[BatchNorm] running statistics recomputed with the current weights over {used} training batch(es) "
              f"without augmentation (bn_recalibration: {mode}: {why})", logger=logger)
    return True


def refresh_batchnorm(model: nn.Module, loader, forward, settings, epoch: int, logger=None,
                      saving: bool = False) -> bool:
    """Before the BatchNorm running statistics are used or kept, i.e. when validation is due after
    ``epoch``, after the last epoch, or when ``saving`` (a checkpoint copy): recompute them over
    ``loader`` (the training set, each batch run as ``forward(model, batch)``) as
    ``settings.bn_recalibration`` (the run's :class:`utils.settings.RunSettings`) says
    (:func:`recalibrate_if_needed`). Returns whether they were recomputed. Collective under
    torch.distributed."""
    from engine.engine import validation_due

    if not (saving or validation_due(epoch, settings) or epoch + 1 == settings.n_epochs):
        return False
    return recalibrate_if_needed(unwrap_model(model), loader, forward, settings.bn_recalibration, seed=settings.seed,
                                 amp=settings.amp_dtype, device=settings.device, logger=logger)
