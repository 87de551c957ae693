"""Part segmentation of a folder of your own labelled files (``main.py --config cfgs/partseg_folder.yaml``).

The job of a run config whose ``model.NAME`` is ``PartSegTransformer`` and whose datasets are a
:class:`~datasets.PartSegFolder.PartSegFolder`: the released segmentation head on a pre-trained
encoder (``--finetune_model --ckpts``) or from scratch (``--scratch_model``), trained with the
ShapeNetPart recipe (cross-entropy over points, one random scale and shift per shape), validated
on ``dataset.val``; ``ckpt-best`` keeps the best instance mIoU, ``ckpt-last`` every epoch.

The training folder sets the head: ``model.num_part`` (its K parts), ``model.num_category`` (its
categories, 1 without), and the config's ``parts`` section (``names``, ``categories``,
``category_parts``: the part ids found in each category's files), saved in every checkpoint for
``--test``, ``tools/predict.py`` and :class:`engine.predict.Predictor`. A point's prediction is the
best of its category's parts, as ShapeNetPart's.

Metrics (:class:`SegMeter`, the rules of ShapeNetPart's evaluation with the folder's tables):

* shape IoU: mean over the parts of the shape's category of |pred & gt| / |pred | gt|, a part
  absent from both counting 1; instance mIoU: mean over shapes; class mIoU: mean over the
  categories present of their mean shape IoU;
* per-part IoU: over the evaluated set, sum |pred & gt| / sum |pred | gt| of each part that occurs
  in the predictions or the truth;
* accuracy: correct points / points.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from datasets.common import DatasetFormatError
from engine import builder
from engine.batchnorm import refresh_batchnorm
from engine.engine import (
    TrainRun,
    check_finite_figures,
    data_summary,
    epoch_range,
    evaluate,
    log_scalars,
    resume,
    train_epoch,
    validation_due,
    write_epoch_metrics,
)
from engine.partseg import make_bn_forward, make_train_step, shape_iou
from engine.preemption import StopRequest
from utils import dist_utils
from utils.checkpoint import CheckpointError, load_checkpoint_file, load_weights, state_dict_of, write_json
from utils.logger import print_log
from utils.schema import ConfigError, origin_of
from utils.settings import RunSettings
from utils.text import printable

MODEL_NAME = "PartSegTransformer"


def is_partseg_config(config: Mapping) -> bool:
    """Whether a run config is a part-segmentation run (``model.NAME: PartSegTransformer``)."""
    model = config.get("model")
    return isinstance(model, Mapping) and model.get("NAME") == MODEL_NAME


# ----------------------------------------------------------------------------------- tables
def parts_of_dataset(dataset) -> Dict[str, object]:
    """The ``parts`` section of a training folder: ``names``, ``categories``, ``category_parts``."""
    return {"names": list(dataset.part_names), "categories": list(dataset.categories),
            "category_parts": {c: [int(p) for p in parts] for c, parts in dataset.category_parts.items()}}


def check_parts(parts: Mapping, where: str) -> Dict[str, object]:
    """A ``parts`` section (a config's or a checkpoint's) as plain lists, checked: part names,
    category names, and every category's part ids in 0..K-1. CheckpointError naming ``where``."""
    try:
        names = [str(n) for n in parts["names"]]
        categories = [str(c) for c in parts["categories"]]
        table = {str(c): [int(p) for p in ids] for c, ids in parts["category_parts"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{where}: 'parts' must hold 'names', 'categories' and 'category_parts'") from None
    if len(names) < 2 or not categories or sorted(table) != sorted(categories) or any(
            not ids or min(ids) < 0 or max(ids) >= len(names) for ids in table.values()):
        raise CheckpointError(f"{where}: 'parts' is inconsistent ({len(names)} part names, categories "
                              f"{printable(str(categories))[:80]}, category_parts {printable(str(table))[:120]})")
    return {"names": names, "categories": categories, "category_parts": {c: table[c] for c in categories}}


def category_mask(parts: Mapping, device=None) -> Tensor:
    """(C, K) bool: the parts each category may take (``parts['category_parts']``)."""
    mask = torch.zeros(len(parts["categories"]), len(parts["names"]), dtype=torch.bool, device=device)
    for c, name in enumerate(parts["categories"]):
        mask[c, parts["category_parts"][name]] = True
    return mask


def restrict(logits: Tensor, category: Tensor, mask: Tensor) -> Tensor:
    """Predicted part per point among its object's category parts: (B, K, N), (B,), (C, K) -> (B, N) long."""
    allowed = mask.to(logits.device)[category.long().reshape(-1)]  # B K
    return logits.float().masked_fill(~allowed.unsqueeze(-1), float("-inf")).argmax(dim=1)


class SegMeter:
    """Accumulates predictions shape by shape; ``compute()`` gives the metrics of the module docstring."""

    def __init__(self, parts: Mapping):
        self.names: List[str] = list(parts["names"])
        self.categories: List[str] = list(parts["categories"])
        self.category_parts = [list(parts["category_parts"][c]) for c in self.categories]
        k = len(self.names)
        self.inter = np.zeros(k, dtype=np.int64)
        self.union = np.zeros(k, dtype=np.int64)
        self.correct = 0
        self.seen = 0
        self.shape_ious: List[float] = []
        self.shape_categories: List[int] = []

    def update(self, pred, target, category) -> None:
        """``pred``, ``target`` (B, N) part ids; ``category`` (B,) category indices."""
        pred, target, category = (np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x)
                                  for x in (pred, target, category))
        category = category.reshape(-1)
        if pred.shape != target.shape or pred.ndim != 2 or category.shape[0] != pred.shape[0]:
            raise ValueError(f"pred {pred.shape} and target {target.shape} must be (B, N), category (B,); "
                             f"got {category.shape}")
        k = len(self.names)
        self.correct += int((pred == target).sum())
        self.seen += int(target.size)
        def count(ids: np.ndarray) -> np.ndarray:  # (a file's own labels may lie outside 0..K-1)
            ids = ids.reshape(-1)
            return np.bincount(ids[(ids >= 0) & (ids < k)], minlength=k)[:k]

        inter = count(target[pred == target])
        self.inter += inter
        self.union += count(pred) + count(target) - inter
        for b in range(pred.shape[0]):
            c = int(category[b])
            self.shape_ious.append(shape_iou(pred[b], target[b], self.category_parts[c]))
            self.shape_categories.append(c)

    def state(self) -> dict:
        return {"inter": self.inter, "union": self.union, "correct": self.correct, "seen": self.seen,
                "shape_ious": self.shape_ious, "shape_categories": self.shape_categories}

    def sync(self) -> None:
        """Merge the meters of all processes (each evaluated a disjoint slice)."""
        if not dist_utils.is_dist():
            return
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, self.state())
        self.inter = sum(s["inter"] for s in states)
        self.union = sum(s["union"] for s in states)
        self.correct = sum(s["correct"] for s in states)
        self.seen = sum(s["seen"] for s in states)
        self.shape_ious = [v for s in states for v in s["shape_ious"]]
        self.shape_categories = [v for s in states for v in s["shape_categories"]]

    def category_ious(self) -> Dict[str, float]:
        """Mean shape IoU of every category that occurs."""
        ious, cats = np.asarray(self.shape_ious), np.asarray(self.shape_categories)
        return OrderedDict((name, float(ious[cats == c].mean())) for c, name in enumerate(self.categories)
                           if (cats == c).any())

    def part_ious(self) -> Dict[str, float]:
        """IoU of every part that occurs in the predictions or the truth."""
        return OrderedDict((name, float(self.inter[p]) / float(self.union[p])) for p, name in enumerate(self.names)
                           if self.union[p] > 0)

    def compute(self) -> Dict[str, float]:
        """accuracy, instance_avg_iou (instance mIoU), class_avg_iou (class mIoU), part_avg_iou
        (mean of the per-part IoUs)."""
        if not self.shape_ious:
            raise ValueError("SegMeter.compute(): no shapes were evaluated")
        return {"accuracy": self.correct / self.seen, "instance_avg_iou": float(np.mean(self.shape_ious)),
                "class_avg_iou": float(np.mean(list(self.category_ious().values()))),
                "part_avg_iou": float(np.mean(list(self.part_ious().values())))}


