"""ShapeNetPart metrics (SPEC §6), implemented once for training, ``--test`` and the tests.

* per-shape IoU: mean over the parts of the shape's category of |pred & gt| / |pred | gt|; a part
  absent from both prediction and ground truth counts 1;
* instance mIoU: mean of the per-shape IoUs over all shapes;
* class mIoU: mean over the categories present in the evaluated set of their mean per-shape IoU;
* accuracy: correct points / points;
* class-average accuracy: mean over the parts that occur in the ground truth of the per-part
  point accuracy (recall).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Sequence

import numpy as np
import torch
from torch import Tensor

NUM_PARTS = 50
NUM_CATEGORIES = 16

# Category -> global part ids, in the order of synsetoffset2category.txt (= category index).
SEG_CLASSES: "OrderedDict[str, List[int]]" = OrderedDict([
    ("Airplane", [0, 1, 2, 3]), ("Bag", [4, 5]), ("Cap", [6, 7]), ("Car", [8, 9, 10, 11]),
    ("Chair", [12, 13, 14, 15]), ("Earphone", [16, 17, 18]), ("Guitar", [19, 20, 21]), ("Knife", [22, 23]),
    ("Lamp", [24, 25, 26, 27]), ("Laptop", [28, 29]), ("Motorbike", [30, 31, 32, 33, 34, 35]), ("Mug", [36, 37]),
    ("Pistol", [38, 39, 40]), ("Rocket", [41, 42, 43]), ("Skateboard", [44, 45, 46]), ("Table", [47, 48, 49]),
])
CATEGORIES: List[str] = list(SEG_CLASSES)


def category_part_mask(device=None) -> Tensor:
    """(16, 50) bool: which global parts belong to each category."""
    mask = torch.zeros(NUM_CATEGORIES, NUM_PARTS, dtype=torch.bool, device=device)
    for c, parts in enumerate(SEG_CLASSES.values()):
        mask[c, parts] = True
    return mask


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
    """Accumulates predictions shape by shape; ``compute()`` gives the SPEC §6 metrics."""

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
