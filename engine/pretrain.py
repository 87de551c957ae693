"""Pre-training job (``python main.py --config cfgs/pretrain.yaml``): Inter-MAE / Point-MAE.

AdamW, per-epoch cosine with warm-up; per-sample scale-and-translate augmentation; optional
validation (reconstruction loss with fixed masks) and linear-SVM validation of the encoder.

Epochs and schedule as the released ``tools/runner_pretrain.py`` by default (``epoch_count:
released``: epochs ``0 .. max_epoch``; ``lr_schedule``: see :mod:`engine.finetune`). The released
runner never validates (its SVM validation is commented out); its config names ShapeNetRender's
``test`` subset as ``dataset.val``, which the released loader could not tell from the training
shapes. Here ``dataset.val`` is validated on when it can be built; when its data is absent (e.g.
no ``test.txt`` split of ShapeNetRender) the run logs one line and trains without validation.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from datasets.common import DatasetFormatError
from datasets.data_transforms import PointcloudScaleAndTranslate
from engine import builder
from engine.engine import MeanMeter, evaluate, fit
from engine.svm import svm_validate
from utils.logger import print_log


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


def make_val_step(device: torch.device):
    def step(model: nn.Module, batch, meter: MeanMeter) -> None:
        points, _ = unpack_batch(batch[2], device)
        meter.update(points.shape[0], loss_rec=model(points)["loss_rec"])

    return step


def run_net(args, config, train_writer=None, val_writer=None) -> Dict[str, float]:
    """Pre-train ``config.model`` on ``config.dataset.train`` (released entry point)."""
    logger, device, amp = builder.job_context(args, config)
    train_sampler, train_dataloader = builder.dataset_builder(args, config.dataset.train)
    val_dataloader = None
    if config.dataset.get("val") is not None:
        try:
            _, val_dataloader = builder.dataset_builder(args, config.dataset.val)
        except DatasetFormatError as e:
            reason = str(e).splitlines()[0]
            print_log(f"[Validation] skipped: dataset.val cannot be read ({reason})", logger=logger)

    base_model, optimizer, scheduler, scaler, n_epochs = builder.build_training(config, device, amp, logger)
    start_epoch, best_metrics = 0, {}
    if args.resume:
        start_epoch, best_metrics = builder.resume(base_model, optimizer, args, logger, scheduler, scaler)
    elif args.start_ckpts is not None:
        builder.load_model(base_model, args.start_ckpts, logger=logger, strict=not getattr(args, "partial_load", False))

    has_image_branch = getattr(base_model, "image_branch", None) is not None
    # pro_head is idle without an image branch, so DDP must tolerate unused parameters then.
    unused = not has_image_branch and hasattr(base_model, "pro_head")
    model = builder.wrap_distributed(base_model, args, device, logger, find_unused_parameters=unused)

    svm_cfg = config.get("svm_validation") or {}
    svm_freq = max(int(svm_cfg.get("freq", 1)), 1) if svm_cfg.get("enabled", False) else 0

    def validate(epoch: int) -> Dict[str, float]:
        figures = {}
        if val_dataloader is not None and (epoch + 1) % max(args.val_freq, 1) == 0:
            figures["val_loss_rec"] = evaluate(model, make_val_step(device), val_dataloader, device, MeanMeter(device),
                                               amp=amp, seed=0).compute()["loss_rec"]
        if svm_freq and (epoch + 1) % svm_freq == 0:
            svm_acc = svm_validate(base_model, config, args, device, logger=logger, epoch=epoch)
            if svm_acc is not None:
                figures["svm_acc"] = svm_acc
        return figures

    ckpt_period = int(config.get("ckpt_period", 0) or 0)

    def save(tag: str, epoch: int, metrics: Dict[str, float], best: Dict[str, float]) -> None:
        if tag != "last":
            return
        for prefix in ["ckpt-last"] + ([f"ckpt-epoch-{epoch + 1:03d}"] if ckpt_period and (epoch + 1) % ckpt_period == 0 else []):
            builder.save_checkpoint(base_model, optimizer, epoch, metrics, best, prefix, args, logger, scheduler=scheduler,
                                    scaler=scaler)

    metrics, _ = fit(model, make_train_step(device, has_image_branch), train_dataloader, train_sampler, optimizer,
                     scheduler, device, start_epoch=start_epoch, max_epoch=n_epochs,
                     accum=int(config.get("step_per_update", 1)), clip=float(config.get("grad_norm_clip", 0) or 0),
                     amp=amp, scaler=scaler, validate=validate, better=lambda m, b: m.get("val_loss_rec", math.inf) <
                     b.get("val_loss_rec", math.inf), save=save, best=best_metrics, writers=(train_writer, val_writer),
                     progress=getattr(args, "progress", True), logger=logger)
    return metrics
