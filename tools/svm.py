"""Linear SVM on frozen pre-trained point features (ModelNet40, scikit-learn LinearSVC).

    python tools/svm.py --config cfgs/pretrain.yaml --ckpts experiments/pretrain/NAME/ckpt-last.pth
    python tools/svm.py --config cfgs/demo/pretrain_demo.yaml --ckpts experiments/pretrain_demo/demo/ckpt-last.pth \
        --modelnet_root data/demo/ModelNet/modelnet40_normal_resampled

Every shape is reduced to ``npoints`` by FPS, grouped, embedded and encoded by the pre-trained
``MAE_encoder`` without masking; the feature is max ++ mean over the patch tokens (2C). A
LinearSVC fitted on the train features is scored on the test features.

The datasets come from the config's ``svm_validation`` entry when it has one, else from
``cfgs/dataset_configs/ModelNet40.yaml`` (train / test, 1024 points). During pre-training the
same measurement runs through :func:`svm_validate` when ``svm_validation.enabled`` is true.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Tuple

import numpy as np
import torch
from easydict import EasyDict
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import build_dataset_from_cfg  # noqa: E402
from tools import builder  # noqa: E402
from utils.config import ConfigError, cfg_from_yaml_file, check_keys, merge_into, origin_of  # noqa: E402
from utils.logger import print_log  # noqa: E402

DEFAULT_DATASET = "cfgs/dataset_configs/ModelNet40.yaml"
DEFAULT_C = 0.01
DEFAULT_NPOINTS = 1024
SVM_KEYS = ("enabled", "train", "test", "C", "freq")


def default_svm_config() -> EasyDict:
    entry = lambda subset: EasyDict({"_base_": DEFAULT_DATASET, "others": {"subset": subset, "npoints": DEFAULT_NPOINTS}})
    return EasyDict({"enabled": True, "train": entry("train"), "test": entry("test"), "C": DEFAULT_C, "freq": 1})


def resolve_svm_config(config) -> EasyDict:
    """``config.svm_validation`` checked, with defaults filled in; ``_base_`` paths are loaded."""
    svm_cfg = config.get("svm_validation") if config is not None else None
    out = default_svm_config()
    if svm_cfg is not None:
        check_keys(svm_cfg, "svm_validation", optional=SVM_KEYS)
        out = merge_into(out, svm_cfg)
    for split in ("train", "test"):
        entry = out[split]
        if "_base_" not in entry or "others" not in entry:
            raise ConfigError(f"svm_validation.{split} needs '_base_' and 'others'", origin_of(svm_cfg))
        if isinstance(entry._base_, str):
            entry._base_ = cfg_from_yaml_file(_resolve(entry._base_))
    return out


def _resolve(path: str) -> str:
    if os.path.isfile(path):
        return path
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(repo, path)


def _encoder_of(model: nn.Module) -> nn.Module:
    model = builder.unwrap_model(model)
    if not hasattr(model, "MAE_encoder") or not hasattr(model, "group_divider"):
        raise TypeError(f"{type(model).__name__} has no MAE_encoder / group_divider; the SVM needs a pre-training model")
    return model


@torch.no_grad()
def extract_features(base_model: nn.Module, loader, device: torch.device, npoints: int,
                     show_progress: bool = False, desc: str = "features") -> Tuple[np.ndarray, np.ndarray]:
    """(features (n, 2C) float32, labels (n,) int64) of every shape of ``loader``."""
    from tools.runner_finetune import fps_to, unpack_cls_batch

    model = _encoder_of(base_model)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for _, _, data in tqdm(loader, desc=desc, disable=not show_progress, dynamic_ncols=True, leave=False):
            points, label = unpack_cls_batch(data, device)
            points = fps_to(points[..., :3], npoints)
            neighborhood, center = model.group_divider(points)
            tokens, _ = model.MAE_encoder(neighborhood, center, noaug=True)  # B G C
            tokens = tokens.float()
            feats.append(torch.cat([tokens.amax(dim=1), tokens.mean(dim=1)], dim=-1).cpu())
            labels.append(label.cpu())
    finally:
        model.train(was_training)
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
    from utils.dist_utils import get_dist_info

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
    try:
        with torch.random.fork_rng(devices=fork_devices):
            train_x, train_y = extract_features(base_model, train_loader, device, npoints_train, show, "svm train features")
            test_x, test_y = extract_features(base_model, test_loader, device, npoints_test, show, "svm test features")
    finally:
        np.random.set_state(np_state)
    acc = fit_linear_svm(train_x, train_y, test_x, test_y, C=float(svm_cfg.C), seed=int(getattr(args, "seed", 0)))
    print_log(f"[SVM] linear SVM accuracy = {acc:.4f} % (C = {svm_cfg.C}; {len(train_y)} train / {len(test_y)} test shapes, "
              f"feature width {train_x.shape[1]})", logger=logger)
    return acc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Linear SVM on frozen pre-trained features (ModelNet40)")
    parser.add_argument("--config", required=True, help="pre-training config (model section; optional svm_validation)")
    parser.add_argument("--ckpts", required=True, help="pre-training checkpoint")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: CUDA when present)")
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--svm_batch_size", type=int, default=32)
    parser.add_argument("--C", type=float, default=None, help=f"LinearSVC C (default: svm_validation.C or {DEFAULT_C})")
    parser.add_argument("--modelnet_root", default=None,
                        help="DATA_PATH of the SVM's ModelNet40 train/test sets (e.g. data/demo/ModelNet/modelnet40_normal_resampled)")
    parser.add_argument("--modelnet_npoints", type=int, default=None,
                        help="N_POINTS of the ModelNet40 cache to read (default 8192, as released; 1024 skips the FPS per batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--partial_load", action="store_true", help="load the checkpoint non-strictly")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser


def main(argv=None) -> float:
    from utils.config import apply_opts
    from utils.misc import resolve_device, set_random_seed

    args = build_parser().parse_args(argv)
    args.progress = True
    set_random_seed(args.seed)
    config = cfg_from_yaml_file(args.config)
    apply_opts(config, args.opts)
    overrides = {}
    if args.C is not None:
        overrides["C"] = args.C
    for split in ("train", "test"):
        others = {}
        if args.modelnet_root is not None:
            others["DATA_PATH"] = args.modelnet_root
        if args.modelnet_npoints is not None:
            others["N_POINTS"] = args.modelnet_npoints
        if others:
            overrides[split] = {"others": others}
    if overrides:
        config.svm_validation = merge_into(config.get("svm_validation") or {}, overrides)
    device = resolve_device(args.device)
    base_model = builder.model_builder(config.model)
    builder.load_model(base_model, args.ckpts, strict=not args.partial_load)
    return svm_validate(base_model.to(device), config, args, device)


if __name__ == "__main__":
    main()
