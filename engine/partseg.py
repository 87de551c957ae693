"""Part segmentation job on ShapeNetPart (run by ``segmentation/main.py``): the loss, the
metrics, the augmentation, and the training / test loop on the shared engine.

Metrics, implemented once for training, ``--test`` and the tests:

* per-shape IoU: mean over the parts of the shape's category of |pred & gt| / |pred | gt|; a part
  absent from both prediction and ground truth counts 1;
* instance mIoU: mean of the per-shape IoUs over all shapes;
* class mIoU: mean over the categories present in the evaluated set of their mean per-shape IoU;
* accuracy: correct points / points;
* class-average accuracy: mean over the parts that occur in the ground truth of the per-part
  point accuracy (recall).

Model initialisation follows the released ``get_model`` (PyTorch's default init; ``args.init``
``trunc_normal`` restores the project's earlier one); ``args.lr_schedule`` ``released`` restores
the released one-epoch schedule lag (default ``exact``). Both are read with ``getattr`` so that a
namespace without them gets the defaults.
"""
from __future__ import annotations

import datetime
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tensorboardX import SummaryWriter
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from datasets.ShapeNetPartDataset import CATEGORIES, NUM_PARTS, SEG_CLASSES, PartNormalDataset, category_part_mask
from engine import builder
from engine.engine import evaluate, fit, grad_scaler
from models.backbone import patch_embed_kind, read_encoder
from models.PartSegTransformer import PartSegTransformer
from utils import dist_utils
from utils.checkpoint import (CheckpointError, atomic_save, load_checkpoint_file, load_state_dict_checked, state_dict_of,
                              write_json)
from utils.logger import get_logger, print_log
from utils.misc import set_random_seed, worker_init_fn
from utils.parser import RunDirError, acquire_run_lock, release_run_lock

MODEL_ARGS = ("trans_dim", "depth", "num_heads", "drop_path_rate", "num_group", "group_size", "return_layers", "normal")


