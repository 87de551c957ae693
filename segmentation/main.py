"""ShapeNetPart part segmentation: fine-tune a pre-trained Inter-MAE / Point-MAE encoder (released command).

    cd segmentation && python main.py --ckpts P.pth --root path/to/shapenetcore_partanno_segmentation_benchmark_v0_normal \
        --learning_rate 0.0002 --epoch 300
    cd segmentation && python main.py --test --log_dir NAME --root ...     # evaluate log/part_seg/NAME/checkpoints/best_model.pth
    torchrun --nproc_per_node N segmentation/main.py --launcher pytorch ...

Outputs: ``segmentation/log/part_seg/<log_dir>/checkpoints/best_model.pth`` (best instance mIoU)
and ``logs/`` (``pt.txt`` log and TensorBoard events).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, Subset  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models.PointTransformer import backbone_state_dict  # noqa: E402
from models.layers import patch_embed_kind_of_state_dict  # noqa: E402
from segmentation.dataset import PartNormalDataset  # noqa: E402
from segmentation.metrics import PartSegMeter, restrict_to_category  # noqa: E402
from segmentation.model import PartSegTransformer, get_loss  # noqa: E402
from tools.builder import add_weight_decay, cosine_lr  # noqa: E402
from utils import dist_utils  # noqa: E402
from utils.checkpoint import (CheckpointError, atomic_save, clean_state_dict, load_checkpoint_file,  # noqa: E402
                              load_state_dict_checked, state_dict_of)
from utils.logger import get_logger, print_log  # noqa: E402
from utils.misc import resolve_device, set_random_seed, worker_init_fn  # noqa: E402

DEFAULT_LOG_ROOT = Path(__file__).resolve().parent / "log"
MODEL_ARGS = ("trans_dim", "depth", "num_heads", "drop_path_rate", "num_group", "group_size", "return_layers", "normal")


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("part segmentation", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=str, default="pt", choices=["pt"], help="model name (released: pt)")
    p.add_argument("--batch_size", type=int, default=16, help="total batch size (split over torchrun processes)")
    p.add_argument("--epoch", type=int, default=300, help="training epochs")
    p.add_argument("--warmup_epoch", type=int, default=10, help="linear warm-up epochs")
    p.add_argument("--learning_rate", type=float, default=0.0002, help="peak learning rate")
    p.add_argument("--decay_rate", "--weight_decay", dest="weight_decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip (0: off)")
    p.add_argument("--npoint", type=int, default=2048, help="points per shape")
    p.add_argument("--normal", action="store_true", help="use normals as extra input channels")
    p.add_argument("--root", type=str, default="../data/shapenetcore_partanno_segmentation_benchmark_v0_normal/",
                   help="ShapeNetPart folder")
    p.add_argument("--ckpts", type=str, default=None, help="pre-training checkpoint (training) / segmentation checkpoint (--test)")
    p.add_argument("--log_dir", type=str, default=None, help="run name under log/part_seg/ (default: timestamp)")
    p.add_argument("--log_root", type=str, default=str(DEFAULT_LOG_ROOT), help="folder holding part_seg/")
    p.add_argument("--test", action="store_true", help="evaluate a saved segmentation model and exit")
    p.add_argument("--device", type=str, default=None, help="cuda, cuda:N or cpu (default: CUDA when present)")
    p.add_argument("--gpu", type=str, default=None, help="GPU index (same as --device cuda:N)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    g = p.add_argument_group("model (defaults: released sizes; must match the pre-training checkpoint)")
    g.add_argument("--patch_embed", choices=["auto", "inter_mae", "point_mae"], default="auto",
                   help="patch embedding; auto = the checkpoint's (inter_mae without one)")
    g.add_argument("--trans_dim", type=int, default=384)
    g.add_argument("--depth", type=int, default=12)
    g.add_argument("--num_heads", type=int, default=6)
    g.add_argument("--drop_path_rate", type=float, default=0.1)
    g.add_argument("--num_group", type=int, default=128)
    g.add_argument("--group_size", type=int, default=32)
    g.add_argument("--return_layers", type=int, nargs=3, default=None,
                   help="blocks feeding the head (default: depth/3-1, 2*depth/3-1, depth-1 = 3 7 11)")
    args = p.parse_args(argv)
    if args.device is None and args.gpu is not None:
        args.device = f"cuda:{args.gpu}"
    return args


def checkpoint_patch_embed(path: str) -> Optional[str]:
    """Patch embedding kind of a pre-training / classifier / segmentation checkpoint."""
    return patch_embed_kind_of_state_dict(backbone_state_dict(segmentation_state_dict(load_checkpoint_file(path), path), path))


def segmentation_state_dict(ckpt: dict, path: str):
    """Model weights of a checkpoint: ours (``base_model``) or the released script's ``model_state_dict``."""
    if isinstance(ckpt.get("model_state_dict"), dict):
        return clean_state_dict(ckpt["model_state_dict"])
    return state_dict_of(ckpt, path)


