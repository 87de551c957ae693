"""Per-point part labels of a folder segmentation model (``main.py --config cfgs/partseg_folder.yaml``)
on files or arrays: :class:`SegPredictor` (``Predictor.from_checkpoint`` gives one for such a checkpoint).

    from engine.predict import Predictor
    predictor = Predictor.from_checkpoint("experiments/partseg_folder/mine/ckpt-best.pth", device="cpu")
    labels = predictor.predict_points(points)              # (N, 3) array -> (N,) part ids
    predictor.part_names[labels[0]]                        # 'shade'
    results = predictor.predict("new_scans/", out="predictions/")   # a .ply per file, see tools/predict.py

A cloud is prepared as the test set of the run: all its points centred and scaled into the unit
sphere, ``npoints`` of them drawn (seeded by ``sample_seed`` and the point count; with replacement
when fewer), the model's logits restricted to the parts of the object's category, and each point of
the cloud labelled as its nearest drawn point (``scipy.spatial.cKDTree``). The category of a file
is the category folder it lies in (the closest folder above it named after one), else the one
given (``category=``); a model trained without categories needs none. Files are read as the
training folder's (:func:`datasets.labelled_io.read_labelled_file`, the run's ``label_key`` /
``label_column``); a file without labels, or a mesh (sampled on its surface,
:func:`datasets.io.read_cloud`), is predicted without scores. The part names files of a folder
(``labels.txt`` / ``parts.json`` directly in an input folder) are not inputs.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from easydict import EasyDict
from torch import Tensor
from tqdm import tqdm

from datasets.common import DatasetFormatError, pc_normalize
from datasets.io import BadFileError, bad_files_message, list_cloud_files, read_cloud, true_class
from datasets.labelled_io import read_labelled_file, write_labelled_ply
from datasets.PartSegFolder import PART_FILES
from engine.partseg import shape_iou
from engine.partseg_folder import SegMeter, category_mask, check_parts, restrict
from utils.checkpoint import CheckpointError, load_weights, state_dict_of
from utils.logger import print_log
from utils.misc import resolve_device
from utils.text import printable, spreadsheet_cell


@dataclass
class SegPrediction:
    """One input: ``path`` (or ``array i``), its ``category``, ``points`` (count), the predicted
    ``labels`` (N,) of every point (dropped once written), ``counts`` {part name: points},
    ``miou`` / ``accuracy`` against the file's own labels (None without), ``output`` (the .ply
    written), ``error`` (why it was skipped) and, for a file with labels, a ``preview`` of at most
    2048 of its points for pictures."""

    path: str
    category: Optional[str] = None
    points: int = 0
    labels: Optional[np.ndarray] = None
    counts: Dict[str, int] = field(default_factory=dict)
    miou: Optional[float] = None
    accuracy: Optional[float] = None
    output: Optional[str] = None
    error: Optional[str] = None
    preview: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None  # (points, labels, predicted), <= 2048 of them


def _entry(config: Mapping) -> Mapping:
    datasets = config.get("dataset") or {}
    for split in ("test", "val", "train"):
        entry = datasets.get(split)
        if isinstance(entry, Mapping):
            return {**(entry.get("_base_") or {}), **(entry.get("others") or {})}
    return {}


def part_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 colours, one per part (:func:`utils.vis.class_colours`)."""
    from utils.vis import class_colours

    return (np.asarray(class_colours(n))[:, :3] * 255.0 + 0.5).astype(np.uint8)