def get_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over points (the released NLL of log-softmax). (B, 50, N), (B, N) -> scalar."""
    return F.cross_entropy(logits.float(), target.long())


def restrict_to_category(logits: Tensor, category: Tensor) -> Tensor:
    """Predicted part per point, chosen among the parts of each object's category.

    ``logits`` (B, 50, N), ``category`` (B,) long in [0, 16) -> (B, N) long global part ids.
    """
    if logits.dim() != 3 or logits.shape[1] != NUM_PARTS:
        raise ValueError(f"logits must be (B, {NUM_PARTS}, N), got {tuple(logits.shape)}")
    allowed = category_part_mask(logits.device)[category.long()]  # B 50
    masked = logits.float().masked_fill(~allowed.unsqueeze(-1), float("-inf"))
    return masked.argmax(dim=1)


def shape_iou(pred: np.ndarray, target: np.ndarray, parts: Sequence[int]) -> float:
    """IoU of one shape: mean over ``parts``; a part absent from both ``pred`` and ``target`` counts 1."""
    ious = []
    for part in parts:
        p, t = pred == part, target == part
        union = np.logical_or(p, t).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(p, t).sum()) / float(union))
    return float(np.mean(ious))


class PartSegMeter:
    """Accumulates predictions shape by shape; ``compute()`` gives the metrics of the module docstring."""

    def __init__(self):
        self.correct = 0
        self.seen = 0
        self.part_correct = np.zeros(NUM_PARTS, dtype=np.int64)
        self.part_seen = np.zeros(NUM_PARTS, dtype=np.int64)
        self.shape_ious: List[float] = []
        self.shape_categories: List[int] = []

    def update(self, pred, target, category) -> None:
        """``pred``, ``target`` (B, N) part ids; ``category`` (B,) category ids (tensors or arrays)."""
        pred, target, category = (np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x) for x in (pred, target, category))
        category = category.reshape(-1)
        if pred.shape != target.shape or pred.ndim != 2 or category.shape[0] != pred.shape[0]:
            raise ValueError(f"pred {pred.shape} and target {target.shape} must be (B, N), category (B,); got {category.shape}")
        self.correct += int((pred == target).sum())
        self.seen += int(target.size)
        self.part_seen += np.bincount(target.reshape(-1), minlength=NUM_PARTS)[:NUM_PARTS]
        hit = target[pred == target]
        self.part_correct += np.bincount(hit.reshape(-1), minlength=NUM_PARTS)[:NUM_PARTS]
        for b in range(pred.shape[0]):
            c = int(category[b])
            self.shape_ious.append(shape_iou(pred[b], target[b], SEG_CLASSES[CATEGORIES[c]]))
            self.shape_categories.append(c)

    def state(self) -> dict:
        return {"correct": self.correct, "seen": self.seen, "part_correct": self.part_correct,
                "part_seen": self.part_seen, "shape_ious": self.shape_ious, "shape_categories": self.shape_categories}

    @classmethod
    def merged(cls, states: Iterable[dict]) -> "PartSegMeter":
        """One meter from the ``state()`` of several (e.g. one per process)."""
        meter = cls()
        for s in states:
            meter.correct += s["correct"]
            meter.seen += s["seen"]
            meter.part_correct += s["part_correct"]
            meter.part_seen += s["part_seen"]
            meter.shape_ious.extend(s["shape_ious"])
            meter.shape_categories.extend(s["shape_categories"])
        return meter

    def category_ious(self) -> Dict[str, float]:
        """Mean shape IoU of every category that occurs."""
        ious = np.asarray(self.shape_ious)
        cats = np.asarray(self.shape_categories)
        return OrderedDict((name, float(ious[cats == c].mean())) for c, name in enumerate(CATEGORIES) if (cats == c).any())

    def compute(self) -> Dict[str, float]:
        """accuracy, class_avg_accuracy, class_avg_iou (class mIoU), instance_avg_iou (instance mIoU)."""
        if not self.shape_ious:
            raise ValueError("PartSegMeter.compute(): no shapes were evaluated")
        seen = self.part_seen > 0
        return {
            "accuracy": self.correct / self.seen,
            "class_avg_accuracy": float(np.mean(self.part_correct[seen] / self.part_seen[seen])),
            "class_avg_iou": float(np.mean(list(self.category_ious().values()))),
            "instance_avg_iou": float(np.mean(self.shape_ious)),
        }

    def sync(self) -> None:
        """Merge the meters of all processes (each evaluated a disjoint slice of the test set)."""
        if dist_utils.is_dist():
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, self.state())
            self.__dict__.update(PartSegMeter.merged(states).__dict__)


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
    workers = builder.worker_count(args.num_workers)
    sampler, train_loader = builder.build_loader(train_set, per_rank, train=True, seed=args.seed, num_workers=workers)
    # Each process evaluates a disjoint slice of the test set, so no shape is counted twice.
    test_loader = DataLoader(Subset(test_set, range(rank, len(test_set), world_size)), batch_size=per_rank,
                             num_workers=workers, worker_init_fn=worker_init_fn,
                             pin_memory=torch.cuda.is_available())
    return train_set, test_set, sampler, train_loader, test_loader


def make_train_step(device: torch.device):
    """Train step: scale-and-shift augmentation -> part logits -> ``loss`` and point ``acc``."""

    def step(model: nn.Module, batch) -> Dict[str, Tensor]:
        points, category, target = batch
        points = random_scale_shift(points.to(device, non_blocking=True).float())
        category, target = category.to(device).reshape(-1), target.to(device)
        logits = model(points, category)
        return {"loss": get_loss(logits, target), "acc": (logits.detach().argmax(dim=1) == target).float().mean()}

    return step


def make_eval_step(device: torch.device):
    """Eval step: predictions restricted to each object's category parts into a :class:`PartSegMeter`."""

    def step(model: nn.Module, batch, meter: PartSegMeter) -> None:
        points, category, target = batch
        points, category = points.to(device, non_blocking=True).float(), category.to(device).reshape(-1)
        meter.update(restrict_to_category(model(points, category), category), target, category)

    return step