# ------------------------------------------------------------------------------------ steps
def make_eval_step(device: torch.device, mask: Tensor):
    """Predictions restricted to each object's category parts into a :class:`SegMeter`."""

    def step(model: nn.Module, batch, meter: SegMeter) -> None:
        points, category, target = batch
        points, category = points.to(device, non_blocking=True).float(), category.to(device).reshape(-1)
        meter.update(restrict(model(points, category), category, mask), target, category)

    return step


def log_figures(title: str, meter: SegMeter, logger=None) -> Dict[str, float]:
    """The summary line and the per-part IoU line; returns the figures (per-part as ``iou_<name>``)."""
    figures = meter.compute()
    print_log(f"{title} instance mIoU: {figures['instance_avg_iou']:.5f}  class mIoU: {figures['class_avg_iou']:.5f}  "
              f"accuracy: {figures['accuracy']:.5f}", logger=logger)
    parts = meter.part_ious()
    print_log(f"{title} per-part IoU: " + ", ".join(f"{printable(n)} {v:.4f}" for n, v in parts.items()), logger=logger)
    if len(meter.categories) > 1:
        print_log(f"{title} per-category mIoU: " + ", ".join(f"{printable(n)} {v:.4f}"
                                                            for n, v in meter.category_ious().items()), logger=logger)
    return figures


