"""Reconstruction pictures of a pre-trained model (released command):

    python main_vis.py --ckpts P.pth --config cfgs/pretrain.yaml --exp_name NAME [--data_root DIR]

For ``--num_samples`` shapes of the config's validation data (its test data when there is no
``dataset.val``), the model masks patches, encodes the visible ones and predicts the masked ones.
Per sample, in ``<out_dir>/<index>_<taxonomy>_<model>/``:

    input.{ply,txt}           the cloud fed to the model (npoints, 3)
    visible.{ply,txt}         the visible patches ((G - int(ratio*G)) * K, 3)
    reconstruction.{ply,txt}  visible patches + predicted masked patches at their centres (G * K, 3)
    centers.{ply,txt}         the patch centres (G, 3); mask.txt: 1 = masked, per centre
    plot.png                  input | visible | reconstruction

and ``<out_dir>/reconstructions.png`` with one row per sample. ``.txt`` files hold ``x;y;z`` rows
(released delimiter). ``out_dir`` defaults to ``experiments/<config stem>/<exp_name>/vis``.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from datasets import DATASETS
from datasets.common import DatasetFormatError
from datasets.io import write_ply
from extensions.pointops import fps
from models import MODELS
from engine import builder
from utils.checkpoint import CheckpointError, UntrustedCheckpointError
from utils.cli import run_main
from utils.config import ConfigError, origin_of
from utils.logger import get_root_logger, print_log
from utils.misc import resolve_device, set_random_seed
from utils.overrides import load_config
from utils.parser import add_common_args, new_parser
from utils.rundir import run_name_type
from utils.settings import progress_enabled, worker_count
from utils.validate import check_mask_ratio, check_top_level, dataset_entry
from utils.vis import plot_cloud_rows, view_for_category

PANELS = ("input", "visible", "reconstruction")


def build_vis_parser():
    parser = new_parser("Inter-MAE: visualise masked reconstructions of a pre-trained model")
    parser.add_argument("--config", required=True, help="pre-training config (model; dataset.val, else dataset.test)")
    parser.add_argument("--ckpts", required=True,
                        help="the pre-training checkpoint to visualise (or a whole-model .safetensors export)")
    parser.add_argument("--test", action="store_true", help=argparse.SUPPRESS)  # released command line; no effect
    parser.add_argument("--exp_name", type=run_name_type("--exp_name"), default="default",
                        help="experiment name: pictures go to <experiment_root>/<config stem>/<exp_name>/vis")
    parser.add_argument("--experiment_root", type=str, default="./experiments", help="where experiments go")
    parser.add_argument("--out_dir", type=str, default=None,
                        help="output folder (default: <experiment_root>/<config stem>/<exp_name>/vis)")
    parser.add_argument("--num_samples", type=int, default=8, help="number of validation shapes to visualise")
    parser.add_argument("--mask_ratio", type=float, default=None,
                        help="override model.transformer_config.mask_ratio (0 <= ratio, at least one visible patch) "
                             "(default: the config's)")
    add_common_args(parser, "device", "num_workers", "seed", "partial_load", "trust_checkpoint", "data_root", "no_progress",
                    "opts")
    return parser


def get_vis_args(argv=None):
    parser = build_vis_parser()
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"--num_samples must be >= 1, got {args.num_samples}")
    args.progress = progress_enabled(args.no_progress)
    stem = os.path.splitext(os.path.basename(args.config))[0]
    args.experiment_path = os.path.join(args.experiment_root, stem, args.exp_name)
    if args.out_dir is None:
        args.out_dir = os.path.join(args.experiment_path, "vis")
    return args


def set_mask_ratio(config, ratio: float) -> None:
    """Override ``model.transformer_config.mask_ratio``, checked by the config's own rule (in (0, 1))."""
    check_mask_ratio({"mask_ratio": ratio}, "--mask_ratio")
    config.model.transformer_config.mask_ratio = float(ratio)


def unpack_item(data, index: int) -> Tuple[List[str], List[str], Tensor]:
    """A batch of one of the released item formats -> (taxonomy ids, model ids, points (B, N, 3)).

    Pre-training loaders give ``(taxonomy_id, model_id, points)`` (points a tensor, or a dict with
    ``points`` for ShapeNetRender); classification loaders give ``(name, 'sample', (points, label))``.
    """
    taxonomy_ids, model_ids, payload = data
    if isinstance(payload, dict):
        points = payload["points"]
    elif isinstance(payload, (list, tuple)):
        points = payload[0]
        labels = payload[1]
        taxonomy_ids = [f"class{int(lbl)}" for lbl in labels]
        model_ids = [f"{index + i:04d}" for i in range(len(labels))]
    else:
        points = payload
    return list(taxonomy_ids), list(model_ids), points[..., :3].float()


def iterate_samples(dataset, num_samples: int, batch_size: int, num_workers: int, progress: bool = False) -> Iterator:
    """Batches over ``num_samples`` evenly spaced items of ``dataset`` (so that sorted lists give
    several categories), in order."""
    n = len(dataset)
    if n == 0:
        raise DatasetFormatError("the visualisation dataset is empty")
    indices = np.unique(np.linspace(0, n - 1, min(num_samples, n)).round().astype(int)).tolist()
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=worker_count(num_workers))
    start = 0
    for data in tqdm(loader, desc="reconstructions", disable=not progress, dynamic_ncols=True, leave=False):
        yield indices[start:], data
        start += len(data[0])


