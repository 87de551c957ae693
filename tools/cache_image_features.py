"""Frozen-encoder fast path: encode every rendered view of every shape once.

    python tools/cache_image_features.py --config cfgs/pretrain.yaml --out data/ShapeNetRender/vit_features.npy
        [--ckpts PRETRAIN.pth] [--device cuda] [--batch_size 96]

Writes ``<out>.npy`` (shapes, 24, F) float32 (read memory-mapped) and ``<out>.json`` (shape order
and the encoder it came from). Then pre-train with the same config plus, in the train dataset's
``others``, ``IMG_SOURCE: cached`` and ``FEATURE_CACHE: <out>.npy``, and
``model.image_branch.trainable: false``: batches carry features instead of images, so no PNG is
decoded and no ViT runs during training. The loss equals the uncached one on the same views.

The encoder weights come from ``model.image_branch.pretrained`` or, with ``--ckpts``, from the
image branch of a pre-training checkpoint. A randomly initialised encoder is refused: it would
not be the one the training run builds.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from datasets import DATASETS, build_dataset_from_cfg  # noqa: E402
from datasets.views import N_RENDERED_VIEWS, load_view, rendered_view_paths  # noqa: E402
from models import MODELS  # noqa: E402
from models.image_encoder import ImageBranch  # noqa: E402
from utils.checkpoint import Remapped, RemapError, load_weights  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.config import ConfigError  # noqa: E402
from utils.logger import print_log  # noqa: E402
from utils.misc import resolve_device  # noqa: E402
from utils.overrides import load_config  # noqa: E402
from utils.parser import add_common_args, new_parser  # noqa: E402
from utils.schema import merge_into  # noqa: E402
from utils.settings import progress_enabled  # noqa: E402


def image_encoder_of(state, model) -> Remapped:
    """The image encoder of a pre-training checkpoint (``image_branch.encoder.*``) under the timm
    model's names (a remap for :func:`utils.checkpoint.load_weights`)."""
    prefix = "image_branch.encoder."
    encoder = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder:
        raise RemapError("holds no image_branch.encoder weights")
    return Remapped(encoder)


def build_branch(config, ckpts: str | None = None, trust: bool = False) -> ImageBranch:
    branch_cfg = config.model.get("image_branch")
    if branch_cfg is None:
        raise ConfigError("the config has no model.image_branch section")
    if not ckpts and not branch_cfg.get("pretrained"):
        raise ConfigError("caching needs fixed encoder weights: set model.image_branch.pretrained or pass --ckpts "
                          "(a randomly initialised encoder would differ from the one training builds)")
    branch = ImageBranch.from_config(branch_cfg)
    if ckpts:
        report = load_weights(branch.encoder, ckpts, remap=image_encoder_of, trust=trust)
        print_log(f"image encoder from {ckpts}: {report.summary()}")
    return branch.eval()


@torch.no_grad()
def cache_features(branch: ImageBranch, dataset, out_path: str, device: torch.device, batch_size: int = 96,
                   weights: str = "", progress: bool = True) -> str:
    """Encode all 24 views of every shape of a ShapeNetRender ``dataset``; atomic write of .npy + .json."""
    branch = branch.to(device).eval()
    shapes = [f"{s['taxonomy_id']}/{s['model_id']}" for s in dataset.file_list]
    out_path = os.path.splitext(out_path)[0] + ".npy"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    tmp = out_path + ".tmp.npy"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                      shape=(len(shapes), N_RENDERED_VIEWS, branch.num_features))
    per_batch = max(1, batch_size // N_RENDERED_VIEWS)
    for start in tqdm(range(0, len(shapes), per_batch), desc="encoding views", disable=not progress):
        rows = range(start, min(start + per_batch, len(shapes)))
        imgs = torch.stack([
            torch.stack([load_view(p, dataset.img_size, dataset.img_alpha) for p in rendered_view_paths(
                dataset.render_root, *shapes[r].split("/"), range(N_RENDERED_VIEWS))])
            for r in rows])  # b, 24, 3, H, W
        array[start:start + len(rows)] = branch.encode(imgs.to(device)).float().cpu().numpy()
    array.flush()
    del array
    os.replace(tmp, out_path)
    meta = {"shapes": shapes, "model": branch.model_name, "model_kwargs": branch.model_kwargs,
            "num_features": branch.num_features, "img_size": dataset.img_size, "weights": weights}
    index = os.path.splitext(out_path)[0] + ".json"
    with open(index + ".tmp", "w") as f:
        json.dump(meta, f)
    os.replace(index + ".tmp", index)
    return out_path


def build_parser():
    parser = new_parser("Cache frozen image-encoder features of every rendered view")
    parser.add_argument("--config", required=True, help="pre-training config (model.image_branch, dataset.train)")
    parser.add_argument("--out", required=True, help="output .npy (an index .json is written beside it)")
    parser.add_argument("--ckpts", default=None,
                        help="take the encoder from this pre-training checkpoint (default: "
                             "model.image_branch.pretrained)")
    parser.add_argument("--batch_size", type=int, default=96, help="images per encoder call")
    add_common_args(parser, "device", "trust_checkpoint", "data_root", "no_progress", "opts")
    return parser


def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    config = load_config(args.config, args.opts, args.data_root, MODELS, DATASETS)
    branch = build_branch(config, args.ckpts, trust=args.trust_checkpoint)
    train = config.dataset.train
    others = merge_into(train.others, {"n_imgs": 0})
    others.pop("IMG_SOURCE", None)
    others.pop("FEATURE_CACHE", None)
    dataset = build_dataset_from_cfg(train._base_, others)
    path = cache_features(branch, dataset, args.out, resolve_device(args.device), args.batch_size,
                          weights=args.ckpts or str(config.model.image_branch.get("pretrained") or ""),
                          progress=progress_enabled(args.no_progress))
    print_log(f"wrote {path} ({len(dataset)} shapes x {N_RENDERED_VIEWS} views x {branch.num_features})")
    return path


if __name__ == "__main__":
    run_main(main)