class SegPredictor:
    """A folder segmentation model with its parts and preparation (module docstring)."""

    kind = "segmentation"

    def __init__(self, model: torch.nn.Module, parts: Mapping, npoints: int, sample_seed: int = 0,
                 label_key: Optional[str] = None, label_column: int = -1,
                 device: Union[None, str, torch.device] = None, source: str = "<model>"):
        self.device = resolve_device(None if device is None else str(device))
        self.model = model.to(self.device).eval()
        self.parts = check_parts(parts, source)
        self.part_names: List[str] = list(self.parts["names"])
        self.categories: List[str] = list(self.parts["categories"])
        self.mask = category_mask(self.parts, self.device)
        self.npoints, self.sample_seed = int(npoints), int(sample_seed)
        self.label_key, self.label_column = label_key, int(label_column)
        self.source = source

    @classmethod
    def from_checkpoint_dict(cls, ckpt: Mapping, run_cfg: Mapping, path: str, cfg_source: str,
                             device: Union[None, str, torch.device] = None, logger=None) -> "SegPredictor":
        """The predictor of a loaded checkpoint ``ckpt`` and its run config (values checked, the
        model built on the meta device against the weights first: :mod:`engine.model_check`)."""
        from engine.model_check import build_checked, check_checkpoint_config
        from models import build_model_from_cfg
        from utils.limits import check_count

        if not isinstance(run_cfg.get("parts"), Mapping):
            raise CheckpointError(f"checkpoint '{path}': a PartSegTransformer without a 'parts' section in its config "
                                  f"({cfg_source}); predict takes models of main.py --config cfgs/partseg_folder.yaml "
                                  f"(ShapeNetPart models: segmentation/main.py --test)")
        parts = check_parts(run_cfg["parts"], f"checkpoint '{path}'")
        check_checkpoint_config(run_cfg, f"{cfg_source} (checkpoint {path})")
        state = state_dict_of(ckpt, path)
        model = build_checked(EasyDict(run_cfg["model"]), state, path, build=build_model_from_cfg)
        load_weights(model, ckpt, name=path)
        data = _entry(run_cfg)
        npoints = int(run_cfg.get("npoints") or 2048)
        check_count(npoints, "points", f"npoints of {cfg_source}")
        predictor = cls(model, parts, npoints, int(data.get("sample_seed") or 0), data.get("label_key") or None,
                        int(data.get("label_column", -1)), device, source=path)
        cats = "" if len(parts["categories"]) == 1 else f", categories {printable(', '.join(parts['categories']))}"
        print_log(f"[predict] {path}: part segmentation, {len(parts['names'])} parts "
                  f"({printable(', '.join(parts['names'][:12]))}){cats}; config {cfg_source}; {npoints} points drawn "
                  f"per cloud, every point labelled as its nearest drawn point; device {predictor.device}", logger=logger)
        return predictor

    # ------------------------------------------------------------------------------ points
    def category_index(self, category: Optional[str], name: str = "input") -> int:
        if len(self.categories) == 1 and category in (None, self.categories[0]):
            return 0
        if category is None:
            raise BadFileError(name, f"in no category folder (the model's categories: "
                                     f"{printable(', '.join(self.categories))}): put it in one, or give the category")
        if category not in self.categories:
            raise BadFileError(name, f"category '{printable(category)}' is not one of the model's "
                                     f"({printable(', '.join(self.categories))})")
        return self.categories.index(category)

    @torch.no_grad()
    def predict_points(self, points: Any, category: Optional[str] = None, name: str = "array") -> np.ndarray:
        """Part ids (N,) int64 of every point of a cloud ``points`` (N, >=3) (module docstring)."""
        from scipy.spatial import cKDTree

        arr = np.asarray(points.detach().cpu() if isinstance(points, Tensor) else points)
        if arr.ndim != 2 or arr.shape[1] < 3 or arr.dtype.kind not in "biuf" or arr.shape[0] == 0:
            raise BadFileError(name, f"expected a numeric (N, 3) array, got {arr.dtype} {arr.shape}")
        xyz = arr[:, :3].astype(np.float64)
        if not np.isfinite(xyz).all():
            raise BadFileError(name, f"non-finite value at row {int(np.argmin(np.isfinite(xyz).all(axis=1)))}")
        c = self.category_index(category, name)
        n = xyz.shape[0]
        norm = pc_normalize(xyz).astype(np.float32)
        choice = np.random.default_rng([self.sample_seed, n]).choice(n, self.npoints, replace=n < self.npoints)
        drawn = torch.from_numpy(norm[choice][None]).to(self.device)
        category_t = torch.tensor([c], device=self.device)
        pred = restrict(self.model(drawn, category_t), category_t, self.mask)[0].cpu().numpy()
        nearest = cKDTree(norm[choice]).query(norm, k=1)[1]
        return pred[nearest].astype(np.int64)

    def read(self, path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(points (N, 3), the file's labels (N,) or None) of a file; BadFileError when it cannot be used."""
        try:
            return read_labelled_file(path, self.label_key, self.label_column)
        except BadFileError as labelled:
            try:
                return read_cloud(path).astype(np.float64), None
            except BadFileError:
                raise labelled from None

    # --------------------------------------------------------------------------- predict
    def predict(self, inputs, category: Optional[str] = None, out: Optional[str] = None, progress: bool = False,
                strict: bool = False, meter: Optional[SegMeter] = None) -> List[SegPrediction]:
        """Predictions for ``inputs`` (a path, a list of paths and/or (N, 3) arrays). With ``out``
        (a folder) each file's prediction is written there as ``.ply`` (:meth:`write_ply`) and its
        labels dropped. A bad input is skipped (``error`` set); with ``strict`` every input is read
        first and any bad one is an error listing all of them, before anything is written.
        ``meter``: a :class:`SegMeter` updated with every input that has labels (all its points)."""
        entries = self._entries(inputs)
        if strict:
            self.check_inputs(inputs, category)
        if out is not None:
            os.makedirs(out, exist_ok=True)
        results: List[SegPrediction] = []
        taken: set = set()
        for name, top, item in tqdm(entries, desc="predict", disable=not progress, dynamic_ncols=True):
            result = SegPrediction(path=name)
            results.append(result)
            try:
                if isinstance(item, (str, os.PathLike)):
                    xyz, truth = self.read(str(item))
                    cat = true_class(name, top, self.categories) if len(self.categories) > 1 else None
                    cat = cat or category
                else:
                    xyz, truth, cat = np.asarray(item), None, category
                result.category = self.categories[self.category_index(cat, name)]
                labels = self.predict_points(xyz, result.category, name)
            except BadFileError as e:
                result.error = e.reason
                continue
            result.points = int(labels.shape[0])
            result.labels = labels
            counts = np.bincount(labels, minlength=len(self.part_names))
            result.counts = {p: int(counts[i]) for i, p in enumerate(self.part_names)}
            if truth is not None:
                result.miou = shape_iou(labels, truth, self.parts["category_parts"][result.category])
                result.accuracy = float((labels == truth).mean())
                if meter is not None:
                    meter.update(labels[None], truth[None], [self.categories.index(result.category)])
                keep = np.sort(np.random.default_rng(0).choice(len(xyz), min(len(xyz), 2048), replace=False))
                result.preview = (xyz[keep].astype(np.float32), truth[keep], labels[keep])
            if out is not None and isinstance(item, (str, os.PathLike)):
                result.output = self.write_ply(out, name, top, xyz, labels, taken)
                result.labels = None
        return results

    @staticmethod
    def _entries(inputs) -> List[Tuple[str, str, Any]]:
        """(name, input folder or '', path or array) of every input."""
        items = [inputs] if isinstance(inputs, (str, os.PathLike, np.ndarray, Tensor)) else list(inputs)
        entries: List[Tuple[str, str, Any]] = []
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                entries += [(p, top, p) for p, top in list_cloud_files([item], unknown="keep")
                            if not (top and os.path.dirname(p) == top.rstrip(os.sep) and os.path.basename(p) in PART_FILES)]
            else:
                entries.append((f"array {i}", "", item))
        return entries

    def check_inputs(self, inputs, category: Optional[str] = None) -> None:
        """Read every input file and find its category; any that cannot be used is a
        DatasetFormatError listing all of them, grouped by reason (``--strict``)."""
        bad = []
        for name, top, item in self._entries(inputs):
            if not isinstance(item, (str, os.PathLike)):
                continue
            try:
                self.read(str(item))
                found = true_class(name, top, self.categories) if len(self.categories) > 1 else None
                self.category_index(found or category, name)
            except BadFileError as e:
                bad.append((name, e.reason))
        if bad:
            head = f"{len(bad)} bad input{'s' if len(bad) != 1 else ''} (--strict)"
            raise DatasetFormatError(bad_files_message(head, bad, noun="input", tail="nothing written"))

    def write_ply(self, out: str, path: str, top: str, xyz: np.ndarray, labels: np.ndarray, taken: set) -> str:
        """``<out>/<path relative to its input folder, extension .ply>`` (a suffix when two inputs
        would share a name): the file's points, a colour per part (``red green blue``) and the
        predicted ``label``, binary PLY. An output that would replace its input is an error."""
        rel = os.path.relpath(path, top) if top else os.path.basename(path)
        stem, ext = os.path.splitext(rel)
        target = os.path.join(out, stem + ".ply")
        if target in taken:
            target = os.path.join(out, f"{stem}_{ext.lstrip('.')}.ply")
        k = 1
        while target in taken:
            target = os.path.join(out, f"{stem}_{k}.ply")
            k += 1
        if os.path.exists(target) and os.path.samefile(target, path):
            raise DatasetFormatError(f"--out {out}: the prediction of {path} would replace the file itself; choose "
                                     f"another --out folder")
        taken.add(target)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        write_labelled_ply(target, xyz.astype(np.float32), labels.astype(np.int32),
                           colors=part_colours(len(self.part_names))[labels], label_name="label", label_type="int")
        return target


# ------------------------------------------------------------------------------- reporting
def summarize(meter: SegMeter) -> Optional[Dict[str, Any]]:
    """Per-part IoU, instance and class mIoU and accuracy of a :class:`SegMeter` that
    :meth:`SegPredictor.predict` updated (every point of the inputs with labels); None when none had."""
    if not meter.shape_ious:
        return None
    return {**meter.compute(), "files": len(meter.shape_ious), "part_iou": dict(meter.part_ious()),
            "category_iou": dict(meter.category_ious())}


def write_csv(path: str, results: Sequence[SegPrediction], part_names: Sequence[str]) -> str:
    """One row per input: path, output, category, points, the points of each part (``n_<part>``),
    mIoU and accuracy against the file's labels, error; strings a spreadsheet would run as a
    formula get a leading quote. Written atomically, UTF-8."""
    from utils.checkpoint import atomic_write

    cell = spreadsheet_cell
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "output", "category", "points"] + [f"n_{cell(p)}" for p in part_names]
                    + ["miou", "accuracy", "error"])
    for r in results:
        counts = [r.counts.get(p, "") if r.error is None else "" for p in part_names]
        writer.writerow([cell(r.path), cell(r.output), cell(r.category), r.points if r.error is None else "", *counts,
                         "" if r.miou is None else f"{r.miou:.6f}", "" if r.accuracy is None else f"{r.accuracy:.6f}",
                         cell(r.error)])
    atomic_write(path, lambda f: f.write(buf.getvalue().encode("utf-8")))
    return path


