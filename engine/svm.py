"""Linear SVM on frozen pre-trained point features (ModelNet40, scikit-learn LinearSVC).

Used by ``tools/svm.py`` and, during pre-training, by ``svm_validation``. The released protocol
(``tools/runner_pretrain.py``: ``evaluate_svm`` / ``validate``, ``datasets/ModelNetDataset.py``:
``ModelNet40SVM``) is the default: ModelNet40 from ``modelnet40_ply_hdf5_2048`` (the first 1024
points of each cloud, labels from the files; ``datasets/ModelNetH5Dataset.py``), a
``LinearSVC`` with the defaults of the release's scikit-learn (C = 1.0, dual, 1000 iterations;
seeded here), and the accuracy printed as released: ``[Validation] EPOCH: e  acc = 0.xxxx`` (a
fraction; the figure returned and logged to TensorBoard is in percent).

The feature of a shape is ``max_mean_pool`` of the patch tokens (2C) of the pre-trained
``MAE_encoder`` run without masking. The release's own feature call (``base_model(points,
noaug=True)``) cannot run: ``Inter_MAE.forward`` returns the two losses, and the released validation
is commented out.

Other data: the config's ``svm_validation.train`` / ``.test`` entries (any classification
dataset, e.g. the ModelNet40 ``.dat`` caches, whose clouds are reduced to ``npoints`` by FPS).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Tuple

import numpy as np
import torch
from easydict import EasyDict
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import build_dataset_from_cfg
from datasets.common import DatasetFormatError
from engine.feature_health import collapse_warning, feature_health
from engine.finetune import unpack_cls_batch
from extensions.pointops import fps
from models.backbone import max_mean_pool
from utils.config import cfg_from_yaml_file, resolve_base_path
from utils.dist_utils import get_dist_info, unwrap_model
from utils.logger import print_log
from utils.overrides import rebase_entry
from utils.schema import ConfigError, _set_origin, merge_into, origin_of
from utils.settings import RunSettings
from utils.validate import SVM_SCHEMA

CACHE_DATASET = "cfgs/dataset_configs/ModelNet40.yaml"  # the .dat caches (FPS to npoints)
# The released linear-SVM protocol's data (ModelNet40SVM: modelnet40_ply_hdf5_2048, 1024 points) and
# LinearSVC C (sklearn's default, which the released LinearSVC() used).
DEFAULT_SVM_DATASET = "cfgs/dataset_configs/ModelNet40SVM.yaml"
DEFAULT_NPOINTS = 1024
DEFAULT_C = 1.0
DEFAULT_MAX_ITER = 1000  # sklearn's default, which the released LinearSVC() used


def svm_default_entry(subset: str) -> EasyDict:
    """A ``svm_validation.train`` / ``.test`` entry of the released protocol (``_base_`` unloaded)."""
    return EasyDict({"_base_": DEFAULT_SVM_DATASET, "others": {"subset": subset, "npoints": DEFAULT_NPOINTS}})


def expand_svm_section(config: Mapping) -> None:
    """Fill a config's ``svm_validation`` in once, at load time (``load_config(..., expand=...)``):
    the released protocol's entries where ``train`` / ``test`` are absent, every ``_base_`` path
    replaced by its file's contents (so the data root applies to them and validation never reads
    the YAML again)."""
    svm = config.get("svm_validation")
    if not isinstance(svm, Mapping):
        return
    source = origin_of(svm) or origin_of(config) or "."
    for split in ("train", "test"):
        if svm.get(split) is None:
            svm[split] = svm_default_entry(split)
            _set_origin(svm[split], source)
        entry = svm[split]
        if isinstance(entry, Mapping) and isinstance(entry.get("_base_"), str):
            entry["_base_"] = cfg_from_yaml_file(resolve_base_path(entry["_base_"], source))


def default_svm_config() -> EasyDict:
    return EasyDict({"enabled": True, "train": svm_default_entry("train"), "test": svm_default_entry("test"),
                     "C": DEFAULT_C, "freq": 1})


def resolve_svm_config(config, data_root: Optional[str] = None) -> EasyDict:
    """``config.svm_validation`` checked, with defaults filled in; ``_base_`` paths are loaded and
    their ``data/`` paths moved under ``data_root`` (``--data_root`` / ``$DATA_ROOT``) when given."""
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
        if data_root:
            rebase_entry(entry, data_root, f"svm_validation.{split}")
    return out


def _encoder_of(model: nn.Module) -> nn.Module:
    model = unwrap_model(model)
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
                   C: float = DEFAULT_C, seed: int = 0, max_iter: int = DEFAULT_MAX_ITER) -> float:
    """Accuracy (%) on the test features of a LinearSVC fitted on the train features.

    The released ``LinearSVC()`` with the defaults of its scikit-learn: squared hinge, dual
    coordinate descent (``dual=True``, the default before scikit-learn 1.5 made it 'auto'),
    ``max_iter`` 1000; ``random_state`` is seeded here (the release left it unseeded)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=C, dual=True, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(train_x, train_y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        print_log(f"[SVM] WARNING: LinearSVC (C = {C}) did not converge in {max_iter} iterations, so the accuracy "
                  f"below may be near chance; a smaller C (e.g. --C 0.01) converges faster")
    return float((svm.predict(test_x) == test_y).mean() * 100.0)


def _loader(entry, batch_size: int, num_workers: int) -> Tuple[DataLoader, int]:
    dataset = build_dataset_from_cfg(entry._base_, entry.others)
    npoints = int(entry.others.get("npoints", DEFAULT_NPOINTS))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False), npoints


def svm_validate(base_model: nn.Module, config, settings: RunSettings, logger=None,
                 epoch: Optional[int] = None, batch_size: int = 32) -> Optional[float]:
    """Linear-SVM accuracy (%) of ``base_model``'s frozen encoder features on ModelNet40 (or the
    datasets of ``config.svm_validation``). Runs on rank 0 only (returns None elsewhere). Logs the
    released line ``[Validation] EPOCH: <epoch>  acc = <fraction>`` and a line with the details."""
    if get_dist_info()[0] != 0:
        return None
    svm_cfg = resolve_svm_config(config)  # its _base_ files were read when the config was loaded
    device, workers = settings.device, settings.num_workers
    train_loader, npoints_train = _loader(svm_cfg.train, batch_size, workers)
    test_loader, npoints_test = _loader(svm_cfg.test, batch_size, workers)
    show = settings.progress
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
    acc = fit_linear_svm(train_x, train_y, test_x, test_y, C=float(svm_cfg.C), seed=settings.seed)
    print_log("[Validation] EPOCH: %d  acc = %.4f" % (-1 if epoch is None else epoch, acc / 100.0), logger=logger)
    print_log(f"[SVM] linear SVM accuracy = {acc:.4f} % (C = {svm_cfg.C}; {len(train_y)} train / {len(test_y)} test shapes, "
              f"feature width {train_x.shape[1]})", logger=logger)
    health = feature_health(np.concatenate([train_x, test_x]))
    print_log(f"[SVM] feature health of the train and test features: {health.line()}", logger=logger)
    warning = collapse_warning(health, None)
    if warning is not None:
        print_log(f"[SVM] WARNING: {warning}", logger=logger)
    return acc
