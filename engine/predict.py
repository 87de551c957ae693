"""Named predictions of a fine-tuned classifier on point-cloud and mesh files or arrays (part
segmentation checkpoints of a folder: :mod:`engine.predict_seg`, through the same ``from_checkpoint``).

    from engine.predict import Predictor
    predictor = Predictor.from_checkpoint("experiments/finetune_folder/mine/ckpt-best.pth", device="cpu")
    results = predictor.predict("new_files/")            # a file, a folder, a list of paths or arrays
    results[0].name, results[0].prob, results[0].topk    # 'chair', 0.93, [('chair', 0.93), ...]

Files are prepared exactly as ``main.py --test`` prepares its test set (a ``PointCloudFolder``):
``N_POINTS`` points read with :func:`datasets.io.load_cloud_file` (meshes sampled on the surface,
larger clouds a seeded subset, the seed from the file's bytes and ``sample_seed``), centred and
scaled into the unit sphere, then FPS to ``npoints`` (:func:`engine.finetune.fps_to`); with
``vote`` the logits of ``vote`` passes are averaged (:func:`engine.finetune.vote_logits`).
``N_POINTS``, ``sample_seed`` and ``npoints`` come from the run's config. Arrays (N, >=3) are
used as given: normalised, then FPS to ``npoints``.

The class names come from the checkpoint (``class_names``, written by training runs on a folder
dataset); the model config from the checkpoint's ``config`` entry, else the run's
``config.yaml`` beside it. ``tools/predict.py`` is the command.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from easydict import EasyDict
from torch import Tensor
from tqdm import tqdm

from datasets.common import DatasetFormatError, pc_normalize
from datasets.io import (AUTO, AUTO_MAX_POINTS, BadFileError, bad_files_message, list_cloud_files, load_cloud_file,
                         true_class)
from utils.checkpoint import (CheckpointError, checkpoint_class_names, load_checkpoint_file, load_weights,
                              state_dict_of)
from utils.logger import print_log
from utils.misc import resolve_device
from utils.text import check_class_names, printable, spreadsheet_cell

DEFAULT_N_POINTS = 2048


@dataclass
class Prediction:
    """One input: ``path`` (or ``array i``), ``name`` / ``index`` / ``prob`` of the predicted class
    (None when the input was skipped), ``topk`` [(name, probability)], ``true`` (the class folder
    the file sits in, when it is one of the classes) and ``error`` (why a file was skipped)."""

    path: str
    name: Optional[str] = None
    index: Optional[int] = None
    prob: Optional[float] = None
    topk: List[Tuple[str, float]] = field(default_factory=list)
    true: Optional[str] = None
    error: Optional[str] = None

    @property
    def correct(self) -> Optional[bool]:
        return None if self.true is None or self.name is None else self.name == self.true


# ----------------------------------------------------------------------------------- inputs
def list_inputs(inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[Tuple[str, str]]:
    """(path, folder the file was found under or '') of every input: :func:`datasets.io.list_cloud_files`
    keeping files of any extension (an unknown one becomes a row with its error). A missing input
    or a folder without files is a :class:`DatasetFormatError`."""
    return list_cloud_files(inputs, unknown="keep")


# -------------------------------------------------------------------------------- predictor
def _dataset_entry(config: Mapping) -> Mapping:
    """The merged ``_base_`` + ``others`` of the run's test (else val, else train) dataset entry."""
    datasets = config.get("dataset") or {}
    for split in ("test", "val", "train"):
        entry = datasets.get(split)
        if isinstance(entry, Mapping):
            base = entry.get("_base_") if isinstance(entry.get("_base_"), Mapping) else {}
            others = entry.get("others") if isinstance(entry.get("others"), Mapping) else {}
            return {**base, **others}
    return {}