def build_model(args, logger=None) -> PartSegTransformer:
    """The model of ``args``; the patch embedding follows ``--ckpts`` unless given explicitly."""
    kind = args.patch_embed
    if kind == "auto":
        kind = (checkpoint_patch_embed(args.ckpts) if args.ckpts else None) or "inter_mae"
    model = PartSegTransformer(trans_dim=args.trans_dim, depth=args.depth, num_heads=args.num_heads,
                               drop_path_rate=args.drop_path_rate, num_group=args.num_group, group_size=args.group_size,
                               patch_embed=kind, return_layers=args.return_layers, normal=args.normal)
    print_log(f"[PartSeg] {kind} patch embedding, width {args.trans_dim}, depth {args.depth}, {args.num_heads} heads, "
              f"{args.num_group} x {args.group_size} patches, head on blocks {model.return_layers}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", logger=logger)
    return model


def random_scale_shift(points: torch.Tensor, scale_low: float = 0.8, scale_high: float = 1.25, shift: float = 0.1) -> torch.Tensor:
    """Released training augmentation on xyz: one isotropic scale U(0.8, 1.25) and one shift
    U(-0.1, 0.1)^3 per shape. (B, N, C) -> (B, N, C)."""
    B = points.shape[0]
    scale = torch.empty(B, 1, 1, device=points.device).uniform_(scale_low, scale_high)
    offset = torch.empty(B, 1, 3, device=points.device).uniform_(-shift, shift)
    points = points.clone()
    points[..., :3] = points[..., :3] * scale + offset
    return points