def save_cloud(folder: str, name: str, xyz: np.ndarray) -> None:
    write_ply(os.path.join(folder, name + ".ply"), xyz)
    np.savetxt(os.path.join(folder, name + ".txt"), xyz, delimiter=";", fmt="%.6f")


def write_sample(folder: str, clouds: Dict[str, np.ndarray], mask: np.ndarray, view: Tuple[float, float], label: str) -> str:
    """Write the clouds of one sample (.ply, .txt), its mask and its plot.png; returns the PNG path."""
    os.makedirs(folder, exist_ok=True)
    for name, xyz in clouds.items():
        save_cloud(folder, name, xyz)
    np.savetxt(os.path.join(folder, "mask.txt"), mask.astype(np.int64), fmt="%d")
    return plot_cloud_rows(os.path.join(folder, "plot.png"), [[clouds[p] for p in PANELS]], PANELS, [view], row_labels=[label])


@torch.no_grad()
def run_vis(args, config, logger=None) -> Dict[str, object]:
    """Load the checkpoint, reconstruct the samples, write files. Returns a summary dict with the
    per-sample folders, the overview PNG path and the mean masked-patch reconstruction loss."""
    check_top_level(config, required=("model", "dataset"))
    if args.mask_ratio is not None:
        set_mask_ratio(config, args.mask_ratio)
    device = resolve_device(getattr(args, "device", None), 0)
    split, entry = dataset_entry(config, "val", "test")

    base_model = builder.model_builder(config.model).to(device)
    if not hasattr(base_model, "reconstruct"):
        raise ConfigError(f"model.NAME {config.model.NAME} is not a pre-training model (it has no reconstruct); "
                          f"use a pre-training config such as cfgs/pretrain.yaml", origin_of(config.model))
    # the point model of any pre-training checkpoint, with or without an image branch (never used here)
    builder.load_point_model(base_model, args.ckpts, logger=logger, strict=not args.partial_load,
                             trust=args.trust_checkpoint)
    base_model.eval()

    _, loader = builder.dataset_builder(entry, seed=args.seed, num_workers=worker_count(args.num_workers))
    npoints = int(config.get("npoints", entry.others.get("npoints", 0)) or 0)
    ratio = float(config.model.transformer_config.mask_ratio)
    print_log(f"Visualising {args.num_samples} samples of dataset.{split} ({len(loader.dataset)} shapes), "
              f"mask ratio {ratio}, into {args.out_dir}", logger=logger)

    set_random_seed(args.seed)
    rows, views, labels, folders, losses = [], [], [], [], []
    batch_size = min(args.num_samples, 8)
    for indices, data in iterate_samples(loader.dataset, args.num_samples, batch_size, args.num_workers,
                                         getattr(args, "progress", False)):
        taxonomy_ids, model_ids, points = unpack_item(data, indices[0])
        points = points.to(device)
        if npoints and points.shape[1] > npoints:
            points = fps(points, npoints)
        out = base_model.reconstruct(points)
        masked = out["mask"]
        if masked.any():
            rec = base_model.encode_decode(points, mask=masked)
            losses.append(base_model.reconstruction_loss(rec).item() * points.shape[0])
        for b in range(points.shape[0]):
            clouds = {
                "input": points[b].cpu().numpy(),
                "visible": out["visible"][b].float().cpu().numpy(),
                "reconstruction": out["reconstruction"][b].float().cpu().numpy(),
                "centers": out["center"][b].float().cpu().numpy(),
            }
            name = f"{indices[b]:04d}_{taxonomy_ids[b]}_{model_ids[b]}"
            folder = os.path.join(args.out_dir, name)
            view = view_for_category(taxonomy_ids[b])
            write_sample(folder, clouds, masked[b].cpu().numpy(), view, label=str(taxonomy_ids[b]))
            rows.append([clouds[p] for p in PANELS])
            views.append(view)
            labels.append(f"{taxonomy_ids[b]}\n{model_ids[b]}")
            folders.append(folder)
    overview = plot_cloud_rows(os.path.join(args.out_dir, "reconstructions.png"), rows, PANELS, views, row_labels=labels)
    loss = sum(losses) / len(folders) if losses else float("nan")
    print_log(f"Wrote {len(folders)} samples (input/visible/reconstruction/centers .ply and .txt, plot.png) under "
              f"{args.out_dir}; masked-patch reconstruction loss ({config.model.loss}) {loss:.6f}", logger=logger)
    print_log(f"Reconstruction picture: {overview}", logger=logger)
    return {"folders": folders, "overview": overview, "loss_rec": loss}


def main(argv=None) -> Dict[str, object]:
    args = get_vis_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    logger = get_root_logger(log_file=os.path.join(args.out_dir, f"{timestamp}_vis.log"), name="main_vis")
    try:
        config = load_config(args.config, args.opts, args.data_root, MODELS, DATASETS, logger=logger)
        return run_vis(args, config, logger=logger)
    except UntrustedCheckpointError:
        raise  # a refused unpickling: one line and exit status 2 (utils.cli.run_main), as in every command
    except (CheckpointError, ConfigError, DatasetFormatError) as e:
        print_log(f"main_vis.py: {e}", logger=logger, level=40)
        raise SystemExit(1) from None


if __name__ == "__main__":
    run_main(main)
