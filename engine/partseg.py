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

Model initialisation follows the released ``get_model`` (PyTorch's default init; ``--init
trunc_normal`` restores the project's earlier one); ``--lr_schedule released`` restores the
released one-epoch schedule lag (default ``exact``). The flags map onto a config
(``segmentation/main.py``: ``config_from_args``) whose ``model`` section builds the registered
``PartSegTransformer``; the run's settings are :class:`utils.settings.PartSegSettings`.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tensorboardX import SummaryWriter
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from datasets import DATASETS
from datasets.ShapeNetPartDataset import (
    CATEGORIES,
    NUM_PARTS,
    SEG_CLASSES,
    PartNormalDataset,
    category_part_mask,
)
from engine import builder
from engine.batchnorm import refresh_batchnorm
from engine.command import RunStart, run_command
from engine.engine import (
    TrainRun,
    check_finite_figures,
    epoch_range,
    evaluate,
    log_scalars,
    resume,
    train_epoch,
    validation_due,
    write_epoch_metrics,
)
from engine.preemption import StopRequest
from models import MODELS
from models.backbone import encoder_state_dict, patch_embed_kind
from models.PartSegTransformer import PartSegTransformer
from utils import dist_utils
from utils.checkpoint import CheckpointError, load_checkpoint_file, load_weights, state_dict_of, write_json
from utils.logger import print_log
from utils.misc import worker_init_fn
from utils.rundir import check_no_saved_models, open_run_dir
from utils.schema import ConfigError, merge_into
from utils.settings import PartSegSettings


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


def make_loaders(settings: PartSegSettings, normal: bool):
    """(train set, test set, train sampler, train loader, test loader) of ShapeNetPart at
    ``settings.root`` (``npoint`` points; normals as extra channels with ``normal``)."""
    train_set = PartNormalDataset(settings.root, npoints=settings.npoint, split="trainval", normal_channel=normal)
    test_set = PartNormalDataset(settings.root, npoints=settings.npoint, split="test", normal_channel=normal)
    per_rank = settings.batch_size // settings.world_size
    sampler, train_loader = builder.build_loader(train_set, per_rank, train=True, seed=settings.seed,
                                                 num_workers=settings.num_workers)
    # Each process evaluates a disjoint slice of the test set, so no shape is counted twice.
    test_loader = DataLoader(Subset(test_set, range(settings.rank, len(test_set), settings.world_size)),
                             batch_size=per_rank, num_workers=settings.num_workers, worker_init_fn=worker_init_fn,
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


def make_bn_forward(device: torch.device):
    """BatchNorm recalibration (engine/batchnorm.py): a training batch without augmentation -> part logits."""

    def forward(model: nn.Module, batch) -> Tensor:
        points, category, _ = batch
        return model(points.to(device, non_blocking=True).float(), category.to(device).reshape(-1))

    return forward


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


def build_model(config, settings: PartSegSettings, logger=None) -> PartSegTransformer:
    """The model of ``config.model`` (``NAME: PartSegTransformer``; segmentation/main.py maps its
    flags onto it) with the run's compute switches; one log line."""
    model = builder.model_builder(config.model, settings)
    print_log(f"[PartSeg] init {model.init_mode}; {model.patch_embed_kind} patch embedding, width {model.trans_dim}, "
              f"depth {model.depth}, {model.num_heads} heads, {model.group_divider.num_group} x "
              f"{model.group_divider.group_size} patches, head on blocks {model.return_layers}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", logger=logger)
    return model


def run(args) -> Dict[str, float]:
    """The ``segmentation/main.py`` command on the shared skeleton (:func:`engine.command.run_command`):
    flags -> config (checked) -> settings -> run directory, lock, log and config.yaml ->
    :func:`run_job`, stopping cleanly on SIGTERM / SIGINT. Returns the best (or the test) metrics."""
    return run_command(args.launcher, "part_seg", lambda logger: prepare(args, logger), run_job)


def run_job(settings: PartSegSettings, config, stop: Optional[StopRequest] = None, logger=None) -> Dict[str, float]:
    """Train (or, for ``partseg_test``, test); returns the best (or the test) metrics."""
    if settings.job == "partseg_test":
        return test(settings, config, logger)
    return train(settings, config, stop, logger)


def resolve_patch_embed(config, settings: PartSegSettings) -> None:
    """``model.patch_embed: auto``: the checkpoint's (``--ckpts``) when training from one, else the
    released segmentation model's ``point_mae`` (segmentation/models/pt.py always builds Point-MAE's
    mini-PointNet ``first_conv``), so the from-scratch baseline is the released one."""
    if config.model.get("patch_embed") != "auto" or settings.job != "partseg" or settings.resume != "no":
        return
    if settings.ckpts:
        state = state_dict_of(load_checkpoint_file(settings.ckpts, trust=settings.trust_checkpoint), settings.ckpts)
        kind = patch_embed_kind(encoder_state_dict(state, settings.ckpts))
    else:
        kind = None
    config.model.patch_embed = kind or "point_mae"


def prepare(args, logger=None) -> RunStart:
    """Config (checked) and settings of a ``segmentation/main.py`` run, and how its directory is
    opened: a training run refuses another's saved models (unless --overwrite / --resume); the
    directory gets ``checkpoints/`` and ``logs/``."""
    from utils.settings import build_partseg_settings, partseg_config
    from utils.validate import validate_config

    config = partseg_config(args)
    settings = build_partseg_settings(args, config, logger)
    resolve_patch_embed(config, settings)
    training = settings.job == "partseg"
    if training:
        validate_config(config, settings.job, MODELS, DATASETS, world_size=settings.world_size)
    if settings.batch_size % settings.world_size:
        raise ConfigError(f"--batch_size {settings.batch_size} is not divisible by the {settings.world_size} processes")

    def open_dir() -> str:
        if training and not settings.overwrite and settings.resume == "no":
            check_no_saved_models(settings.ckpt_dir, settings.experiment_path)
        return open_run_dir(settings.experiment_path, (settings.ckpt_dir, settings.log_dir), checkpoints=settings.ckpt_dir,
                            logger=logger, other_run="use another --log_dir")

    return RunStart(settings, config, open_dir,
                    log_file=os.path.join(settings.log_dir, "test.txt" if args.test else f"{args.model}.txt"),
                    save_config=training and settings.resume == "no")


def test(settings: PartSegSettings, config, logger=None) -> Dict[str, float]:
    """Evaluate a saved segmentation model (``settings.ckpts``, else the run's ``best_model.pth``):
    ours (its config inside) or the released script's ``model_state_dict``."""
    path = settings.ckpts or os.path.join(settings.ckpt_dir, "best_model.pth")
    ckpt = load_checkpoint_file(path, trust=settings.trust_checkpoint)
    state = state_dict_of(ckpt, path)
    saved = (ckpt.get("config") or {}).get("model") or ckpt.get("model_args")  # model_args: checkpoints before format 2
    requested = config.model.get("patch_embed", "auto")
    if saved:
        config.model = merge_into(config.model, {k: v for k, v in saved.items() if k != "NAME"})
    kind = patch_embed_kind(state)
    if requested not in ("auto", kind) and kind is not None:
        raise CheckpointError(f"checkpoint '{path}' uses the '{kind}' patch embedding, not --patch_embed {requested}")
    config.model.patch_embed = kind or (requested if requested != "auto" else "inter_mae")
    model = build_model(config, settings, logger).to(settings.device)
    report = load_weights(model, ckpt, name=path)
    print_log(f"[PartSeg] segmentation model from {path} (saved after training EPOCH {ckpt.get('epoch', '?')}): "
              f"{report.summary()}", logger=logger)
    _, test_set, _, _, test_loader = make_loaders(settings, model.normal)
    print_log(f"The number of test data is: {len(test_set)}", logger=logger)
    meter = evaluate(model, make_eval_step(settings.device), test_loader, settings.device, PartSegMeter(),
                     amp=settings.amp_dtype, progress=settings.progress and settings.is_main_process)
    metrics = log_metrics("Test", meter, logger, categories_on_console=True)
    if settings.is_main_process:
        result = write_json(os.path.join(settings.experiment_path, "test_results.json"),
                            {**metrics, "ckpts": path, "test_shapes": len(test_set), "npoint": settings.npoint,
                             "category_iou": meter.category_ious()})
        print_log(f"[Test] results written to {result}", logger=logger)
        if settings.vis > 0:
            picture = plot_predictions(model, test_set, settings.vis, settings.device,
                                       os.path.join(settings.experiment_path, "predictions.png"))
            print_log(f"[Test] {settings.vis} segmented test shapes drawn to {picture}", logger=logger)
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


def train(settings: PartSegSettings, config, stop: Optional[StopRequest] = None, logger=None) -> Dict[str, float]:
    """Fine-tune (``--ckpts``) or train from scratch; validate on the test split every epoch; keep
    ``checkpoints/best_model.pth`` (best instance mIoU, the released name) and ``ckpt-last.pth``."""
    device, amp = settings.device, settings.amp_dtype
    base_model = build_model(config, settings, logger)
    if settings.resume == "no" and settings.ckpts:
        base_model.load_model_from_ckpt(settings.ckpts, logger=logger, trust=settings.trust_checkpoint)
    elif settings.resume == "no":
        print_log(f"[PartSeg] no --ckpts: training from scratch ({base_model.patch_embed_kind} patch embedding)",
                  logger=logger)
    train_set, test_set, sampler, train_loader, test_loader = make_loaders(settings, base_model.normal)
    print_log(f"The number of training data is: {len(train_set)}", logger=logger)
    print_log(f"The number of test data is: {len(test_set)}", logger=logger)
    state = builder.build_training(config, settings, logger, model=base_model)
    if settings.resume != "no":
        resume(state, settings, os.path.join(settings.ckpt_dir, "ckpt-last.pth"), logger)
    model = builder.wrap_distributed(state.model, settings, logger)
    writer = SummaryWriter(settings.log_dir) if settings.is_main_process else None
    run = TrainRun(settings, config, state, stop, writer, logger, folder=settings.ckpt_dir)
    train_step, eval_step, bn_forward = make_train_step(device), make_eval_step(device), make_bn_forward(device)
    # the best of each figure over the epochs (logged), and the figures of the best epoch (best_model.pth)
    best_each = dict(state.best_metrics.get("best_each") or {"accuracy": 0.0, "class_avg_iou": 0.0,
                                                              "instance_avg_iou": -1.0})
    try:
        for epoch in epoch_range(state.start_epoch, settings.n_epochs, settings.progress, logger):
            metrics = train_epoch(run, model, train_step, train_loader, epoch)
            refresh_batchnorm(model, train_loader, bn_forward, settings, epoch, logger)
            if validation_due(epoch, settings):
                meter = evaluate(model, eval_step, test_loader, device, PartSegMeter(), amp=amp,
                                 progress=settings.progress and settings.is_main_process)
                # numbered as the training line of the same epoch ("[Training] EPOCH: e (e+1/N)")
                figures = log_metrics(f"[Test] EPOCH: {epoch} ({epoch + 1}/{settings.n_epochs})", meter, logger)
                check_finite_figures(figures, epoch)
                log_scalars(writer, "Metric", figures, epoch)
                metrics.update(figures)
                best_each = {key: max(best_each[key], figures[key]) for key in best_each}
                print_log(f"Best accuracy is: {best_each['accuracy']:.5f}  Best class avg mIoU is: "
                          f"{best_each['class_avg_iou']:.5f}  Best instance avg mIoU is: "
                          f"{best_each['instance_avg_iou']:.5f}", logger=logger)
                if figures["instance_avg_iou"] >= state.best_metrics.get("instance_avg_iou", -1.0):
                    state.best_metrics = {**figures, "epoch": epoch, "best_each": best_each}
                    run.save("best_model", epoch, metrics)
                    print_log(f"Saving best model (EPOCH {epoch}, instance mIoU {figures['instance_avg_iou']:.5f})",
                              logger=logger)
                state.best_metrics["best_each"] = best_each
            write_epoch_metrics(state, settings, epoch, metrics, logger)
            run.save("ckpt-last", epoch, metrics)
    finally:
        if writer is not None:
            writer.close()
    return best_each