class Predictor:
    """A classifier with its class names and preparation; :meth:`predict` gives :class:`Prediction` s."""

    def __init__(self, model: torch.nn.Module, class_names: Sequence[str], npoints: int, n_points: int,
                 sample_seed: int = 0, device: Union[None, str, torch.device] = None, source: str = "<model>"):
        self.device = resolve_device(None if device is None else str(device))
        self.model = model.to(self.device).eval()
        self.class_names = check_class_names([str(c) for c in class_names])
        self.npoints, self.n_points, self.sample_seed = int(npoints), int(n_points), int(sample_seed)
        self.source = source

    @classmethod
    def from_checkpoint(cls, path: str, device: Union[None, str, torch.device] = None,
                        config: Union[None, str, Mapping] = None, trust: bool = False, logger=None):
        """Load a fine-tuned classifier (a :class:`Predictor`), or a part-segmentation model of a
        folder (``model.NAME: PartSegTransformer``): an :class:`engine.predict_seg.SegPredictor`. ``config``: a run config (path or dict) instead of the
        checkpoint's ``config`` / the ``config.yaml`` beside it. ``trust``: full unpickling
        (``--trust_checkpoint``; only for files you trust)."""
        from models import build_model_from_cfg
        from utils.config import cfg_from_yaml_file, run_config_of

        ckpt = load_checkpoint_file(path, trust=trust)
        if isinstance(config, Mapping):
            run_cfg, cfg_source = EasyDict(config), "<config given as a dict>"
        elif config is not None:
            run_cfg, cfg_source = cfg_from_yaml_file(config), str(config)
        elif isinstance(ckpt.get("config"), Mapping) and isinstance(ckpt["config"].get("model"), Mapping):
            run_cfg, cfg_source = EasyDict(ckpt["config"]), f"the 'config' entry of {path}"
        else:
            beside = run_config_of(path)
            if beside is None:
                raise CheckpointError(f"checkpoint '{path}' holds no config and no config.yaml lies beside it; "
                                      f"give the run's config with --config")
            run_cfg, cfg_source = cfg_from_yaml_file(beside), beside
        model_cfg = EasyDict(run_cfg.model)
        if model_cfg.get("NAME") == "PartSegTransformer":  # a folder segmentation model: per-point part labels
            from engine.predict_seg import SegPredictor

            return SegPredictor.from_checkpoint_dict(ckpt, run_cfg, path, cfg_source, device, logger)
        if model_cfg.get("NAME") != "PointTransformer":
            raise CheckpointError(f"checkpoint '{path}': model '{model_cfg.get('NAME')}' ({cfg_source}) is not a "
                                  f"classifier; predict needs a fine-tuned one (ckpt-best.pth of --finetune_model)")
        names = checkpoint_class_names(ckpt, path, model_cfg.get("cls_dim"))
        if names and model_cfg.get("cls_dim") is None:
            model_cfg.cls_dim = len(names)
        if not names:
            if model_cfg.get("cls_dim") is None:
                raise CheckpointError(f"checkpoint '{path}' names no classes and its config sets no model.cls_dim")
            names = [str(i) for i in range(int(model_cfg.cls_dim))]
            print_log(f"[predict] {path} names no classes (not trained on a folder dataset): classes are shown "
                      f"as indices 0..{len(names) - 1}", logger=logger)
        if int(model_cfg.cls_dim) != len(names):
            raise CheckpointError(f"checkpoint '{path}': {len(names)} class names but model.cls_dim = "
                                  f"{model_cfg.cls_dim}")
        # the config is input too: value checks and limits, then the model on the meta device against
        # the weights' shapes, all before anything is allocated (engine/model_check.py)
        from engine.model_check import build_checked, check_checkpoint_config
        from utils.limits import check_count

        check_checkpoint_config(run_cfg, f"{cfg_source} (checkpoint {path})")
        state = state_dict_of(ckpt, path)
        model = build_checked(model_cfg, state, path, build=build_model_from_cfg)
        load_weights(model, ckpt, name=path)
        data = _dataset_entry(run_cfg)
        npoints = int(run_cfg.get("npoints") or 1024)
        auto = str(data.get("N_POINTS")).strip().lower() == AUTO  # (runs write the number they chose)
        n_points = (max(AUTO_MAX_POINTS, npoints) if auto
                    else int(data.get("N_POINTS") or max(DEFAULT_N_POINTS, npoints)))
        for value, key in ((npoints, "npoints"), (n_points, "N_POINTS")):
            check_count(value, "points", f"{key} of {cfg_source}")
        seed = int(data.get("sample_seed") or 0)
        predictor = cls(model, names, npoints, n_points, seed, device, source=path)
        print_log(f"[predict] {path}: {len(names)} classes; config {cfg_source}; {n_points} points per file "
                  f"{'(N_POINTS: auto) ' if auto else ''}(sample_seed {seed}; a file with fewer but at least npoints: "
                  f"all its points), FPS to {npoints}; device {predictor.device}", logger=logger)
        return predictor

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: Optional[str] = None, cache_dir: Optional[str] = None,
                        device: Union[None, str, torch.device] = None, logger=None, **kwargs) -> "Predictor":
        """A classifier from a model folder (``tools/export_weights.py --hf``), a Hugging Face Hub
        model id (``ORG/NAME``, ``ORG/NAME@REVISION``, ``hf-hub:ORG/NAME``: downloaded into and read
        from ``huggingface_hub``'s cache, ``HF_HUB_OFFLINE=1`` for the cache alone; ``revision``: a
        branch, tag or commit) or a checkpoint file. Weights load without unpickling from a folder;
        ``kwargs`` go to :meth:`from_checkpoint`. An ONNX file: ``engine.onnx_runtime.OnnxPredictor``."""
        from utils.model_folder import resolve_model_path

        path = resolve_model_path(name_or_path, revision=revision, cache_dir=cache_dir)
        return cls.from_checkpoint(path, device=device, logger=logger, **kwargs)

    # ------------------------------------------------------------------------ preparation
    def read(self, path: str) -> np.ndarray:
        """A file's (N_POINTS, 3) points, normalised, as ``--test`` reads them; a point file with
        fewer than N_POINTS but at least npoints points gives all of them (as a run on a folder of
        such files with ``N_POINTS: auto`` reads them). BadFileError when it cannot be used."""
        return pc_normalize(load_cloud_file(path, self.n_points, self.sample_seed, min_points=self.npoints))

    def prepare_array(self, cloud: Any, name: str) -> np.ndarray:
        arr = np.asarray(cloud.detach().cpu() if isinstance(cloud, Tensor) else cloud)
        if arr.ndim != 2 or arr.shape[1] < 3 or arr.dtype.kind not in "biuf":
            raise BadFileError(name, f"expected a numeric (N, 3) array, got {arr.dtype} {arr.shape}")
        xyz = arr[:, :3].astype(np.float32)
        if not np.isfinite(xyz).all():
            raise BadFileError(name, f"non-finite value at row {int(np.argmin(np.isfinite(xyz).all(axis=1)))}")
        if xyz.shape[0] < self.npoints:
            raise BadFileError(name, f"too small: {xyz.shape[0]} points, fewer than npoints = {self.npoints}")
        return pc_normalize(xyz)

    @torch.no_grad()
    def logits(self, clouds: Sequence[np.ndarray], vote: int = 0) -> Tensor:
        """Logits (B, classes) of prepared clouds of equal size: FPS to npoints (``--test``), or
        the mean of ``vote`` voting passes."""
        from engine.finetune import fps_to, vote_logits

        pts = torch.from_numpy(np.stack(clouds).astype(np.float32)).to(self.device)
        if vote:
            return vote_logits(self.model, pts, self.npoints, int(vote)).float()
        return self.model(fps_to(pts, self.npoints)).float()

    # --------------------------------------------------------------------------- predict
    def predict(self, inputs, topk: int = 5, vote: int = 0, batch_size: int = 32, progress: bool = False,
                strict: bool = False) -> List[Prediction]:
        """Predictions for ``inputs``: a path (file or folder), a list of paths and/or arrays
        (N, >=3), or an array / tensor (B, N, 3). A file or array that cannot be used is skipped
        (``error`` set); with ``strict`` a bad input is an error listing every bad one, after all were read."""
        entries: List[Tuple[str, str, Any]] = []  # (name, top folder, path or array)
        if isinstance(inputs, (np.ndarray, Tensor)) and np.ndim(inputs) == 3:
            entries = [(f"array {i}", "", inputs[i]) for i in range(len(inputs))]
        elif isinstance(inputs, (np.ndarray, Tensor)):
            entries = [("array 0", "", inputs)]
        else:
            items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
            for i, item in enumerate(items):
                if isinstance(item, (str, os.PathLike)):
                    entries += [(p, top, p) for p, top in list_inputs([item])]
                else:
                    entries.append((f"array {i}", "", item))
        k = max(1, min(int(topk), len(self.class_names)))
        results: List[Prediction] = []
        ready: List[Tuple[Prediction, np.ndarray]] = []

        def flush():
            groups: Dict[int, List[Tuple[Prediction, np.ndarray]]] = {}
            for pred, cloud in ready:  # files of fewer than N_POINTS points and arrays differ: batch by size
                groups.setdefault(cloud.shape[0], []).append((pred, cloud))
            for group in groups.values():
                probs = torch.softmax(self.logits([c for _, c in group], vote), dim=1).cpu()
                top_p, top_i = probs.topk(k, dim=1)
                for (pred, _), p_row, i_row in zip(group, top_p.tolist(), top_i.tolist()):
                    pred.index, pred.prob = i_row[0], p_row[0]
                    pred.name = self.class_names[i_row[0]]
                    pred.topk = [(self.class_names[i], p) for i, p in zip(i_row, p_row)]
            ready.clear()

        bar = tqdm(entries, desc="predict", disable=not progress, dynamic_ncols=True)
        for name, top, item in bar:
            pred = Prediction(path=name)
            if isinstance(item, (str, os.PathLike)):
                pred.true = true_class(name, top, self.class_names)
            results.append(pred)
            try:
                cloud = self.read(str(item)) if isinstance(item, (str, os.PathLike)) else self.prepare_array(item, name)
            except BadFileError as e:
                pred.error = e.reason
                continue
            ready.append((pred, cloud))
            if len(ready) >= batch_size:
                flush()
        flush()
        bad = [p for p in results if p.error]
        if strict and bad:
            head = f"{len(bad)} bad input{'s' if len(bad) != 1 else ''} (--strict)"
            raise DatasetFormatError(bad_files_message(head, [(p.path, p.error) for p in bad], noun="input",
                                                       tail="nothing written"))
        return results