def log_metrics(title: str, meter: PartSegMeter, logger, categories_on_console: bool = False) -> Dict[str, float]:
    """One summary line; the per-category mIoU lines go to the log file only (also to the console
    with ``categories_on_console``, e.g. for ``--test``)."""
    metrics = meter.compute()
    for name, iou in meter.category_ious().items():
        print_log(f"  {title} eval mIoU of {name:<14} {iou:.6f}", logger=logger, file_only=not categories_on_console)
    where = "" if categories_on_console else " (per-category mIoU in the log file)"
    print_log(f"{title} accuracy: {metrics['accuracy']:.5f}  class avg accuracy: {metrics['class_avg_accuracy']:.5f}  "
              f"class avg mIoU: {metrics['class_avg_iou']:.5f}  instance avg mIoU: {metrics['instance_avg_iou']:.5f}"
              f"{where}", logger=logger)
    return metrics


def build_model(args, logger=None) -> PartSegTransformer:
    """The model of ``args``; the patch embedding follows ``--ckpts`` unless given explicitly."""
    kind = args.patch_embed
    if kind == "auto":
        kind = (patch_embed_kind(read_encoder(args.ckpts)[2]) if args.ckpts else None) or "inter_mae"
    model = PartSegTransformer(trans_dim=args.trans_dim, depth=args.depth, num_heads=args.num_heads,
                               drop_path_rate=args.drop_path_rate, num_group=args.num_group, group_size=args.group_size,
                               patch_embed=kind, return_layers=args.return_layers, normal=args.normal,
                               init=getattr(args, "init", "released"))
    print_log(f"[PartSeg] init {model.init_mode}; {kind} patch embedding, width {args.trans_dim}, depth {args.depth}, "
              f"{args.num_heads} heads, "
              f"{args.num_group} x {args.group_size} patches, head on blocks {model.return_layers}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", logger=logger)
    return model


def run(args) -> Dict[str, float]:
    """Train (or ``--test``) as ``segmentation/main.py`` asks; returns the best (or the test) metrics."""
    if args.launcher == "pytorch":
        dist_utils.init_dist(args.launcher)
    rank, world_size = dist_utils.get_dist_info()
    set_random_seed(args.seed + rank, deterministic=args.deterministic)

    run_dir = Path(args.log_root) / "part_seg" / (args.log_dir or datetime.datetime.now().strftime("%Y-%m-%d_%H-%M"))
    ckpt_dir, log_dir = run_dir / "checkpoints", run_dir / "logs"

    def prepare_run_dir() -> str:
        saved = sorted(ckpt_dir.glob("*.pth")) if ckpt_dir.is_dir() else []
        if saved and not args.test and not getattr(args, "overwrite", False):
            raise RunDirError(f"segmentation run directory {run_dir} already holds checkpoints ({saved[0].name}): "
                              f"pass --overwrite to train a new model over it, or choose another --log_dir")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        return acquire_run_lock(str(run_dir))

    try:  # rank 0 prepares; its refusal is raised on every process (none waits for a rank 0 that stopped)
        lock = dist_utils.run_on_rank0(prepare_run_dir)
    except Exception:
        if dist_utils.is_dist():
            dist.destroy_process_group()
        raise
    try:
        return _run(args, rank, world_size, ckpt_dir, log_dir)
    finally:
        release_run_lock(lock)