def make_loaders(args, world_size: int, rank: int):
    train_set = PartNormalDataset(args.root, npoints=args.npoint, split="trainval", normal_channel=args.normal)
    test_set = PartNormalDataset(args.root, npoints=args.npoint, split="test", normal_channel=args.normal)
    per_rank = args.batch_size // world_size
    if per_rank < 1 or args.batch_size % world_size:
        raise ValueError(f"--batch_size {args.batch_size} is not divisible by the {world_size} processes")
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    common = dict(num_workers=args.num_workers, worker_init_fn=worker_init_fn, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, drop_last=len(train_set) >= args.batch_size, **common)
    # Each process evaluates a disjoint slice of the test set, so no shape is counted twice.
    test_loader = DataLoader(Subset(test_set, range(rank, len(test_set), world_size)), batch_size=per_rank, shuffle=False, **common)
    return train_set, test_set, sampler, train_loader, test_loader


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def train_one_epoch(model: nn.Module, loader, optimizer, device: torch.device, epoch: int, args) -> Dict[str, float]:
    """One epoch, one optimizer step per batch. Returns loss, point accuracy and samples/s."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen, batches, start = 0, 0, time.perf_counter()
    rank, world_size = dist_utils.get_dist_info()
    pbar = tqdm(loader, desc=f"epoch {epoch}", disable=rank != 0, dynamic_ncols=True, leave=False)
    for points, category, target in pbar:
        points = random_scale_shift(points.to(device, non_blocking=True).float())
        category, target = category.to(device).reshape(-1), target.to(device)
        with autocast(device, args.amp):
            logits = model(points, category)
        loss = get_loss(logits, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at epoch {epoch}, batch {batches}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip, norm_type=2)
        optimizer.step()
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(dim=1) == target).sum()
        seen += target.numel()
        batches += 1
        pbar.set_postfix(loss=f"{loss.item():.4f}")
    elapsed = max(time.perf_counter() - start, 1e-9)
    stats = torch.stack([loss_sum / max(batches, 1), correct / max(seen, 1)])
    stats = dist_utils.reduce_tensor(stats)
    return {"loss": stats[0].item(), "accuracy": stats[1].item(),
            "samples_per_s": seen / args.npoint * world_size / elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, use_amp: bool = False) -> PartSegMeter:
    """Predictions restricted to each object's category parts, gathered over all processes."""
    model.eval()
    meter = PartSegMeter()
    for points, category, target in tqdm(loader, desc="test", disable=not dist_utils.is_main_process(), leave=False):
        points, category = points.to(device, non_blocking=True).float(), category.to(device).reshape(-1)
        with autocast(device, use_amp):
            logits = model(points, category)
        meter.update(restrict_to_category(logits, category), target, category)
    if dist_utils.is_dist():
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, meter.state())
        meter = PartSegMeter.merged(states)
    return meter


def log_metrics(title: str, meter: PartSegMeter, logger) -> Dict[str, float]:
    metrics = meter.compute()
    for name, iou in meter.category_ious().items():
        print_log(f"  {title} eval mIoU of {name:<14} {iou:.6f}", logger=logger)
    print_log(f"{title} accuracy: {metrics['accuracy']:.5f}  class avg accuracy: {metrics['class_avg_accuracy']:.5f}  "
              f"class avg mIoU: {metrics['class_avg_iou']:.5f}  instance avg mIoU: {metrics['instance_avg_iou']:.5f}",
              logger=logger)
    return metrics


def main(argv=None) -> Dict[str, float]:
    """Train (or ``--test``); returns the best (or the test) metrics."""
    args = get_args(argv)
    if args.launcher == "pytorch":
        dist_utils.init_dist(args.launcher)
    rank, world_size = dist_utils.get_dist_info()
    device = resolve_device(args.device, args.local_rank)
    set_random_seed(args.seed + rank, deterministic=args.deterministic)

    run_dir = Path(args.log_root) / "part_seg" / (args.log_dir or datetime.datetime.now().strftime("%Y-%m-%d_%H-%M"))
    ckpt_dir, log_dir = run_dir / "checkpoints", run_dir / "logs"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    log_name = "test" if args.test else args.model
    logger = get_logger("part_seg", log_file=str(log_dir / f"{log_name}.txt"))
    try:
        return _run(args, device, rank, world_size, ckpt_dir, log_dir, logger)
    finally:
        if dist_utils.is_dist():
            dist.destroy_process_group()