# ------------------------------------------------------------------------------- reporting
def summarize(results: Sequence[Prediction], class_names: Sequence[str]) -> Optional[Dict[str, Any]]:
    """Accuracy (%), per-class accuracy and the confusion matrix (rows: true class, columns:
    predicted) over the predicted inputs whose class folder is known; None when there are none."""
    scored = [r for r in results if r.true is not None and r.name is not None]
    if not scored:
        return None
    index = {c: i for i, c in enumerate(class_names)}
    matrix = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    for r in scored:
        matrix[index[r.true], index[r.name]] += 1
    per_class = {c: (100.0 * matrix[i, i] / matrix[i].sum() if matrix[i].sum() else None, int(matrix[i].sum()))
                 for i, c in enumerate(class_names)}
    return {"accuracy": 100.0 * np.trace(matrix) / matrix.sum(), "n": int(matrix.sum()), "per_class": per_class,
            "confusion": matrix}


def confusion_text(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The confusion matrix as a text table (names escaped: :func:`utils.text.printable`)."""
    class_names = [printable(c) for c in class_names]
    width = max([len(c) for c in class_names] + [len(str(int(matrix.max()))), 4])
    head = " " * width + " | " + " ".join(f"{c[:width]:>{width}}" for c in class_names)
    rows = [f"{c:>{width}} | " + " ".join(f"{int(v):>{width}}" for v in row) for c, row in zip(class_names, matrix)]
    return "\n".join(["confusion matrix (rows: true class, columns: predicted)", head, "-" * len(head)] + rows)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> str:
    """The confusion matrix as a PNG; class names are drawn as plain text (no mathtext, no TeX)."""
    from utils.vis import new_figure, plain_text, save_figure

    n = len(class_names)
    size = min(max(4.0, 0.45 * n + 2.0), 30.0)
    fig = new_figure(size, size)
    ax = fig.add_subplot(111)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    plain_text(ax.set_xticklabels([printable(c) for c in class_names], rotation=90))
    plain_text(ax.set_yticklabels([printable(c) for c in class_names]))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    if n <= 30:
        peak = matrix.max() if matrix.size else 0
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if matrix[i, j] > peak / 2 else "black")
    return save_figure(fig, path)


def write_csv(path: str, results: Sequence[Prediction], topk: int) -> str:
    """One row per input: path, predicted, probability, top-k names and probabilities, the true
    class (when known), error (a skipped input). Written atomically, UTF-8. Strings from files and
    checkpoints (paths, class names, errors) that a spreadsheet would run as a formula get a leading
    single quote (:func:`utils.text.spreadsheet_cell`)."""
    from utils.checkpoint import atomic_write

    k = max([len(r.topk) for r in results] + [int(topk) if results else 0])
    header = ["path", "predicted", "probability"] + [f"{w}_{i}" for i in range(1, k + 1) for w in ("top", "prob")]
    header += ["true_class", "correct", "error"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for r in results:
        cell = spreadsheet_cell
        tops = [v for name, p in r.topk for v in (cell(name), f"{p:.6f}")]
        tops += [""] * (2 * k - len(tops))
        writer.writerow([cell(r.path), cell(r.name), "" if r.prob is None else f"{r.prob:.6f}", *tops, cell(r.true),
                         "" if r.correct is None else int(r.correct), cell(r.error)])
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode("utf-8")))
    return path


def report(results: Sequence[Prediction], class_names: Sequence[str], out: Optional[str] = None,
           logger=None) -> Optional[Dict[str, Any]]:
    """Log skipped inputs, accuracy, per-class accuracy and the confusion matrix (also as
    ``<out stem>_confusion.png`` when ``out`` is given); returns :func:`summarize`'s dict."""
    skipped = [r for r in results if r.error]
    for r in skipped:
        print_log(f"[predict] skipped {printable(r.path)}: {printable(r.error)}", logger=logger)
    done = len(results) - len(skipped)
    print_log(f"[predict] {done} of {len(results)} inputs predicted"
              + (f", {len(skipped)} skipped (bad files; see the 'error' column)" if skipped else ""), logger=logger)
    summary = summarize(results, class_names)
    if summary is None:
        return None
    print_log(f"[predict] accuracy = {summary['accuracy']:.4f} % ({summary['n']} inputs in class folders)", logger=logger)
    per = "; ".join(f"{printable(c)} {'-' if a is None else f'{a:.1f}'} % ({n})"
                    for c, (a, n) in summary["per_class"].items())
    print_log(f"[predict] per-class accuracy: {per}", logger=logger)
    print_log(confusion_text(summary["confusion"], class_names), logger=logger)
    if out is not None:
        png = os.path.splitext(out)[0] + "_confusion.png"
        summary["confusion_png"] = plot_confusion(summary["confusion"], class_names, png,
                                                  f"accuracy {summary['accuracy']:.2f} % ({summary['n']} files)")
        print_log(f"[predict] confusion matrix drawn in {png}", logger=logger)
    return summary


__all__ = ["Predictor", "Prediction", "list_inputs", "true_class", "summarize", "report", "write_csv",
           "plot_confusion", "confusion_text"]