# -------------------------------------------------------------------------------------- job
def set_model_parts(config, parts: Mapping, logger=None) -> None:
    """``config.parts`` and the head's sizes (``model.num_part``, ``model.num_category``) from the
    training folder; a config value that disagrees is a ConfigError."""
    sizes = {"num_part": len(parts["names"]), "num_category": len(parts["categories"])}
    for key, value in sizes.items():
        given = config.model.get(key)
        if given is not None and int(given) != value:
            raise ConfigError(f"'model.{key}' = {given}: the training folder has {value}; remove {key} or set it to "
                              f"{value}", origin_of(config.model))
        config.model[key] = value
    config.parts = {"names": list(parts["names"]), "categories": list(parts["categories"]),
                    "category_parts": {c: list(p) for c, p in parts["category_parts"].items()}}
    print_log(f"Parts: {sizes['num_part']} from the training folder ({printable(', '.join(parts['names'][:12]))}); "
              f"categories: {printable(', '.join(parts['categories'][:12]))}", logger=logger)


def resolve_patch_embed(config, settings: RunSettings) -> None:
    """``model.patch_embed: auto``: the checkpoint's when fine-tuning (resuming: the run's
    ``ckpt-last``), else Point-MAE's mini-PointNet (the released segmentation model's), as
    ``segmentation/main.py``."""
    from models.backbone import encoder_state_dict, patch_embed_kind

    if config.model.get("patch_embed", "auto") != "auto":
        return
    source = settings.ckpts if settings.resume == "no" else os.path.join(settings.experiment_path, "ckpt-last.pth")
    kind = None
    if source and os.path.isfile(source):  # (resuming: the run's own choice, in its ckpt-last)
        state = state_dict_of(load_checkpoint_file(source, trust=settings.trust_checkpoint), source)
        kind = patch_embed_kind(encoder_state_dict(state, source))
    config.model.patch_embed = kind or "point_mae"


def feed_npoints(config) -> None:
    """Every dataset entry samples the run's ``npoints`` per shape unless it sets its own."""
    for entry in (config.get("dataset") or {}).values():
        if isinstance(entry, Mapping) and isinstance(entry.get("others"), Mapping) and "npoints" not in entry.others \
                and "npoints" not in (entry.get("_base_") or {}):
            entry.others.npoints = int(config.npoints)


def run_net(settings: RunSettings, config, writers=(None, None), stop: Optional[StopRequest] = None,
            logger=None) -> Dict[str, float]:
    """Fine-tune (``--ckpts``) or train from scratch on ``config.dataset.train``; validate on
    ``config.dataset.val`` when due; keep ``ckpt-best`` (instance mIoU) and ``ckpt-last``."""
    train_writer, val_writer = writers
    device, amp = settings.device, settings.amp_dtype
    feed_npoints(config)
    loader_args = dict(seed=settings.seed, num_workers=settings.num_workers)
    _, train_loader = builder.dataset_builder(config.dataset.train, **loader_args)
    _, val_loader = builder.dataset_builder(config.dataset.val, **loader_args)
    train_set = train_loader.dataset
    if not hasattr(train_set, "category_parts"):
        raise ConfigError(f"dataset.train is {type(train_set).__name__}: a PartSegTransformer run in main.py trains on "
                          f"a PartSegFolder (ShapeNetPart: segmentation/main.py)", origin_of(config.dataset))
    parts = parts_of_dataset(train_set)
    val_parts = parts_of_dataset(val_loader.dataset)
    if (val_parts["names"], val_parts["categories"]) != (parts["names"], parts["categories"]):
        raise DatasetFormatError(f"dataset.val ({val_loader.dataset.root}) has other parts or categories than "
                                 f"dataset.train ({train_set.root})")
    set_model_parts(config, parts, logger)
    resolve_patch_embed(config, settings)
    print_log(f"Training shapes: {len(train_set)}; validation shapes: {len(val_loader.dataset)}", logger=logger)
    state = builder.build_training(config, settings, logger)
    state.data = data_summary(config, {"train": train_set, "val": val_loader.dataset})
    if settings.resume != "no":
        resume(state, settings, logger=logger)
    elif settings.ckpts is not None:
        state.model.load_model_from_ckpt(settings.ckpts, logger=logger, trust=settings.trust_checkpoint)
    else:
        print_log(f"Training from scratch (no pre-trained weights; {state.model.patch_embed_kind} patch embedding)",
                  logger=logger)
    model = builder.wrap_distributed(state.model, settings, logger)
    mask = category_mask(parts, device)
    train_step, eval_step, bn_forward = make_train_step(device), make_eval_step(device, mask), make_bn_forward(device)
    run = TrainRun(settings, config, state, stop, train_writer, logger)
    for epoch in epoch_range(state.start_epoch, settings.n_epochs, settings.progress, logger):
        metrics = train_epoch(run, model, train_step, train_loader, epoch)
        refresh_batchnorm(model, train_loader, bn_forward, settings, epoch, logger)
        if validation_due(epoch, settings):
            meter = evaluate(model, eval_step, val_loader, device, SegMeter(parts), amp=amp,
                             progress=settings.progress and settings.is_main_process, desc="validate")
            figures = log_figures(f"[Validation] EPOCH: {epoch} ({epoch + 1}/{settings.n_epochs})", meter, logger)
            check_finite_figures(figures, epoch)
            log_scalars(val_writer, "Metric", {**figures, **{f"iou_{n}": v for n, v in meter.part_ious().items()}},
                        epoch)
            metrics.update(figures)
            if figures["instance_avg_iou"] > state.best_metrics.get("instance_avg_iou", -1.0):
                state.best_metrics = {**figures, "epoch": epoch, "part_iou": dict(meter.part_ious())}
                run.save("ckpt-best", epoch, metrics)
        write_epoch_metrics(state, settings, epoch, metrics, logger)
        run.save("ckpt-last", epoch, metrics)
    if state.best_metrics:
        print_log(f"[Part segmentation] best instance mIoU = {state.best_metrics['instance_avg_iou']:.5f} (class mIoU "
                  f"{state.best_metrics['class_avg_iou']:.5f}, epoch {state.best_metrics['epoch']})", logger=logger)
    return state.best_metrics


