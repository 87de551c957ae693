"""Pre-training job (``python main.py --config cfgs/pretrain.yaml``): Inter-MAE / Point-MAE.

AdamW, per-epoch cosine with warm-up; per-sample scale-and-translate augmentation; optional
validation (reconstruction loss with fixed masks, and the feature health of the encoder's pooled
features on the validation shapes: :mod:`engine.feature_health`) and linear-SVM validation of the
encoder.

Epochs and schedule as the released ``tools/runner_pretrain.py`` by default (``epoch_count:
released``: epochs ``0 .. max_epoch``; ``lr_schedule``: see :mod:`engine.finetune`). The released
runner never validates (its SVM validation is commented out); its config names ShapeNetRender's
``test`` subset as ``dataset.val``, which the released loader could not tell from the training
shapes. Here ``dataset.val`` is validated on when it can be built; when its data is absent (e.g.
no ``test.txt`` split of ShapeNetRender) the run logs one line and trains without validation.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from datasets.common import DatasetFormatError
from datasets.data_transforms import PointcloudScaleAndTranslate
from engine import builder
from engine.batchnorm import refresh_batchnorm
from engine.budget import MIN_PRETRAIN_STEPS, short_pretraining_warning
from engine.engine import (
    MeanMeter,
    TrainRun,
    data_summary,
    epoch_copy_due,
    epoch_range,
    evaluate,
    log_validation,
    resume,
    train_epoch,
    validation_due,
    write_epoch_metrics,
)
from engine.feature_health import collapse_warning, feature_health, pooled_features
from engine.preemption import StopRequest
from engine.svm import svm_validate
from utils.dist_utils import all_gather_objects, unwrap_model
from utils.logger import print_log
from utils.settings import RunSettings


def unpack_batch(data, device: torch.device) -> Tuple[Tensor, Optional[Tensor]]:
    """A loader's ``data`` -> (points (B, N, 3), image input or None) on ``device``.

    The image input is the views (B, V, 3, H, W) or cached encoder features (B, V, F).
    """
    if isinstance(data, dict):
        imgs = data.get("imgs", data.get("img_feats"))
        return data["points"].to(device, non_blocking=True), (imgs.to(device, non_blocking=True) if imgs is not None else None)
    return data.to(device, non_blocking=True), None


def make_train_step(device: torch.device, use_images: bool):
    """Train step: augmented points (and views) -> the model's loss dict: ``loss`` (the total),
    ``loss_rec`` and, with an image branch, ``loss_con_raw`` (NT-Xent) and ``loss_con_weighted``
    (its weighted share of ``loss``). The engine logs each under its own name, on the console and
    as TensorBoard ``Loss/Batch/<name>`` and ``Loss/Epoch/<name>``. Views are dropped for a model
    without an image branch."""
    augment = PointcloudScaleAndTranslate()

    def step(model: nn.Module, batch) -> Dict[str, Tensor]:
        points, imgs = unpack_batch(batch[2], device)
        return model(augment(points), imgs if use_images else None)

    return step


def make_bn_forward(device: torch.device, use_images: bool):
    """BatchNorm recalibration (engine/batchnorm.py): a training batch without augmentation -> the
    model's loss dict (views only with an image branch)."""

    def forward(model: nn.Module, batch) -> Dict[str, Tensor]:
        points, imgs = unpack_batch(batch[2], device)
        return model(points, imgs if use_images else None)

    return forward


def make_val_step(device: torch.device, features: Optional[List[Tensor]] = None):
    """Validation step: the reconstruction loss (masks as the evaluation's seeded RNG draws them);
    with ``features`` (a list), also appends each batch's pooled features of the unmasked encoder
    ((B, 2C), on the CPU) for :func:`validation_feature_health`."""
    def step(model: nn.Module, batch, meter: MeanMeter) -> None:
        points, _ = unpack_batch(batch[2], device)
        meter.update(points.shape[0], loss_rec=model(points)["loss_rec"])
        if features is not None:
            features.append(pooled_features(unwrap_model(model).MAE_encoder, points).float().cpu())

    return step


def validation_feature_health(features: List[Tensor], epoch: int, first_rank: Optional[float],
                              logger=None) -> Tuple[Dict[str, float], Optional[float]]:
    """Feature health of the validation features of every process (collective): logs a ``[Feature
    health]`` line, a warning when :func:`engine.feature_health.collapse_warning` says so, and returns
    (figures for the validation line, TensorBoard ``Metric/*`` and the checkpoint's metrics, the
    run's first effective rank)."""
    gathered = [f for part in all_gather_objects(features) for f in part]
    if not gathered or sum(f.shape[0] for f in gathered) < 2:
        return {}, first_rank
    health = feature_health(torch.cat(gathered))
    print_log(f"[Feature health] EPOCH: {epoch} validation features: {health.line()}", logger=logger)
    warning = collapse_warning(health, first_rank)
    if warning is not None:
        print_log(f"[Feature health] WARNING: {warning}", logger=logger)
    return health.as_dict(), health.effective_rank if first_rank is None else first_rank