def plot_files(results: Sequence[SegPrediction], predictor: SegPredictor, n: int, path: str,
               up: str = "z") -> Optional[str]:
    """Draw up to ``n`` labelled inputs, their labels | the prediction, one per category first;
    ``up``: the files' vertical axis (``z``: scans, CAD; ``y``: ShapeNet)."""
    from engine.partseg import shapes_to_draw
    from utils.vis import plot_cloud_rows

    done = [r for r in results if r.preview is not None]
    if not done or n <= 0:
        return None
    colours = part_colours(len(predictor.part_names)) / 255.0
    picked = shapes_to_draw([predictor.categories.index(r.category) for r in done], n)
    rows, colors, labels = [], [], []
    for i in picked:
        r = done[i]
        xyz, truth, pred = r.preview
        if up == "z":  # the drawing's vertical axis is y: rotate z-up points to y-up, (x, y, z) -> (x, z, -y)
            xyz = np.stack([xyz[:, 0], xyz[:, 2], -xyz[:, 1]], axis=1)
        rows.append([xyz, xyz])
        colors.append([colours[np.clip(truth, 0, len(colours) - 1)], colours[pred]])
        labels.append(f"{printable(os.path.basename(r.path))} (mIoU {r.miou:.2f})")
    return plot_cloud_rows(path, rows, ["file's labels", "prediction"], [(20.0, -60.0)] * len(rows),
                           row_labels=labels, colors=colors)


