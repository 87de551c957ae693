"""How many optimizer steps own-folder pre-training needs: a linear-probe curve, optionally beside the
released model code trained on the same batches.

    python bench/pretrain_probe.py --pretrain_root FOLDER --probe_root LABELLED_FOLDER --epochs 10 \
        --config cfgs/pretrain_folder.yaml --opts npoints=512 model.num_group=32 ... [--released] [--out F.jsonl]

``FOLDER``: the unlabelled shapes to pre-train on (any folder tree, or ``train/`` and ``test/``:
only ``train/`` is used). ``LABELLED_FOLDER``: ``train/<class>/`` and ``test/<class>/`` files for the
probe. The project's ``Inter_MAE`` (point branch, sizes from ``--config`` and ``--opts``) trains
with AdamW at the config's lr and weight decay (no-decay groups as in pre-training), constant lr (no
schedule, so equal steps compare across runs of different lengths), the pre-training augmentation,
the config's batch size, last short batch dropped. Every ``--probe_every`` epochs the encoder is
probed: BatchNorm statistics recomputed over the probe's train shapes
(``torch.optim.swa_utils.update_bn``), features ``max_mean_pool`` of the patch tokens, then the
released LinearSVC (C = 1, raw features), a LinearSVC with C = 0.01 on standardised features (it
converges; the released one often does not) and the features' effective rank. Step 0 is the
untrained encoder. ``--released`` also trains the released model code (``bench/released_model.py``,
the project's geometry ops) from the same weights on the same augmented batches with its own AdamW,
and probes it the same way. Figures of docs/real-data.md ("How many steps before own-folder pre-training pays").
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim.swa_utils import update_bn  # noqa: E402

from bench import released_model  # noqa: E402
from datasets import DATASETS, build_dataset_from_cfg  # noqa: E402
from datasets.data_transforms import PointcloudScaleAndTranslate  # noqa: E402
from engine import builder  # noqa: E402
from engine.feature_health import feature_health  # noqa: E402
from engine.pretrain import unpack_batch  # noqa: E402
from engine.svm import extract_features, fit_linear_svm  # noqa: E402
from extensions.pointops import fps  # noqa: E402
from models import MODELS  # noqa: E402
from models.backbone import max_mean_pool  # noqa: E402
from utils.config import cfg_from_yaml_file  # noqa: E402
from utils.overrides import load_config  # noqa: E402

FOLDER_BASE = REPO / "cfgs" / "dataset_configs" / "PointCloudFolder.yaml"


def folder_dataset(root: str, subset: str, labels: bool, npoints: int):
    base = cfg_from_yaml_file(str(FOLDER_BASE))
    base.DATA_PATH = root
    return build_dataset_from_cfg(base, {"subset": subset, "labels": labels, "npoints": npoints})


class PatchTokens(nn.Module):
    """The encoder's patch tokens of a (B, N, 3) cloud: what ``update_bn`` runs the batches through."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.model.MAE_encoder.patch_tokens(points)


def probe(model_config, state, train_loader, test_loader, npoints: int) -> dict:
    """Probe figures of the encoder with weights ``state`` (a copy of the model is probed)."""
    model = builder.model_builder(model_config)
    model.load_state_dict(state)
    device = torch.device("cpu")
    batches = []
    for item in train_loader:
        points = item[2][0][..., :3].float()
        batches.append(fps(points, npoints) if points.shape[1] > npoints else points)
    with torch.no_grad():
        update_bn(batches, PatchTokens(model))
    model.eval()

    def features(points):
        return max_mean_pool(model.MAE_encoder.patch_tokens(points))

    train_x, train_y = extract_features(features, train_loader, device, npoints)
    test_x, test_y = extract_features(features, test_loader, device, npoints)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    health = feature_health(np.concatenate([train_x, test_x]))
    return {"svm_released": fit_linear_svm(train_x, train_y, test_x, test_y, C=1.0, seed=0),
            "svm_standardised": fit_linear_svm((train_x - mean) / std, train_y, (test_x - mean) / std, test_y,
                                               C=0.01, seed=0, max_iter=20000),
            "effective_rank": health.effective_rank}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain_root", required=True)
    parser.add_argument("--probe_root", required=True)
    parser.add_argument("--config", default=str(REPO / "cfgs" / "pretrain_folder.yaml"))
    parser.add_argument("--opts", nargs="*", default=[])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--probe_every", type=int, default=1, help="epochs between probes")
    parser.add_argument("--released", action="store_true", help="also train and probe the released model code")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write one JSON line per probe here")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.opts, None, MODELS, DATASETS)
    model_config = copy.deepcopy(config.model)
    model_config.pop("image_branch", None)
    npoints, batch = int(config.npoints), int(config.total_bs)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    models = {"project": builder.model_builder(model_config)}
    if args.released:
        models["released"] = released_model.with_project_geometry(
            released_model.from_project_model(models["project"], model_config))
    kwargs = config.optimizer.kwargs
    optimizers = {name: torch.optim.AdamW(builder.add_weight_decay(model, float(kwargs.weight_decay)),
                                          lr=float(kwargs.lr)) for name, model in models.items()}
    train_set = folder_dataset(args.pretrain_root, "train", False, npoints)
    sampler, loader = builder.build_loader(train_set, batch, train=True, seed=args.seed)
    probe_train = torch.utils.data.DataLoader(folder_dataset(args.probe_root, "train", True, npoints), batch_size=32)
    probe_test = torch.utils.data.DataLoader(folder_dataset(args.probe_root, "test", True, npoints), batch_size=32)
    augment = PointcloudScaleAndTranslate()
    rows = []

    def report(step: int, epoch: int, losses: dict) -> None:
        for name, model in models.items() if step else [("untrained", models["project"])]:
            row = {"model": name, "step": step, "epoch": epoch, "loss": losses.get(name),
                   **probe(model_config, model.state_dict(), probe_train, probe_test, npoints)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    report(0, -1, {})
    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        start, sums = time.time(), {name: 0.0 for name in models}
        for item in loader:
            points, _ = unpack_batch(item[2], torch.device("cpu"))
            points = augment(points)
            for name, model in models.items():
                model.train()
                out = model(points)
                loss = out["loss"] if isinstance(out, dict) else out[0] + out[1]
                optimizers[name].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[name].step()
                sums[name] += float(loss.detach())
            step += 1
        losses = {name: s / max(len(loader), 1) for name, s in sums.items()}
        print(f"epoch {epoch}: {step} steps, mean loss {losses} ({time.time() - start:.0f} s)", flush=True)
        if (epoch + 1) % args.probe_every == 0 or epoch + 1 == args.epochs:
            report(step, epoch, losses)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
