"""Fine-tuning and testing of the classifier (``--finetune_model`` / ``--scratch_model`` /
``--test``): ScanObjectNN, ModelNet40, few-shot ModelNet40.

Training: FPS to ``point_all`` (1200 for 1024 points, 2400 for 2048), a random ``npoints`` of
those, then per-sample scale-and-translate. Testing: FPS to ``npoints``. Voting (``--test
--vote``): 10 passes of a random ``npoints`` of an FPS-``point_all`` set with scale-and-translate,
logits averaged.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from datasets.data_transforms import PointcloudScaleAndTranslate
from engine import builder
from engine.engine import AccuracyMeter, amp_mode, evaluate, fit, grad_scaler, resolve_amp
from extensions.pointops import fps, furthest_point_sample, gather_points
from utils.config import ConfigError, origin_of
from utils.logger import get_logger, print_log
from utils.misc import resolve_device

VOTE_TIMES = 10


def points_for_sampling(npoints: int) -> int:
    """Size of the FPS set a training / voting subset is drawn from: 1024 -> 1200, 2048 -> 2400,
    4096 -> 4800 (all npoints * 75 / 64), and 8192 -> 8192, as in the released table."""
    if npoints >= 8192:
        return npoints
    return npoints * 75 // 64


def unpack_cls_batch(data, device: torch.device) -> Tuple[Tensor, Tensor]:
    """A loader's ``(points, label)`` -> points (B, N, C) float, labels (B,) long on ``device``."""
    points, label = data
    return points.to(device, non_blocking=True).float(), label.to(device, non_blocking=True).long().view(-1)


def fps_then_subset(points: Tensor, npoints: int, point_all: Optional[int] = None) -> Tensor:
    """(B, N, 3) -> (B, npoints, 3): FPS to ``point_all`` points, then the same random ``npoints``
    of them (numpy RNG, one choice for the whole batch as released)."""
    B, N, _ = points.shape
    if npoints > N:
        raise ValueError(f"cannot draw {npoints} points from clouds of {N}; raise the dataset's N_POINTS or lower npoints")
    point_all = min(point_all or points_for_sampling(npoints), N)
    if point_all == N:
        # FPS of every point is only a reordering; a random subset of it is a random subset.
        idx = torch.from_numpy(np.random.choice(N, npoints, replace=False)).to(points.device)
        return points[:, idx]
    fps_idx = furthest_point_sample(points[..., :3].contiguous(), point_all)
    fps_idx = fps_idx[:, torch.from_numpy(np.random.choice(point_all, npoints, replace=False)).to(points.device)]
    return gather_points(points, fps_idx)


def fps_to(points: Tensor, npoints: int) -> Tensor:
    """Test-time sampling: FPS to ``npoints`` (B, N, 3) -> (B, npoints, 3). With N == npoints the
    FPS order is a reordering that the model's grouping (FPS from index 0) cannot tell apart."""
    if points.shape[1] == npoints:
        return points
    return fps(points, npoints)


