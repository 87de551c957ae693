"""Pre-training throughput (forward, backward, AdamW step) on the current device, side by side:
the point-only model and Inter-MAE with its image branch trainable, frozen, and cached.

    python bench/bench_pretrain.py [--device cuda] [--batch 32] [--steps 5] [--config cfgs/pretrain.yaml]

The released config (384 wide, depth 12, 1024 points, 64 x 32, ViT-S/16 on one 224x224 view) at
batch 32 by default; on a CPU use e.g. ``--batch 8 --steps 2``. The cached variant feeds
precomputed encoder features (what tools/cache_image_features.py writes), so it measures the
training step without decoding PNGs or running the ViT. Data loading is excluded everywhere.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
import time

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from datasets.data_transforms import PointcloudScaleAndTranslate  # noqa: E402
from models import build_model_from_cfg  # noqa: E402
from engine import builder  # noqa: E402
from utils.config import apply_opts, cfg_from_yaml_file  # noqa: E402
from utils.misc import resolve_device  # noqa: E402


def variant_config(config, variant: str):
    cfg = copy.deepcopy(config)
    if variant == "point-only":
        cfg.model.pop("image_branch", None)
    else:
        cfg.model.image_branch.trainable = variant == "trainable"
    return cfg


def samples_per_s(config, variant: str, device: torch.device, batch: int, steps: int, amp: bool) -> float:
    cfg = variant_config(config, variant)
    model = build_model_from_cfg(cfg.model).to(device).train()
    optimizer, _ = builder.build_opti_sche(model, cfg)
    augment = PointcloudScaleAndTranslate()
    pts = torch.rand(batch, cfg.npoints, 3, device=device)
    imgs = None
    if variant in ("trainable", "frozen"):
        h, w = model.image_branch.input_size
        imgs = torch.rand(batch, 1, 3, 224, 224, device=device) if (h, w) == (224, 224) else torch.rand(batch, 1, 3, h, w, device=device)
    elif variant == "cached":
        imgs = torch.randn(batch, 1, model.image_branch.num_features, device=device)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(augment(pts), imgs)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cfgs/pretrain.yaml")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--variants", nargs="+", default=["point-only", "trainable", "frozen", "cached"])
    parser.add_argument("--opts", nargs="*", default=[])
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    config = apply_opts(cfg_from_yaml_file(args.config), args.opts)
    print(f"device {device}, config {args.config}, batch {args.batch}, steps {args.steps}, bf16 {args.amp}, "
          f"threads {torch.get_num_threads()}")
    results = {v: samples_per_s(config, v, device, args.batch, args.steps, args.amp) for v in args.variants}
    base = results.get("point-only")
    for variant, rate in results.items():
        ratio = f"  ({rate / base:.2f}x point-only)" if base else ""
        print(f"{variant:>11}: {rate:8.2f} samples/s{ratio}")


if __name__ == "__main__":
    main()
