"""Fine-tuning and testing of the classifier (``--finetune_model`` / ``--scratch_model`` /
``--test``): ScanObjectNN, ModelNet40, few-shot ModelNet40.

Training: FPS to ``point_all`` (1200 for 1024 points; 2400 for 2048, but at most the cloud's N:
all of ScanObjectNN's 2048, see ``fps_to``), a random ``npoints`` of those, then per-sample scale-and-translate. Testing: FPS to ``npoints``. Voting: ``voting.times``
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
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from datasets.common import DatasetFormatError
from datasets.data_transforms import PointcloudScaleAndTranslate
from engine import builder
from engine.batchnorm import refresh_batchnorm
from engine.engine import (
    AccuracyMeter,
    TrainRun,
    check_finite_points,
    epoch_range,
    evaluate,
    log_validation,
    resume,
    train_epoch,
    validation_due,
    write_epoch_metrics,
)
from engine.preemption import StopRequest
from extensions.pointops import fps, gather_points
from utils.checkpoint import checkpoint_class_names, load_checkpoint_file, write_json
from utils.logger import print_log
from utils.schema import ConfigError, origin_of
from utils.settings import RunSettings
from utils.text import ClassNamesError, check_class_names, printable
from utils.validate import VOTING_DEFAULTS

VOTE_TIMES = VOTING_DEFAULTS["times"]  # voting passes (the released 10)

# ------------------------------------------------------------------------- epochs and schedule
def vote_due(acc: float, best_before: float, vote_cfg: Dict[str, float]) -> bool:
    """The released rule for a voting validation during fine-tuning (``runner_finetune.run_net``):
    ``acc > 92.1 or (better and acc > 91)``, ``better`` meaning above the best accuracy so far."""
    return acc > vote_cfg["above"] or (acc > best_before and acc > vote_cfg["above_if_best"])


def voting_config(config) -> Dict[str, float]:
    """The ``voting`` section with the released defaults filled in (its values were checked when the
    config was loaded: utils.validate.check_voting)."""
    out = dict(VOTING_DEFAULTS)
    out.update(dict((config or {}).get("voting") or {}))
    out["times"], out["repeats"] = int(out["times"]), int(out["repeats"])
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
    """(B, N, 3) -> (B, npoints, 3): FPS to ``point_all`` points (at most N), then the same random
    ``npoints`` of them (numpy RNG, one choice for the whole batch as released). With
    ``point_all == N`` the FPS set is :func:`fps_to`'s (every distinct point, the released kernel's
    repeats for the rest)."""
    B, N, _ = points.shape
    if npoints > N:
        raise ValueError(f"cannot draw {npoints} points from clouds of {N}; raise the dataset's N_POINTS or lower npoints")
    point_all = min(point_all or points_for_sampling(npoints), N)
    pool = fps_to(points, point_all)
    return pool[:, torch.from_numpy(np.random.choice(point_all, npoints, replace=False)).to(points.device)]


def fps_to(points: Tensor, npoints: int) -> Tensor:
    """FPS to ``npoints``: (B, N, C) -> (B, npoints, C), sampled on the first three channels.

    With ``N == npoints`` (ScanObjectNN's 2048 points at ``npoints`` 2048, ModelNet's 8192 at 8192)
    the released code still runs the pointnet2_ops kernel, whose output is not the cloud reordered:
    it holds point 0 and every distinct point outside the 1e-3 ball (squared norm) around the origin
    once, and for each other point (inside the ball, or an exact duplicate) a repeat of the tie pick,
    point 0 (the lowest-index point outside the ball when point 0 is inside it, as the torch and
    triton FPS backends pick; the CUDA kernel's tie order can differ then). Here the same multiset,
    without the N-step loop: those points are replaced by the tie pick in place, the order otherwise
    kept (FPS order differs only by a permutation that keeps point 0 first, which the model's
    grouping, FPS from index 0, cannot tell apart). A cloud with nothing to replace is returned as is.
    """
    B, N, _ = points.shape
    if N != npoints:
        return fps(points, npoints)
    from extensions.pointops import SKIP_NORM2

    xyz = points[..., :3].float()
    x, y, z = xyz.unbind(-1)
    outside = (x.square() + y.square() + z.square()) > SKIP_NORM2  # (B, N), in the kernel's fp32 order
    batch = torch.arange(B, device=points.device, dtype=xyz.dtype).view(B, 1, 1).expand(B, N, 1)
    _, inverse = torch.unique(torch.cat([batch, xyz], -1).reshape(B * N, 4), dim=0, return_inverse=True)
    position = torch.arange(B * N, device=points.device)
    first = torch.full((int(inverse.max()) + 1,), B * N, device=points.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, position, reduce="amin")
    keep = outside & (first[inverse] == position).view(B, N)
    keep[:, 0] = True  # the first pick, also inside the ball
    if bool(keep.all()):
        return points
    tie = outside.int().argmax(1)  # point 0 when outside the ball (or when every point is inside)
    index = torch.where(keep, torch.arange(N, device=points.device).expand(B, N), tie.view(B, 1))
    return gather_points(points, index)


@torch.no_grad()
def vote_logits(model: Callable[[Tensor], Tensor], points: Tensor, npoints: int, times: int = VOTE_TIMES,
                transform: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Voting: mean of ``times`` logits (B, classes), each over a random ``npoints`` subset of
    the FPS-``point_all`` set of ``points`` (B, N, 3), transformed by ``transform`` (default
    per-sample scale-and-translate)."""
    transform = transform or PointcloudScaleAndTranslate()
    B, N, _ = points.shape
    point_all = min(points_for_sampling(npoints), N)
    pool = fps_to(points, point_all)  # the FPS set, in FPS order (N == point_all: see fps_to)
    logits = []
    for _ in range(times):
        choice = torch.from_numpy(np.random.choice(point_all, npoints, replace=False)).to(points.device)
        logits.append(model(transform(pool[:, choice])).float())
    return torch.stack(logits, dim=0).mean(dim=0)


def make_train_step(device: torch.device, npoints: int, loss_fn):
    """Train step: FPS subset + scale-and-translate -> logits -> ``loss`` and ``acc`` (%)."""
    augment = PointcloudScaleAndTranslate()

    def step(model: nn.Module, batch) -> Dict[str, Tensor]:
        points, label = unpack_cls_batch(batch[2], device)
        loss, acc = loss_fn(model(augment(fps_then_subset(points[..., :3], npoints))), label)
        return {"loss": loss, "acc": acc}

    return step


def make_bn_forward(device: torch.device, npoints: int):
    """BatchNorm recalibration (engine/batchnorm.py): a training batch as evaluation sees it (FPS to
    ``npoints``, no augmentation) -> logits."""

    def forward(model: nn.Module, batch) -> Tensor:
        points, _ = unpack_cls_batch(batch[2], device)
        return model(fps_to(points[..., :3], npoints))

    return forward


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


def classes_from_dataset(config, dataset, logger=None) -> Optional[List[str]]:
    """The class names of a training set that names its classes (``dataset.class_names``, e.g. a
    folder of class subfolders), which set ``model.cls_dim``; a config ``cls_dim`` that disagrees
    is a ConfigError. None for datasets without names (cls_dim stays the config's)."""
    names = getattr(dataset, "class_names", None)
    if names is None:
        return None
    try:
        names = check_class_names(list(names))
    except ClassNamesError as e:
        raise DatasetFormatError(f"the class names of the training set {getattr(dataset, 'root', '')}: {e}") from None
    given = config.model.get("cls_dim")
    if given is not None and int(given) != len(names):
        shown = printable(", ".join(names[:8]))
        raise ConfigError(f"'model.cls_dim' = {given}: the training set has {len(names)} classes ({shown}"
                          f"{', ...' if len(names) > 8 else ''}); remove cls_dim or set it to {len(names)}",
                          origin_of(config.model))
    config.model.cls_dim = len(names)
    print_log(f"Classes: {len(names)} from the training set ({printable(', '.join(names[:10]))}"
              f"{', ...' if len(names) > 10 else ''})",
              logger=logger)
    return names


def run_net(settings: RunSettings, config, writers=(None, None), stop: Optional[StopRequest] = None,
            logger=None) -> Dict[str, float]:
    """Fine-tune (``--finetune_model --ckpts P.pth``) or train from scratch (``--scratch_model``)
    ``config.model`` on ``config.dataset.train``; validate on ``config.dataset.val`` when
    :func:`engine.engine.validation_due`; keep ``ckpt-best`` (accuracy), ``ckpt-last`` and, with
    ``--vote``, ``ckpt-best_vote``. Returns the best figures."""
    train_writer, val_writer = writers
    npoints, device, amp = int(config.npoints), settings.device, settings.amp_dtype
    loader_args = dict(seed=settings.seed, num_workers=settings.num_workers)
    _, train_loader = builder.dataset_builder(config.dataset.train, **loader_args)
    _, val_loader = builder.dataset_builder(config.dataset.val, **loader_args)
    class_names = classes_from_dataset(config, train_loader.dataset, logger)
    state = builder.build_training(config, settings, logger)
    state.class_names = class_names
    vote_cfg = voting_config(config)
    best_vote_path = os.path.join(settings.experiment_path, "ckpt-best_vote.pth")
    best_vote: Dict[str, float] = {}
    if settings.resume != "no":
        resume(state, settings, logger=logger)
        if os.path.exists(best_vote_path):
            best_vote = dict(load_checkpoint_file(best_vote_path, trust=settings.trust_checkpoint).get("best_metrics") or {})
    elif settings.ckpts is not None:  # --finetune_model (the parser refuses --ckpts with --scratch_model)
        state.model.load_model_from_ckpt(settings.ckpts, strict=not settings.partial_load, logger=logger,
                                         trust=settings.trust_checkpoint)
    else:
        print_log("Training from scratch (no pre-trained weights)", logger=logger)
    model = builder.wrap_distributed(state.model, settings, logger)
    train_step = make_train_step(device, npoints, state.model.get_loss_acc)
    bn_forward = make_bn_forward(device, npoints)
    run = TrainRun(settings, config, state, stop, train_writer, logger)

    def accuracy_of(vote: bool = False, desc: str = "validate") -> float:
        return accuracy(model, val_loader, device, npoints, amp, vote=vote, show_progress=settings.progress, desc=desc,
                        times=vote_cfg["times"])

    for epoch in epoch_range(state.start_epoch, settings.n_epochs, settings.progress, logger):
        metrics = train_epoch(run, model, train_step, train_loader, epoch)
        refresh_batchnorm(model, train_loader, bn_forward, settings, epoch, logger)

        if validation_due(epoch, settings):
            acc = accuracy_of()
            figures = {"acc": acc}
            # the released run_net: a voting validation once the accuracy passes its thresholds
            if settings.vote and vote_due(acc, float(state.best_metrics.get("acc", -1.0)), vote_cfg):
                figures["acc_vote"] = accuracy_of(vote=True, desc="validate_vote")
                print_log(f"[Validation_vote] EPOCH: {epoch}  acc_vote = {figures['acc_vote']:.4f}", logger=logger)
            log_validation(epoch, figures, val_writer, logger)
            metrics.update(figures)
            if acc > state.best_metrics.get("acc", -1.0):
                state.best_metrics = {**figures, "epoch": epoch}
                run.save("ckpt-best", epoch, metrics)
            if figures.get("acc_vote", -1.0) > best_vote.get("acc_vote", -1.0):
                best_vote = {"acc_vote": figures["acc_vote"], "epoch": epoch}
                run.save("ckpt-best_vote", epoch, metrics, best_metrics=best_vote)
        write_epoch_metrics(state, settings, epoch, metrics, logger)
        run.save("ckpt-last", epoch, metrics)

    if state.best_metrics:
        print_log(f"[Fine-tuning] best validation accuracy = {state.best_metrics['acc']:.4f} % "
                  f"(epoch {state.best_metrics['epoch']})", logger=logger)
    if best_vote:
        print_log(f"[Fine-tuning] best voting validation accuracy = {best_vote['acc_vote']:.4f} % "
                  f"(epoch {best_vote['epoch']}, {best_vote_path})", logger=logger)
    return state.best_metrics


def test_net(settings: RunSettings, config, logger=None) -> Dict[str, float]:
    """``--test --ckpts F.pth``: accuracy of a fine-tuned classifier on ``config.dataset.test``;
    with ``--vote`` also the voting accuracy: the best of ``voting.repeats`` runs (299 as released,
    each run logged as ``[TEST_VOTE_time k]``). Each is logged with its own label and written to
    ``<experiment_path>/test_results.json`` (``acc``, ``vote_acc``, ``vote_acc_mean``).

    A few-shot ``--way/--shot/--fold`` reaches the test set only when it is a few-shot set: the
    released ``cfgs/fewshot.yaml`` tests on the full ModelNet40 test split."""
    npoints, device, amp = int(config.npoints), settings.device, settings.amp_dtype
    vote_cfg = voting_config(config)
    test_cfg = config.dataset.get("test") or config.dataset.val
    if settings.few_shot is not None and test_cfg._base_.get("NAME") == "ModelNetFewShot":
        way, shot, fold = settings.few_shot
        test_cfg.others.update(way=way, shot=shot, fold=fold)
    _, test_loader = builder.dataset_builder(test_cfg, seed=settings.seed, num_workers=settings.num_workers)
    ckpt = load_checkpoint_file(settings.ckpts, trust=settings.trust_checkpoint)
    names = checkpoint_class_names(ckpt, settings.ckpts, config.model.get("cls_dim"))
    if config.model.get("cls_dim") is None and names:
        config.model.cls_dim = len(names)
    base_model = builder.model_builder(config.model, settings)
    builder.load_model(base_model, settings.ckpts, logger=logger, strict=not settings.partial_load,
                       trust=settings.trust_checkpoint)
    model = builder.wrap_distributed(base_model.to(device), settings, logger)
    show_progress = settings.progress
    results = {"acc": accuracy(model, test_loader, device, npoints, amp, show_progress=show_progress)}
    print_log(f"[TEST] plain accuracy (FPS {npoints} points, 1 pass) = {results['acc']:.4f} %", logger=logger)
    if settings.vote:
        times, repeats = vote_cfg["times"], vote_cfg["repeats"]
        runs = []
        show_runs = show_progress and settings.is_main_process
        bar = tqdm(range(1, repeats + 1), desc="voting runs", disable=not show_runs, dynamic_ncols=True)
        with logging_redirect_tqdm(loggers=[logger]) if show_runs and logger is not None else contextlib.nullcontext():
            for run in bar:
                runs.append(accuracy(model, test_loader, device, npoints, amp, vote=True,
                                     show_progress=show_progress, desc=f"vote {run}/{repeats}", times=times))
                print_log("[TEST_VOTE_time %d]  acc = %.4f, best acc = %.4f" % (run, runs[-1], max(runs)), logger=logger)
                bar.set_postfix(best=f"{max(runs):.2f}")
        results["vote_acc"] = max(runs)
        results["vote_acc_mean"] = float(np.mean(runs))
        print_log(f"[TEST_VOTE] voting accuracy (best of {repeats} run(s) of {times} passes of {npoints} of FPS "
                  f"{points_for_sampling(npoints)} with scale-and-translate, logits averaged; mean over runs "
                  f"{results['vote_acc_mean']:.4f} %) = {results['vote_acc']:.4f} %", logger=logger)
    if settings.is_main_process:
        path = write_json(os.path.join(settings.experiment_path, "test_results.json"),
                          {**results, "ckpts": str(settings.ckpts), "test_shapes": len(test_loader.dataset),
                           "npoints": npoints, "voting": dict(vote_cfg) if settings.vote else None})
        print_log(f"[TEST] results written to {path}", logger=logger)
    return results