@torch.no_grad()
def vote_logits(model: Callable[[Tensor], Tensor], points: Tensor, npoints: int, times: int = VOTE_TIMES,
                transform: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Voting: mean of ``times`` logits (B, classes), each over a random ``npoints`` subset of
    the FPS-``point_all`` set of ``points`` (B, N, 3), transformed by ``transform`` (default
    per-sample scale-and-translate)."""
    transform = transform or PointcloudScaleAndTranslate()
    B, N, _ = points.shape
    point_all = min(points_for_sampling(npoints), N)
    fps_idx_raw = furthest_point_sample(points[..., :3].contiguous(), point_all)
    logits = []
    for _ in range(times):
        choice = torch.from_numpy(np.random.choice(point_all, npoints, replace=False)).to(points.device)
        logits.append(model(transform(gather_points(points, fps_idx_raw[:, choice]))).float())
    return torch.stack(logits, dim=0).mean(dim=0)


def make_train_step(device: torch.device, npoints: int, loss_fn):
    """Train step: FPS subset + scale-and-translate -> logits -> ``loss`` and ``acc`` (%)."""
    augment = PointcloudScaleAndTranslate()

    def step(model: nn.Module, batch) -> Dict[str, Tensor]:
        points, label = unpack_cls_batch(batch[2], device)
        loss, acc = loss_fn(model(augment(fps_then_subset(points[..., :3], npoints))), label)
        return {"loss": loss, "acc": acc}

    return step


def make_eval_step(device: torch.device, npoints: int, vote: bool = False, times: int = VOTE_TIMES):
    """Eval step: plain (FPS to ``npoints``) or voting logits into an :class:`AccuracyMeter`."""

    def step(model: nn.Module, batch, meter: AccuracyMeter) -> None:
        points, label = unpack_cls_batch(batch[2], device)
        points = points[..., :3]
        logits = vote_logits(model, points, npoints, times) if vote else model(fps_to(points, npoints))
        meter.update(logits, label)

    return step


def accuracy(model: nn.Module, loader, device: torch.device, npoints: int, amp: Optional[torch.dtype] = None, vote: bool = False,
             show_progress: bool = False, desc: str = "test") -> float:
    """Overall accuracy in percent over ``loader`` (all processes): plain or voting."""
    return evaluate(model, make_eval_step(device, npoints, vote), loader, device, AccuracyMeter(device), amp=amp,
                    progress=show_progress, desc=desc).compute()["acc"]


def _npoints(config) -> int:
    npoints = int(config.npoints)
    if npoints <= 0:
        raise ConfigError(f"npoints must be positive, got {npoints}", origin_of(config))
    return npoints


def run_net(args, config, train_writer=None, val_writer=None) -> Dict[str, float]:
    """Fine-tune (``--finetune_model --ckpts P.pth``) or train from scratch (``--scratch_model``)
    ``config.model`` on ``config.dataset.train``; validate on ``config.dataset.val`` every
    ``--val_freq`` epochs; keep ``ckpt-best`` (accuracy) and ``ckpt-last``. Returns best metrics."""
    logger = get_logger(args.log_name)
    npoints = _npoints(config)
    device = resolve_device(getattr(args, "device", None), args.local_rank)
    amp = resolve_amp(amp_mode(getattr(args, "amp", None), config.get("amp")), device, logger)
    show_progress = getattr(args, "progress", True)
    print_log(f"device: {device}; autocast: {amp or 'off'}", logger=logger)

    train_sampler, train_dataloader = builder.dataset_builder(args, config.dataset.train)
    _, val_dataloader = builder.dataset_builder(args, config.dataset.val)
    base_model = builder.model_builder(config.model).to(device)
    optimizer, scheduler = builder.build_opti_sche(base_model, config)
    scaler = grad_scaler(device, amp)
    start_epoch, best_metrics = 0, {}
    if args.resume:
        start_epoch, best_metrics = builder.resume(base_model, optimizer, args, logger, scheduler, scaler)
    elif args.ckpts is not None and not args.scratch_model:
        base_model.load_model_from_ckpt(args.ckpts, strict=not getattr(args, "partial_load", False), logger=logger)
    else:
        print_log("Training from scratch (no pre-trained weights)", logger=logger)
    model = builder.wrap_distributed(base_model, args, device, logger)

    def validate(epoch: int) -> Dict[str, float]:
        return {"acc": accuracy(model, val_dataloader, device, npoints, amp, show_progress=show_progress,
                                desc="validate")}

    def save(tag: str, epoch: int, metrics: Dict[str, float], best: Dict[str, float]) -> None:
        builder.save_checkpoint(base_model, optimizer, epoch, metrics, best, f"ckpt-{tag}", args, logger,
                                scheduler=scheduler, scaler=scaler)

    _, best_metrics = fit(model, make_train_step(device, npoints, base_model.get_loss_acc), train_dataloader,
                          train_sampler, optimizer, scheduler, device, start_epoch=start_epoch,
                          max_epoch=config.max_epoch, accum=int(config.get("step_per_update", 1)),
                          clip=float(config.get("grad_norm_clip", 0) or 0), amp=amp, scaler=scaler, validate=validate,
                          val_freq=args.val_freq, better=lambda m, b: m["acc"] > b.get("acc", -1.0), save=save,
                          best=best_metrics, writers=(train_writer, val_writer), progress=show_progress, logger=logger)
    if best_metrics:
        print_log(f"[Fine-tuning] best validation accuracy = {best_metrics['acc']:.4f} % (epoch {best_metrics['epoch']})",
                  logger=logger)
    return best_metrics


def test_net(args, config) -> Dict[str, float]:
    """``--test --ckpts F.pth``: accuracy of a fine-tuned classifier on ``config.dataset.test``;
    with ``--vote`` also the voting accuracy. Each is logged with its own label."""
    logger = get_logger(args.log_name)
    npoints = _npoints(config)
    device = resolve_device(getattr(args, "device", None), args.local_rank)
    amp = resolve_amp(amp_mode(getattr(args, "amp", None), config.get("amp")), device, logger)
    test_cfg = config.dataset.get("test") or config.dataset.val
    if getattr(args, "shot", -1) != -1:
        test_cfg.others.update(way=args.way, shot=args.shot, fold=args.fold)
    _, test_dataloader = builder.dataset_builder(args, test_cfg)
    base_model = builder.model_builder(config.model)
    builder.load_model(base_model, args.ckpts, logger=logger, strict=not getattr(args, "partial_load", False))
    base_model = base_model.to(device)
    model = builder.wrap_distributed(base_model, args, device, logger)
    show_progress = getattr(args, "progress", True)
    results = {"acc": accuracy(model, test_dataloader, device, npoints, amp, show_progress=show_progress)}
    print_log(f"[TEST] plain accuracy (FPS {npoints} points, 1 pass) = {results['acc']:.4f} %", logger=logger)
    if args.vote:
        results["vote_acc"] = accuracy(model, test_dataloader, device, npoints, amp, vote=True,
                                       show_progress=show_progress, desc="vote")
        print_log(f"[TEST_VOTE] voting accuracy ({VOTE_TIMES} passes of {npoints} of FPS "
                  f"{points_for_sampling(npoints)} with scale-and-translate, logits averaged) = {results['vote_acc']:.4f} %",
                  logger=logger)
    return results
