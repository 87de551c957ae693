"""Fine-tuning and testing of the classifier (``--finetune_model`` / ``--scratch_model`` /
``--test``): ScanObjectNN, ModelNet40, few-shot ModelNet40.

Training: FPS to ``point_all`` (1200 for 1024 points, 2400 for 2048), a random ``npoints`` of
those, then per-sample scale-and-translate. Testing: FPS to ``npoints``. Voting: ``voting.times``
(10) passes of a random ``npoints`` of an FPS-``point_all`` set with scale-and-translate, logits
averaged.

As the released ``tools/runner_finetune.py`` (defaults; top-level config keys):

* ``epoch_count: released`` runs epochs ``0 .. max_epoch`` (``range(start_epoch, max_epoch + 1)``:
  301 epochs for ``max_epoch: 300``) on the cosine schedule built for ``scheduler.kwargs.epochs``,
  and validates after epochs ``val_freq, 2 val_freq, ...`` (never after epoch 0). ``exact``:
  epochs ``0 .. max_epoch - 1``, validation after every ``val_freq``-th epoch and the last.
* ``lr_schedule: exact`` (the project's): epoch ``e`` trains at ``cosine(e)``. ``released``: the
  released one-epoch lag (``scheduler.step(epoch)`` after the epoch): epoch ``e`` trains at
  ``cosine(max(e - 1, 0))``.
* ``--vote`` during fine-tuning: when the validation accuracy passes ``voting.above`` (92.1), or
  improves on the best and passes ``voting.above_if_best`` (91), a voting validation follows;
  its best is kept as ``ckpt-best_vote.pth``.
* ``--test --vote``: ``voting.repeats`` (299, the released ``range(1, 300)``) voting runs of
  ``voting.times`` passes; the best run is reported, as released (optimistic: a maximum over
  repeats on the test set; ``voting.repeats: 1`` gives one unselected run).
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from datasets.data_transforms import PointcloudScaleAndTranslate
from engine import builder
from engine.engine import AccuracyMeter, check_finite_points, evaluate, fit
from extensions.pointops import fps, furthest_point_sample, gather_points
from utils.checkpoint import load_checkpoint_file, write_json
from utils.config import VOTING_DEFAULTS, VOTING_SCHEMA, ConfigError, origin_of
from utils.dist_utils import get_dist_info
from utils.logger import print_log

VOTE_TIMES = VOTING_DEFAULTS["times"]  # voting passes (the released 10)

# ------------------------------------------------------------------------- epochs and schedule
def released_validation_due(epoch: int, val_freq: int) -> bool:
    """The released fine-tuning rule: validate after epoch ``e`` when ``e % val_freq == 0 and e != 0``."""
    return epoch % max(int(val_freq), 1) == 0 and epoch != 0


def vote_due(acc: float, best_before: float, vote_cfg: Dict[str, float]) -> bool:
    """The released rule for a voting validation during fine-tuning (``runner_finetune.run_net``):
    ``acc > 92.1 or (better and acc > 91)``, ``better`` meaning above the best accuracy so far."""
    return acc > vote_cfg["above"] or (acc > best_before and acc > vote_cfg["above_if_best"])


def voting_config(config) -> Dict[str, float]:
    """The ``voting`` section checked, with the released defaults filled in."""
    section = config.get("voting") if config is not None else None
    out = dict(VOTING_DEFAULTS)
    if section is not None:
        VOTING_SCHEMA.check(section, "voting")
        out.update({k: section[k] for k in section})
    for key in ("times", "repeats"):
        if int(out[key]) < 1:
            raise ConfigError(f"voting.{key} must be a positive integer, got {out[key]}", origin_of(section))
        out[key] = int(out[key])
    return out


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

    seen = [0]

    def step(model: nn.Module, batch, meter: AccuracyMeter) -> None:
        points, label = unpack_cls_batch(batch[2], device)
        points = points[..., :3]
        check_finite_points(points, batch, seen[0], "evaluation")
        seen[0] += 1
        logits = vote_logits(model, points, npoints, times) if vote else model(fps_to(points, npoints))
        meter.update(logits, label)

    return step


def accuracy(model: nn.Module, loader, device: torch.device, npoints: int, amp: Optional[torch.dtype] = None, vote: bool = False,
             show_progress: bool = False, desc: str = "test", times: int = VOTE_TIMES) -> float:
    """Overall accuracy in percent over ``loader`` (all processes): plain or voting (``times`` passes)."""
    return evaluate(model, make_eval_step(device, npoints, vote, times), loader, device, AccuracyMeter(device), amp=amp,
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
    logger, device, amp = builder.job_context(args, config)
    npoints = _npoints(config)
    show_progress = getattr(args, "progress", True)

    train_sampler, train_dataloader = builder.dataset_builder(args, config.dataset.train)
    _, val_dataloader = builder.dataset_builder(args, config.dataset.val)
    base_model, optimizer, scheduler, scaler, n_epochs = builder.build_training(config, device, amp, logger)
    released_count = n_epochs != int(config.max_epoch)
    vote_cfg = voting_config(config)
    start_epoch, best_metrics = 0, {}
    best_vote_path = os.path.join(args.experiment_path, "ckpt-best_vote.pth")
    best_vote: Dict[str, float] = {}
    if args.resume:
        start_epoch, best_metrics = builder.resume(base_model, optimizer, args, logger, scheduler, scaler)
        if os.path.exists(best_vote_path):
            best_vote = dict(load_checkpoint_file(best_vote_path).get("best_metrics") or {})
    elif args.ckpts is not None and not args.scratch_model:
        base_model.load_model_from_ckpt(args.ckpts, strict=not getattr(args, "partial_load", False), logger=logger)
    else:
        print_log("Training from scratch (no pre-trained weights)", logger=logger)
    model = builder.wrap_distributed(base_model, args, device, logger)

    state = {"best_acc": float(best_metrics.get("acc", -1.0))}

    def validate(epoch: int) -> Dict[str, float]:
        if released_count and not released_validation_due(epoch, args.val_freq):
            return {}
        acc = accuracy(model, val_dataloader, device, npoints, amp, show_progress=show_progress, desc="validate")
        figures = {"acc": acc}
        due = vote_due(acc, state["best_acc"], vote_cfg)
        state["best_acc"] = max(state["best_acc"], acc)
        if getattr(args, "vote", False) and due:
            # the released run_net: a voting validation once the accuracy passes its thresholds
            acc_vote = accuracy(model, val_dataloader, device, npoints, amp, vote=True, show_progress=show_progress,
                                desc="validate_vote", times=vote_cfg["times"])
            figures["acc_vote"] = acc_vote
            print_log(f"[Validation_vote] EPOCH: {epoch}  acc_vote = {acc_vote:.4f}", logger=logger)
            if acc_vote > best_vote.get("acc_vote", -1.0):
                best_vote.clear()
                best_vote.update(acc_vote=acc_vote, epoch=epoch)
                builder.save_checkpoint(base_model, optimizer, epoch, figures, dict(best_vote), "ckpt-best_vote", args,
                                        logger, scheduler=scheduler, scaler=scaler)
        return figures

    def save(tag: str, epoch: int, metrics: Dict[str, float], best: Dict[str, float]) -> None:
        builder.save_checkpoint(base_model, optimizer, epoch, metrics, best, f"ckpt-{tag}", args, logger,
                                scheduler=scheduler, scaler=scaler)

    _, best_metrics = fit(model, make_train_step(device, npoints, base_model.get_loss_acc), train_dataloader,
                          train_sampler, optimizer, scheduler, device, start_epoch=start_epoch,
                          max_epoch=n_epochs, accum=int(config.get("step_per_update", 1)),
                          clip=float(config.get("grad_norm_clip", 0) or 0), amp=amp, scaler=scaler, validate=validate,
                          val_freq=1 if released_count else args.val_freq,  # released: validate() decides
                          better=lambda m, b: m["acc"] > b.get("acc", -1.0), save=save,
                          best=best_metrics, writers=(train_writer, val_writer), progress=show_progress, logger=logger)
    if best_metrics:
        print_log(f"[Fine-tuning] best validation accuracy = {best_metrics['acc']:.4f} % (epoch {best_metrics['epoch']})",
                  logger=logger)
    if best_vote:
        print_log(f"[Fine-tuning] best voting validation accuracy = {best_vote['acc_vote']:.4f} % "
                  f"(epoch {best_vote['epoch']}, {best_vote_path})", logger=logger)
    return best_metrics


def test_net(args, config) -> Dict[str, float]:
    """``--test --ckpts F.pth``: accuracy of a fine-tuned classifier on ``config.dataset.test``;
    with ``--vote`` also the voting accuracy: the best of ``voting.repeats`` runs (299 as released,
    each run logged as ``[TEST_VOTE_time k]``). Each is logged with its own label and written to
    ``<experiment_path>/test_results.json`` (``acc``, ``vote_acc``, ``vote_acc_mean``).

    A few-shot ``--way/--shot/--fold`` reaches the test set only when it is a few-shot set: the
    released ``cfgs/fewshot.yaml`` tests on the full ModelNet40 test split."""
    logger, device, amp = builder.job_context(args, config)
    npoints = _npoints(config)
    vote_cfg = voting_config(config)
    test_cfg = config.dataset.get("test") or config.dataset.val
    if getattr(args, "shot", -1) != -1 and test_cfg._base_.get("NAME") == "ModelNetFewShot":
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
        times, repeats = vote_cfg["times"], vote_cfg["repeats"]
        runs = []
        show_runs = show_progress and get_dist_info()[0] == 0
        bar = tqdm(range(1, repeats + 1), desc="voting runs", disable=not show_runs, dynamic_ncols=True)
        with logging_redirect_tqdm(loggers=[logger]) if show_runs else contextlib.nullcontext():
            for run in bar:
                runs.append(accuracy(model, test_dataloader, device, npoints, amp, vote=True,
                                     show_progress=show_progress, desc=f"vote {run}/{repeats}", times=times))
                print_log("[TEST_VOTE_time %d]  acc = %.4f, best acc = %.4f" % (run, runs[-1], max(runs)), logger=logger)
                bar.set_postfix(best=f"{max(runs):.2f}")
        results["vote_acc"] = max(runs)
        results["vote_acc_mean"] = float(np.mean(runs))
        print_log(f"[TEST_VOTE] voting accuracy (best of {repeats} run(s) of {times} passes of {npoints} of FPS "
                  f"{points_for_sampling(npoints)} with scale-and-translate, logits averaged; mean over runs "
                  f"{results['vote_acc_mean']:.4f} %) = {results['vote_acc']:.4f} %", logger=logger)
    if get_dist_info()[0] == 0:
        path = write_json(os.path.join(args.experiment_path, "test_results.json"),
                          {**results, "ckpts": str(args.ckpts), "test_shapes": len(test_dataloader.dataset),
                           "npoints": npoints, "voting": dict(vote_cfg) if args.vote else None})
        print_log(f"[TEST] results written to {path}", logger=logger)
    return results