def run_net(settings: RunSettings, config, writers=(None, None), stop: Optional[StopRequest] = None,
            logger=None) -> Dict[str, float]:
    """Pre-train ``config.model`` on ``config.dataset.train`` (released entry point); returns the
    last epoch's figures. A stop request (SIGTERM / SIGINT) ends the run after the current step with
    ``ckpt-last`` written, raising :class:`engine.preemption.Preempted`."""
    train_writer, val_writer = writers
    loader_args = dict(seed=settings.seed, num_workers=settings.num_workers)
    _, train_loader = builder.dataset_builder(config.dataset.train, **loader_args)
    val_loader = None
    if config.dataset.get("val") is not None:
        try:
            _, val_loader = builder.dataset_builder(config.dataset.val, **loader_args)
        except DatasetFormatError as e:
            print_log(f"[Validation] skipped: dataset.val cannot be read ({str(e).splitlines()[0]})", logger=logger)

    state = builder.build_training(config, settings, logger)
    state.data = data_summary(config, {"train": train_loader.dataset,
                                       "val": val_loader.dataset if val_loader is not None else None})
    sche = config.get("scheduler") or {}
    warmup = int((sche.get("kwargs") or {}).get("initial_epochs", 0) or 0) if sche.get("type") == "CosLR" else 0
    min_steps = config.get("min_pretrain_steps")
    budget = short_pretraining_warning(len(train_loader), settings.n_epochs, settings.accum, warmup,
                                       MIN_PRETRAIN_STEPS if min_steps is None else int(min_steps))
    if budget is not None:
        print_log(f"[Pre-training] WARNING: {budget}", logger=logger)
    if settings.resume != "no":
        resume(state, settings, logger=logger)
    elif settings.start_ckpts is not None:
        builder.load_model(state.model, settings.start_ckpts, logger=logger, strict=not settings.partial_load,
                           trust=settings.trust_checkpoint)
    has_image_branch = getattr(state.model, "image_branch", None) is not None
    # pro_head is idle without an image branch, so DDP must tolerate unused parameters then.
    model = builder.wrap_distributed(state.model, settings, logger,
                                     find_unused_parameters=not has_image_branch and hasattr(state.model, "pro_head"))
    train_step, device, amp = make_train_step(settings.device, has_image_branch), settings.device, settings.amp_dtype
    svm_cfg = config.get("svm_validation") or {}
    svm_freq = max(int(svm_cfg.get("freq", 1)), 1) if svm_cfg.get("enabled", False) else 0

    run = TrainRun(settings, config, state, stop, train_writer, logger)
    metrics: Dict[str, float] = {}
    first_rank: Optional[float] = None  # the run's first validation effective rank, for the collapse warning
    for epoch in epoch_range(state.start_epoch, settings.n_epochs, settings.progress, logger):
        metrics = train_epoch(run, model, train_step, train_loader, epoch)
        refresh_batchnorm(model, train_loader, make_bn_forward(device, has_image_branch), settings, epoch, logger,
                          saving=epoch_copy_due(epoch, settings))
        if validation_due(epoch, settings):
            figures = {}
            if val_loader is not None:
                val_features: List[Tensor] = []
                figures["val_loss_rec"] = evaluate(model, make_val_step(device, val_features), val_loader, device,
                                                   MeanMeter(device), amp=amp, seed=0).compute()["loss_rec"]
                health, first_rank = validation_feature_health(val_features, epoch, first_rank, logger=logger)
                figures.update(health)
            if svm_freq and (epoch + 1) % svm_freq == 0:
                svm_acc = svm_validate(state.model, config, settings, logger=logger, epoch=epoch)
                if svm_acc is not None:
                    figures["svm_acc"] = svm_acc
            log_validation(epoch, figures, val_writer, logger)
            metrics.update(figures)
            if figures.get("val_loss_rec", math.inf) < state.best_metrics.get("val_loss_rec", math.inf):
                state.best_metrics = {**figures, "epoch": epoch}

        write_epoch_metrics(state, settings, epoch, metrics, logger)
        run.save("ckpt-last", epoch, metrics)
        if epoch_copy_due(epoch, settings):
            run.save(f"ckpt-epoch-{epoch:03d}", epoch, metrics)
    return metrics