def _run(args, rank: int, world_size: int, ckpt_dir: Path, log_dir: Path) -> Dict[str, float]:
    logger = get_logger("part_seg", log_file=str(log_dir / f"{'test' if args.test else args.model}.txt"))
    print_log(f"Command: {' '.join(sys.argv)}", logger=logger)
    print_log(f"PARAMETER ... {vars(args)}", logger=logger)
    device, args.amp_dtype = builder.runtime(args, logger)
    args.num_workers = builder.worker_count(args.num_workers, logger)
    try:
        return test(args, device, rank, world_size, ckpt_dir, logger) if args.test else \
            train(args, device, rank, world_size, ckpt_dir, log_dir, logger)
    finally:
        if dist_utils.is_dist():
            dist.destroy_process_group()


def test(args, device, rank, world_size, ckpt_dir: Path, logger) -> Dict[str, float]:
    """Evaluate a saved segmentation model (ours, or the released script's ``model_state_dict``)."""
    path = args.ckpts or str(ckpt_dir / "best_model.pth")
    ckpt = load_checkpoint_file(path)
    state = state_dict_of(ckpt, path)
    for key, value in (ckpt.get("model_args") or {}).items():
        setattr(args, key, value)
    kind = patch_embed_kind(state)
    if args.patch_embed not in ("auto", kind):
        raise CheckpointError(f"checkpoint '{path}' uses the '{kind}' patch embedding, not --patch_embed {args.patch_embed}")
    args.patch_embed, args.ckpts = kind or "inter_mae", None
    model = build_model(args, logger).to(device)
    report = load_state_dict_checked(model, state, strict=True, source=path)
    print_log(f"[PartSeg] segmentation model from {path} (saved after training EPOCH {ckpt.get('epoch', '?')}): "
              f"{report.summary()}", logger=logger)
    _, test_set, _, _, test_loader = make_loaders(args, world_size, rank)
    print_log(f"The number of test data is: {len(test_set)}", logger=logger)
    meter = evaluate(model, make_eval_step(device), test_loader, device, PartSegMeter(), amp=args.amp_dtype,
                     progress=getattr(args, "progress", True) and rank == 0)
    metrics = log_metrics("Test", meter, logger, categories_on_console=True)
    if rank == 0:
        run_dir = ckpt_dir.parent
        result = write_json(str(run_dir / "test_results.json"),
                            {**metrics, "ckpts": path, "test_shapes": len(test_set), "npoint": args.npoint,
                             "category_iou": meter.category_ious()})
        print_log(f"[Test] results written to {result}", logger=logger)
        if getattr(args, "vis", 0) > 0:
            picture = plot_predictions(model, test_set, args.vis, device, str(run_dir / "predictions.png"))
            print_log(f"[Test] {args.vis} segmented test shapes drawn to {picture}", logger=logger)
    return metrics


def shapes_to_draw(categories: Sequence[int], n: int) -> List[int]:
    """Indices of ``n`` shapes: the first of each category in turn (so the picture shows as many
    categories as it can), then the next ones."""
    order: Dict[int, List[int]] = OrderedDict()
    for i, c in enumerate(categories):
        order.setdefault(int(c), []).append(i)
    picked: List[int] = []
    rank = 0
    while len(picked) < min(n, len(categories)):
        for members in order.values():
            if rank < len(members) and len(picked) < n:
                picked.append(members[rank])
        rank += 1
    return picked


@torch.no_grad()
def plot_predictions(model: nn.Module, test_set, n: int, device: torch.device, path: str) -> str:
    """Draw ``n`` test shapes, ground-truth parts | predicted parts (colours by part id within the
    category), to ``path``."""
    from utils.vis import class_colours, plot_cloud_rows

    categories = [test_set.classes[name] for name, _ in test_set.datapath]
    model.eval()
    rows, colors, labels = [], [], []
    palette = class_colours(max(len(parts) for parts in SEG_CLASSES.values()))
    names = {v: k for k, v in test_set.classes.items()}
    for index in shapes_to_draw(categories, n):
        points, category, target = test_set[index]
        category_t = torch.from_numpy(category).to(device)
        logits = model(torch.from_numpy(points[None]).to(device).float(), category_t)
        pred = restrict_to_category(logits, category_t)[0].cpu().numpy()  # (N,) global part ids
        name = names[int(category[0])]
        parts = SEG_CLASSES[name]
        rows.append([points[:, :3], points[:, :3]])
        colors.append([palette[target - min(parts)], palette[pred - min(parts)]])
        labels.append(f"{name} (IoU {shape_iou(pred, target, parts):.2f})")
    return plot_cloud_rows(path, rows, ["ground truth", "prediction"], [(20.0, -60.0)] * len(rows),
                           row_labels=labels, colors=colors)