def report(results: Sequence[SegPrediction], predictor: SegPredictor, meter: SegMeter, out: str, vis: int = 0,
           up: str = "z", logger=None) -> Optional[Dict[str, Any]]:
    """``<out>/predictions.csv``, ``<out>/summary.json`` (per-part IoU etc. of ``meter``, the
    files predicted and skipped) and, with ``vis``, ``<out>/predictions.png``; the
    figures in the log."""
    from utils.checkpoint import atomic_write

    skipped = [r for r in results if r.error]
    for r in skipped:
        print_log(f"[predict] skipped {printable(r.path)}: {printable(r.error)}", logger=logger)
    csv_path = write_csv(os.path.join(out, "predictions.csv"), results, predictor.part_names)
    print_log(f"[predict] {len(results) - len(skipped)} of {len(results)} inputs predicted (a .ply each in {out}), "
              f"one row each in {csv_path}" + (f"; {len(skipped)} skipped (bad files: the 'error' column)"
                                                if skipped else ""), logger=logger)
    summary = summarize(meter)
    record = {"ckpts": predictor.source, "inputs": len(results), "predicted": len(results) - len(skipped),
              "skipped": len(skipped), "part_names": predictor.part_names, **(summary or {})}
    if summary is not None:
        print_log(f"[predict] {summary['files']} files with labels: instance mIoU {summary['instance_avg_iou']:.4f}, "
                  f"class mIoU {summary['class_avg_iou']:.4f}, accuracy {summary['accuracy']:.4f} (every point)",
                  logger=logger)
        print_log("[predict] per-part IoU: " + ", ".join(f"{printable(n)} {v:.4f}" for n, v in
                                                         summary["part_iou"].items()), logger=logger)
        picture = plot_files(results, predictor, vis, os.path.join(out, "predictions.png"), up)
        if picture:
            record["picture"] = picture
            print_log(f"[predict] {min(vis, summary['files'])} files drawn (labels | prediction) to {picture}",
                      logger=logger)
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    atomic_write(os.path.join(out, "summary.json"), lambda f: f.write(text.encode("utf-8")))
    return summary


__all__ = ["SegPredictor", "SegPrediction", "summarize", "write_csv", "report", "plot_files", "part_colours"]
