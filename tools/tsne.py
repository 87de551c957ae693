"""t-SNE of point-cloud features on a classification dataset, as a PNG coloured by class.

    python tools/tsne.py --config cfgs/finetune_modelnet.yaml --ckpts PRETRAIN_OR_FINETUNED.pth --out tsne.png

``--config`` is a fine-tuning config (model ``PointTransformer``); its ``dataset.test`` entry
(``dataset.val`` when there is no test entry, or ``--split``) gives the shapes. Features:

* a pre-training checkpoint (``MAE_encoder.*`` weights, Inter-MAE or Point-MAE): the encoder is
  loaded with ``PointTransformer.load_model_from_ckpt`` and a shape is described by
  ``max_mean_pool`` of the encoder's patch outputs (the classifier's cls token is not trained then);
* a fine-tuned classifier: ``forward_features`` (cls output ++ max of patch outputs);
* no ``--ckpts``: the randomly initialised encoder (a baseline), features as for pre-training.

Also written: ``<out>.npz`` (features, embedding, labels), ``<out>.json`` and, in the log, the leave-one-out
5-nearest-neighbour accuracy of the features (cosine), a number to go with the picture.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from datasets import DATASETS
from datasets.common import DatasetFormatError
from engine import svm
from models import MODELS, backbone
from engine import builder
from utils.cli import run_main
from utils.vis import class_colours, new_figure, plain_text, save_figure
from utils.checkpoint import (CheckpointError, UntrustedCheckpointError, load_checkpoint_file, state_dict_of,  # noqa: E402
                              write_json)
from utils.config import ConfigError, origin_of
from utils.logger import print_log
from utils.misc import resolve_device, set_random_seed
from utils.overrides import load_config
from utils.parser import add_common_args, new_parser
from utils.settings import progress_enabled, worker_count
from utils.text import printable
from utils.validate import dataset_entry

SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet"]


def build_parser():
    p = new_parser("t-SNE of pre-trained or fine-tuned point-cloud features")
    p.add_argument("--config", required=True, help="fine-tuning config (model PointTransformer, dataset.test / val)")
    p.add_argument("--ckpts", default=None,
                   help="pre-training or fine-tuned checkpoint (default: none, a randomly initialised encoder)")
    p.add_argument("--out", default="tsne.png", help="output PNG")
    p.add_argument("--split", choices=["test", "val", "train"], default=None, help="dataset entry (default: test, else val)")
    p.add_argument("--features", choices=["auto", "patch", "cls"], default="auto",
                   help="patch: max+mean of patch outputs; cls: forward_features; auto: patch for pre-training "
                        "checkpoints and no checkpoint, cls for fine-tuned classifiers")
    p.add_argument("--max_samples", type=int, default=1000, help="at most this many shapes (a seeded random subset)")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (lowered for tiny sets)")
    p.add_argument("--max_iter", type=int, default=1000, help="t-SNE iterations (>= 250)")
    p.add_argument("--batch_size", type=int, default=32, help="shapes per feature-extraction batch")
    add_common_args(p, "num_workers", "seed", "device", "trust_checkpoint", "data_root", "no_progress", "opts",
                    num_workers=0)
    return p


def checkpoint_kind(path: str, trust: bool = False) -> str:
    """'pretrain' (MAE_encoder.* weights) or 'finetune' (classifier weights) of a checkpoint file."""
    kind = backbone.checkpoint_kind(state_dict_of(load_checkpoint_file(path, trust=trust), path))
    if kind in ("pretrain", "encoder"):  # "encoder": an encoder-only export (tools/export_weights.py)
        return "pretrain"
    if kind == "classifier":
        return "finetune"
    raise CheckpointError(f"checkpoint '{path}' holds neither a pre-trained encoder (MAE_encoder.*) nor a "
                          f"PointTransformer classifier (encoder.*, blocks.*)")


def build_feature_model(config, ckpts: Optional[str], device: torch.device,
                        trust: bool = False) -> Tuple[torch.nn.Module, str]:
    """The classifier of ``config.model`` with the checkpoint's weights -> (model in eval mode, kind).
    ``trust``: full unpickling of ``ckpts`` (``--trust_checkpoint``)."""
    if config.model.get("NAME") != "PointTransformer":
        raise ConfigError(f"tools/tsne.py needs a fine-tuning config (model.NAME PointTransformer), got "
                          f"'{config.model.get('NAME')}'", origin_of(config.model))
    model = builder.model_builder(config.model)
    kind = "random"
    if ckpts is not None:
        kind = checkpoint_kind(ckpts, trust)
        if kind == "pretrain":
            model.load_model_from_ckpt(ckpts, strict=True, trust=trust)
        else:
            builder.load_model(model, ckpts, strict=True, trust=trust)
    return model.to(device).eval(), kind


def class_names(dataset, num_classes: int) -> List[str]:
    """Class names from the dataset's files where known (ModelNet shape_names, ScanObjectNN), else 'class i'."""
    root = getattr(dataset, "root", None)
    num_category = getattr(dataset, "num_category", None)
    if root is not None and num_category is not None:
        names_file = os.path.join(root, f"modelnet{num_category}_shape_names.txt")
        if os.path.isfile(names_file):
            with open(names_file) as f:
                names = [line.strip() for line in f if line.strip()]
            if len(names) >= num_classes:
                return names
    if type(dataset).__name__.startswith("ScanObjectNN") and num_classes <= len(SCANOBJECTNN_CLASSES):
        return SCANOBJECTNN_CLASSES
    return [f"class {i}" for i in range(num_classes)]