def _run(args, device, rank, world_size, ckpt_dir: Path, log_dir: Path, logger) -> Dict[str, float]:
    print_log(f"Command: {' '.join(sys.argv)}", logger=logger)
    print_log(f"PARAMETER ... {vars(args)}", logger=logger)
    print_log(f"device: {device}; bf16 autocast: {args.amp}; processes: {world_size}", logger=logger)
    if args.test:
        path = args.ckpts or str(ckpt_dir / "best_model.pth")
        ckpt = load_checkpoint_file(path)
        state = segmentation_state_dict(ckpt, path)
        for key, value in (ckpt.get("model_args") or {}).items():
            setattr(args, key, value)
        kind = patch_embed_kind_of_state_dict(state)
        if args.patch_embed not in ("auto", kind):
            raise CheckpointError(f"checkpoint '{path}' uses the '{kind}' patch embedding, not --patch_embed {args.patch_embed}")
        args.patch_embed, args.ckpts = kind or "inter_mae", None
        model = build_model(args, logger).to(device)
        report = load_state_dict_checked(model, state, strict=True, source=path)
        print_log(f"[PartSeg] segmentation model from {path} (epoch {ckpt.get('epoch', '?')}): {report.summary()}", logger=logger)
        _, test_set, _, _, test_loader = make_loaders(args, world_size, rank)
        print_log(f"The number of test data is: {len(test_set)}", logger=logger)
        return log_metrics("Test", evaluate(model, test_loader, device, args.amp), logger)

    base_model = build_model(args, logger)
    if args.ckpts:
        base_model.load_model_from_ckpt(args.ckpts, logger=logger)
    else:
        print_log("[PartSeg] no --ckpts: training from scratch", logger=logger)
    train_set, test_set, sampler, train_loader, test_loader = make_loaders(args, world_size, rank)
    print_log(f"The number of training data is: {len(train_set)}", logger=logger)
    print_log(f"The number of test data is: {len(test_set)}", logger=logger)
    base_model = base_model.to(device)
    model = base_model
    if dist_utils.is_dist():
        model = nn.parallel.DistributedDataParallel(base_model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(add_weight_decay(base_model, weight_decay=args.weight_decay), lr=args.learning_rate)

    writer = SummaryWriter(str(log_dir)) if rank == 0 else None
    best = {"accuracy": 0.0, "class_avg_iou": 0.0, "instance_avg_iou": -1.0}
    model_args = {k: getattr(args, k) for k in MODEL_ARGS}
    model_args["return_layers"] = list(base_model.return_layers)
    for epoch in range(args.epoch):
        lr = cosine_lr(epoch, args.learning_rate, args.epoch, args.warmup_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        print_log(f"Epoch {epoch + 1} ({epoch + 1}/{args.epoch}): lr {lr:.6f}", logger=logger)
        sampler.set_epoch(epoch)
        train = train_one_epoch(model, train_loader, optimizer, device, epoch, args)
        print_log(f"Train accuracy is: {train['accuracy']:.5f}  loss: {train['loss']:.5f}  "
                  f"({train['samples_per_s']:.1f} samples/s)", logger=logger)
        metrics = log_metrics(f"Epoch {epoch + 1} test", evaluate(model, test_loader, device, args.amp), logger)
        if writer is not None:
            writer.add_scalar("train/loss", train["loss"], epoch)
            writer.add_scalar("train/accuracy", train["accuracy"], epoch)
            writer.add_scalar("train/lr", lr, epoch)
            for key, value in metrics.items():
                writer.add_scalar(f"test/{key}", value, epoch)
        if metrics["instance_avg_iou"] >= best["instance_avg_iou"]:
            best_state = {"epoch": epoch, "train_acc": train["accuracy"], **metrics}
            if rank == 0:
                path = ckpt_dir / "best_model.pth"
                atomic_save({"base_model": base_model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                             "metrics": best_state, "best_metrics": best_state, "model_args": model_args}, str(path))
                print_log(f"Saving best model (instance mIoU {metrics['instance_avg_iou']:.5f}) at {path}", logger=logger)
        best["accuracy"] = max(best["accuracy"], metrics["accuracy"])
        best["class_avg_iou"] = max(best["class_avg_iou"], metrics["class_avg_iou"])
        best["instance_avg_iou"] = max(best["instance_avg_iou"], metrics["instance_avg_iou"])
        print_log(f"Best accuracy is: {best['accuracy']:.5f}  Best class avg mIoU is: {best['class_avg_iou']:.5f}  "
                  f"Best instance avg mIoU is: {best['instance_avg_iou']:.5f}", logger=logger)
    if writer is not None:
        writer.close()
    return best


if __name__ == "__main__":
    main()