def model_from_checkpoint(ckpt: Mapping, path: str, settings: Optional[RunSettings] = None):
    """(model with the checkpoint's weights, its checked ``parts``) of a folder segmentation checkpoint."""
    config = ckpt.get("config") or {}
    if not isinstance(config, Mapping) or not isinstance(config.get("parts"), Mapping):
        raise CheckpointError(f"checkpoint '{path}' is not a part-segmentation run of a folder (no 'parts' in its "
                              f"config; ShapeNetPart checkpoints: segmentation/main.py --test)")
    parts = check_parts(config["parts"], f"checkpoint '{path}'")
    from easydict import EasyDict

    from engine.model_check import build_checked, check_checkpoint_config

    check_checkpoint_config(config, f"the config of checkpoint {path}")
    state = state_dict_of(ckpt, path)
    model = build_checked(EasyDict(dict(config["model"])), state, path,
                          build=lambda cfg: builder.model_builder(cfg, settings))
    load_weights(model, ckpt, name=path)
    return model, parts


def test_net(settings: RunSettings, config, logger=None) -> Dict[str, float]:
    """``--test --ckpts ckpt-best.pth``: the metrics of a folder segmentation checkpoint on
    ``config.dataset.test`` (its parts must be the checkpoint's), written to ``test_results.json``."""
    ckpt = load_checkpoint_file(settings.ckpts, trust=settings.trust_checkpoint)
    model, parts = model_from_checkpoint(ckpt, settings.ckpts, settings)
    model = model.to(settings.device)
    feed_npoints(config)
    entry = config.dataset.get("test") or config.dataset.val
    _, loader = builder.dataset_builder(entry, seed=settings.seed, num_workers=settings.num_workers)
    dataset = loader.dataset
    if (list(dataset.part_names), list(dataset.categories)) != (parts["names"], parts["categories"]):
        raise DatasetFormatError(f"{dataset.root}: its parts ({printable(', '.join(dataset.part_names[:8]))}) or "
                                 f"categories ({printable(', '.join(dataset.categories[:8]))}) are not those of "
                                 f"{settings.ckpts} ({printable(', '.join(parts['names'][:8]))}; "
                                 f"{printable(', '.join(parts['categories'][:8]))})")
    print_log(f"[TEST] {settings.ckpts} (saved after epoch {ckpt.get('epoch', '?')}) on {len(dataset)} shapes of "
              f"{dataset.root}", logger=logger)
    meter = evaluate(model, make_eval_step(settings.device, category_mask(parts, settings.device)), loader,
                     settings.device, SegMeter(parts), amp=settings.amp_dtype,
                     progress=settings.progress and settings.is_main_process)
    figures = log_figures("[TEST]", meter, logger)
    if settings.is_main_process:
        path = write_json(os.path.join(settings.experiment_path, "test_results.json"),
                          {**figures, "part_iou": meter.part_ious(), "category_iou": meter.category_ious(),
                           "ckpts": str(settings.ckpts), "test_shapes": len(dataset), "npoints": int(config.npoints)})
        print_log(f"[TEST] results written to {path}", logger=logger)
    return figures
