"""Pre-training job (``python main.py --config cfgs/pretrain.yaml``): Inter-MAE / Point-MAE.

AdamW, per-epoch cosine with warm-up; per-sample scale-and-translate augmentation; optional
validation (reconstruction loss with fixed masks) and linear-SVM validation of the encoder.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from datasets.data_transforms import PointcloudScaleAndTranslate
from engine import builder
from engine.engine import MeanMeter, evaluate, log_scalars, train_one_epoch
from engine.svm import svm_validate
from utils.logger import get_logger, print_log
from utils.misc import resolve_device


def unpack_batch(data, device: torch.device) -> Tuple[Tensor, Optional[Tensor]]:
    """A loader's ``data`` -> (points (B, N, 3), image input or None) on ``device``.

    The image input is the views (B, V, 3, H, W) or cached encoder features (B, V, F).
    """
    if isinstance(data, dict):
        imgs = data.get("imgs", data.get("img_feats"))
        return data["points"].to(device, non_blocking=True), (imgs.to(device, non_blocking=True) if imgs is not None else None)
    return data.to(device, non_blocking=True), None


def make_train_step(device: torch.device, use_images: bool):
    """Train step: augmented points (and views) -> the model's loss dict (``loss``, ``loss_rec``,
    ``loss_con`` with images). Views are dropped for a model without an image branch."""
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
    logger = get_logger(args.log_name)
    device = resolve_device(getattr(args, "device", None), args.local_rank)
    use_amp = bool(getattr(args, "amp", False) or config.get("amp", False))
    print_log(f"device: {device}; bf16 autocast: {use_amp}", logger=logger)

    train_sampler, train_dataloader = builder.dataset_builder(args, config.dataset.train)
    val_dataloader = None
    if config.dataset.get("val") is not None:
        _, val_dataloader = builder.dataset_builder(args, config.dataset.val)

    base_model = builder.model_builder(config.model).to(device)
    start_epoch, best_metrics = 0, {}
    if args.resume:
        start_epoch, best_metrics = builder.resume_model(base_model, args, logger=logger)
    elif args.start_ckpts is not None:
        builder.load_model(base_model, args.start_ckpts, logger=logger, strict=not getattr(args, "partial_load", False))

    has_image_branch = getattr(base_model, "image_branch", None) is not None
    # pro_head is idle without an image branch, so DDP must tolerate unused parameters then.
    unused = not has_image_branch and hasattr(base_model, "pro_head")
    model = builder.wrap_distributed(base_model, args, device, logger, find_unused_parameters=unused)

    optimizer, scheduler = builder.build_opti_sche(base_model, config)
    if args.resume:
        builder.resume_optimizer(optimizer, args, logger=logger, scheduler=scheduler)

    train_step = make_train_step(device, has_image_branch)
    ckpt_period = int(config.get("ckpt_period", 0) or 0)
    svm_cfg = config.get("svm_validation")
    metrics: Dict[str, float] = {}
    for epoch in range(start_epoch, config.max_epoch):
        train_sampler.set_epoch(epoch)
        if scheduler is not None:
            scheduler.step(epoch)
        epoch_start = time.time()
        stats = train_one_epoch(model, train_step, train_dataloader, optimizer, device, epoch,
                                accum=int(config.get("step_per_update", 1)), clip=float(config.get("grad_norm_clip", 0) or 0),
                                amp=use_amp, writer=train_writer, progress=getattr(args, "progress", True))
        stats_text = " ".join(f"{k}={v:.5g}" for k, v in stats.items())
        print_log(f"[Training] EPOCH: {epoch} EpochTime = {time.time() - epoch_start:.1f} s {stats_text} "
                  f"lr = {optimizer.param_groups[0]['lr']:.6f}", logger=logger)
        log_scalars(train_writer, "Loss/Epoch", stats, epoch)
        metrics = {k: v for k, v in stats.items() if k.startswith("loss")}

        if val_dataloader is not None and (epoch + 1) % max(args.val_freq, 1) == 0:
            val_loss = evaluate(model, make_val_step(device), val_dataloader, device, MeanMeter(device), amp=use_amp,
                                seed=0).compute()["loss_rec"]
            metrics["val_loss_rec"] = val_loss
            print_log(f"[Validation] EPOCH: {epoch} reconstruction loss = {val_loss:.6f}", logger=logger)
            log_scalars(val_writer, "Metric", {"val_loss_rec": val_loss}, epoch)
            if not best_metrics or val_loss < best_metrics.get("val_loss_rec", math.inf):
                best_metrics = {"val_loss_rec": val_loss, "epoch": epoch}
        if svm_cfg is not None and svm_cfg.get("enabled", False) and (epoch + 1) % max(int(svm_cfg.get("freq", 1)), 1) == 0:
            svm_acc = svm_validate(base_model, config, args, device, logger=logger)
            if svm_acc is not None:
                metrics["svm_acc"] = svm_acc
                print_log(f"[Validation] EPOCH: {epoch} linear SVM accuracy = {svm_acc:.4f} %", logger=logger)
                log_scalars(val_writer, "Metric", {"svm_acc": svm_acc}, epoch)

        builder.save_checkpoint(base_model, optimizer, epoch, metrics, best_metrics, "ckpt-last", args, logger,
                                scheduler=scheduler)
        if ckpt_period > 0 and (epoch + 1) % ckpt_period == 0:
            builder.save_checkpoint(base_model, optimizer, epoch, metrics, best_metrics, f"ckpt-epoch-{epoch + 1:03d}",
                                    args, logger, scheduler=scheduler)
    return metrics
