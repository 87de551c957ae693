"""Linear SVM on frozen pre-trained point features (ModelNet40, scikit-learn LinearSVC).

Used by ``tools/svm.py`` and, during pre-training, by ``svm_validation``. Every shape is reduced to ``npoints`` by FPS, grouped, embedded and encoded by the pre-trained
``MAE_encoder`` without masking; the feature is ``max_mean_pool`` of the patch tokens (2C). A
LinearSVC fitted on the train features is scored on the test features.

The datasets come from the config's ``svm_validation`` entry when it has one, else from
``cfgs/dataset_configs/ModelNet40.yaml`` (train / test, 1024 points). During pre-training the
same measurement runs through :func:`svm_validate` when ``svm_validation.enabled`` is true.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
from easydict import EasyDict
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import build_dataset_from_cfg
from engine import builder
from datasets.common import DatasetFormatError
from engine.finetune import unpack_cls_batch
from extensions.pointops import fps
from models.backbone import max_mean_pool
from utils.config import SVM_SCHEMA, ConfigError, cfg_from_yaml_file, merge_into, origin_of, resolve_base_path
from utils.dist_utils import get_dist_info
from utils.logger import print_log

DEFAULT_DATASET = "cfgs/dataset_configs/ModelNet40.yaml"
DEFAULT_C = 0.01
DEFAULT_NPOINTS = 1024


def default_svm_config() -> EasyDict:
    entry = lambda subset: EasyDict({"_base_": DEFAULT_DATASET, "others": {"subset": subset, "npoints": DEFAULT_NPOINTS}})
    return EasyDict({"enabled": True, "train": entry("train"), "test": entry("test"), "C": DEFAULT_C, "freq": 1})


def resolve_svm_config(config) -> EasyDict:
    """``config.svm_validation`` checked, with defaults filled in; ``_base_`` paths are loaded."""
    svm_cfg = config.get("svm_validation") if config is not None else None
    out = default_svm_config()
    if svm_cfg is not None:
        SVM_SCHEMA.check(svm_cfg, "svm_validation")
        out = merge_into(out, svm_cfg)
    for split in ("train", "test"):
        entry = out[split]
        if "_base_" not in entry or "others" not in entry:
            raise ConfigError(f"svm_validation.{split} needs '_base_' and 'others'", origin_of(svm_cfg))
        if isinstance(entry._base_, str):
            entry._base_ = cfg_from_yaml_file(resolve_base_path(entry._base_, origin_of(svm_cfg) or "."))
    return out


def _encoder_of(model: nn.Module) -> nn.Module:
    model = builder.unwrap_model(model)
    if not hasattr(model, "MAE_encoder"):
        raise TypeError(f"{type(model).__name__} has no MAE_encoder; the SVM needs a pre-training model")
    return model


@torch.no_grad()
def extract_features(features: Callable[[Tensor], Tensor], loader, device: torch.device, npoints: int = 0,
                     show_progress: bool = False, desc: str = "features") -> Tuple[np.ndarray, np.ndarray]:
    """(features (n, D) float32, labels (n,) int64) of every shape of a classification ``loader``
    (items ``(name, 'sample', (points, label))``): xyz reduced to ``npoints`` by FPS when it has
    more, then ``features(points (B, npoints, 3)) -> (B, D)``."""
    feats, labels = [], []
    for item in tqdm(loader, desc=desc, disable=not show_progress, dynamic_ncols=True, leave=False):
        if not (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[2], (list, tuple))):
            dataset = getattr(loader.dataset, "dataset", loader.dataset)  # through a Subset
            raise DatasetFormatError(f"{type(dataset).__name__}: expected classification items "
                                     f"(name, 'sample', (points, label)); is this a classification dataset?")
        points, label = unpack_cls_batch(item[2], device)
        points = points[..., :3]
        if npoints and points.shape[1] > npoints:
            points = fps(points, npoints)
        feats.append(features(points).float().cpu())
        labels.append(label.cpu())
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def fit_linear_svm(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                   C: float = DEFAULT_C, seed: int = 0) -> float:
    """Accuracy (%) on the test features of a LinearSVC fitted on the train features."""
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=C, random_state=seed, max_iter=10000)
    svm.fit(train_x, train_y)
    return float((svm.predict(test_x) == test_y).mean() * 100.0)


def _loader(entry, batch_size: int, num_workers: int) -> Tuple[DataLoader, int]:
    dataset = build_dataset_from_cfg(entry._base_, entry.others)
    npoints = int(entry.others.get("npoints", DEFAULT_NPOINTS))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False), npoints


def svm_validate(base_model: nn.Module, config, args, device: torch.device, logger=None) -> Optional[float]:
    """Linear-SVM accuracy (%) of ``base_model``'s frozen encoder features on ModelNet40 (or the
    datasets of ``config.svm_validation``). Runs on rank 0 only (returns None elsewhere)."""
    if get_dist_info()[0] != 0:
        return None
    svm_cfg = resolve_svm_config(config)
    bs = int(getattr(args, "svm_batch_size", 0) or 32)
    workers = int(getattr(args, "num_workers", 0) or 0)
    train_loader, npoints_train = _loader(svm_cfg.train, bs, workers)
    test_loader, npoints_test = _loader(svm_cfg.test, bs, workers)
    show = getattr(args, "progress", True)
    # The training RNG streams (torch, numpy) are left as they were: the loaders draw from both.
    np_state = np.random.get_state()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    model = _encoder_of(base_model)
    was_training = model.training
    model.eval()

    def features(points: Tensor) -> Tensor:
        return max_mean_pool(model.MAE_encoder.patch_tokens(points))

    try:
        with torch.random.fork_rng(devices=fork_devices):
            train_x, train_y = extract_features(features, train_loader, device, npoints_train, show, "svm train features")
            test_x, test_y = extract_features(features, test_loader, device, npoints_test, show, "svm test features")
    finally:
        np.random.set_state(np_state)
        model.train(was_training)
    acc = fit_linear_svm(train_x, train_y, test_x, test_y, C=float(svm_cfg.C), seed=int(getattr(args, "seed", 0)))
    print_log(f"[SVM] linear SVM accuracy = {acc:.4f} % (C = {svm_cfg.C}; {len(train_y)} train / {len(test_y)} test shapes, "
              f"feature width {train_x.shape[1]})", logger=logger)
    return acc