def train(args, device, rank, world_size, ckpt_dir: Path, log_dir: Path, logger) -> Dict[str, float]:
    """Fine-tune (``--ckpts``) or train from scratch; keep ``best_model.pth`` (best instance mIoU)."""
    base_model = build_model(args, logger)
    if args.ckpts:
        base_model.load_model_from_ckpt(args.ckpts, logger=logger)
    else:
        print_log("[PartSeg] no --ckpts: training from scratch", logger=logger)
    train_set, test_set, sampler, train_loader, test_loader = make_loaders(args, world_size, rank)
    print_log(f"The number of training data is: {len(train_set)}", logger=logger)
    print_log(f"The number of test data is: {len(test_set)}", logger=logger)
    base_model = base_model.to(device)
    model = builder.wrap_distributed(base_model, args, device, logger)
    optimizer = torch.optim.AdamW(builder.add_weight_decay(base_model, weight_decay=args.weight_decay), lr=args.learning_rate)
    scheduler = builder.apply_lr_schedule(builder.CosineEpochScheduler(optimizer, epochs=args.epoch, initial_epochs=args.warmup_epoch),
                                  getattr(args, "lr_schedule", "exact"))

    writer = SummaryWriter(str(log_dir)) if rank == 0 else None
    eval_step = make_eval_step(device)
    best = {"accuracy": 0.0, "class_avg_iou": 0.0, "instance_avg_iou": -1.0}  # each the best of any epoch
    model_args = {k: getattr(args, k) for k in MODEL_ARGS}
    model_args["return_layers"] = list(base_model.return_layers)

    def validate(epoch: int) -> Dict[str, float]:
        meter = evaluate(model, eval_step, test_loader, device, PartSegMeter(), amp=args.amp_dtype,
                         progress=getattr(args, "progress", True) and rank == 0)
        # numbered as the training line of the same epoch ("[Training] EPOCH: e (e+1/N)")
        metrics = log_metrics(f"[Test] EPOCH: {epoch} ({epoch + 1}/{args.epoch})", meter, logger)
        best.update({key: max(best[key], metrics[key]) for key in best})
        print_log(f"Best accuracy is: {best['accuracy']:.5f}  Best class avg mIoU is: {best['class_avg_iou']:.5f}  "
                  f"Best instance avg mIoU is: {best['instance_avg_iou']:.5f}", logger=logger)
        return metrics

    def save(tag: str, epoch: int, metrics: Dict[str, float], best_state: Dict[str, float]) -> None:
        if tag == "best" and rank == 0:
            path = ckpt_dir / "best_model.pth"
            atomic_save({"base_model": base_model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "metrics": metrics, "best_metrics": best_state, "model_args": model_args}, str(path))
            print_log(f"Saving best model (EPOCH {epoch}, instance mIoU {metrics['instance_avg_iou']:.5f}) at {path}",
                      logger=logger)

    fit(model, make_train_step(device), train_loader, sampler, optimizer, scheduler, device, start_epoch=0,
        max_epoch=args.epoch, clip=args.clip, amp=args.amp_dtype, scaler=grad_scaler(device, args.amp_dtype), validate=validate,
        better=lambda m, b: m["instance_avg_iou"] >= b.get("instance_avg_iou", -1.0), save=save,
        writers=(writer, writer), progress=getattr(args, "progress", True) and rank == 0, logger=logger)
    if writer is not None:
        writer.close()
    return best