def extract_features(model, dataset, indices: List[int], npoints: int, feature: str, device: torch.device,
                     batch_size: int = 32, num_workers: int = 0, progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Features (S, D) float32 and labels (S,) int64 of the items ``indices`` of a classification
    dataset: ``max_mean_pool`` of the patch tokens (``patch``) or ``forward_features`` (``cls``)."""
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=worker_count(num_workers))
    features = (lambda p: backbone.max_mean_pool(model.patch_tokens(p))) if feature == "patch" else model.forward_features
    return svm.extract_features(features, loader, device, npoints, show_progress=progress)


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy in percent (cosine similarity, majority vote, ties -> nearest)."""
    n = len(labels)
    if n < 2:
        return float("nan")
    f = torch.nn.functional.normalize(torch.from_numpy(features).double(), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-float("inf"))
    k = min(k, n - 1)
    nn_idx = sim.topk(k, dim=1).indices.numpy()
    correct = 0
    for i in range(n):
        votes = labels[nn_idx[i]]
        counts = np.bincount(votes)
        best = np.flatnonzero(counts == counts.max())
        pred = next(v for v in votes if v in best)  # the nearest among the tied classes
        correct += int(pred == labels[i])
    return 100.0 * correct / n


def tsne_embedding(features: np.ndarray, perplexity: float, seed: int, max_iter: int = 1000) -> Tuple[np.ndarray, float]:
    """(S, D) -> (S, 2) with sklearn's TSNE (PCA init); perplexity lowered below S when needed.
    Returns (embedding, perplexity used)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = features.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 samples, got {n}")
    used = min(perplexity, max(1.0, (n - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=used, init="pca", learning_rate="auto", random_state=seed,
                max_iter=max(250, max_iter))
    # One OpenMP thread: sklearn's Barnes-Hut threads spin against torch's OpenMP pool otherwise
    # (10x slower on a loaded CPU).
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(features.astype(np.float64)), used


def plot_tsne(path: str, embedding: np.ndarray, labels: np.ndarray, names: List[str], title: str) -> str:
    """Scatter of the 2-D embedding, one colour per class, legend on the right. Returns ``path``."""
    present = np.unique(labels)
    colours = class_colours(len(present))
    ncol = 1 if len(present) <= 20 else 2
    fig = new_figure(8 + 1.6 * ncol, 7)
    ax = fig.add_subplot(1, 1, 1)
    for colour, c in zip(colours, present):
        sel = labels == c
        name = names[c] if c < len(names) else f"class {c}"
        ax.scatter(embedding[sel, 0], embedding[sel, 1], s=10, color=colour, label=printable(name), linewidths=0)
    plain_text(ax.set_title(title, fontsize=10))  # names and paths from files: plain text, never mathtext
    ax.set_xticks([])
    ax.set_yticks([])
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=ncol, markerscale=1.5,
                       frameon=False)
    plain_text(legend.get_texts())
    return save_figure(fig, path, dpi=120)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UntrustedCheckpointError:
        raise  # a refused unpickling: one line and exit status 2 (utils.cli.run_main), as in every command
    except (CheckpointError, ConfigError, DatasetFormatError, ValueError) as e:
        raise SystemExit(f"tools/tsne.py: {e}") from None


def run(args) -> dict:
    if args.max_samples < 3:
        raise ValueError(f"--max_samples must be >= 3, got {args.max_samples}")
    config = load_config(args.config, args.opts, args.data_root, MODELS, DATASETS, logger="tsne")
    set_random_seed(args.seed)
    device = resolve_device(args.device)
    model, kind = build_feature_model(config, args.ckpts, device, trust=getattr(args, "trust_checkpoint", False))
    feature = args.features if args.features != "auto" else ("cls" if kind == "finetune" else "patch")

    split, entry = dataset_entry(config, *([args.split] if args.split else ["test", "val"]))
    _, loader = builder.dataset_builder(entry, seed=args.seed, num_workers=worker_count(args.num_workers))
    dataset = loader.dataset
    n = len(dataset)
    rng = np.random.default_rng(args.seed)
    indices = sorted(rng.choice(n, args.max_samples, replace=False).tolist()) if n > args.max_samples else list(range(n))
    npoints = int(config.get("npoints", 0) or 0)
    print_log(f"t-SNE of {len(indices)} / {n} shapes of dataset.{split}, {feature} features of the "
              f"{kind} model{'' if args.ckpts is None else ' ' + args.ckpts}", logger="tsne")
    feats, labels = extract_features(model, dataset, indices, npoints, feature, device, args.batch_size, args.num_workers,
                                     progress=progress_enabled(args.no_progress))

    knn = knn_accuracy(feats, labels)
    embedding, perplexity = tsne_embedding(feats, args.perplexity, args.seed, args.max_iter)
    names = class_names(dataset, int(labels.max()) + 1)
    source = f"{kind}: {os.path.basename(args.ckpts)}" if args.ckpts else "randomly initialised encoder"
    title = (f"t-SNE of {feature} features ({source}), dataset.{split}, {len(labels)} shapes, "
             f"perplexity {perplexity:g}\n5-NN accuracy of the features: {knn:.1f}%")
    out = plot_tsne(args.out, embedding, labels, names, title)
    np.savez(os.path.splitext(args.out)[0] + ".npz", features=feats, embedding=embedding, labels=labels)
    print_log(f"{len(labels)} shapes, {len(np.unique(labels))} classes; leave-one-out 5-NN accuracy of the "
              f"features {knn:.2f}%", logger="tsne")
    result = {"out": out, "knn_acc": knn, "n": len(labels), "perplexity": perplexity, "kind": kind, "feature": feature,
              "ckpts": args.ckpts, "split": split}
    write_json(os.path.splitext(args.out)[0] + ".json", result)
    print_log(f"t-SNE picture: {out} (figures in {os.path.splitext(args.out)[0]}.json)", logger="tsne")
    return result


if __name__ == "__main__":
    run_main(main)
