"""Pre-training loop (SPEC §6): AdamW, per-epoch cosine with warm-up, optional bf16 autocast."""
from __future__ import annotations

import math
import time
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from tqdm import tqdm

from datasets.data_transforms import PointcloudScaleAndTranslate
from tools import builder
from utils.config import check_top_level
from utils.dist_utils import get_dist_info, reduce_tensor
from utils.logger import get_logger, print_log
from utils.misc import resolve_device


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops before the optimizer step."""


def unpack_batch(data, device: torch.device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A loader's ``data`` -> (points (B, N, 3), image input or None) on ``device``.

    The image input is the views (B, V, 3, H, W) or cached encoder features (B, V, F).
    """
    if isinstance(data, dict):
        imgs = data.get("imgs", data.get("img_feats"))
        return data["points"].to(device, non_blocking=True), (imgs.to(device, non_blocking=True) if imgs is not None else None)
    return data.to(device, non_blocking=True), None


def autocast_context(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device, epoch: int,
                    config, use_amp: bool = False, train_writer=None, show_progress: bool = True) -> Dict[str, float]:
    """One pass over ``loader``. Returns the epoch means of the loss terms (averaged over ranks)."""
    model.train()
    augment = PointcloudScaleAndTranslate()
    accum = int(config.get("step_per_update", 1))
    clip = float(config.get("grad_norm_clip", 0) or 0)
    n_batches = len(loader)
    sums: Dict[str, float] = {}
    seen = 0
    rank, world_size = get_dist_info()
    has_image_branch = getattr(builder.unwrap_model(model), "image_branch", None) is not None
    pbar = tqdm(loader, desc=f"epoch {epoch}", disable=not show_progress or rank != 0, dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for idx, (_, _, data) in enumerate(pbar):
        points, imgs = unpack_batch(data, device)
        points = augment(points)
        if not has_image_branch:
            imgs = None  # e.g. a point-only model on ShapeNetRender with n_imgs > 0
        with autocast_context(device, use_amp):
            losses = model(points, imgs)
        loss = losses["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"non-finite loss {loss.detach().item()} at epoch {epoch}, iteration {idx} "
                f"({ {k: float(v.detach()) for k, v in losses.items()} }); stopping. The last checkpoint is untouched.")
        (loss / accum).backward()
        if (idx + 1) % accum == 0 or idx + 1 == n_batches:
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        logged = {k: reduce_tensor(v.detach().float()).item() for k, v in losses.items()}
        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + v
        seen += 1
        lr = optimizer.param_groups[0]["lr"]
        samples_per_s = (idx + 1) * points.shape[0] * world_size / (time.perf_counter() - start)
        if train_writer is not None:
            step = epoch * n_batches + idx
            for k, v in logged.items():
                train_writer.add_scalar(f"Loss/Batch/{k}", v, step)
            train_writer.add_scalar("Loss/Batch/LR", lr, step)
        pbar.set_postfix({**{k: f"{v:.4g}" for k, v in logged.items() if k != "loss"},
                          "lr": f"{lr:.2e}", "samples/s": f"{samples_per_s:.1f}"})
    pbar.close()
    means = {k: v / max(seen, 1) for k, v in sums.items()}
    means["samples_per_s"] = seen * (points.shape[0] if seen else 0) * world_size / max(time.perf_counter() - start, 1e-9)
    return means


@torch.no_grad()
def validate_reconstruction(model: nn.Module, loader, device: torch.device, use_amp: bool = False, seed: int = 0) -> float:
    """Mean reconstruction loss on a validation set with fixed random masks (same every epoch);
    the training RNG streams are left untouched."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for _, _, data in loader:
            points, _ = unpack_batch(data, device)
            with autocast_context(device, use_amp):
                losses = model(points)
            total += losses["loss_rec"].float() * points.shape[0]
            count += points.shape[0]
    return reduce_tensor(total / max(count, 1)).item()


def run_net(args, config, train_writer=None, val_writer=None):
    """Pre-train ``config.model`` on ``config.dataset.train`` (released entry point)."""
    logger = get_logger(args.log_name)
    check_top_level(config, required=("model", "dataset", "optimizer", "max_epoch", "total_bs"))
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

    # pro_head is idle without an image branch, so DDP must tolerate unused parameters then.
    unused = getattr(base_model, "image_branch", None) is None and hasattr(base_model, "pro_head")
    model = builder.wrap_distributed(base_model, args, device, logger, find_unused_parameters=unused)

    optimizer, scheduler = builder.build_opti_sche(base_model, config)
    if args.resume:
        builder.resume_optimizer(optimizer, args, logger=logger, scheduler=scheduler)

    ckpt_period = int(config.get("ckpt_period", 0) or 0)
    metrics = {}
    for epoch in range(start_epoch, config.max_epoch):
        train_sampler.set_epoch(epoch)
        if scheduler is not None:
            scheduler.step(epoch)
        epoch_start = time.time()
        stats = train_one_epoch(model, train_dataloader, optimizer, device, epoch, config, use_amp, train_writer,
                                show_progress=getattr(args, "progress", True))
        stats_text = " ".join(f"{k}={v:.5g}" for k, v in stats.items())
        print_log(f"[Training] EPOCH: {epoch} EpochTime = {time.time() - epoch_start:.1f} s {stats_text} "
                  f"lr = {optimizer.param_groups[0]['lr']:.6f}", logger=logger)
        if train_writer is not None:
            for k, v in stats.items():
                train_writer.add_scalar(f"Loss/Epoch/{k}", v, epoch)
        metrics = {k: v for k, v in stats.items() if k.startswith("loss")}

        if val_dataloader is not None and (epoch + 1) % max(args.val_freq, 1) == 0:
            val_loss = validate_reconstruction(model, val_dataloader, device, use_amp)
            metrics["val_loss_rec"] = val_loss
            print_log(f"[Validation] EPOCH: {epoch} reconstruction loss = {val_loss:.6f}", logger=logger)
            if val_writer is not None:
                val_writer.add_scalar("Metric/val_loss_rec", val_loss, epoch)
            if not best_metrics or val_loss < best_metrics.get("val_loss_rec", math.inf):
                best_metrics = {"val_loss_rec": val_loss, "epoch": epoch}
        svm_cfg = config.get("svm_validation")
        if svm_cfg is not None and svm_cfg.get("enabled", False) and (epoch + 1) % max(int(svm_cfg.get("freq", 1)), 1) == 0:
            from tools.svm import svm_validate

            svm_acc = svm_validate(base_model, config, args, device, logger=logger)
            if svm_acc is not None:
                metrics["svm_acc"] = svm_acc
                print_log(f"[Validation] EPOCH: {epoch} linear SVM accuracy = {svm_acc:.4f} %", logger=logger)
                if val_writer is not None:
                    val_writer.add_scalar("Metric/svm_acc", svm_acc, epoch)

        builder.save_checkpoint(base_model, optimizer, epoch, metrics, best_metrics, "ckpt-last", args, logger,
                                scheduler=scheduler)
        if ckpt_period > 0 and (epoch + 1) % ckpt_period == 0:
            builder.save_checkpoint(base_model, optimizer, epoch, metrics, best_metrics, f"ckpt-epoch-{epoch + 1:03d}",
                                    args, logger, scheduler=scheduler)
    if train_writer is not None:
        train_writer.close()
    if val_writer is not None:
        val_writer.close()
    return metrics
